#!/usr/bin/env bash
# The whole test suite: provides the servers' binaries (scripts/setup.sh, cached) and the container
# images (scripts/images.sh), then runs every test of the workspace against real etcd +
# kube-apiserver (+ controller-manager, scheduler, real nodes with kubelet + containerd, kwok),
# nats-server and PostgreSQL started by the tests themselves.
#
#   bash scripts/test.sh                 # everything
#   bash scripts/test.sh -p nats-cdr-e2e # extra arguments go to cargo test
#
# With KUBECONFIG set, the Kubernetes tests run against that cluster (kind, for example) instead of
# a local control plane.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
# The container images the real nodes run (operator, bridge, worker, nats-server, and the nodes'
# own pause/CoreDNS/busybox), built from their Dockerfiles; unchanged images are not rebuilt.
bash scripts/images.sh
# Two cores: tests that start their own servers run two at a time at most.
export RUST_TEST_THREADS=${RUST_TEST_THREADS:-2}
exec cargo test --workspace --locked "$@"
