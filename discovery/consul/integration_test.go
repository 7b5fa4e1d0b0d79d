package consul

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshd/meshd/internal/consultest"
	"github.com/meshd/meshd/internal/testwait"
	"github.com/meshd/meshd/mesh"
)

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// runWatcher starts a watcher against a and waits for its first catalog.
func runWatcher(t *testing.T, a *consultest.Agent, o Options) *Watcher {
	t.Helper()
	o.Address = a.Addr
	if o.WaitTime == 0 {
		o.WaitTime = 30 * time.Second
	}
	if o.MinBackoff == 0 {
		o.MinBackoff, o.MaxBackoff = 50*time.Millisecond, 500*time.Millisecond
	}
	o.Logger = testLogger(t)
	w, err := NewWatcher(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	testwait.Recv(t, w.Synced(), testwait.Timeout, "first catalog from Consul")
	return w
}

// endpoints renders a service's endpoints as sorted "addr:port" strings.
func endpoints(c *mesh.Catalog, name string) []string {
	s := c.Service(mesh.ServiceKey{Namespace: mesh.DefaultNamespace, Name: name})
	if s == nil {
		return nil
	}
	var out []string
	for _, e := range s.Endpoints {
		out = append(out, e.HostPort())
	}
	slices.Sort(out)
	return out
}

func proxyIDs(c *mesh.Catalog) []string {
	var out []string
	for _, p := range c.Proxies() {
		out = append(out, p.ID)
	}
	return out
}

// waitCatalog waits until the watcher serves a catalog for which ok is true,
// taking catalogs from Updates as a consumer would.
func waitCatalog(t *testing.T, w *Watcher, what string, ok func(*mesh.Catalog) bool) *mesh.Catalog {
	t.Helper()
	if c := w.Current(); c != nil && ok(c) {
		return c
	}
	return testwait.RecvUntil(t, w.Updates(), testwait.Timeout, what, ok, func() string {
		c := w.Current()
		return fmt.Sprintf("serving web=%v api=%v proxies=%v; status %+v", endpoints(c, "web"), endpoints(c, "api"), proxyIDs(c), w.Status())
	})
}

func equal(want ...string) func([]string) bool {
	return func(got []string) bool { return slices.Equal(got, want) }
}

func TestWatcherFollowsRegistrationsAndHealth(t *testing.T) {
	a := consultest.Start(t, "")
	a.Register("web-1", "web", 18080, 21000, map[string]string{MetaProtocol: "http", "version": "v1"})
	a.Register("api-1", "api", 18081, 21001, nil, api.Upstream{DestinationName: "web", LocalBindPort: 9191})
	w := runWatcher(t, a, Options{})
	// Registrations reach the catalog in steps (application, sidecar, the
	// alias check's first run): wait for the settled state.
	c := waitCatalog(t, w, "web and api ready", func(c *mesh.Catalog) bool {
		s := c.Service(mesh.ServiceKey{Namespace: "default", Name: "web"})
		return s != nil && s.Protocol == mesh.ProtocolHTTP && len(s.Endpoints) == 1 && len(endpoints(c, "api")) == 1
	})
	if got := endpoints(c, "web"); !slices.Equal(got, []string{"127.0.0.1:21000"}) {
		t.Fatalf("web endpoints = %v, want the sidecar's 127.0.0.1:21000", got)
	}
	web := c.Service(mesh.ServiceKey{Namespace: "default", Name: "web"})
	if web.Protocol != mesh.ProtocolHTTP || web.Endpoints[0].Labels["version"] != "v1" || web.Endpoints[0].Locality.Region != "dc1" {
		t.Errorf("web = %+v, want protocol http, label version=v1, region dc1", web)
	}
	apiProxy := c.Proxy("meshd-test/api-1-sidecar-proxy")
	if apiProxy == nil {
		t.Fatalf("no proxy meshd-test/api-1-sidecar-proxy; proxies %v", proxyIDs(c))
	}
	if apiProxy.PublicPort != 21001 || apiProxy.AppPort != 18081 ||
		!slices.Equal(apiProxy.Upstreams, []mesh.Upstream{{Service: "web", Namespace: "default", LocalPort: 9191}}) {
		t.Errorf("api proxy = %+v, want public 21001, app 18081, upstream web on 9191", apiProxy)
	}

	a.Register("web-2", "web", 18082, 21002, map[string]string{MetaProtocol: "http", "version": "v1"})
	waitCatalog(t, w, "web-2 registered", func(c *mesh.Catalog) bool {
		return equal("127.0.0.1:21000", "127.0.0.1:21002")(endpoints(c, "web"))
	})

	a.SetTTL("web-2", api.HealthCritical)
	c = waitCatalog(t, w, "web-2 critical", func(c *mesh.Catalog) bool {
		return equal("127.0.0.1:21000")(endpoints(c, "web"))
	})
	if c.Proxy("meshd-test/web-2-sidecar-proxy") == nil {
		t.Errorf("the unhealthy instance's sidecar lost its configuration: proxies %v", proxyIDs(c))
	}

	a.SetTTL("web-2", api.HealthPassing)
	waitCatalog(t, w, "web-2 passing again", func(c *mesh.Catalog) bool {
		return equal("127.0.0.1:21000", "127.0.0.1:21002")(endpoints(c, "web"))
	})

	// Warning is excluded by default.
	a.SetTTL("web-1", api.HealthWarning)
	waitCatalog(t, w, "web-1 warning excluded", func(c *mesh.Catalog) bool {
		return equal("127.0.0.1:21002")(endpoints(c, "web"))
	})

	a.Deregister("web-2")
	c = waitCatalog(t, w, "web-2 deregistered", func(c *mesh.Catalog) bool {
		return len(endpoints(c, "web")) == 0 && c.Proxy("meshd-test/web-2-sidecar-proxy") == nil
	})
	if c.Service(mesh.ServiceKey{Namespace: "default", Name: "web"}) == nil {
		t.Errorf("web vanished while web-1 is still registered")
	}

	// Every web instance gone: api's upstream still resolves to an empty web.
	a.Deregister("web-1")
	c = waitCatalog(t, w, "web gone", func(c *mesh.Catalog) bool {
		return c.Proxy("meshd-test/web-1-sidecar-proxy") == nil
	})
	if s := c.Service(mesh.ServiceKey{Namespace: "default", Name: "web"}); s == nil || len(s.Endpoints) != 0 {
		t.Errorf("web = %+v, want a service with no endpoints kept for api's upstream", s)
	}
	if st := w.Status(); st.Errors != 0 || st.LastError != "" || st.CatalogError != "" || st.SyncAge != 0 {
		t.Errorf("status after a clean run = %+v, want no errors", st)
	}
}

func TestWatcherIncludeWarning(t *testing.T) {
	a := consultest.Start(t, "")
	a.Register("web-1", "web", 18080, 21000, nil)
	w := runWatcher(t, a, Options{IncludeWarning: true})
	a.SetTTL("web-1", api.HealthWarning)
	// Give the change time to arrive, then check it did not remove web-1.
	a.Register("marker-1", "marker", 18090, 21090, nil)
	c := waitCatalog(t, w, "marker", func(c *mesh.Catalog) bool { return len(endpoints(c, "marker")) == 1 })
	if got := endpoints(c, "web"); !slices.Equal(got, []string{"127.0.0.1:21000"}) {
		t.Errorf("with IncludeWarning, web endpoints = %v, want the warning instance kept", got)
	}
	a.SetTTL("web-1", api.HealthCritical)
	waitCatalog(t, w, "web-1 critical", func(c *mesh.Catalog) bool { return len(endpoints(c, "web")) == 0 })
}

func TestWatcherRejectsBadMetaAndKeepsServing(t *testing.T) {
	a := consultest.Start(t, "")
	a.Register("web-1", "web", 18080, 21000, map[string]string{MetaProtocol: "http"})
	w := runWatcher(t, a, Options{})
	// Registrations reach the catalog in steps (application, sidecar, the
	// alias check's first run): wait for the settled state.
	before := waitCatalog(t, w, "web ready", func(c *mesh.Catalog) bool {
		s := c.Service(mesh.ServiceKey{Namespace: "default", Name: "web"})
		return s != nil && s.Protocol == mesh.ProtocolHTTP && len(s.Endpoints) == 1
	})
	// db joins the mesh with a typo in its protocol. The application is
	// registered before its sidecar so that no valid intermediate catalog
	// (a sidecar seen before its application) can be served in between: a
	// service without a sidecar is not in the mesh, so step one changes
	// nothing, and step two is refused.
	bad := map[string]string{MetaProtocol: "htpp"}
	if err := a.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "db-1", Name: "db", Port: 18085, Address: "127.0.0.1", Meta: bad}); err != nil {
		t.Fatal(err)
	}
	a.Register("db-1", "db", 18085, 21005, bad)
	testwait.Until(t, testwait.Timeout, func() error {
		if st := w.Status(); st.CatalogError == "" {
			return fmt.Errorf("bad meta not reported; status %+v", st)
		}
		return nil
	})
	st := w.Status()
	for _, want := range []string{`consul service "db"`, "db-1 on node meshd-test", `meta "meshd-protocol"`, `"htpp"`, "http, http2, grpc or tcp"} {
		if !strings.Contains(st.CatalogError, want) {
			t.Errorf("catalog error %q does not contain %q", st.CatalogError, want)
		}
	}
	// web's own registration may still settle (its alias check's first
	// run) and legitimately replace the catalog; what must hold is that db,
	// whose registration is bad, never got in and web stayed.
	cur := w.Current()
	if st.Rejected == 0 || cur.Service(mesh.ServiceKey{Namespace: "default", Name: "db"}) != nil ||
		len(endpoints(cur, "web")) != len(endpoints(before, "web")) {
		t.Errorf("a bad registration replaced the catalog or was not counted: rejected=%d, db in catalog=%v, web endpoints %v (before: %v)",
			st.Rejected, cur.Service(mesh.ServiceKey{Namespace: "default", Name: "db"}) != nil, endpoints(cur, "web"), endpoints(before, "web"))
	}
	a.Register("db-1", "db", 18085, 21005, map[string]string{MetaProtocol: "tcp"})
	waitCatalog(t, w, "fixed registration", func(c *mesh.Catalog) bool {
		return equal("127.0.0.1:21005")(endpoints(c, "db"))
	})
	// Instances that disagree are an error too, naming both.
	a.Register("db-2", "db", 18086, 21006, map[string]string{MetaProtocol: "http"})
	testwait.Until(t, testwait.Timeout, func() error {
		if st := w.Status(); !strings.Contains(st.CatalogError, "instances disagree") {
			return fmt.Errorf("disagreeing instances not reported; status %+v", st)
		}
		return nil
	})
	a.Deregister("db-2")
	testwait.Until(t, testwait.Timeout, func() error {
		if e := w.Status().CatalogError; e != "" {
			return fmt.Errorf("catalog error not cleared after the fix: %q", e)
		}
		return nil
	})
}

