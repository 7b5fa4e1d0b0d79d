package mesh_test

import (
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/meshd/meshd/mesh"
)

func TestNewCatalogDefaults(t *testing.T) {
	services := []mesh.Service{
		{Name: "web", Endpoints: []mesh.Endpoint{
			{Address: "10.0.0.1", Port: 15001},
			{Address: "10.0.0.2", Port: 15001, Health: mesh.HealthDraining},
		}},
		{Name: "api", Namespace: "prod", Protocol: mesh.ProtocolHTTP, ServiceAccount: "api-sa"},
		{Name: "greeter", Namespace: "prod", Protocol: mesh.ProtocolGRPC},
	}
	proxies := []mesh.Proxy{
		{Service: "web", PublicPort: 15001, AppPort: 8080,
			Upstreams: []mesh.Upstream{{Service: "api", Namespace: "prod", LocalPort: 9001}}},
		{Service: "api", Namespace: "prod", Upstreams: []mesh.Upstream{{Service: "greeter", LocalPort: 9002}}},
		{ID: "client-7", Service: "greeter", Namespace: "prod", Flavor: mesh.FlavorGRPC,
			Upstreams: []mesh.Upstream{{Service: "greeter"}}},
	}
	c, err := mesh.NewCatalog(services, proxies)
	if err != nil {
		t.Fatal(err)
	}

	web := c.Service(mesh.ServiceKey{Namespace: "default", Name: "web"})
	if web == nil {
		t.Fatal(`service "web" is not in namespace "default"`)
	}
	if web.Protocol != mesh.ProtocolTCP {
		t.Errorf("default protocol = %q, want tcp", web.Protocol)
	}
	if web.ServiceAccount != "web" {
		t.Errorf("default serviceAccount = %q, want the service name", web.ServiceAccount)
	}
	if web.Endpoints[0].Health != mesh.HealthHealthy || web.Endpoints[1].Health != mesh.HealthDraining {
		t.Errorf("healths = %q, %q; want healthy (default), draining (kept)", web.Endpoints[0].Health, web.Endpoints[1].Health)
	}
	api := c.Service(mesh.ServiceKey{Namespace: "prod", Name: "api"})
	if api.ServiceAccount != "api-sa" || api.Protocol != mesh.ProtocolHTTP {
		t.Errorf("explicit values overridden: %+v", api)
	}

	wp := c.Proxy("web.default")
	if wp == nil {
		t.Fatalf("no proxy with the default id web.default; ids: %v", proxyIDs(c))
	}
	if wp.Namespace != "default" || wp.Flavor != mesh.FlavorEnvoy || wp.Address != "0.0.0.0" {
		t.Errorf("envoy defaults: namespace %q flavor %q address %q; want default, envoy, 0.0.0.0", wp.Namespace, wp.Flavor, wp.Address)
	}
	if wp.Upstreams[0].Namespace != "prod" {
		t.Errorf("explicit upstream namespace = %q, want prod", wp.Upstreams[0].Namespace)
	}
	ap := c.Proxy("api.prod")
	if ap == nil {
		t.Fatalf("no proxy with the default id api.prod; ids: %v", proxyIDs(c))
	}
	if ap.Upstreams[0].Namespace != "prod" {
		t.Errorf("upstream namespace = %q, want the proxy's (prod)", ap.Upstreams[0].Namespace)
	}
	gp := c.Proxy("client-7")
	if gp.Address != "" {
		t.Errorf("grpc proxy address defaulted to %q; only Envoy gets 0.0.0.0", gp.Address)
	}
	if gp.Upstreams[0].Namespace != "prod" {
		t.Errorf("grpc upstream namespace = %q, want prod", gp.Upstreams[0].Namespace)
	}
}

