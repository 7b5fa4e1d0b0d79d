package loadgen

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/meshd/meshd/discovery/file"
	"github.com/meshd/meshd/internal/inputfile"
	"github.com/meshd/meshd/internal/testwait"
	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/policy"
)

// parse checks a generated catalog the way meshd will read it, in the
// catalog's format.
func parse(t *testing.T, c *Catalog) *mesh.Catalog {
	t.Helper()
	b, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	cat, err := file.Parse(c.Format.FileName(), b)
	if err != nil {
		t.Fatalf("meshd rejects the generated catalog: %v", err)
	}
	return cat
}

func TestGenerateGivesValidCatalogs(t *testing.T) {
	for _, sc := range []Scenario{
		Presets["S"], Presets["M"],
		{Name: "all", Proxies: 30, Services: 12, Endpoints: 3, AllServices: true},
	} {
		t.Run(sc.Name, func(t *testing.T) {
			c, err := Generate(sc)
			if err != nil {
				t.Fatal(err)
			}
			cat := parse(t, c)
			if len(cat.Proxies()) != sc.Proxies || len(cat.Services()) != sc.Services {
				t.Fatalf("got %d proxies, %d services; want %d, %d", len(cat.Proxies()), len(cat.Services()), sc.Proxies, sc.Services)
			}
			for _, p := range cat.Proxies() {
				if sc.AllServices {
					// Every service visible through upstreamNamespaces: no
					// list of upstreams that grows with the services.
					if len(p.Upstreams) != 0 || !slices.Equal(p.UpstreamNamespaces, []string{mesh.AllNamespaces}) || !p.Transparent() {
						t.Fatalf("proxy %s: %d upstreams, namespaces %v, mode %q; want a transparent sidecar seeing every namespace", p.ID, len(p.Upstreams), p.UpstreamNamespaces, p.Mode)
					}
					continue
				}
				if len(p.Upstreams) != sc.Upstreams {
					t.Fatalf("proxy %s has %d upstreams, want %d", p.ID, len(p.Upstreams), sc.Upstreams)
				}
			}
			if sc.AllServices {
				for _, s := range cat.Services() {
					if !s.VirtualAddress() {
						t.Fatalf("service %s has no virtual address", s.Key())
					}
				}
				// Every proxy calls every service, its own included.
				if n := len(c.Consumers(cat.Services()[0].Key())); n != sc.Proxies {
					t.Fatalf("a service has %d consumers, want all %d proxies", n, sc.Proxies)
				}
			}
			// Churn targets the most consumed service; it must have consumers.
			if s := c.MostConsumed(); s == nil || len(c.Consumers(s.Key())) == 0 {
				t.Fatal("no consumed service to churn")
			}
		})
	}
	if _, err := Generate(Scenario{Name: "bad", Proxies: 10, Services: 3, Upstreams: 3}); err == nil {
		t.Error("3 upstreams out of 3 services (one is the proxy's own) accepted")
	}
}

