#!/usr/bin/env bash
# Provides every external binary the demo and the tests need, built from published Go modules and
# Debian packages, cached outside the repository. Idempotent: a warm second run takes seconds.
#
#   bash scripts/setup.sh            # build what is missing
#   NATS_CDR_CACHE=/some/dir bash scripts/setup.sh
#
# Result: $NATS_CDR_CACHE/bin/{etcd,kube-apiserver,kube-controller-manager,kube-scheduler,kubectl,
#         kubelet,kube-proxy,containerd,containerd-shim-runc-v2,ctr,crictl,coredns,pause,
#         kwok,kwokctl,nats-server,nats,helm,promtool}, $NATS_CDR_CACHE/kwok/stages.yaml (kwok's pod
#         and node lifecycle), $NATS_CDR_CACHE/prometheus-operator/crds (ServiceMonitor, PodMonitor,
#         PrometheusRule), and from Debian packages: PostgreSQL 15's server, runc, the CNI plugins,
#         iptables, conntrack, buildah (for scripts/images.sh) and a static busybox.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

cache=${NATS_CDR_CACHE:-$HOME/.cache/nats-cdr}
bin=$cache/bin
work=$cache/build
stamps=$cache/stamps
mkdir -p "$bin" "$work" "$stamps"
export GOFLAGS=-buildvcs=false CGO_ENABLED=0
export GOPATH=${GOPATH:-$HOME/go}

