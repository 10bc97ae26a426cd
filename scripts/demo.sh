#!/usr/bin/env bash
# The embedded default: a local Kubernetes cluster (control plane and one real node: kubelet,
# containerd, kube-proxy, CoreDNS; no Docker needed), the operator installed by its Helm chart and
# running in a pod from the image built here, the examples applied, and the data path running for
# real: nats-server, PostgreSQL, kam-cdr-bridge tailing a sample acc_json file and cdr-worker
# writing CDRs into PostgreSQL. Runs in the background until `bash scripts/demo.sh down`.
#
#   bash scripts/demo.sh        # start (idempotent), then print where to point kubectl
#   bash scripts/demo.sh down   # stop everything
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cache=${NATS_CDR_CACHE:-$HOME/.cache/nats-cdr}
state=${NATS_CDR_DEMO_DIR:-$cache/demo}
mkdir -p "$state"
pidfile=$state/pid

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

if [ "${1:-up}" = down ]; then
  if running; then
    kill "$(cat "$pidfile")"
    for _ in $(seq 1 100); do running || break; sleep 0.2; done
    echo "stopped"
  else
    echo "not running"
  fi
  rm -f "$pidfile" "$state/ready"
  exit 0
fi

if running && [ -f "$state/ready" ]; then
  echo "already running (pid $(cat "$pidfile"))"
else
  bash scripts/setup.sh
  bash scripts/images.sh
  cargo build --locked -q --workspace --bins
  rm -f "$state/ready"
  setsid nohup target/debug/nats-cdr-local up --state-dir "$state" > "$state/demo.log" 2>&1 < /dev/null &
  echo $! > "$pidfile"
  for _ in $(seq 1 3000); do
    [ -f "$state/ready" ] && break
    if ! running; then
      echo "the local environment failed to start; its log ($state/demo.log):" >&2
      tail -n 40 "$state/demo.log" >&2
      exit 1
    fi
    sleep 0.2
  done
  [ -f "$state/ready" ] || { echo "not ready after 600 s; see $state/demo.log" >&2; exit 1; }
  cat "$state/demo.log"
fi
echo
echo "kubectl --kubeconfig $state/kubeconfig get pods -A -o wide"
echo "kubectl --kubeconfig $state/kubeconfig get natsclusters,jetstreamstreams,jetstreamconsumers,cdrpipelines -A"
echo "stop with: bash scripts/demo.sh down"
