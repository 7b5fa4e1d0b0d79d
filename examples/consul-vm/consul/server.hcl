# The Consul server (10.0.0.4), in /etc/consul.d/ next to agent.hcl. One
# server is enough for the example; production wants three or five
# (bootstrap_expect = 3) on their own VMs.
server           = true
bootstrap_expect = 1
