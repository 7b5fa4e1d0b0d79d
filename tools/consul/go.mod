// Tool module that builds the Consul agent used by meshd's integration tests
// and benchmarks. It is a separate module on purpose: Consul v1.16.3 pins old
// go-control-plane and grpc versions that must never leak into meshd's go.mod.
//
// v1.16.3 is the newest MPL-2.0 Consul on the module proxy (1.16.6 and ≥ 1.17
// are BSL). scripts/install-consul.sh builds it; see docs/consul.md.
module github.com/meshd/meshd/tools/consul

go 1.26

require (
	github.com/hashicorp/consul v1.16.3
	github.com/hashicorp/consul/api v1.25.1
	github.com/hashicorp/consul/envoyextensions v0.4.1
	github.com/hashicorp/consul/proto-public v0.4.1
	github.com/hashicorp/consul/sdk v0.14.1
	github.com/hashicorp/consul/troubleshoot v0.3.1
)

// Copied from Consul v1.16.3's own go.mod: these go-msgpack versions broke
// Consul's wire format.
exclude (
	github.com/hashicorp/go-msgpack v1.1.5
	github.com/hashicorp/go-msgpack v1.1.6
)
