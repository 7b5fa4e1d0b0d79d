package consul

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/meshd/meshd/mesh"
)

// Builders for health entries as /v1/health/service returns them. An
// in-memory catalog is fine here: Map is pure; the watcher's tests use a
// real Consul.

func node(name string, meta map[string]string) *api.Node {
	return &api.Node{Node: name, Address: "10.0.0." + name[len(name)-1:], Datacenter: "dc1", Meta: meta}
}

func check(status string) *api.HealthCheck { return &api.HealthCheck{CheckID: "c", Status: status} }

func app(n *api.Node, id, name string, port int, meta map[string]string, checks ...*api.HealthCheck) *api.ServiceEntry {
	return &api.ServiceEntry{Node: n, Service: &api.AgentService{ID: id, Service: name, Port: port, Meta: meta,
		Weights: api.AgentWeights{Passing: 1, Warning: 1}}, Checks: checks}
}

func sidecar(n *api.Node, dest string, port int, checks []*api.HealthCheck, ups ...api.Upstream) *api.ServiceEntry {
	return &api.ServiceEntry{Node: n, Service: &api.AgentService{
		Kind: api.ServiceKindConnectProxy, ID: dest + "-sidecar-proxy", Service: dest + "-sidecar-proxy", Port: port,
		Proxy: &api.AgentServiceConnectProxyConfig{DestinationServiceName: dest, DestinationServiceID: dest, Upstreams: ups},
	}, Checks: checks}
}

func entries(es ...*api.ServiceEntry) map[string][]*api.ServiceEntry {
	m := map[string][]*api.ServiceEntry{}
	for _, e := range es {
		m[e.Service.Service] = append(m[e.Service.Service], e)
	}
	return m
}

func with(e *api.ServiceEntry, f func(*api.AgentService)) *api.ServiceEntry {
	f(e.Service)
	return e
}

func pass() []*api.HealthCheck { return []*api.HealthCheck{check(api.HealthPassing)} }

