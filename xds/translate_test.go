package xds

import (
	"strings"
	"testing"

	"github.com/meshd/meshd/mesh"
)

func quickstartCatalog(t *testing.T) (*mesh.Catalog, goldenInput) {
	t.Helper()
	in := loadCase(t, "../examples/quickstart/catalog.yaml")
	cat, err := mesh.NewCatalog(in.Services, in.Proxies)
	if err != nil {
		t.Fatal(err)
	}
	return cat, in
}

// The shared, memoising translator must give exactly what the pure
// per-proxy function gives, and the same pointer for shared resources.
func TestTranslatorMatchesTranslate(t *testing.T) {
	cat, _ := quickstartCatalog(t)
	opts := Options{TrustDomain: "cluster.local"}
	tr := NewTranslator(opts)
	for round := range 2 { // round 1 reuses the previous generation's resources
		gen := tr.Generation(cat, nil)
		for _, p := range cat.Proxies() {
			shared, err := gen.Proxy(p.ID)
			if err != nil {
				t.Fatal(err)
			}
			pure, err := Translate(cat, p.ID, opts)
			if err != nil {
				t.Fatal(err)
			}
			a, b := shared.ByType(), pure.ByType()
			for typ := range a {
				if len(a[typ]) != len(b[typ]) {
					t.Fatalf("round %d %s %s: %d vs %d resources", round, p.ID, typ, len(a[typ]), len(b[typ]))
				}
				for i := range a[typ] {
					if a[typ][i].Name != b[typ][i].Name || a[typ][i].Hash != b[typ][i].Hash {
						t.Errorf("round %d %s: %s differs: %s/%s vs %s/%s", round, p.ID, typ, a[typ][i].Name, a[typ][i].Hash, b[typ][i].Name, b[typ][i].Hash)
					}
				}
			}
		}
		gen.Close()
	}
	// Two callers of the same upstream share the endpoints resource.
	gen := tr.Generation(cat, nil)
	a, _ := gen.Proxy("hello-client.default")
	tr2 := gen
	b, _ := tr2.Proxy("hello-client.default")
	if a.Endpoints[0] != b.Endpoints[0] {
		t.Error("endpoints resource not shared within a generation")
	}
}

func TestFingerprint(t *testing.T) {
	in := loadCase(t, "../examples/quickstart/catalog.yaml")
	base, err := mesh.NewCatalog(in.Services, in.Proxies)
	if err != nil {
		t.Fatal(err)
	}
	fp := func(c *mesh.Catalog, id string) string {
		return NewTranslator(Options{TrustDomain: "cluster.local"}).Generation(c, nil).Fingerprint(c.Proxy(id))
	}
	mutate := func(f func(s []mesh.Service, p []mesh.Proxy)) *mesh.Catalog {
		s := make([]mesh.Service, len(in.Services))
		for i := range in.Services {
			s[i] = in.Services[i]
			s[i].Endpoints = append([]mesh.Endpoint(nil), in.Services[i].Endpoints...)
		}
		p := make([]mesh.Proxy, len(in.Proxies))
		for i := range in.Proxies {
			p[i] = in.Proxies[i]
			p[i].Upstreams = append([]mesh.Upstream(nil), in.Proxies[i].Upstreams...)
		}
		f(s, p)
		c, err := mesh.NewCatalog(s, p)
		if err != nil {
			t.Fatal(err)
		}
		return c
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
	proxy := func(p []mesh.Proxy, name string) *mesh.Proxy {
		for i := range p {
			if p[i].Service == name {
				return &p[i]
			}
		}
		t.Fatalf("no proxy %s", name)
		return nil
	}
	cases := []struct {
		name    string
		f       func(s []mesh.Service, p []mesh.Proxy)
		changes bool
	}{
		{"upstream endpoint added", func(s []mesh.Service, _ []mesh.Proxy) {
			x := svc(s, "api")
			x.Endpoints = append(x.Endpoints, mesh.Endpoint{Address: "127.0.0.2", Port: 1})
		}, true},
		{"upstream endpoint label", func(s []mesh.Service, _ []mesh.Proxy) {
			svc(s, "api").Endpoints[0].Labels = map[string]string{"a": "b"}
		}, true},
		{"upstream health", func(s []mesh.Service, _ []mesh.Proxy) { svc(s, "db").Endpoints[0].Health = mesh.HealthUnhealthy }, true},
		{"upstream protocol", func(s []mesh.Service, _ []mesh.Proxy) { svc(s, "db").Protocol = mesh.ProtocolHTTP }, true},
		{"own app port", func(_ []mesh.Service, p []mesh.Proxy) { proxy(p, "web").AppPort = 8999 }, true},
		{"own upstream local port", func(_ []mesh.Service, p []mesh.Proxy) { proxy(p, "web").Upstreams[0].LocalPort = 9999 }, true},
		{"own service account", func(s []mesh.Service, _ []mesh.Proxy) { svc(s, "web").ServiceAccount = "other" }, true},
		{"own endpoints (not an input)", func(s []mesh.Service, _ []mesh.Proxy) { svc(s, "web").Endpoints[0].Port = 1 }, false},
		{"unrelated service", func(s []mesh.Service, _ []mesh.Proxy) { svc(s, "hello").Endpoints[0].Port = 1 }, false},
	}
	want := fp(base, "web.default")
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := fp(mutate(c.f), "web.default")
			if (got != want) != c.changes {
				t.Fatalf("fingerprint changed=%v, want %v", got != want, c.changes)
			}
		})
	}
}

func TestDeterministic(t *testing.T) {
	cat, _ := quickstartCatalog(t)
	for _, p := range cat.Proxies() {
		a, err := Translate(cat, p.ID, Options{TrustDomain: "cluster.local"})
		if err != nil {
			t.Fatal(err)
		}
		for range 5 {
			b, _ := Translate(cat, p.ID, Options{TrustDomain: "cluster.local"})
			for typ, list := range a.ByType() {
				for i, r := range list {
					if r.Hash != b.ByType()[typ][i].Hash {
						t.Fatalf("%s %s %s: hash differs between runs", p.ID, typ, r.Name)
					}
				}
			}
		}
	}
}

func TestUnknownProxy(t *testing.T) {
	cat, _ := quickstartCatalog(t)
	_, err := Translate(cat, "nobody", Options{TrustDomain: "cluster.local"})
	if err == nil || !strings.Contains(err.Error(), `proxy "nobody" is not in the catalog`) {
		t.Fatalf("got %v", err)
	}
}

func TestCheckReferencesReportsDangling(t *testing.T) {
	cat, _ := quickstartCatalog(t)
	r, err := Translate(cat, "web.default", Options{TrustDomain: "cluster.local"})
	if err != nil {
		t.Fatal(err)
	}
	sets := r.ByType()
	sets["type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"] = sets["type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"][1:]
	err = CheckReferences(sets)
	if err == nil || !strings.Contains(err.Error(), "refers to missing ClusterLoadAssignment") {
		t.Fatalf("got %v", err)
	}
}