log() { printf '[setup %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# built NAME VERSION: true when the stamp says this exact version was built and the binaries exist.
built() {
  local name=$1 version=$2; shift 2
  [ "$(cat "$stamps/$name" 2>/dev/null)" = "$version" ] || return 1
  for b in "$@"; do [ -x "$bin/$b" ] || return 1; done
}
stamp() { echo "$2" > "$stamps/$1"; }

# go_install NAME VERSION PACKAGE...: plain `go install pkg@version` for modules without replaces.
go_install() {
  local name=$1 version=$2; shift 2
  local binaries=()
  local b
  for p in "$@"; do
    b=$(basename "$p")
    # A major-version suffix (/v2) is not the command name: Go names it after the element before.
    [[ $b =~ ^v[0-9]+$ ]] && b=$(basename "$(dirname "$p")")
    binaries+=("$b")
  done
  if built "$name" "$version" "${binaries[@]}"; then return; fi
  log "building $name $version"
  for p in "$@"; do GOBIN=$bin go install "$p@$version"; done
  stamp "$name" "$version"
}

build_kubernetes() {
  local v=$KUBERNETES_VERSION
  local tools=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy)
  if built kubernetes "$v" "${tools[@]}"; then return; fi
  log "building Kubernetes $v (several minutes on a cold cache)"
  local dir=$work/kubernetes-$v
  mkdir -p "$dir"
  local upstream_gomod
  upstream_gomod=$(cd "$dir" && go mod download -json "k8s.io/kubernetes@$v" | sed -n 's/^\s*"GoMod": "\(.*\)",\?$/\1/p')
  [ -f "$upstream_gomod" ] || { log "cannot find go.mod of k8s.io/kubernetes@$v"; exit 1; }
  local minor=${v#v1.}; minor=${minor%%.*}
  local staging_version=v0.${v#v1.}
  local go_line godebug_line
  go_line=$(grep -m1 '^go ' "$upstream_gomod")
  godebug_line=$(grep -m1 '^godebug ' "$upstream_gomod" || true)
  {
    echo "module nats-cdr.dev/kubernetes-build"
    echo
    echo "$go_line"
    [ -n "$godebug_line" ] && echo "$godebug_line"
    echo
    echo "require k8s.io/kubernetes $v"
    echo
    # Every staging module upstream replaces with ./staging/src/... is published under its own tag.
    grep -oE '^\s*k8s\.io/[a-z0-9-]+ => \./staging/src/k8s\.io/[a-z0-9-]+' "$upstream_gomod" |
      awk -v sv="$staging_version" '{print "replace " $1 " => " $1 " " sv}'
  } > "$dir/go.mod"
  cat > "$dir/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
)
GO
  (cd "$dir" && go mod tidy -e >/dev/null 2>&1 || true)
  (cd "$dir" && go mod download)
  local date; date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  local ld=""
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ld+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date"
  done
  for t in "${tools[@]}"; do
    log "  go build $t"
    (cd "$dir" && go build -tags tools -ldflags "-s -w$ld" -o "$bin/$t" "k8s.io/kubernetes/cmd/$t")
  done
  stamp kubernetes "$v"
}

build_etcd() {
  local v=$ETCD_VERSION
  if built etcd "$v" etcd; then return; fi
  log "building etcd $v"
  local dir=$work/etcd-$v
  mkdir -p "$dir"
  cat > "$dir/go.mod" <<GOMOD
module nats-cdr.dev/etcd-build

go 1.24

require go.etcd.io/etcd/server/v3 $v
GOMOD
  cat > "$dir/tools.go" <<'GO'
//go:build tools

package tools

import _ "go.etcd.io/etcd/server/v3"
GO
  (cd "$dir" && go mod tidy -e >/dev/null 2>&1 || true)
  (cd "$dir" && go build -tags tools -ldflags "-s -w" -o "$bin/etcd" go.etcd.io/etcd/server/v3)
  stamp etcd "$v"
}

# kwok simulates nothing without Stage objects; kwokctl normally supplies them. Concatenate the
# upstream "fast" node and pod stages (plus node heartbeat) from the module's own source.
kwok_stages() {
  local out=$cache/kwok/stages.yaml
  if [ "$(cat "$stamps/kwok-stages" 2>/dev/null)" = "$KWOK_VERSION" ] && [ -s "$out" ]; then return; fi
  local src
  src=$(go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | sed -n 's/^\s*"Dir": "\(.*\)",\?$/\1/p')
  mkdir -p "$cache/kwok"
  : > "$out.tmp"
  for f in node/fast/node-initialize.yaml node/heartbeat/node-heartbeat.yaml \
           pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
    { echo "---"; cat "$src/kustomize/stage/$f"; } >> "$out.tmp"
  done
  mv "$out.tmp" "$out"
  stamp kwok-stages "$KWOK_VERSION"
}

# Debian packages: PostgreSQL's server for the tests; runc, the CNI plugins, iptables and
# conntrack for the real nodes; buildah to build the container images from their Dockerfiles;
# a static busybox for the test nodes' probe pods.
install_debian_packages() {
  local missing=()
  [ -x /usr/lib/postgresql/15/bin/initdb ] && [ -x /usr/lib/postgresql/15/bin/pg_ctl ] || missing+=(postgresql-15)
  [ -x /usr/sbin/runc ] || missing+=(runc)
  [ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] || missing+=(containernetworking-plugins)
  command -v iptables >/dev/null || missing+=(iptables)
  command -v conntrack >/dev/null || missing+=(conntrack)
  command -v buildah >/dev/null || missing+=(buildah)
  [ -x /bin/busybox ] || missing+=(busybox-static)
  [ ${#missing[@]} -eq 0 ] && return
  log "installing from Debian packages: ${missing[*]}"
  local sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

# containerd 2 (daemon, runc shim, ctr) through a wrapper module, without the storage drivers that
# need cgo.
build_containerd() {
  local v=$CONTAINERD_VERSION
  local tools=(containerd containerd-shim-runc-v2 ctr)
  if built containerd "$v" "${tools[@]}"; then return; fi
  log "building containerd $v"
  local dir=$work/containerd-$v
  mkdir -p "$dir"
  cat > "$dir/go.mod" <<GOMOD
module nats-cdr.dev/containerd-build

go 1.24

require github.com/containerd/containerd/v2 $v
GOMOD
  cat > "$dir/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "github.com/containerd/containerd/v2/cmd/containerd"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
	_ "github.com/containerd/containerd/v2/cmd/ctr"
)
GO
  (cd "$dir" && go mod tidy -e >/dev/null 2>&1 || true)
  for t in "${tools[@]}"; do
    log "  go build $t"
    (cd "$dir" && go build -tags "tools no_btrfs no_devmapper no_zfs" \
      -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=$v" \
      -o "$bin/$t" "github.com/containerd/containerd/v2/cmd/$t")
  done
  stamp containerd "$v"
}

# A slim CoreDNS: the library with only the plugins a test cluster needs (no `forward`: names
# outside cluster.local never leave the machine).
build_coredns() {
  local v=$COREDNS_VERSION
  if built coredns "$v" coredns; then return; fi
  log "building CoreDNS $v (slim)"
  local dir=$work/coredns-$v
  mkdir -p "$dir"
  cat > "$dir/go.mod" <<GOMOD
module nats-cdr.dev/coredns-build

go 1.24

require github.com/coredns/coredns $v
GOMOD
  cat > "$dir/main.go" <<'GO'
// A CoreDNS with the plugins of a cluster DNS and nothing that reaches outside the cluster.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
	_ "github.com/coredns/coredns/plugin/whoami"
)

// The order of plugin.cfg upstream, restricted to the plugins above.
func init() {
	dnsserver.Directives = []string{
		"reload", "bind", "ready", "health", "errors", "log",
		"loadbalance", "cache", "kubernetes", "whoami",
	}
}

func main() { coremain.Run() }
GO
  (cd "$dir" && go mod tidy >/dev/null)
  (cd "$dir" && go build -ldflags "-s -w" -o "$bin/coredns" .)
  stamp coredns "$v"
}

# The pause container, compiled from the Kubernetes source of the pinned release.
build_pause() {
  local v=$KUBERNETES_VERSION
  if built pause "$v" pause; then return; fi
  log "building the pause binary from k8s.io/kubernetes@$v"
  local src
  src=$(cd "$work/kubernetes-$v" && go mod download -json "k8s.io/kubernetes@$v" | sed -n 's/^\s*"Dir": "\(.*\)",\?$/\1/p')
  [ -f "$src/build/pause/linux/pause.c" ] || { log "no build/pause/linux/pause.c in $src"; exit 1; }
  gcc -Os -static -Wall -Werror -DVERSION="$v-nats-cdr" -o "$bin/pause" "$src/build/pause/linux/pause.c"
  strip "$bin/pause"
  stamp pause "$v"
}

# The Prometheus Operator's ServiceMonitor, PodMonitor and PrometheusRule CRDs, from its module's
# source, into $cache/prometheus-operator/crds: the chart test has a real apiserver accept the
# chart's monitoring objects with them.
prometheus_operator_crds() {
  local v=$PROMETHEUS_OPERATOR_VERSION out=$cache/prometheus-operator/crds
  if [ "$(cat "$stamps/prometheus-operator-crds" 2>/dev/null)" = "$v" ] \
    && [ -s "$out/monitoring.coreos.com_prometheusrules.yaml" ]; then return; fi
  log "copying the Prometheus Operator $v CRDs"
  local src
  src=$(go mod download -json "github.com/prometheus-operator/prometheus-operator@$v" | sed -n 's/^\s*"Dir": "\(.*\)",\?$/\1/p')
  mkdir -p "$out"
  for kind in servicemonitors podmonitors prometheusrules; do
    install -m 0644 "$src/example/prometheus-operator-crd/monitoring.coreos.com_$kind.yaml" "$out/"
  done
  stamp prometheus-operator-crds "$v"
}

main() {
  local t0=$SECONDS
  install_debian_packages
  build_etcd
  go_install nats-server "$NATS_SERVER_VERSION" github.com/nats-io/nats-server/v2
  go_install natscli "$NATSCLI_VERSION" github.com/nats-io/natscli/nats
  go_install kwok "$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwok sigs.k8s.io/kwok/cmd/kwokctl
  kwok_stages
  go_install helm "$HELM_VERSION" helm.sh/helm/v3/cmd/helm
  build_kubernetes
  build_pause
  build_containerd
  go_install crictl "$CRICTL_VERSION" sigs.k8s.io/cri-tools/cmd/crictl
  build_coredns
  go_install promtool "$PROMETHEUS_VERSION" github.com/prometheus/prometheus/cmd/promtool
  prometheus_operator_crds
  log "ready in $((SECONDS - t0))s: $bin"
}
main "$@"
