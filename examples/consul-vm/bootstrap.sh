#!/usr/bin/env bash
# Generates each VM's Envoy bootstrap with meshctl, on the meshd VM (where
# meshd's state is: the root CA in /var/lib/meshd/ca, the token key in
# /var/lib/meshd/tokens), and copies it over.
#
# --node-id must equal the sidecar's meshd-proxy-id in its Consul
# registration (or "<consul node>/<sidecar service id>" without one).
# The bootstrap token authenticates the sidecar to meshd: meshd serves it
# only its own service's configuration and certificate. The bootstrap then
# holds a credential: meshctl writes it with mode 0600; keep it that way.
set -euo pipefail

XDS=meshd.internal:15012
DATA=/var/lib/meshd
umask 077

for s in web:vm1:web-vm1 api:vm2:api-vm2; do
  IFS=: read -r service vm node_id <<<"$s"
  meshctl token create --data-dir "$DATA" --service "$service" --ttl 720h -o "$service.token"
  meshctl bootstrap --data-dir "$DATA" --inline-ca --token-file "$service.token" \
    --service "$service" --node-id "$node_id" --xds-address "$XDS" --admin-port 19000 \
    -o "$service.yaml"
  envoy --mode validate -c "$service.yaml" # needs an envoy binary here
  scp "$service.yaml" "$vm:/etc/envoy/$service.yaml"
  rm -f "$service.token"
done
