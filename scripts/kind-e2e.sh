#!/usr/bin/env bash
# The end-to-end suite on a kind cluster, for users with Docker (kind cannot run where there is no
# Docker daemon and no registry, as on our CI machine, which runs the same suite on its own local
# cluster with a real node instead).
#
#   bash scripts/kind-e2e.sh            # create (or reuse) kind cluster "nats-cdr", load, test
#   KIND_CLUSTER=other bash scripts/kind-e2e.sh
#   bash scripts/kind-e2e.sh delete     # remove the kind cluster
#
# Steps: build the images from their Dockerfiles (scripts/images.sh: docker where buildah is
# absent), load every archive into the kind nodes, then run the e2e suite with KUBECONFIG pointing
# at kind: every test creates its own namespace there, helm-installs what it needs and cleans up
# with the namespace.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
name=${KIND_CLUSTER:-nats-cdr}
kubeconfig=${KIND_KUBECONFIG:-${TMPDIR:-/tmp}/kind-$name.kubeconfig}

if [ "${1:-}" = delete ]; then
  kind delete cluster --name "$name"
  exit 0
fi
command -v kind >/dev/null || { echo "kind is needed: https://kind.sigs.k8s.io" >&2; exit 1; }
kind get clusters | grep -qx "$name" || kind create cluster --name "$name" --wait 120s
kind get kubeconfig --name "$name" > "$kubeconfig"

bash scripts/images.sh
images=${NATS_CDR_IMAGES:-$PWD/target/images}
while read -r reference archive; do
  echo "loading $reference"
  kind load image-archive "$images/$archive" --name "$name"
done < "$images/images.txt"

# The tools the tests call (helm, kubectl, nats, promtool) and the Prometheus Operator CRDs the
# chart test installs when kind lacks them come from scripts/setup.sh (or your PATH). The tests
# install charts/nats-cdr themselves, one release per namespace.
KUBECONFIG=$kubeconfig cargo test --locked -p nats-cdr-e2e -- --test-threads=2
