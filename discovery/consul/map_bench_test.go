package consul

import (
	"fmt"
	"testing"

	"github.com/hashicorp/consul/api"
)

// scaleEntries builds the same shape as TestScaleHealthFlip's catalog in
// memory: services × instances, each with a passing sidecar and one upstream.
func scaleEntries(services, instances int) map[string][]*api.ServiceEntry {
	m := map[string][]*api.ServiceEntry{}
	for i := range instances {
		n := &api.Node{Node: fmt.Sprintf("bench-%d", i), Address: fmt.Sprintf("10.1.%d.%d", i/250, i%250+1), Datacenter: "dc1"}
		for s := range services {
			name := fmt.Sprintf("svc-%d", s)
			m[name] = append(m[name], &api.ServiceEntry{Node: n, Service: &api.AgentService{ID: name, Service: name, Port: 30000 + s,
				Meta: map[string]string{MetaProtocol: "http"}, Weights: api.AgentWeights{Passing: 1, Warning: 1}},
				Checks: api.HealthChecks{{Status: api.HealthPassing}}})
			sc := name + "-sidecar-proxy"
			m[sc] = append(m[sc], &api.ServiceEntry{Node: n, Service: &api.AgentService{Kind: api.ServiceKindConnectProxy, ID: sc, Service: sc, Port: 10000 + s,
				Proxy: &api.AgentServiceConnectProxyConfig{DestinationServiceName: name, DestinationServiceID: name, LocalServicePort: 30000 + s,
					Upstreams: []api.Upstream{{DestinationName: fmt.Sprintf("svc-%d", (s+1)%services), LocalBindPort: 40000 + s}}}},
				Checks: api.HealthChecks{{Status: api.HealthPassing}}})
		}
	}
	return m
}

// BenchmarkMap is the CPU cost of one rebuild of a 1,000 × 10 catalog:
//
//	go test -run '^$' -bench 'BenchmarkMap|BenchmarkHash' -benchmem ./discovery/consul/
func BenchmarkMap(b *testing.B) {
	in := scaleEntries(1000, 10)
	b.ResetTimer()
	for b.Loop() {
		if _, err := Map(in, MapOptions{}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkHashCatalog(b *testing.B) {
	c, err := Map(scaleEntries(1000, 10), MapOptions{})
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		if _, err := hashCatalog(c); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkIncrementalFlip is the CPU cost of one health flip in a
// 1,000 × 10 catalog as the watcher pays it: one service's entries change,
// everything else is reused.
func BenchmarkIncrementalFlip(b *testing.B) {
	in := scaleEntries(1000, 10)
	im := newIncrementalMapper(MapOptions{})
	if _, err := im.Map(in); err != nil {
		b.Fatal(err)
	}
	i := 0
	for b.Loop() {
		name := fmt.Sprintf("svc-%d", i%1000)
		in[name] = flipFirst(in[name])
		if _, err := im.Map(in); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// flipFirst returns a new answer for a service (new entries, as a decoded
// Consul answer is) with its first instance's check toggled.
func flipFirst(es []*api.ServiceEntry) []*api.ServiceEntry {
	out := make([]*api.ServiceEntry, len(es))
	for j, e := range es {
		c := *e
		c.Checks = api.HealthChecks{{Status: e.Checks[0].Status}}
		if j == 0 {
			if c.Checks[0].Status == api.HealthPassing {
				c.Checks[0].Status = api.HealthCritical
			} else {
				c.Checks[0].Status = api.HealthPassing
			}
		}
		out[j] = &c
	}
	return out
}
