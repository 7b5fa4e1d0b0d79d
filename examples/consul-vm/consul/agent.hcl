# Every Consul agent of the example: the Consul server (10.0.0.4), the meshd
# VM (10.0.0.5), vm1 (10.0.0.10) and vm2 (10.0.0.11). Install it as
# /etc/consul.d/agent.hcl; the Consul server also gets server.hcl.
#
# The node name is the VM's hostname (Consul's default); the sidecars' xDS
# node ids are derived from it ("<hostname>/<service>-sidecar-proxy").
datacenter = "dc1"
data_dir   = "/var/lib/consul" # systemd/consul.service creates it (StateDirectory)

# Join the Consul server. The agent binds the VM's private address; a VM
# with several private addresses needs bind_addr = "<its address>".
retry_join = ["10.0.0.4"]

# The HTTP API (meshd, `consul` commands) on this VM only.
client_addr = "127.0.0.1"

# meshd keeps one blocking query open per Consul service (two per service
# with a sidecar: the service and its sidecar). Consul's default of 200
# concurrent HTTP connections per client address is too low beyond ~90
# meshed services; allow 2 × services + 50 on the agent meshd talks to.
limits {
  http_max_conns_per_client = 4096
}

# Optional node locality for meshd's locality-aware load balancing (the
# region defaults to the datacenter), for example:
# node_meta {
#   meshd-zone = "eu-west-1a"
# }
