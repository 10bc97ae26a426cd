#!/usr/bin/env bash
# The whole test suite: provides the servers' binaries (scripts/setup.sh, cached), then runs every
# test of the workspace against real etcd + kube-apiserver (+ controller-manager, scheduler, kwok),
# nats-server and PostgreSQL started on loopback by the tests themselves.
#
#   bash scripts/test.sh                 # everything
#   bash scripts/test.sh -p nats-cdr-e2e # extra arguments go to cargo test
#
# With KUBECONFIG set, the Kubernetes tests run against that cluster (kind, for example) instead of
# a local control plane.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
# Two cores: tests that start their own servers run two at a time at most.
export RUST_TEST_THREADS=${RUST_TEST_THREADS:-2}
exec cargo test --workspace --locked "$@"