func TestNewCatalogDefaultsTransparentAndGateway(t *testing.T) {
	services := []mesh.Service{
		{Name: "web", Protocol: mesh.ProtocolHTTP, Address: "10.96.0.1", Port: 80},
		{Name: "ingress", Namespace: "edge", Protocol: mesh.ProtocolHTTP},
	}
	in := []mesh.Proxy{
		{Service: "web", Mode: mesh.ModeTransparent, UpstreamNamespaces: []string{"*"}},
		{Service: "ingress", Namespace: "edge", Flavor: mesh.FlavorGateway, Listeners: []mesh.GatewayListener{
			{Port: 8080, Routes: []mesh.GatewayRoute{{Service: "web", Namespace: "default"}, {Service: "ingress", PathPrefix: "/self"}}},
		}},
	}
	c, err := mesh.NewCatalog(services, in)
	if err != nil {
		t.Fatal(err)
	}
	wp := c.Proxy("web.default")
	if wp.CapturePort != mesh.DefaultCapturePort || wp.Passthrough != mesh.PassthroughAllow || !wp.Transparent() {
		t.Errorf("transparent defaults: capturePort %d passthrough %q; want %d, allow", wp.CapturePort, wp.Passthrough, mesh.DefaultCapturePort)
	}
	gw := c.Proxy("ingress.edge")
	if gw.Address != "0.0.0.0" || !gw.SecretsFromMeshd() {
		t.Errorf("gateway defaults: address %q, secrets from meshd %v; want 0.0.0.0, true", gw.Address, gw.SecretsFromMeshd())
	}
	r := gw.Listeners[0].Routes
	if r[0].Host != "*" || r[0].PathPrefix != "/" || r[0].Namespace != "default" || r[1].Namespace != "edge" || r[1].PathPrefix != "/self" {
		t.Errorf("route defaults: %+v, want host *, pathPrefix /, namespace given or the gateway's", r)
	}
	// The catalog's routes are its own.
	in[1].Listeners[0].Routes[0].Service = "changed"
	in[0].UpstreamNamespaces[0] = "changed"
	if gw.Listeners[0].Routes[0].Service != "web" || wp.UpstreamNamespaces[0] != "*" {
		t.Error("changing the input changed the catalog's gateway routes or upstream namespaces")
	}
}

func proxyIDs(c *mesh.Catalog) []string {
	var ids []string
	for _, p := range c.Proxies() {
		ids = append(ids, p.ID)
	}
	return ids
}

func TestNewCatalogCanonicalOrder(t *testing.T) {
	services := []mesh.Service{
		{Name: "zeta"},
		{Name: "api", Namespace: "prod"},
		{Name: "alpha", Endpoints: []mesh.Endpoint{
			{Address: "10.0.0.2", Port: 80},
			{Address: "10.0.0.1", Port: 9090},
			{Address: "10.0.0.1", Port: 8080},
		}},
		{Name: "zeta", Namespace: "dev"},
	}
	proxies := []mesh.Proxy{
		{ID: "c", Service: "zeta"},
		{ID: "a", Service: "alpha"},
		{ID: "b", Service: "api", Namespace: "prod"},
	}
	c, err := mesh.NewCatalog(services, proxies)
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, s := range c.Services() {
		keys = append(keys, s.Key().String())
	}
	if want := []string{"alpha.default", "zeta.default", "zeta.dev", "api.prod"}; !slices.Equal(keys, want) {
		t.Errorf("services in order %v, want %v (by namespace, then name)", keys, want)
	}
	var eps []string
	for _, e := range c.Service(mesh.ServiceKey{Namespace: "default", Name: "alpha"}).Endpoints {
		eps = append(eps, e.HostPort())
	}
	if want := []string{"10.0.0.1:8080", "10.0.0.1:9090", "10.0.0.2:80"}; !slices.Equal(eps, want) {
		t.Errorf("endpoints in order %v, want %v (by address, then port)", eps, want)
	}
	if ids, want := proxyIDs(c), []string{"a", "b", "c"}; !slices.Equal(ids, want) {
		t.Errorf("proxies in order %v, want %v", ids, want)
	}

	// The same input in another order gives the same catalog.
	slices.Reverse(services)
	slices.Reverse(proxies)
	c2, err := mesh.NewCatalog(services, proxies)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c.Services(), c2.Services()) || !reflect.DeepEqual(c.Proxies(), c2.Proxies()) {
		t.Error("reordered input gives a different catalog")
	}
}

