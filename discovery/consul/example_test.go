package consul

import (
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"testing"

	"github.com/meshd/meshd/internal/consultest"
	"github.com/meshd/meshd/mesh"
)

// TestExampleRegistrations loads examples/consul-vm's Consul registrations
// into a real agent and checks what meshd makes of them, so the example in
// docs/consul.md cannot drift from the mapping. Each file is loaded alone:
// on one test node both sidecars would claim port 15001 on one address.
func TestExampleRegistrations(t *testing.T) {
	_, file, _, _ := runtime.Caller(0)
	dir := filepath.Join(filepath.Dir(file), "..", "..", "examples", "consul-vm", "consul")
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	t.Run("web", func(t *testing.T) {
		a := consultest.Start(t, read("web.hcl"))
		w := runWatcher(t, a, Options{})
		// The agent registers services from its configuration shortly after
		// it starts, possibly after the watcher's first catalog.
		// The agent syncs the application and its sidecar one by one.
		c := waitCatalog(t, w, "web and its sidecar", func(c *mesh.Catalog) bool {
			s := c.Service(mesh.ServiceKey{Namespace: "default", Name: "web"})
			return c.Proxy("web-vm1") != nil && s != nil && s.Protocol == mesh.ProtocolHTTP
		})
		web := c.Service(mesh.ServiceKey{Namespace: "default", Name: "web"})
		if web == nil || web.Protocol != mesh.ProtocolHTTP || web.ServiceAccount != "web" {
			t.Fatalf("web = %+v, want an http service with account web", web)
		}
		// The example's checks probe 10.0.0.10 and the app, absent here:
		// web has no healthy endpoint, but its sidecar is configured.
		if len(web.Endpoints) != 0 {
			t.Errorf("web endpoints = %v, want none (its checks cannot pass in the test)", web.Endpoints)
		}
		p := c.Proxy("web-vm1")
		if p == nil {
			t.Fatalf("no proxy web-vm1; proxies %v", proxyIDs(c))
		}
		if p.PublicPort != 15001 || p.AppPort != 8080 ||
			!slices.Equal(p.Upstreams, []mesh.Upstream{{Service: "api", Namespace: "default", LocalPort: 9001}}) {
			t.Errorf("web-vm1 = %+v, want public 15001, app 8080, upstream api on 9001", p)
		}
		if api := c.Service(mesh.ServiceKey{Namespace: "default", Name: "api"}); api == nil || len(api.Endpoints) != 0 {
			t.Errorf("api = %+v, want an endpoint-less service standing in for the upstream", api)
		}
	})
	t.Run("api", func(t *testing.T) {
		a := consultest.Start(t, read("api.hcl"))
		w := runWatcher(t, a, Options{})
		c := waitCatalog(t, w, "api and its sidecar", func(c *mesh.Catalog) bool {
			s := c.Service(mesh.ServiceKey{Namespace: "default", Name: "api"})
			return c.Proxy("api-vm2") != nil && s != nil && s.ServiceAccount == "api-server"
		})
		api := c.Service(mesh.ServiceKey{Namespace: "default", Name: "api"})
		if api == nil || api.Protocol != mesh.ProtocolHTTP || api.ServiceAccount != "api-server" {
			t.Fatalf("api = %+v, want an http service with account api-server", api)
		}
		if p := c.Proxy("api-vm2"); p == nil || p.PublicPort != 15001 || p.AppPort != 8080 || len(p.Upstreams) != 0 {
			t.Errorf("api-vm2 = %+v, want public 15001, app 8080, no upstreams", p)
		}
	})
}
