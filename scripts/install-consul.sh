#!/usr/bin/env bash
# Builds the Consul agent that meshd's Consul tests and benchmarks run against
# into a cache outside the checkout (so fresh clones, CI included, reuse it)
# and links it as .tools/bin/consul (git-ignored). Works from any directory.
#
# Why build from source: Consul >= 1.17 (and 1.16.6) is under the BSL and
# Debian ships no consul package. v1.16.3 is the newest MPL-2.0 release on the
# Go module proxy. It is built in its own tool module (tools/consul) because it
# pins old go-control-plane/grpc versions that must stay out of meshd's go.mod,
# and `go install ...@v1.16.3` is refused because of Consul's replace
# directives. tools/consul/go.sum is seeded from Consul's own go.sum (the
# checksum database lacks hcp-sdk-go v0.55.0 and envoyextensions v0.4.1), so
# every download is still hash-checked.
#
# Idempotent: exits at once when the cached binary already reports the
# wanted version. A cold build takes about 4 minutes on 2 cores.
#
# Environment:
#   CONSUL_INSTALL_DIR  where to build the binary (default
#                       ${XDG_CACHE_HOME:-~/.cache}/meshd/consul-v<version>)
#   CONSUL_FORCE=1      rebuild even if the cached binary is current
set -euo pipefail

CONSUL_VERSION=1.16.3

cd "$(dirname "$0")/.."
repo="$PWD"
dest_dir="${CONSUL_INSTALL_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/meshd/consul-v$CONSUL_VERSION}"
dest="$dest_dir/consul"
link="$repo/.tools/bin/consul"

# link points .tools/bin/consul (what the tests and test.sh look for) at the
# cached binary.
link_into_checkout() {
  if [[ "$dest" != "$link" ]]; then
    mkdir -p "$(dirname "$link")"
    ln -sfn "$dest" "$link"
  fi
}

log() { echo "install-consul.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

installed_version() {
  # `consul version` prints "Consul v1.16.3" on its first line.
  "$1" version 2>/dev/null | sed -n '1s/^Consul v//p'
}

if [[ -x "$dest" && "${CONSUL_FORCE:-0}" != 1 ]]; then
  have="$(installed_version "$dest" || true)"
  if [[ "$have" == "$CONSUL_VERSION" ]]; then
    link_into_checkout
    log "Consul v$CONSUL_VERSION already installed at $dest (set CONSUL_FORCE=1 to rebuild)"
    exit 0
  fi
  log "found $dest reporting '${have:-no version}', want v$CONSUL_VERSION: rebuilding"
fi

command -v go >/dev/null 2>&1 || die "go is not on PATH; install Go 1.26 first"
[[ -f tools/consul/go.mod && -f tools/consul/go.sum ]] \
  || die "tools/consul/go.mod or go.sum is missing; restore them from git"

mkdir -p "$dest_dir" || die "cannot create $dest_dir"
tmp="$(mktemp "$dest_dir/.consul.XXXXXX")"
trap 'rm -f "$tmp"' EXIT

start=$SECONDS
log "downloading Consul v$CONSUL_VERSION and its dependencies (hash-checked against tools/consul/go.sum)"
# GOWORK=off: a go.work above the checkout must not pull the tool module into
# meshd's build graph. GOFLAGS is reset so a user's -mod=vendor cannot apply.
if ! (cd tools/consul && GOWORK=off GOFLAGS=-mod=mod go mod download); then
  die "go mod download failed in tools/consul (network, GOPROXY=$(go env GOPROXY), or a checksum mismatch above)"
fi
log "downloaded in $((SECONDS - start)) s; compiling (about 4 minutes cold on 2 cores)"

# -trimpath and -s -w keep the binary reproducible and ~110 MiB instead of ~160.
# CGO is not needed by the agent; disabling it avoids a C toolchain dependency.
if ! (cd tools/consul && GOWORK=off GOFLAGS=-mod=mod CGO_ENABLED=0 \
      go build -trimpath -ldflags="-s -w" -o "$tmp" github.com/hashicorp/consul); then
  die "go build of github.com/hashicorp/consul v$CONSUL_VERSION failed (see the compiler output above)"
fi

have="$(installed_version "$tmp" || true)"
[[ "$have" == "$CONSUL_VERSION" ]] \
  || die "built binary reports version '${have:-none}', want $CONSUL_VERSION"
chmod 0755 "$tmp"
mv -f "$tmp" "$dest"
trap - EXIT
link_into_checkout
log "installed Consul v$CONSUL_VERSION at $dest in $((SECONDS - start)) s ($(du -h "$dest" | cut -f1))"
