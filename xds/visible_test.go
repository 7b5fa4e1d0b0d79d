package xds

import (
	"fmt"
	"testing"

	"github.com/meshd/meshd/mesh"
)

func caseCatalog(t *testing.T, name string) (*mesh.Catalog, goldenInput) {
	t.Helper()
	in := loadCase(t, "testdata/in/"+name+".yaml")
	cat, err := mesh.NewCatalog(in.Services, in.Proxies)
	if err != nil {
		t.Fatal(err)
	}
	return cat, in
}

func byName(list []*Resource, name string) *Resource {
	for _, r := range list {
		if r.Name == name {
			return r
		}
	}
	return nil
}

// Proxies that see the same services get the same capture listener (one
// resource, not one per proxy), and every Envoy calling a service, sidecar
// or gateway, transparent or explicit, the same cluster, endpoints and
// route; the shared translator gives exactly what the per-proxy function
// gives.
func TestVisibleSetsShareResources(t *testing.T) {
	cat, in := caseCatalog(t, "transparent")
	opts := Options{TrustDomain: "cluster.local"}
	tr := NewTranslator(opts)
	var prevCapture *Resource
	for round := range 2 {
		gen := tr.Generation(cat, in.Policy)
		got := map[string]*ProxyResources{}
		for _, p := range cat.Proxies() {
			r, err := gen.Proxy(p.ID)
			if err != nil {
				t.Fatal(err)
			}
			got[p.ID] = r
			pure, err := NewTranslator(opts).Generation(cat, in.Policy).Proxy(p.ID)
			if err != nil {
				t.Fatal(err)
			}
			a, b := r.ByType(), pure.ByType()
			for typ := range a {
				if len(a[typ]) != len(b[typ]) {
					t.Fatalf("%s %s: %d vs %d resources", p.ID, typ, len(a[typ]), len(b[typ]))
				}
				for i := range a[typ] {
					if a[typ][i].Hash != b[typ][i].Hash {
						t.Errorf("%s: %s %s differs from the per-proxy rendering", p.ID, typ, a[typ][i].Name)
					}
				}
			}
		}
		c1, c2 := byName(got["web-1"].Listeners, CaptureListenerName), byName(got["web-2"].Listeners, CaptureListenerName)
		if c1 == nil || c1 != c2 {
			t.Errorf("round %d: web-1 and web-2 see the same services but have capture listeners %p and %p", round, c1, c2)
		}
		if c1.Wire == nil {
			t.Error("the shared capture listener is not encoded once for all (no Wire)")
		}
		if round == 1 && c1 != prevCapture {
			t.Error("an unchanged capture listener was rebuilt in the next generation")
		}
		prevCapture = c1
		if a := byName(got["api-1"].Listeners, CaptureListenerName); a == nil || a == c1 {
			t.Errorf("api-1 sees other services and blocks: want a capture listener of its own, got %p (web's %p)", a, c1)
		}
		api := OutboundClusterName(mesh.ServiceKey{Namespace: "default", Name: "api"})
		if x, y := byName(got["web-1"].Clusters, api), byName(got["job"].Clusters, api); x == nil || x != y {
			t.Errorf("web-1 (every service) and job (api listed) have clusters %p and %p for api", x, y)
		}
		if x, y := byName(got["web-1"].Routes, api), byName(got["job"].Routes, api); x == nil || x != y {
			t.Errorf("web-1 and job have routes %p and %p for api", x, y)
		}
		// legacy has no virtual address: web-1 reaches it only at its
		// local port, and api-1, which does not list it, not at all.
		legacy := OutboundClusterName(mesh.ServiceKey{Namespace: "default", Name: "legacy"})
		if byName(got["web-1"].Clusters, legacy) == nil || byName(got["api-1"].Clusters, legacy) != nil {
			t.Error("legacy's cluster: want it for web-1 (localPort) only")
		}
		if n := len(gen.vis); n != 4 {
			t.Errorf("%d visible sets computed, want 4 (web-1 and web-2 share one; api-1, job, greeter-client)", n)
		}
		gen.Close()
	}
}