func TestWatcherKeepsCatalogWhileConsulIsDownAndResyncs(t *testing.T) {
	a := consultest.Start(t, "")
	a.Register("web-1", "web", 18080, 21000, nil)
	a.Register("api-1", "api", 18081, 21001, nil, api.Upstream{DestinationName: "web", LocalBindPort: 9191})
	// Push the services index well above what a fresh agent reaches after a
	// few registrations, so that the restart below is an index reset.
	for i := range 40 {
		id := fmt.Sprintf("filler-%d", i)
		if err := a.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: id, Name: "filler", Port: 30000 + i}); err != nil {
			t.Fatal(err)
		}
		a.Deregister(id)
	}
	w := runWatcher(t, a, Options{})
	c := waitCatalog(t, w, "initial", func(c *mesh.Catalog) bool {
		return len(endpoints(c, "web")) == 1 && len(endpoints(c, "api")) == 1 &&
			c.Service(mesh.ServiceKey{Namespace: "default", Name: "filler"}) == nil
	})

	a.Stop()
	// Wait until the watcher has failed to reach Consul several times and
	// has been out of sync for a second.
	testwait.Until(t, testwait.Timeout, func() error {
		if st := w.Status(); st.Errors < 3 || st.SyncAge < time.Second {
			return fmt.Errorf("stopped agent not reflected in status: %+v", st)
		}
		return nil
	})
	// Consul has been down for a while: nothing may have been emitted but
	// c itself (waitCatalog may have found it served before its publish
	// reached Updates).
	select {
	case got := <-w.Updates():
		if got == c {
			break
		}
		h1, _ := hashCatalog(c)
		h2, _ := hashCatalog(got)
		j1, _ := json.Marshal(c.Services())
		j2, _ := json.Marshal(got.Services())
		t.Fatalf("a catalog was emitted while Consul was down: web=%v %s %s\n%s\n%s", endpoints(got, "web"), h1, h2, j1, j2)
	default:
	}
	if w.Current() != c {
		t.Fatal("the served catalog changed while Consul was down")
	}
	st := w.Status()
	if st.LastError == "" || st.SyncAge < time.Second || st.StaleSince.IsZero() {
		t.Errorf("status while down = %+v, want last error, sync age ≥ 1s", st)
	}
	t.Logf("while down: errors=%d syncAge=%s lastError=%q", st.Errors, st.SyncAge, st.LastError)

	// A fresh (empty, low-index) agent on the same address, with a different
	// set of instances: the watcher must reconnect and converge on it.
	a.Start()
	a.Register("web-1", "web", 18080, 21000, nil)
	a.Register("web-3", "web", 18083, 21003, nil)
	a.Register("api-1", "api", 18081, 21001, nil, api.Upstream{DestinationName: "web", LocalBindPort: 9191})
	waitCatalog(t, w, "resync after restart", func(c *mesh.Catalog) bool {
		return equal("127.0.0.1:21000", "127.0.0.1:21003")(endpoints(c, "web")) && len(endpoints(c, "api")) == 1
	})
	testwait.Until(t, testwait.Timeout, func() error {
		if st = w.Status(); st.SyncAge != 0 || st.LastError != "" {
			return fmt.Errorf("status did not recover: %+v", st)
		}
		return nil
	})
	if st.IndexResets == 0 {
		t.Errorf("restarted agent's lower index was not seen as a reset: %+v", st)
	}
	t.Logf("after restart: %+v", st)
}

func TestWatcherStaleReadsAndDatacenter(t *testing.T) {
	a := consultest.Start(t, "")
	a.Register("web-1", "web", 18080, 21000, nil)
	// Stale reads and an explicit datacenter reach the same catalog.
	w := runWatcher(t, a, Options{Stale: true, Datacenter: "dc1"})
	waitCatalog(t, w, "web with stale reads", func(c *mesh.Catalog) bool { return len(endpoints(c, "web")) == 1 })

	// A datacenter Consul does not know is an error in the status, and no
	// catalog (never an empty one).
	w2, err := NewWatcher(Options{Address: a.Addr, Datacenter: "nowhere", MinBackoff: 20 * time.Millisecond, MaxBackoff: 50 * time.Millisecond, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := w2.Run(ctx); err != nil {
		t.Fatal(err)
	}
	st := w2.Status()
	if w2.Current() != nil || st.Synced || st.Errors == 0 || !strings.Contains(st.LastError, "No path to datacenter") {
		t.Errorf("unknown datacenter: current=%v status=%+v, want no catalog and a 'No path to datacenter' error", w2.Current(), st)
	}
}
