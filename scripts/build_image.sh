#!/usr/bin/env bash
# Build the platform's container image from the Dockerfile, with podman (or docker where that is
# what runs here), then print its tag and size.
#   scripts/build_image.sh [cpu|gpu] [--base IMAGE|local] [--tag TAG] [extra build options...]
# cpu (default): Debian bookworm's Python 3.11 with the CPU build of vLLM, the offline models baked
# in. gpu: Ray's GPU image with the CUDA build. --base local makes the bookworm base with debootstrap
# from the Debian mirror apt already uses (for machines that reach no image registry) and imports it
# as localhost/debian-base:bookworm; --base IMAGE is any bookworm image with or without Python.
# Wheels that the local pip configuration finds on disk (its find-links, e.g. torch's CPU wheel)
# reach the build as the `wheels` context, so pip needs no index that has them.
set -euo pipefail
cd "$(dirname "$0")/.."

FLAVOUR=cpu
BASE=
TAG=
EXTRA=()
while [ $# -gt 0 ]; do
  case $1 in
    cpu | gpu) FLAVOUR=$1 ;;
    --base) BASE=$2; shift ;;
    --tag) TAG=$2; shift ;;
    *) EXTRA+=("$1") ;;
  esac
  shift
done
VERSION=$(git describe --tags --always --dirty 2>/dev/null || echo unknown)
REVISION=${IMAGE_REVISION:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}  # IMAGE_REVISION: a copy without .git
SOURCE=$(git remote get-url origin 2>/dev/null || pwd)  # the repository built: its origin, else its path
TAG=${TAG:-localhost/rayserve-platform:$FLAVOUR}
LOCAL_BASE=localhost/debian-base:bookworm

if command -v podman >/dev/null 2>&1; then
  ENGINE=podman
elif command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  ENGINE=docker
else
  echo "build_image.sh: neither podman nor a running docker found" >&2
  exit 1
fi

make_local_base() {
  # A minimal bookworm root file system from Debian's packages, as an image: no registry needed.
  "$ENGINE" image exists "$LOCAL_BASE" 2>/dev/null && return
  local mirror root
  mirror=$(grep -rhoE 'https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
    | head -1 | tr -d ' ' || true)
  root=$(mktemp -d /var/tmp/debian-base.XXXXXX)
  trap 'rm -rf "$root"' RETURN
  echo "making $LOCAL_BASE with debootstrap from ${mirror:=http://deb.debian.org/debian} ..."
  debootstrap --variant=minbase bookworm "$root" "$mirror" >/dev/null
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | "$ENGINE" import - "$LOCAL_BASE" >/dev/null
}

ARGS=(--build-arg "FLAVOUR=$FLAVOUR" --build-arg "VERSION=$VERSION" --build-arg "REVISION=$REVISION"
  --build-arg "SOURCE=$SOURCE")
if [ "$BASE" = local ]; then
  make_local_base
  BASE=$LOCAL_BASE
fi
[ -z "$BASE" ] || ARGS+=(--build-arg "$([ "$FLAVOUR" = gpu ] && echo GPU_BASE || echo BASE)=$BASE")
WHEELS=$(python3 -m pip config get global.find-links 2>/dev/null || true)
if [ -n "$WHEELS" ] && [ -d "$WHEELS" ]; then
  ARGS+=(--build-context "wheels=$WHEELS")
fi
# The CA bundle pip trusts here (a TLS-inspecting proxy's CA, say) reaches pip in the build as a
# secret: mounted for the steps that download, never written to a layer.
CA=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
[ ! -f "$CA" ] || ARGS+=(--secret "id=pip_ca,src=$CA")
[ "$ENGINE" = docker ] || ARGS+=(--network host --format docker)  # host: PyPI and Debian's mirror; docker format: OCI drops HEALTHCHECK

start=$SECONDS
"$ENGINE" build "${ARGS[@]}" "${EXTRA[@]}" --tag "$TAG" .
size=$("$ENGINE" image inspect --format '{{.Size}}' "$TAG")
echo "built $TAG in $((SECONDS - start)) s: $((size / 1000000)) MB"