// A proxy's fingerprint follows its visible set: every service of it in
// full, nothing outside it.
func TestVisibleSetFingerprint(t *testing.T) {
	_, in := caseCatalog(t, "transparent")
	fp := func(mutate func(s *[]mesh.Service, p []mesh.Proxy), id string) string {
		s := append([]mesh.Service(nil), in.Services...)
		for i := range s {
			s[i].Endpoints = append([]mesh.Endpoint(nil), s[i].Endpoints...)
		}
		p := append([]mesh.Proxy(nil), in.Proxies...)
		mutate(&s, p)
		cat, err := mesh.NewCatalog(s, p)
		if err != nil {
			t.Fatal(err)
		}
		return NewTranslator(Options{TrustDomain: "cluster.local"}).Generation(cat, in.Policy).Fingerprint(cat.Proxy(id))
	}
	svc := func(s []mesh.Service, name string) *mesh.Service {
		for i := range s {
			if s[i].Name == name {
				return &s[i]
			}
		}
		t.Fatalf("no service %s", name)
		return nil
	}
	none := func(*[]mesh.Service, []mesh.Proxy) {}
	cases := []struct {
		name   string
		f      func(s *[]mesh.Service, p []mesh.Proxy)
		id     string
		change bool
	}{
		{"endpoint of a service in a seen namespace", func(s *[]mesh.Service, _ []mesh.Proxy) {
			svc(*s, "db").Endpoints = append(svc(*s, "db").Endpoints, mesh.Endpoint{Address: "10.0.1.22", Port: 15006})
		}, "api-1", true},
		{"virtual address of a seen service", func(s *[]mesh.Service, _ []mesh.Proxy) { svc(*s, "db").Address = "10.96.1.21" }, "api-1", true},
		{"service added to a seen namespace", func(s *[]mesh.Service, _ []mesh.Proxy) {
			*s = append(*s, mesh.Service{Name: "queue", Namespace: "data"})
		}, "api-1", true},
		{"endpoint of a service in an unseen namespace", func(s *[]mesh.Service, _ []mesh.Proxy) {
			svc(*s, "web").Endpoints = append(svc(*s, "web").Endpoints, mesh.Endpoint{Address: "10.0.0.7", Port: 15006})
		}, "api-1", false},
		{"service added to an unseen namespace", func(s *[]mesh.Service, _ []mesh.Proxy) {
			*s = append(*s, mesh.Service{Name: "queue", Namespace: "other"})
		}, "api-1", false},
		{"any service added, every namespace seen", func(s *[]mesh.Service, _ []mesh.Proxy) {
			*s = append(*s, mesh.Service{Name: "queue", Namespace: "other"})
		}, "web-1", true},
		{"passthrough", func(_ *[]mesh.Service, p []mesh.Proxy) { p[2].Passthrough = mesh.PassthroughAllow }, "api-1", true},
		{"capture port", func(_ *[]mesh.Service, p []mesh.Proxy) { p[2].CapturePort = 15008 }, "api-1", true},
		{"namespaces", func(_ *[]mesh.Service, p []mesh.Proxy) { p[2].UpstreamNamespaces = []string{"*"} }, "api-1", true},
		{"grpc client: a grpc service added", func(s *[]mesh.Service, _ []mesh.Proxy) {
			*s = append(*s, mesh.Service{Name: "hello", Protocol: mesh.ProtocolGRPC})
		}, "greeter-client", true},
		{"grpc client: an http service added (not visible to gRPC)", func(s *[]mesh.Service, _ []mesh.Proxy) {
			*s = append(*s, mesh.Service{Name: "hello", Protocol: mesh.ProtocolHTTP})
		}, "greeter-client", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if changed := fp(c.f, c.id) != fp(none, c.id); changed != c.change {
				t.Errorf("%s's fingerprint changed=%v, want %v", c.id, changed, c.change)
			}
		})
	}
}

// A gateway's fingerprint follows its listeners and its routes'
// services.
func TestGatewayFingerprint(t *testing.T) {
	_, in := caseCatalog(t, "gateway")
	fp := func(mutate func(s []mesh.Service, gw *mesh.Proxy)) string {
		s := append([]mesh.Service(nil), in.Services...)
		for i := range s {
			s[i].Endpoints = append([]mesh.Endpoint(nil), s[i].Endpoints...)
		}
		p := append([]mesh.Proxy(nil), in.Proxies...)
		gw := &p[0]
		gw.Listeners = append([]mesh.GatewayListener(nil), gw.Listeners...)
		for i := range gw.Listeners {
			gw.Listeners[i].Routes = append([]mesh.GatewayRoute(nil), gw.Listeners[i].Routes...)
		}
		mutate(s, gw)
		cat, err := mesh.NewCatalog(s, p)
		if err != nil {
			t.Fatal(err)
		}
		return NewTranslator(Options{TrustDomain: "cluster.local"}).Generation(cat, in.Policy).Fingerprint(cat.Proxy("ingress-1"))
	}
	base := fp(func([]mesh.Service, *mesh.Proxy) {})
	for name, f := range map[string]func(s []mesh.Service, gw *mesh.Proxy){
		"route path":         func(_ []mesh.Service, gw *mesh.Proxy) { gw.Listeners[0].Routes[1].PathPrefix = "/v2/" },
		"certificate file":   func(_ []mesh.Service, gw *mesh.Proxy) { gw.Listeners[0].TLS.CertificateFile = "/etc/other.crt" },
		"sds secret":         func(_ []mesh.Service, gw *mesh.Proxy) { gw.Listeners[2].TLS.SDSSecret = "other" },
		"routed service":     func(s []mesh.Service, _ *mesh.Proxy) { s[1].Endpoints[0].Port = 15007 },
		"listener port":      func(_ []mesh.Service, gw *mesh.Proxy) { gw.Listeners[1].Port = 8081 },
		"routed to greeter":  func(s []mesh.Service, _ *mesh.Proxy) { s[3].Endpoints[0].Weight = 3 },
		"route's host":       func(_ []mesh.Service, gw *mesh.Proxy) { gw.Listeners[0].Routes[2].Host = "*.example.org" },
		"route's service ns": func(_ []mesh.Service, gw *mesh.Proxy) { gw.Listeners[1].Routes[0].Service = "api" },
	} {
		if fp(f) == base {
			t.Errorf("%s: the gateway's fingerprint did not change", name)
		}
	}
}