// TestJSONCatalogRoundTrips: the JSON rendering is read by meshd's parser
// (on its fast path: every line is plain JSON) into the same catalog as the
// YAML rendering, and LoadCatalog reads either back as it was.
func TestJSONCatalogRoundTrips(t *testing.T) {
	c, err := Generate(Presets["S"])
	if err != nil {
		t.Fatal(err)
	}
	fromYAML := parse(t, c)
	c.Format = FormatJSON
	b, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if DetectCatalogFormat(b) != FormatJSON || !bytes.HasPrefix(b, []byte("{")) {
		t.Fatalf("JSON rendering starts %q", b[:min(len(b), 40)])
	}
	// One line per service and proxy, plus the lines opening and closing
	// the two lists.
	if n := bytes.Count(b, []byte("\n")); n != len(c.Services)+len(c.Proxies)+4 {
		t.Errorf("JSON rendering has %d lines, want %d", n, len(c.Services)+len(c.Proxies)+4)
	}
	fromJSON, err := file.Parse("generated.json", b)
	if err != nil {
		t.Fatalf("meshd rejects the generated JSON catalog: %v", err)
	}
	if !reflect.DeepEqual(fromJSON, fromYAML) {
		t.Error("the JSON and YAML renderings of one catalog load differently")
	}

	dir := t.TempDir()
	for _, format := range []CatalogFormat{FormatYAML, FormatJSON} {
		c.Format = format
		path := filepath.Join(dir, format.FileName())
		if err := c.WriteAtomic(path); err != nil {
			t.Fatal(err)
		}
		back, err := LoadCatalog(path)
		if err != nil {
			t.Fatalf("%s: %v", format, err)
		}
		if back.Format != format {
			t.Errorf("%s: read back as %s", format, back.Format)
		}
		if !reflect.DeepEqual(back.Services, c.Services) || !reflect.DeepEqual(back.Proxies, c.Proxies) {
			t.Errorf("%s: the catalog read back differs from the one written", format)
		}
	}
	// The temporary files were renamed into place, not left behind.
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if strings.Join(names, " ") != "catalog.json catalog.yaml" {
		t.Errorf("catalog directory holds %v, want catalog.json and catalog.yaml", names)
	}
	// A file meshd would refuse is refused with meshd's message.
	bad := filepath.Join(dir, "bad.json")
	if err := os.WriteFile(bad, []byte(`{"services": [{"name": "web", "prot": "http"}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCatalog(bad); err == nil || !strings.Contains(err.Error(), bad+`: line 1: unknown field "prot" in service (services[0]); did you mean "protocol"?`) {
		t.Errorf("LoadCatalog(bad) = %v", err)
	}
	for in, want := range map[string]CatalogFormat{"": "", "yaml": FormatYAML, "yml": FormatYAML, "json": FormatJSON} {
		if got, err := ParseCatalogFormat(in); err != nil || got != want {
			t.Errorf("ParseCatalogFormat(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := ParseCatalogFormat("toml"); err == nil {
		t.Error("ParseCatalogFormat accepted toml")
	}
}

func TestChurnKeepsCatalogValid(t *testing.T) {
	for _, format := range []CatalogFormat{FormatYAML, FormatJSON} {
		t.Run(string(format), func(t *testing.T) { testChurnKeepsCatalogValid(t, format) })
	}
}

func testChurnKeepsCatalogValid(t *testing.T, format CatalogFormat) {
	c, err := Generate(Presets["S"])
	if err != nil {
		t.Fatal(err)
	}
	c.Format = format
	before, _ := c.Marshal()
	ch := &churner{cat: c, policyDir: t.TempDir()}
	for _, kind := range ChurnKinds {
		steps, err := ch.steps(kind)
		if err != nil {
			t.Fatal(err)
		}
		for _, step := range steps {
			change, err := step()
			if kind == "leaf-rotation" {
				// Made through meshd's admin API, which this churner lacks.
				if !errors.Is(err, ErrUnsupported) {
					t.Errorf("leaf-rotation without an admin address: got %v, want ErrUnsupported", err)
				}
				continue
			}
			if err != nil {
				t.Fatalf("%s: %v", kind, err)
			}
			if kind == "policy" {
				checkPolicyChurn(t, ch.policyDir, change)
			}
			parse(t, c)
			if kind != "noop" && len(change.Affected) == 0 {
				t.Errorf("%s affects no proxy", kind)
			}
			if kind == "noop" && len(change.Affected) != 0 {
				t.Errorf("noop affects %d proxies", len(change.Affected))
			}
		}
	}
	// A full round undoes itself apart from the no-op's reordering: meshd
	// sees the same mesh again.
	slicesReverse(c)
	after, _ := c.Marshal()
	if string(before) != string(after) {
		t.Error("a round of churn does not return to the original catalog")
	}
	for kind := range FutureChurnKinds {
		if _, err := ch.steps(kind); !errors.Is(err, ErrUnsupported) {
			t.Errorf("%s: got %v, want ErrUnsupported", kind, err)
		}
	}
	if _, err := ch.steps("nonsense"); err == nil || errors.Is(err, ErrUnsupported) {
		t.Errorf("unknown kind: got %v", err)
	}
}

func slicesReverse(c *Catalog) {
	for i, j := 0, len(c.Services)-1; i < j; i, j = i+1, j-1 {
		c.Services[i], c.Services[j] = c.Services[j], c.Services[i]
	}
	for i, j := 0, len(c.Proxies)-1; i < j; i, j = i+1, j-1 {
		c.Proxies[i], c.Proxies[j] = c.Proxies[j], c.Proxies[i]
	}
}

func TestParseMetrics(t *testing.T) {
	m := ParseMetrics(`# HELP x y
# TYPE meshd_xds_pushes_total counter
meshd_xds_pushes_total{type="Cluster"} 3
meshd_xds_pushes_total{type="Listener",x="a b}"} 4
go_memstats_heap_inuse_bytes 1.2345e+06
process_start_time_seconds 1.7e+09 1700000000000
broken_line
`)
	for name, want := range map[string]float64{
		"meshd_xds_pushes_total":                 7,
		`meshd_xds_pushes_total{type="Cluster"}`: 3,
		"go_memstats_heap_inuse_bytes":           1234500,
		"process_start_time_seconds":             1.7e9,
	} {
		if got := m.Get(name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	if m.Has("broken_line") {
		t.Error("a line without a value was parsed")
	}
}

func TestTemplateNodes(t *testing.T) {
	nodes, err := templateNodes("sidecar~10.0.{{.I}}~x.ns~ns.svc.cluster.local", 3, map[string]any{"A": "b"})
	if err != nil {
		t.Fatal(err)
	}
	if nodes[2].ID != "sidecar~10.0.2~x.ns~ns.svc.cluster.local" || nodes[0].Metadata["A"] != "b" {
		t.Errorf("got %+v", nodes)
	}
	if _, err := templateNodes("same", 2, nil); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Errorf("duplicate ids: got %v", err)
	}
}

// testServer is an in-process go-control-plane xDS server (plaintext).
func testServer(t *testing.T) (string, cachev3.SnapshotCache) {
	t.Helper()
	cache := cachev3.NewSnapshotCache(false, cachev3.IDHash{}, nil)
	gs := grpc.NewServer()
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(gs, serverv3.NewServer(context.Background(), cache, nil))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	return lis.Addr().String(), cache
}

func edsCluster(name string, timeout time.Duration) *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 name,
		ConnectTimeout:       durationpb.New(timeout),
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{
			EdsConfig: &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}},
		},
	}
}

func setSnap(t *testing.T, cache cachev3.SnapshotCache, node, version string, timeout time.Duration) {
	t.Helper()
	snap, err := cachev3.NewSnapshot(version, map[resourcev3.Type][]types.Resource{
		resourcev3.ClusterType:  {edsCluster("c1", timeout)},
		resourcev3.EndpointType: {&endpointv3.ClusterLoadAssignment{ClusterName: "c1"}},
		resourcev3.ListenerType: {},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := cache.SetSnapshot(context.Background(), node, snap); err != nil {
		t.Fatal(err)
	}
}

// TestFleetACKsValidAndNACKsInvalid runs the client against a plain
// go-control-plane server: a valid snapshot is followed to EDS and ACKed;
// a cluster with a negative connect timeout (invalid per Envoy's rules) is
// NACKed and the proxy keeps the previous cluster.
func TestFleetACKsValidAndNACKsInvalid(t *testing.T) {
	for _, delta := range []bool{false, true} {
		name := "sotw"
		if delta {
			name = "delta"
		}
		t.Run(name, func(t *testing.T) {
			addr, cache := testServer(t)
			setSnap(t, cache, "n0", "v1", time.Second)
			f, err := NewFleet(ClientConfig{Address: addr, Delta: delta, StreamsPerConn: 2}, []NodeSpec{{ID: "n0"}})
			if err != nil {
				t.Fatal(err)
			}
			f.Start(context.Background())
			defer f.Stop()
			p := f.Proxy("n0")
			testwait.For(t, testwait.Timeout, "sync", func() bool { return !p.View().SyncedAt.IsZero() })
			if f.ACKs.Load() < 3 || f.NACKs.Load() != 0 {
				t.Fatalf("after sync: %d ACKs, %d NACKs; want ≥3 (CDS, LDS, EDS) and 0", f.ACKs.Load(), f.NACKs.Load())
			}
			// Fires only if the rejected cluster were applied.
			p.Watch(func(p *Proxy) bool {
				c, _ := p.Resource(resourcev3.ClusterType, "c1").(*clusterv3.Cluster)
				return c.GetConnectTimeout().AsDuration() < 0
			})

			setSnap(t, cache, "n0", "v2", -time.Second)
			// A bare go-control-plane server resends the rejected version
			// over and over (FACTS.md); meshd's tracker is what stops that,
			// so here only "at least one" can be asserted.
			testwait.For(t, testwait.Timeout, "a NACK", func() bool { return f.NACKs.Load() >= 1 })
			v := p.View()
			if !strings.Contains(v.NACKMessage, "ConnectTimeout") {
				t.Errorf("NACK message %q does not name the invalid field", v.NACKMessage)
			}
			p.mu.Lock()
			c, _ := p.Resource(resourcev3.ClusterType, "c1").(*clusterv3.Cluster)
			p.mu.Unlock()
			if c.GetConnectTimeout().AsDuration() != time.Second {
				t.Errorf("rejected cluster applied: timeout %v", c.GetConnectTimeout().AsDuration())
			}
			if !v.WatchHit.IsZero() {
				t.Error("a watch fired on a NACKed response")
			}
		})
	}
}

func TestDist(t *testing.T) {
	var ds []time.Duration
	for i := 1; i <= 100; i++ {
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	d := distOf(ds, 2)
	if d.P50 != 50*time.Millisecond || d.P99 != 99*time.Millisecond || d.Max != 100*time.Millisecond || d.Missing != 2 {
		t.Errorf("got %+v", d)
	}
}

// checkPolicyChurn applies a policy churn step and checks that meshd's own
// policy loader reads what it wrote: one DENY policy after the add, nothing
// after the remove.
func checkPolicyChurn(t *testing.T, dir string, change *Change) {
	t.Helper()
	had, _ := os.ReadDir(dir)
	if err := change.Apply(context.Background()); err != nil {
		t.Fatalf("policy churn: %v", err)
	}
	ps, err := policy.LoadDir(dir, inputfile.DefaultMaxSize)
	if err != nil {
		t.Fatalf("meshd refuses the churn's policy: %v", err)
	}
	n := len(ps.Set(mesh.DefaultRootNamespace, mesh.MTLSPermissive).Authorizations)
	if adding := len(had) == 0; adding && n != 1 || !adding && n != 0 {
		t.Fatalf("after the policy churn step (add=%v) meshd reads %d authorization policies", adding, n)
	}
}

// TestReconnectOpensANewStreamAndSyncsAgain ends a synced proxy's stream:
// it must open a second one and sync on it, with state from that stream
// only.
func TestReconnectOpensANewStreamAndSyncsAgain(t *testing.T) {
	for _, delta := range []bool{false, true} {
		t.Run(map[bool]string{false: "sotw", true: "delta"}[delta], func(t *testing.T) {
			addr, cache := testServer(t)
			setSnap(t, cache, "n0", "v1", time.Second)
			f, err := NewFleet(ClientConfig{Address: addr, Delta: delta}, []NodeSpec{{ID: "n0"}})
			if err != nil {
				t.Fatal(err)
			}
			f.Start(context.Background())
			defer f.Stop()
			p := f.Proxy("n0")
			testwait.For(t, testwait.Timeout, "first sync", func() bool { return !p.View().SyncedAt.IsZero() })
			first := p.View()
			p.Reconnect()
			testwait.For(t, testwait.Timeout, "sync on a second stream", func() bool {
				v := p.View()
				return v.Streams == 2 && !v.SyncedAt.IsZero()
			})
			if v := p.View(); !v.StreamStart.After(first.SyncedAt) || v.Responses <= first.Responses {
				t.Errorf("second stream started %v (first synced %v), responses %d then %d: not a fresh sync", v.StreamStart, first.SyncedAt, first.Responses, v.Responses)
			}
			if f.NACKs.Load() != 0 {
				t.Errorf("%d NACKs", f.NACKs.Load())
			}
		})
	}
}

func TestNodeSpecs(t *testing.T) {
	cat, err := Generate(Scenario{Name: "t", Proxies: 3, Services: 2, Endpoints: 1, Upstreams: 1})
	if err != nil {
		t.Fatal(err)
	}
	tok := func(k mesh.ServiceKey) (string, error) { return "token-of-" + k.Name, nil }
	nodes, err := cat.NodeSpecs([]string{"proxy-00001"}, tok, map[string]any{"X": "y"})
	if err != nil {
		t.Fatal(err)
	}
	p := cat.Proxy("proxy-00001")
	if len(nodes) != 1 || nodes[0].ID != "proxy-00001" || nodes[0].Token != "token-of-"+p.Service || nodes[0].Metadata["X"] != "y" || nodes[0].Cluster != p.Service {
		t.Errorf("node specs: %+v", nodes)
	}
	if _, err := cat.NodeSpecs([]string{"nope"}, tok, nil); err == nil {
		t.Error("an id not in the catalog was accepted")
	}
}