func TestMap(t *testing.T) {
	n1 := node("vm1", map[string]string{NodeMetaZone: "a", NodeMetaSubZone: "rack1"})
	n2 := node("vm2", map[string]string{NodeMetaRegion: "eu-west"})
	type want struct {
		services map[string]string // "name.ns" -> "protocol sa endpoints..."
		proxies  []string          // ids
		errs     []string          // substrings of the error; all must appear
	}
	summary := func(c *mesh.Catalog) map[string]string {
		out := map[string]string{}
		for _, s := range c.Services() {
			parts := []string{string(s.Protocol), s.ServiceAccount}
			for _, e := range s.Endpoints {
				parts = append(parts, e.HostPort())
			}
			out[s.Key().String()] = strings.Join(parts, " ")
		}
		return out
	}
	cases := []struct {
		name string
		in   map[string][]*api.ServiceEntry
		opts MapOptions
		want want
	}{
		{
			name: "meta sets namespace, service account and protocol",
			in: entries(
				app(n1, "web", "web", 8080, map[string]string{MetaNamespace: "shop", MetaServiceAccount: "web-sa", MetaProtocol: "HTTP"}, check(api.HealthPassing)),
				sidecar(n1, "web", 21000, pass()),
			),
			want: want{services: map[string]string{"web.shop": "http web-sa 10.0.0.1:21000"}, proxies: []string{"vm1/web-sidecar-proxy"}},
		},
		{
			name: "proxy config protocol when meta has none; services without sidecars ignored",
			in: entries(
				app(n1, "web", "web", 8080, nil),
				with(sidecar(n1, "web", 21000, nil), func(s *api.AgentService) { s.Proxy.Config = map[string]any{"protocol": "grpc"} }),
				app(n1, "consul", "consul", 8300, nil),
				app(n1, "Legacy_DB", "Legacy_DB", 5432, nil),
			),
			want: want{services: map[string]string{"web.default": "grpc web 10.0.0.1:21000"}, proxies: []string{"vm1/web-sidecar-proxy"}},
		},
		{
			name: "bad protocol meta names the service, instance, key and accepted values",
			in: entries(
				app(n1, "web", "web", 8080, map[string]string{MetaProtocol: "htpp"}),
				sidecar(n1, "web", 21000, nil),
			),
			want: want{errs: []string{`consul service "web"`, "web on node vm1", `meta "meshd-protocol"`, `"htpp"`, "use http, http2, grpc or tcp"}},
		},
		{
			name: "protocol meta contradicting proxy config",
			in: entries(
				app(n1, "web", "web", 8080, map[string]string{MetaProtocol: "http"}),
				with(sidecar(n1, "web", 21000, nil), func(s *api.AgentService) { s.Proxy.Config = map[string]any{"protocol": "tcp"} }),
			),
			want: want{errs: []string{`consul service "web"`, `"http"`, `proxy.config "protocol" "tcp"`}},
		},
		{
			name: "non-string proxy config protocol",
			in: entries(
				app(n1, "web", "web", 8080, nil),
				with(sidecar(n1, "web", 21000, nil), func(s *api.AgentService) { s.Proxy.Config = map[string]any{"protocol": 7} }),
			),
			want: want{errs: []string{`consul service "web-sidecar-proxy"`, `proxy.config "protocol"`, "not a string"}},
		},
		{
			name: "bad namespace and a mesh service with a non-DNS name",
			in: entries(
				app(n1, "web", "web", 8080, map[string]string{MetaNamespace: "Shop"}),
				sidecar(n1, "web", 21000, nil),
				app(n1, "My_DB", "My_DB", 5432, nil),
				sidecar(n1, "My_DB", 21001, nil),
			),
			want: want{errs: []string{`consul service "web" (instance web on node vm1): meta "meshd-namespace": "Shop" is not a valid name`, `consul service "My_DB": service name`}},
		},
		{
			name: "instances that disagree",
			in: entries(
				app(n1, "web", "web", 8080, map[string]string{MetaServiceAccount: "a"}),
				app(n2, "web", "web", 8080, map[string]string{MetaServiceAccount: "b"}),
				sidecar(n1, "web", 21000, nil),
			),
			want: want{errs: []string{`meta "meshd-service-account": instances disagree: "a" on web on node vm1 but "b" on web on node vm2`}},
		},
		{
			name: "health: critical app or sidecar, maintenance and warning removed; proxies stay",
			in: entries(
				app(n1, "web", "web", 8080, nil, check(api.HealthCritical)),
				sidecar(n1, "web", 21000, pass()),
				app(n2, "web", "web", 8080, nil, check(api.HealthPassing)),
				sidecar(n2, "web", 21000, []*api.HealthCheck{check(api.HealthPassing), {CheckID: "_node_maintenance", Status: api.HealthCritical}}),
				app(node("vm3", nil), "web", "web", 8080, nil, check(api.HealthWarning)),
				sidecar(node("vm3", nil), "web", 21000, pass()),
				app(node("vm4", nil), "web", "web", 8080, nil, check(api.HealthPassing)),
				sidecar(node("vm4", nil), "web", 21000, []*api.HealthCheck{check(api.HealthCritical)}),
			),
			want: want{services: map[string]string{"web.default": "tcp web"},
				proxies: []string{"vm1/web-sidecar-proxy", "vm2/web-sidecar-proxy", "vm3/web-sidecar-proxy", "vm4/web-sidecar-proxy"}},
		},
		{
			name: "IncludeWarning keeps warning instances unless their warning weight is 0",
			opts: MapOptions{IncludeWarning: true},
			in: entries(
				app(n1, "web", "web", 8080, nil, check(api.HealthWarning)),
				sidecar(n1, "web", 21000, pass()),
				with(app(n2, "web", "web", 8080, nil, check(api.HealthWarning)), func(s *api.AgentService) { s.Weights.Warning = 0 }),
				sidecar(n2, "web", 21000, pass()),
			),
			want: want{services: map[string]string{"web.default": "tcp web 10.0.0.1:21000"}, proxies: []string{"vm1/web-sidecar-proxy", "vm2/web-sidecar-proxy"}},
		},
		{
			name: "upstream to a service with no sidecar yet becomes an empty service with the upstream's protocol",
			in: entries(
				app(n1, "web", "web", 8080, nil),
				sidecar(n1, "web", 21000, nil, api.Upstream{DestinationName: "billing", LocalBindPort: 9000, Config: map[string]any{"protocol": "http2"}}),
				app(n2, "billing", "billing", 9090, map[string]string{MetaNamespace: "pay"}),
			),
			want: want{services: map[string]string{"web.default": "tcp web 10.0.0.1:21000", "billing.pay": "http2 billing"}, proxies: []string{"vm1/web-sidecar-proxy"}},
		},
		{
			name: "unsupported upstreams and app address",
			in: entries(
				app(n1, "web", "web", 8080, nil),
				with(sidecar(n1, "web", 21000, nil,
					api.Upstream{DestinationType: api.UpstreamDestTypePreparedQuery, DestinationName: "q", LocalBindPort: 9000},
					api.Upstream{DestinationName: "db", LocalBindPort: 0},
					api.Upstream{DestinationName: "db", Datacenter: "dc2", LocalBindPort: 9001},
					api.Upstream{DestinationName: "db", LocalBindAddress: "0.0.0.0", LocalBindPort: 9002},
				), func(s *api.AgentService) { s.Proxy.LocalServiceAddress = "10.0.0.1" }),
			),
			want: want{errs: []string{
				`proxy.upstreams[0].destination_type: "prepared_query" is not supported`,
				`proxy.upstreams[1].local_bind_port`,
				`proxy.upstreams[2]: upstreams in another datacenter`,
				`proxy.upstreams[3].local_bind_address: "0.0.0.0" is not supported`,
				`proxy.local_service_address: "10.0.0.1" is not supported`,
			}},
		},
		{
			name: "proxy id override, app port from local_service_port, sidecar without app has no endpoint",
			in: entries(
				with(sidecar(n1, "web", 21000, nil), func(s *api.AgentService) {
					s.Meta = map[string]string{MetaProxyID: "web-vm1"}
					s.Proxy.LocalServicePort = 8081
				}),
			),
			want: want{services: map[string]string{"web.default": "tcp web"}, proxies: []string{"web-vm1"}},
		},
		{
			name: "mesh validation errors come through",
			in: entries(
				app(n1, "web", "web", 21000, nil),
				sidecar(n1, "web", 21000, nil),
			),
			want: want{errs: []string{"catalog built from Consul is invalid", "appPort", "equals publicPort 21000"}},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Map(tc.in, tc.opts)
			if len(tc.want.errs) > 0 {
				if err == nil {
					t.Fatalf("Map succeeded with %v, want an error containing %q", summary(c), tc.want.errs)
				}
				for _, w := range tc.want.errs {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error\n%s\ndoes not contain %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("Map: %v", err)
			}
			if got := summary(c); !mapsEqual(got, tc.want.services) {
				t.Errorf("services = %v, want %v", got, tc.want.services)
			}
			if got := proxyIDs(c); !slices.Equal(got, tc.want.proxies) {
				t.Errorf("proxies = %v, want %v", got, tc.want.proxies)
			}
		})
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func TestMapDetails(t *testing.T) {
	n1 := node("vm1", map[string]string{NodeMetaZone: "a", NodeMetaSubZone: "rack1"})
	in := entries(
		with(app(n1, "web-1", "web", 8080, map[string]string{"version": "v2", MetaProtocol: "http"}), func(s *api.AgentService) { s.Weights.Passing = 3 }),
		with(sidecar(n1, "web", 21000, nil, api.Upstream{DestinationName: "db", LocalBindPort: 9000}), func(s *api.AgentService) {
			s.Proxy.DestinationServiceID = "web-1"
			s.Address = "192.0.2.10"
		}),
		app(n1, "db", "db", 5432, map[string]string{MetaNamespace: "data"}),
		sidecar(n1, "db", 21001, nil),
	)
	c, err := Map(in, MapOptions{})
	if err != nil {
		t.Fatal(err)
	}
	web := c.Service(mesh.ServiceKey{Namespace: "default", Name: "web"})
	want := mesh.Endpoint{Address: "192.0.2.10", Port: 21000, Labels: map[string]string{"version": "v2"}, Health: mesh.HealthHealthy,
		Locality: mesh.Locality{Region: "dc1", Zone: "a", SubZone: "rack1"}, Weight: 3}
	if len(web.Endpoints) != 1 || !endpointEqual(web.Endpoints[0], want) {
		t.Errorf("web endpoints = %+v, want [%+v]", web.Endpoints, want)
	}
	p := c.Proxy("vm1/web-sidecar-proxy")
	wantP := mesh.Proxy{ID: "vm1/web-sidecar-proxy", Flavor: mesh.FlavorEnvoy, Service: "web", Namespace: "default", Address: "192.0.2.10",
		PublicPort: 21000, AppPort: 8080, Upstreams: []mesh.Upstream{{Service: "db", Namespace: "data", LocalPort: 9000}}}
	if p == nil || p.ID != wantP.ID || p.Address != wantP.Address || p.PublicPort != wantP.PublicPort || p.AppPort != wantP.AppPort ||
		!slices.Equal(p.Upstreams, wantP.Upstreams) || p.Namespace != wantP.Namespace {
		t.Errorf("proxy = %+v, want %+v", p, wantP)
	}
	if p.SDS != "" || !p.SecretsFromMeshd() {
		t.Errorf("proxy without meta %s: SDS %q, want secrets from meshd", MetaSDS, p.SDS)
	}
	agentFed := func(v string) *api.ServiceEntry {
		return with(sidecar(n1, "web", 21000, nil), func(s *api.AgentService) { s.Meta = map[string]string{MetaSDS: v} })
	}
	c, err = Map(entries(app(n1, "web", "web", 8080, nil), agentFed("agent")), MapOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if p := c.Proxy("vm1/web-sidecar-proxy"); p == nil || p.SDS != mesh.SDSAgent || p.SecretsFromMeshd() {
		t.Errorf("proxy with meta %s=agent: %+v, want SDS from the agent", MetaSDS, p)
	}
	_, err = Map(entries(app(n1, "web", "web", 8080, nil), agentFed("spire")), MapOptions{})
	var me MappingErrors
	if !errors.As(err, &me) || len(me) != 1 || me[0].Key != `meta "meshd-sds"` || !strings.Contains(me[0].Message, `"spire" is not an SDS source`) {
		t.Errorf("meta %s=spire: error %v, want one MappingError naming the key", MetaSDS, err)
	}
	_, err = Map(entries(app(n1, "web", "web", 1, map[string]string{MetaProtocol: "x"}), sidecar(n1, "web", 2, nil)), MapOptions{})
	if !errors.As(err, &me) || len(me) != 1 || me[0].Service != "web" || me[0].Key != `meta "meshd-protocol"` {
		t.Errorf("error = %#v, want one MappingError for web's meta key", err)
	}
}

func endpointEqual(a, b mesh.Endpoint) bool {
	return a.Address == b.Address && a.Port == b.Port && a.Health == b.Health && a.Locality == b.Locality &&
		a.Weight == b.Weight && mapsEqual(a.Labels, b.Labels)
}
