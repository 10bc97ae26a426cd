#!/usr/bin/env bash
# Builds the container images from their Dockerfiles, without a Docker daemon: buildah (Debian
# package, installed by scripts/setup.sh) reads each Dockerfile; where `docker` works and buildah
# is absent, docker builds them instead. Every image is a static binary on an empty base.
#
#   bash scripts/images.sh                 # every image
#   bash scripts/images.sh cdr-worker      # some of them
#   IMAGE_TAG=0.1.0-rc1 bash scripts/images.sh cdr-worker
#
# Images (tags follow the crate version; nats-server's its own version):
#   ghcr.io/nats-cdr/nats-cdr-operator:<version>   images/nats-cdr-operator/Dockerfile
#   ghcr.io/nats-cdr/kam-cdr-bridge:<version>      images/kam-cdr-bridge/Dockerfile
#   ghcr.io/nats-cdr/cdr-worker:<version>          images/cdr-worker/Dockerfile
#   ghcr.io/nats-cdr/nats-server:<nats version>    images/nats-server/Dockerfile
#   localhost/nats-cdr/{pause,coredns,busybox}: the local test nodes' own images
#     (tests/support/images), from binaries scripts/setup.sh builds or installs.
#
# Output: one OCI archive per image and tag in $NATS_CDR_IMAGES (default target/images), and
# images.txt listing "<reference> <archive>"; the test harness imports them into its nodes
# (`ctr images import`), `kind load image-archive` takes them too. An image whose binary and
# Dockerfile did not change is not rebuilt.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/versions.env

cache=${NATS_CDR_CACHE:-$HOME/.cache/nats-cdr}
out=${NATS_CDR_IMAGES:-$PWD/target/images}
registry=${IMAGE_REGISTRY:-ghcr.io/nats-cdr}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
tag=${IMAGE_TAG:-$version}
revision=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
target=x86_64-unknown-linux-gnu
mkdir -p "$out"

log() { printf '[images %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# name  reference  binary  dockerfile-dir  version-label
images() {
  local rust=target/$target/release
  echo "nats-cdr-operator $registry/nats-cdr-operator:$tag $rust/nats-cdr-operator images/nats-cdr-operator $tag"
  echo "kam-cdr-bridge $registry/kam-cdr-bridge:$tag $rust/kam-cdr-bridge images/kam-cdr-bridge $tag"
  echo "cdr-worker $registry/cdr-worker:$tag $rust/cdr-worker images/cdr-worker $tag"
  echo "nats-server $registry/nats-server:${NATS_SERVER_VERSION#v} $cache/bin/nats-server images/nats-server ${NATS_SERVER_VERSION#v}"
  echo "pause localhost/nats-cdr/pause:$KUBERNETES_VERSION $cache/bin/pause tests/support/images/pause $KUBERNETES_VERSION"
  echo "coredns localhost/nats-cdr/coredns:$COREDNS_VERSION $cache/bin/coredns tests/support/images/coredns $COREDNS_VERSION"
  echo "busybox localhost/nats-cdr/busybox:1.35 /bin/busybox tests/support/images/busybox 1.35"
}

wanted() {
  [ $# -le 1 ] && return 0
  local n
  for n in "${@:2}"; do [ "$n" = "$1" ] && return 0; done
  return 1
}

# Static Rust binaries: glibc linked in (crt-static), so they run on an empty base image.
build_rust() {
  local packages=()
  wanted nats-cdr-operator "$@" && packages+=(-p nats-cdr-operator)
  { wanted kam-cdr-bridge "$@" || wanted cdr-worker "$@"; } && packages+=(-p nats-cdr-workloads)
  [ ${#packages[@]} -eq 0 ] && return
  log "cargo build --release (static) ${packages[*]}"
  RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --quiet \
    --target "$target" "${packages[@]}" --bins
}

builder() {
  if command -v buildah >/dev/null; then echo buildah
  elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then echo docker
  else
    log "neither buildah nor a working docker: run bash scripts/setup.sh (installs buildah)"
    exit 1
  fi
}

buildah_() {
  buildah --root "$cache/buildah/root" --runroot "$cache/buildah/runroot" \
    --storage-driver vfs "$@"
}

# build_image NAME REFERENCE BINARY DOCKERFILE_DIR VERSION
build_image() {
  local name=$1 ref=$2 binary=$3 dir=$4 label_version=$5
  [ -x "$binary" ] || { log "missing $binary (run bash scripts/setup.sh)"; exit 1; }
  local file=${ref//[\/:]/_}
  local archive=$out/$file.oci.tar
  local digest
  digest=$( { sha256sum "$binary" "$dir/Dockerfile"; echo "$ref"; } | sha256sum | cut -d' ' -f1)
  if [ -f "$archive" ] && [ "$(cat "$out/$file.stamp" 2>/dev/null)" = "$digest" ]; then
    return
  fi
  local context
  context=$(mktemp -d)
  cp "$dir/Dockerfile" "$context/"
  cp "$binary" "$context/$(basename "$binary")"
  strip "$context/$(basename "$binary")" 2>/dev/null || true
  log "building $ref"
  case $(builder) in
    buildah)
      buildah_ bud --quiet --layers=false --build-arg "VERSION=$label_version" \
        --build-arg "REVISION=$revision" -f "$context/Dockerfile" -t "$ref" "$context" >/dev/null
      rm -f "$archive.tmp"
      buildah_ push --quiet "$ref" "oci-archive:$archive.tmp:$ref"
      buildah_ rmi -f "$ref" >/dev/null
      ;;
    docker)
      docker build --quiet --build-arg "VERSION=$label_version" --build-arg "REVISION=$revision" \
        -f "$context/Dockerfile" -t "$ref" "$context" >/dev/null
      docker save "$ref" -o "$archive.tmp"
      ;;
  esac
  rm -rf "$context"
  mv "$archive.tmp" "$archive"
  echo "$digest" > "$out/$file.stamp"
  echo "$ref" > "$out/$file.ref"
}

main() {
  local t0=$SECONDS
  build_rust "$@"
  local name ref binary dir label_version
  while read -r name ref binary dir label_version; do
    wanted "$name" "$@" || continue
    build_image "$name" "$ref" "$binary" "$dir" "$label_version"
  done < <(images)
  # The index lists every archive there (other tags built by earlier runs too).
  : > "$out/images.txt.tmp"
  local f
  for f in "$out"/*.ref; do
    [ -f "$f" ] && [ -f "${f%.ref}.oci.tar" ] &&
      echo "$(cat "$f") $(basename "${f%.ref}").oci.tar" >> "$out/images.txt.tmp"
  done
  mv "$out/images.txt.tmp" "$out/images.txt"
  log "ready in $((SECONDS - t0))s: $out"
}
main "$@"