// allServicesMesh is issue 14's shape: services × endpoints, each with a
// virtual address, and proxies transparent sidecars that see every
// service.
func allServicesMesh(tb testing.TB, services, endpoints, proxies int, extra string) *mesh.Catalog {
	tb.Helper()
	svcs := make([]mesh.Service, services)
	for i := range svcs {
		svcs[i] = mesh.Service{Name: fmt.Sprintf("svc-%04d", i), Namespace: fmt.Sprintf("ns-%d", i%10), Protocol: mesh.ProtocolHTTP,
			Address: fmt.Sprintf("10.96.%d.%d", i/250, i%250+1), Port: 80}
		if i%5 == 1 {
			svcs[i].Protocol = mesh.ProtocolTCP
		}
		for e := range endpoints {
			svcs[i].Endpoints = append(svcs[i].Endpoints, mesh.Endpoint{Address: fmt.Sprintf("10.%d.%d.%d", i/250, i%250, e+1), Port: 15006})
		}
	}
	if extra != "" {
		svcs[0].Endpoints = append(svcs[0].Endpoints, mesh.Endpoint{Address: extra, Port: 15006})
	}
	pxs := make([]mesh.Proxy, proxies)
	for i := range pxs {
		s := &svcs[i%services]
		pxs[i] = mesh.Proxy{ID: fmt.Sprintf("proxy-%05d", i), Service: s.Name, Namespace: s.Namespace,
			Address: fmt.Sprintf("10.200.%d.%d", i/250, i%250), PublicPort: 15006, AppPort: 8080,
			Mode: mesh.ModeTransparent, UpstreamNamespaces: []string{mesh.AllNamespaces}}
	}
	cat, err := mesh.NewCatalog(svcs, pxs)
	if err != nil {
		tb.Fatal(err)
	}
	return cat
}

// BenchmarkAllServicesGeneration renders 1,000 transparent sidecars that
// see all 200 services (× 10 endpoints) after one endpoint change, with
// the previous generation's resources warm, and reports how many distinct
// resources the whole fleet holds: one capture listener and one cluster,
// endpoint set and route per service, whatever the number of proxies.
// (Every proxy is rendered: each sees the changed service.)
func BenchmarkAllServicesGeneration(b *testing.B) {
	cats := []*mesh.Catalog{allServicesMesh(b, 200, 10, 1000, ""), allServicesMesh(b, 200, 10, 1000, "10.99.0.1")}
	tr := NewTranslator(Options{TrustDomain: "cluster.local"})
	render := func(cat *mesh.Catalog) map[string]map[*Resource]bool {
		gen := tr.Generation(cat, nil)
		defer gen.Close()
		distinct := map[string]map[*Resource]bool{"listeners": {}, "clusters": {}, "endpoints": {}, "routes": {}}
		for _, p := range cat.Proxies() {
			r, err := gen.Proxy(p.ID)
			if err != nil {
				b.Fatal(err)
			}
			for kind, list := range map[string][]*Resource{"listeners": r.Listeners, "clusters": r.Clusters, "endpoints": r.Endpoints, "routes": r.Routes} {
				for _, x := range list {
					if kind != "listeners" || x.Name == CaptureListenerName {
						distinct[kind][x] = true
					}
				}
			}
		}
		return distinct
	}
	render(cats[0])
	b.ReportAllocs()
	var distinct map[string]map[*Resource]bool
	i := 0
	for b.Loop() {
		i++
		distinct = render(cats[i%2])
	}
	b.ReportMetric(float64(len(distinct["listeners"])), "capture-listeners")
	b.ReportMetric(float64(len(distinct["clusters"])), "clusters")
	b.ReportMetric(float64(len(distinct["endpoints"])), "endpoint-sets")
	b.ReportMetric(float64(len(distinct["routes"])), "routes")
}