func TestNewCatalogDoesNotModifyInput(t *testing.T) {
	build := func() ([]mesh.Service, []mesh.Proxy) {
		return []mesh.Service{
				{Name: "web", Endpoints: []mesh.Endpoint{
					{Address: "10.0.0.2", Port: 15001, Labels: map[string]string{"v": "1"}},
					{Address: "10.0.0.1", Port: 15001},
				}},
				{Name: "api", Namespace: "prod"},
			}, []mesh.Proxy{
				{Service: "web", PublicPort: 15001, AppPort: 8080,
					Upstreams: []mesh.Upstream{{Service: "api", Namespace: "prod", LocalPort: 9001}}},
				{Service: "api", Namespace: "prod", Upstreams: []mesh.Upstream{{Service: "web", Namespace: "default", LocalPort: 9002}}},
			}
	}
	services, proxies := build()
	c, err := mesh.NewCatalog(services, proxies)
	if err != nil {
		t.Fatal(err)
	}
	wantS, wantP := build()
	if !reflect.DeepEqual(services, wantS) || !reflect.DeepEqual(proxies, wantP) {
		t.Errorf("NewCatalog modified its input:\nservices %+v\nproxies %+v", services, proxies)
	}

	// The catalog does not share memory with the input either.
	services[0].Endpoints[0].Labels["v"] = "2"
	services[0].Endpoints[0].Port = 1
	services[0].Name = "changed"
	proxies[0].Upstreams[0].LocalPort = 1
	web := c.Service(mesh.ServiceKey{Namespace: "default", Name: "web"})
	if web == nil || web.Endpoints[1].Labels["v"] != "1" || web.Endpoints[1].Port != 15001 {
		t.Errorf("changing the input changed the catalog: %+v", web)
	}
	if got := c.Proxy("web.default").Upstreams[0].LocalPort; got != 9001 {
		t.Errorf("changing the input changed a proxy's upstream: localPort %d", got)
	}

	// Nor on failure.
	services, proxies = build()
	services[1].Endpoints = []mesh.Endpoint{{Address: "10.0.0.9", Port: 0}, {Address: "10.0.0.3", Port: 80}}
	wantS, _ = build()
	wantS[1].Endpoints = []mesh.Endpoint{{Address: "10.0.0.9", Port: 0}, {Address: "10.0.0.3", Port: 80}}
	if _, err := mesh.NewCatalog(services, proxies); err == nil {
		t.Fatal("want an error for port 0")
	}
	if !reflect.DeepEqual(services, wantS) {
		t.Errorf("a failed NewCatalog modified its input: %+v", services)
	}
}

func TestNewCatalogReportsEveryProblem(t *testing.T) {
	services := []mesh.Service{
		{Name: "web", Protocol: "udp", Endpoints: []mesh.Endpoint{{Address: "web.local", Port: 0}}},
		{Name: "api", Protocol: mesh.ProtocolHTTP},
	}
	proxies := []mesh.Proxy{
		{Service: "api", PublicPort: 15001},
		{Service: "ghost", Flavor: "sidecar"},
	}
	_, err := mesh.NewCatalog(services, proxies)
	assertErrors(t, err, []wantErr{
		{`services[0] "web.default"`, "protocol", "unknown protocol"},
		{`services[0] "web.default"`, "endpoints[0].address", "not a usable IP address"},
		{`services[0] "web.default"`, "endpoints[0].port", "not a port"},
		{`proxies[0] "api.default"`, "appPort", "needs the application's port"},
		{`proxies[1] "ghost.default"`, "flavor", "unknown flavor"},
		{`proxies[1] "ghost.default"`, "service", "no service ghost.default"},
	})
	msg := err.Error()
	if !strings.HasPrefix(msg, "6 problems:\n  services[0] \"web.default\": field protocol: unknown protocol \"udp\"") {
		t.Errorf("message does not list the problems one per line:\n%s", msg)
	}
	if n := strings.Count(msg, "\n"); n != 6 {
		t.Errorf("message has %d line breaks, want 6:\n%s", n, msg)
	}
}

func TestValidationErrorsMessage(t *testing.T) {
	one := mesh.ValidationErrors{{Object: `services[0] "web.default"`, Field: "protocol", Message: "bad"}}
	if got, want := one.Error(), `services[0] "web.default": field protocol: bad`; got != want {
		t.Errorf("one error = %q, want %q", got, want)
	}
	noField := mesh.FieldError{Object: "x", Message: "bad"}
	if got := noField.Error(); got != "x: bad" {
		t.Errorf("error without a field = %q", got)
	}
}

