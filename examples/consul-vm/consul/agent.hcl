# Settings meshd needs on the Consul agent it talks to (merge into your
# agent configuration; everything else is your usual Consul set-up).
#
# meshd keeps one blocking query open per Consul service (two per service
# with a sidecar: the service and its sidecar). Consul's default of 200
# concurrent HTTP connections per client address is too low beyond ~90
# meshed services; allow 2 × services + 50.
limits {
  http_max_conns_per_client = 4096
}

# Node locality for meshd's locality-aware load balancing (optional; the
# region defaults to the datacenter).
node_meta {
  meshd-zone = "eu-west-1a"
}
