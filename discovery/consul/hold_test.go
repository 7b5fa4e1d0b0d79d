package consul

import (
	"testing"

	"github.com/hashicorp/consul/api"
)

// TestWaitsForDestination: a sidecar service is held back while Consul has
// listed its application but not answered for it, and only then.
func TestWaitsForDestination(t *testing.T) {
	sidecar := []*api.ServiceEntry{{Service: &api.AgentService{Kind: api.ServiceKindConnectProxy, Service: "db-sidecar-proxy",
		Proxy: &api.AgentServiceConnectProxyConfig{DestinationServiceName: "db"}}}}
	app := []*api.ServiceEntry{{Service: &api.AgentService{Kind: api.ServiceKindTypical, Service: "db"}}}
	cases := []struct {
		name    string
		entries []*api.ServiceEntry
		watches map[string]*serviceWatch
		want    bool
	}{
		{"application listed, not answered", sidecar, map[string]*serviceWatch{"db": {}}, true},
		{"application answered", sidecar, map[string]*serviceWatch{"db": {have: true}}, false},
		{"application not registered", sidecar, map[string]*serviceWatch{}, false},
		{"not a sidecar", app, map[string]*serviceWatch{"db": {}}, false},
	}
	for _, c := range cases {
		if got := waitsForDestination(c.entries, c.watches); got != c.want {
			t.Errorf("%s: got %v, want %v", c.name, got, c.want)
		}
	}
}