// catalog builds a catalog or fails the test.
func catalog(t *testing.T, services []mesh.Service, proxies []mesh.Proxy) *mesh.Catalog {
	t.Helper()
	c, err := mesh.NewCatalog(services, proxies)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestMerge(t *testing.T) {
	file := catalog(t,
		[]mesh.Service{{Name: "web", Endpoints: []mesh.Endpoint{{Address: "10.0.0.1", Port: 15001}}}},
		[]mesh.Proxy{{Service: "web", Address: "10.0.0.1", PublicPort: 15001, AppPort: 8080}})
	consul := catalog(t,
		[]mesh.Service{{Name: "api", Namespace: "prod"}, {Name: "db"}},
		[]mesh.Proxy{{Service: "api", Namespace: "prod", Address: "10.0.0.2", PublicPort: 15001, AppPort: 8080}})

	m, err := mesh.Merge(map[string]*mesh.Catalog{"file": file, "consul": consul, "off": nil})
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, s := range m.Services() {
		keys = append(keys, s.Key().String())
	}
	if want := []string{"db.default", "web.default", "api.prod"}; !slices.Equal(keys, want) {
		t.Errorf("merged services %v, want %v", keys, want)
	}
	if ids, want := proxyIDs(m), []string{"api.prod", "web.default"}; !slices.Equal(ids, want) {
		t.Errorf("merged proxies %v, want %v", ids, want)
	}

	t.Run("service in two sources", func(t *testing.T) {
		other := catalog(t, []mesh.Service{{Name: "web", Protocol: mesh.ProtocolHTTP}}, nil)
		_, err := mesh.Merge(map[string]*mesh.Catalog{"file": file, "consul": other})
		want := "service web.default is defined by both consul and file"
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Merge = %v, want an error containing %q", err, want)
		}
	})
	t.Run("proxy in two sources", func(t *testing.T) {
		other := catalog(t, []mesh.Service{{Name: "web2"}}, []mesh.Proxy{{ID: "web.default", Service: "web2"}})
		_, err := mesh.Merge(map[string]*mesh.Catalog{"file": file, "k8s": other})
		want := `proxy "web.default" is defined by both file and k8s`
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Merge = %v, want an error containing %q", err, want)
		}
	})
	t.Run("conflict only visible merged", func(t *testing.T) {
		other := catalog(t, []mesh.Service{{Name: "cache"}},
			[]mesh.Proxy{{Service: "cache", Address: "10.0.0.1", PublicPort: 15001, AppPort: 6379}})
		_, err := mesh.Merge(map[string]*mesh.Catalog{"file": file, "consul": other})
		var verrs mesh.ValidationErrors
		if !errors.As(err, &verrs) {
			t.Fatalf("Merge = %v, want ValidationErrors for the port clash", err)
		}
		assertErrors(t, err, []wantErr{{`proxies[1] "web.default"`, "publicPort", `already used by proxies[0] "cache.default"`}})
	})
	t.Run("sources are not modified", func(t *testing.T) {
		before := slices.Clone(file.Services()[0].Endpoints)
		if _, err := mesh.Merge(map[string]*mesh.Catalog{"file": file, "consul": consul}); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(file.Services()[0].Endpoints, before) {
			t.Error("Merge modified a source catalog")
		}
	})
}

