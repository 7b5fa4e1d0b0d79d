#!/usr/bin/env bash
# Prepares one VM's sidecars, on the meshd VM (where meshctl can read meshd's
# token key and root CA in /var/lib/meshd; run it as root or as meshd):
#
#   ./provision.sh vm1 web api     # vm1 runs web and api
#   ./provision.sh vm2 api         # vm2 runs api
#
# For each service it signs a bootstrap token (for that service only),
# writes Envoy's bootstrap (meshctl bootstrap: xDS from meshd with that
# token, certificates over SDS from the VM's mesh-agent) and checks it with
# `envoy --mode validate` when an envoy binary is on PATH. Everything goes
# into stage/VM/, laid out like the VM's /etc:
#
#   stage/VM/envoy/SERVICE.yaml           -> /etc/envoy/       (Envoy's bootstrap; holds the token)
#   stage/VM/mesh-agent/SERVICE.token     -> /etc/mesh-agent/  (mesh-agent's first credential)
#   stage/VM/mesh-agent/root-cert.pem     -> /etc/mesh-agent/  (verifies meshd)
#
# Copy them to the VM, owned by envoy (the README shows how), then delete
# stage/: the tokens are credentials.
#
# The VM name must be its Consul node name (its hostname): meshd names each
# sidecar "<node>/<service>-sidecar-proxy".
#
# Environment: MESHD_DATA_DIR (default /var/lib/meshd), MESHD_XDS (default
# 10.0.0.5:15012, an address in meshd's --server-hosts), TOKEN_TTL (720h).
set -euo pipefail

if [[ $# -lt 2 ]]; then
  echo "usage: $0 VM SERVICE..." >&2
  exit 2
fi
vm=$1
shift

data=${MESHD_DATA_DIR:-/var/lib/meshd}
xds=${MESHD_XDS:-10.0.0.5:15012}
ttl=${TOKEN_TTL:-720h}

# Envoy's admin port per service, on the VM's 127.0.0.1: the Consul
# registrations check http://127.0.0.1:PORT/ready, so keep them in step.
admin_port() {
  case $1 in
    web) echo 19001 ;;
    api) echo 19002 ;;
    *) echo "provision.sh: no admin port for service $1: add it to admin_port (and to its Consul registration's check)" >&2; exit 2 ;;
  esac
}

umask 077
out=stage/$vm
mkdir -p "$out/envoy" "$out/mesh-agent"
cp "$data/ca/root-cert.pem" "$out/mesh-agent/root-cert.pem"
chmod 0644 "$out/mesh-agent/root-cert.pem"

for svc in "$@"; do
  port=$(admin_port "$svc")
  token=$out/mesh-agent/$svc.token
  meshctl token create --data-dir "$data" --service "$svc" --ttl "$ttl" -o "$token"
  meshctl bootstrap --data-dir "$data" --service "$svc" --node-id "$vm/$svc-sidecar-proxy" \
    --token-file "$token" --agent-socket "/run/mesh-agent/$svc/sds.sock" --inline-ca \
    --xds-address "$xds" --admin-port "$port" -o "$out/envoy/$svc.yaml"
  if command -v envoy >/dev/null 2>&1; then
    envoy --mode validate -c "$out/envoy/$svc.yaml" --log-level warn
  else
    echo "provision.sh: no envoy on PATH here: $out/envoy/$svc.yaml not validated" >&2
  fi
done
echo "provision.sh: $out/ is ready for $vm"
