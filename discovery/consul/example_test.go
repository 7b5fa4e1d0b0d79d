package consul

import (
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"testing"

	"github.com/meshd/meshd/internal/consultest"
	"github.com/meshd/meshd/mesh"
)

// TestExampleRegistrations loads examples/consul-vm's Consul registrations
// into a real agent, both on one node as on the example's vm1, and checks
// what meshd makes of them, so the example cannot drift from the mapping.
// (e2e/consulvm_test.go runs the whole example.)
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
	// One configuration file holds one "service" block but any number of
	// "services" blocks, which Consul reads the same way.
	asServices := func(hcl string) string {
		return regexp.MustCompile(`(?m)^service \{`).ReplaceAllString(hcl, "services {")
	}
	a := consultest.Start(t, asServices(read("web.hcl"))+"\n"+asServices(read("api.hcl")))
	w := runWatcher(t, a, Options{})
	// The agent registers services from its configuration shortly after it
	// starts, possibly after the watcher's first catalog, and syncs the
	// applications and their sidecars one by one. Proxy ids are the
	// default, "<consul node>/<sidecar id>".
	webID, apiID := "meshd-test/web-sidecar-proxy", "meshd-test/api-sidecar-proxy"
	c := waitCatalog(t, w, "web, api and their sidecars", func(c *mesh.Catalog) bool {
		s := c.Service(mesh.ServiceKey{Namespace: "default", Name: "api"})
		return c.Proxy(webID) != nil && c.Proxy(apiID) != nil && s != nil && s.Protocol == mesh.ProtocolHTTP
	})
	for _, name := range []string{"web", "api"} {
		s := c.Service(mesh.ServiceKey{Namespace: "default", Name: name})
		if s == nil || s.Protocol != mesh.ProtocolHTTP || s.ServiceAccount != name {
			t.Errorf("%s = %+v, want an http service with account %s", name, s, name)
			continue
		}
		// The example's checks probe Envoy's admin API and the app,
		// absent here: no healthy endpoint, but the sidecars are
		// configured.
		if len(s.Endpoints) != 0 {
			t.Errorf("%s endpoints = %v, want none (its checks cannot pass in the test)", name, s.Endpoints)
		}
	}
	web, api := c.Proxy(webID), c.Proxy(apiID)
	if web.PublicPort != 15001 || web.AppPort != 8080 || web.SDS != mesh.SDSAgent ||
		!slices.Equal(web.Upstreams, []mesh.Upstream{{Service: "api", Namespace: "default", LocalPort: 9001}}) {
		t.Errorf("%s = %+v, want public 15001, app 8080, SDS from the agent, upstream api on 9001", webID, web)
	}
	if api.PublicPort != 15002 || api.AppPort != 8081 || api.SDS != mesh.SDSAgent || len(api.Upstreams) != 0 {
		t.Errorf("%s = %+v, want public 15002, app 8081, SDS from the agent, no upstreams", apiID, api)
	}
}