// TestWithEndpoints checks that an endpoints-only change gives the catalog
// NewCatalog builds from scratch, shares everything it did not change, and
// leaves to NewCatalog every change that is more than endpoints.
func TestWithEndpoints(t *testing.T) {
	services := []mesh.Service{
		{Name: "web", Protocol: mesh.ProtocolHTTP, Endpoints: []mesh.Endpoint{{Address: "10.0.0.1", Port: 15001}}},
		{Name: "api", Namespace: "prod", Protocol: mesh.ProtocolHTTP, ServiceAccount: "api-sa",
			Endpoints: []mesh.Endpoint{{Address: "10.0.1.1", Port: 15001}}},
		{Name: "db", Namespace: "prod", Endpoints: []mesh.Endpoint{{Address: "10.0.2.1", Port: 5432}}},
	}
	proxies := []mesh.Proxy{
		{Service: "web", PublicPort: 15001, AppPort: 8080,
			Upstreams: []mesh.Upstream{{Service: "api", Namespace: "prod", LocalPort: 9001}}},
		{Service: "api", Namespace: "prod", Address: "10.0.1.1", PublicPort: 15001, AppPort: 8080, Upstreams: []mesh.Upstream{{Service: "db", LocalPort: 9002}}},
	}
	c := catalog(t, services, proxies)
	apiBefore := *c.Service(mesh.ServiceKey{Namespace: "prod", Name: "api"})

	// api gets a second endpoint (listed first: the result is sorted); its
	// other fields are as before.
	changed := []mesh.Service{{Name: "api", Namespace: "prod", Protocol: mesh.ProtocolHTTP, ServiceAccount: "api-sa",
		Endpoints: []mesh.Endpoint{{Address: "10.0.1.9", Port: 15001, Labels: map[string]string{"v": "2"}}, {Address: "10.0.1.1", Port: 15001}}}}
	got, err := c.WithEndpoints(changed)
	if err != nil {
		t.Fatal(err)
	}
	want := catalog(t, []mesh.Service{services[0], changed[0], services[2]}, proxies)
	if !reflect.DeepEqual(got.Services(), want.Services()) || !reflect.DeepEqual(got.Proxies(), want.Proxies()) {
		t.Errorf("WithEndpoints differs from NewCatalog:\n got %+v\nwant %+v", got.Services(), want.Services())
	}
	for _, k := range []mesh.ServiceKey{{Namespace: "default", Name: "web"}, {Namespace: "prod", Name: "db"}} {
		if got.Service(k) != c.Service(k) {
			t.Errorf("unchanged service %s was copied, not shared", k)
		}
	}
	if &got.Proxies()[0] != &c.Proxies()[0] || got.Proxy("web.default") != c.Proxy("web.default") {
		t.Error("proxies were copied, not shared")
	}
	if !reflect.DeepEqual(*c.Service(mesh.ServiceKey{Namespace: "prod", Name: "api"}), apiBefore) {
		t.Error("the original catalog changed")
	}
	changed[0].Endpoints[0].Labels["v"] = "3"
	if got.Service(mesh.ServiceKey{Namespace: "prod", Name: "api"}).Endpoints[1].Labels["v"] != "2" {
		t.Error("the new catalog shares its input's label maps")
	}
	// A defaulted namespace, protocol and account match the defaults.
	if _, err := c.WithEndpoints([]mesh.Service{{Name: "db", Namespace: "prod"}}); err != nil {
		t.Errorf("db with no endpoints: %v", err)
	}

	for _, tc := range []struct {
		name    string
		changed []mesh.Service
		fast    bool // an endpoints-only change with invalid endpoints
	}{
		{"unknown service", []mesh.Service{{Name: "cache"}}, false},
		{"protocol", []mesh.Service{{Name: "web", Protocol: mesh.ProtocolGRPC}}, false},
		{"account", []mesh.Service{{Name: "web", Protocol: mesh.ProtocolHTTP, ServiceAccount: "other"}}, false},
		{"address", []mesh.Service{{Name: "web", Protocol: mesh.ProtocolHTTP, Address: "10.96.0.1", Port: 80}}, false},
		{"twice", []mesh.Service{{Name: "web", Protocol: mesh.ProtocolHTTP}, {Name: "web", Protocol: mesh.ProtocolHTTP}}, false},
		{"bad endpoint", []mesh.Service{{Name: "web", Protocol: mesh.ProtocolHTTP, Endpoints: []mesh.Endpoint{{Address: "web-1", Port: 80}}}}, true},
		{"duplicate endpoint", []mesh.Service{{Name: "web", Protocol: mesh.ProtocolHTTP,
			Endpoints: []mesh.Endpoint{{Address: "10.0.0.1", Port: 80}, {Address: "10.0.0.1", Port: 80}}}}, true},
	} {
		_, err := c.WithEndpoints(tc.changed)
		var verrs mesh.ValidationErrors
		switch {
		case err == nil:
			t.Errorf("%s: accepted", tc.name)
		case tc.fast && !errors.As(err, &verrs):
			t.Errorf("%s: %v, want validation errors", tc.name, err)
		case !tc.fast && !errors.Is(err, mesh.ErrNotEndpointsOnly):
			t.Errorf("%s: %v, want ErrNotEndpointsOnly", tc.name, err)
		}
	}
}
