package snapshot

import (
	"fmt"
	"runtime"
	"slices"
	"testing"

	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"

	"github.com/meshd/meshd/internal/metrics"
	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/xds"
)

// largeMesh is the design-target scale: services × endpoints, and proxies
// each fronting one service and calling `upstreams` others.
func largeMesh(services, endpoints, proxies, upstreams int) ([]mesh.Service, []mesh.Proxy) {
	svcs := make([]mesh.Service, services)
	for i := range svcs {
		proto := mesh.ProtocolHTTP
		if i%5 == 0 {
			proto = mesh.ProtocolGRPC
		}
		svcs[i] = mesh.Service{Name: fmt.Sprintf("svc-%04d", i), Namespace: "ns-" + fmt.Sprint(i%10), Protocol: proto}
		for e := range endpoints {
			svcs[i].Endpoints = append(svcs[i].Endpoints, mesh.Endpoint{
				Address:  fmt.Sprintf("10.%d.%d.%d", i/250, i%250, e+1),
				Port:     15001,
				Locality: mesh.Locality{Region: "r1", Zone: fmt.Sprintf("z%d", e%3)},
			})
		}
	}
	pxs := make([]mesh.Proxy, proxies)
	for i := range pxs {
		s := &svcs[i%services]
		p := mesh.Proxy{ID: fmt.Sprintf("proxy-%05d", i), Service: s.Name, Namespace: s.Namespace,
			Address: fmt.Sprintf("10.200.%d.%d", i/250, i%250), PublicPort: 15001, AppPort: 8080}
		for u := range upstreams {
			up := &svcs[(i+u*7+1)%services]
			p.Upstreams = append(p.Upstreams, mesh.Upstream{Service: up.Name, Namespace: up.Namespace, LocalPort: uint32(9001 + u)})
		}
		pxs[i] = p
	}
	return svcs, pxs
}

// allServicesMesh is largeMesh with every service visible to every proxy:
// transparent sidecars with upstreamNamespaces ["*"] and services with
// virtual addresses (xds-load --all-services).
func allServicesMesh(services, endpoints, proxies int) ([]mesh.Service, []mesh.Proxy) {
	svcs, pxs := largeMesh(services, endpoints, proxies, 0)
	for i := range svcs {
		svcs[i].Address, svcs[i].Port = fmt.Sprintf("10.96.%d.%d", i/250, i%250+1), 80
	}
	for i := range pxs {
		pxs[i].Mode, pxs[i].CapturePort, pxs[i].Passthrough = mesh.ModeTransparent, 15006, mesh.PassthroughAllow
		pxs[i].UpstreamNamespaces = []string{mesh.AllNamespaces}
	}
	return svcs, pxs
}

// publishMesh publishes a catalog of svcs and pxs on pub.
func publishMesh(tb testing.TB, pub *Publisher, svcs []mesh.Service, pxs []mesh.Proxy) *mesh.Catalog {
	tb.Helper()
	cat, err := mesh.NewCatalog(svcs, pxs)
	if err != nil {
		tb.Fatal(err)
	}
	pub.Update(Update{Catalog: cat})
	if _, err := pub.Publish(); err != nil {
		tb.Fatal(err)
	}
	return cat
}

func benchPublisher() (*Publisher, cachev3.SnapshotCache) {
	cache := cachev3.NewSnapshotCache(false, cachev3.IDHash{}, nil)
	return New(cache, &fakeSecrets{}, Options{Translate: xds.Options{TrustDomain: "cluster.local"}, Metrics: metrics.New()}), cache
}

// BenchmarkPublishCold renders and publishes 10,000 proxies (1,000 services
// × 10 endpoints, 5 upstreams each) from nothing, and reports the heap the
// publisher and cache retain per proxy afterwards (its rendered state).
func BenchmarkPublishCold(b *testing.B) {
	svcs, pxs := largeMesh(1000, 10, 10000, 5)
	benchPublishCold(b, svcs, pxs)
}

// BenchmarkPublishColdAllServices is BenchmarkPublishCold with every
// proxy seeing all 200 services (× 10 endpoints), at 1,000 and 3,000
// proxies (issue 14).
func BenchmarkPublishColdAllServices(b *testing.B) {
	for _, n := range []int{1000, 3000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			svcs, pxs := allServicesMesh(200, 10, n)
			benchPublishCold(b, svcs, pxs)
		})
	}
}

func benchPublishCold(b *testing.B, svcs []mesh.Service, pxs []mesh.Proxy) {
	cat, err := mesh.NewCatalog(svcs, pxs)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	var heapPerProxy float64
	for b.Loop() {
		runtime.GC()
		var before runtime.MemStats
		runtime.ReadMemStats(&before)
		pub, cache := benchPublisher()
		pub.Update(Update{Catalog: cat})
		st, err := pub.Publish()
		if err != nil || st.Pushed != len(pxs) {
			b.Fatalf("%+v %v", st, err)
		}
		b.StopTimer()
		runtime.GC()
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		heapPerProxy = float64(after.HeapAlloc-before.HeapAlloc) / float64(len(pxs))
		runtime.KeepAlive(pub)
		runtime.KeepAlive(cache)
		b.StartTimer()
	}
	b.ReportMetric(heapPerProxy, "heap-B/proxy")
}

// BenchmarkPublishEndpointChange publishes one endpoint added to (and, on
// alternate rounds, removed from) the most called service, at 1,000, 3,000
// and 10,000 proxies (issue 14):
//
//   - scoped: 5 upstreams per proxy, 200/600/1,000 services × 10 endpoints
//     (scenarios M and L of docs/performance.md), so the change concerns
//     about 25/25/50 callers;
//   - all: every proxy calls every other one of 200 services × 10
//     endpoints, so the change concerns every proxy but the service's own;
//   - visible: the same services all visible to every proxy without
//     listing them (transparent sidecars with upstreamNamespaces ["*"],
//     xds-load --all-services), so the change concerns every proxy.
//
// It reports the proxies the publish looked at (visited), rendered and
// patched, the bytes of resources the publish newly encoded, and the bytes
// meshd's state-of-the-world loop sends per changed proxy for it
// (pseudo-delta: changed resources only, but complete listener and
// cluster sets).
//
//	go test -run '^$' -bench PublishEndpointChange -benchtime 20x ./snapshot/
func BenchmarkPublishEndpointChange(b *testing.B) {
	for _, c := range []struct {
		name                         string
		proxies, services, upstreams int
	}{
		{"scoped/1000", 1000, 200, 5}, {"scoped/3000", 3000, 600, 5}, {"scoped/10000", 10000, 1000, 5},
		{"all/1000", 1000, 200, -1}, {"all/3000", 3000, 200, -1}, {"all/10000", 10000, 200, -1},
		{"visible/1000", 1000, 200, 0}, {"visible/3000", 3000, 200, 0}, {"visible/10000", 10000, 200, 0},
	} {
		b.Run(c.name, func(b *testing.B) {
			var svcs []mesh.Service
			var pxs []mesh.Proxy
			switch c.upstreams {
			case 0:
				svcs, pxs = allServicesMesh(c.services, 10, c.proxies)
			case -1:
				svcs, pxs = largeMesh(c.services, 10, c.proxies, c.services-1)
			default:
				svcs, pxs = largeMesh(c.services, 10, c.proxies, c.upstreams)
			}
			pub, cache := benchPublisher()
			cat := publishMesh(b, pub, svcs, pxs)
			// Two catalogs that differ by one endpoint of the most called
			// service (every service is called by about as many proxies).
			changed := make([]mesh.Service, len(svcs))
			copy(changed, svcs)
			changed[1].Endpoints = append(slices.Clone(svcs[1].Endpoints), mesh.Endpoint{Address: "10.99.0.1", Port: 15001})
			cat2, err := mesh.NewCatalog(changed, pxs)
			if err != nil {
				b.Fatal(err)
			}
			cats := []*mesh.Catalog{cat2, cat}
			var st Stats
			var encoded, sent float64
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				b.StopTimer()
				before := map[string]cachev3.ResourceSnapshot{}
				for _, p := range pxs {
					before[p.ID], _ = cache.GetSnapshot(p.ID)
				}
				b.StartTimer()
				pub.Update(Update{Catalog: cats[i%2]})
				i++
				var err error
				if st, err = pub.Publish(); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				encoded, sent = pushCost(b, pxs, before, cache)
				b.StartTimer()
			}
			if st.Pushed == 0 {
				b.Fatalf("nothing pushed: %+v", st)
			}
			b.ReportMetric(float64(st.Visited), "visited/op")
			b.ReportMetric(float64(st.Rendered), "rendered/op")
			b.ReportMetric(float64(st.Patched), "patched/op")
			b.ReportMetric(encoded, "encoded-B/op")
			b.ReportMetric(sent/float64(st.Pushed), "sent-B/pushed-proxy")
		})
	}
}

// pushCost compares every proxy's snapshot with its previous one: the
// bytes of distinct resources that are new in this publish (what it
// encoded), and the bytes of the resources meshd's SotW loop sends for the
// change (changed resources of pseudo-delta types; every resource of a
// changed Listener or Cluster set).
func pushCost(b *testing.B, pxs []mesh.Proxy, before map[string]cachev3.ResourceSnapshot, cache cachev3.SnapshotCache) (encoded, sent float64) {
	seen := map[*xds.Resource]bool{}
	for _, p := range pxs {
		s, _ := cache.GetSnapshot(p.ID)
		old, _ := before[p.ID].(*Snapshot)
		cur, _ := s.(*Snapshot)
		if old == nil || cur == nil || old == cur {
			continue
		}
		for _, typ := range []string{resourcev3.ListenerType, resourcev3.ClusterType, resourcev3.RouteType, resourcev3.EndpointType, resourcev3.SecretType} {
			was, wv := old.Resources(typ)
			now, nv := cur.Resources(typ)
			if wv == nv {
				continue
			}
			had := map[string]string{}
			for _, r := range was {
				had[r.Name] = r.Hash
			}
			full := typ == resourcev3.ListenerType || typ == resourcev3.ClusterType
			for _, r := range now {
				size := 0
				if r.Wire != nil {
					size = len(r.Wire.GetValue())
				} else {
					size = proto.Size(r.Message)
				}
				if had[r.Name] != r.Hash {
					if !seen[r] {
						seen[r] = true
						encoded += float64(size)
					}
				} else if !full {
					continue
				}
				sent += float64(size)
			}
		}
	}
	return encoded, sent
}

// BenchmarkTranslateProxy renders one proxy with a warm shared-resource memo
// (the steady-state cost of a proxy whose own inputs changed).
func BenchmarkTranslateProxy(b *testing.B) {
	svcs, pxs := largeMesh(1000, 10, 10000, 5)
	cat, err := mesh.NewCatalog(svcs, pxs)
	if err != nil {
		b.Fatal(err)
	}
	tr := xds.NewTranslator(xds.Options{TrustDomain: "cluster.local"})
	gen := tr.Generation(cat, nil)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, err := gen.Proxy(pxs[i%len(pxs)].ID); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// Proxies whose set of a type is identical share one set (the sidecars of
// a service: same local_app cluster, same upstreams); sets that differ
// (inbound listeners carry each proxy's address) are not shared, and the
// shared parts are exactly the proxy's resources.
func TestIdenticalTypeSetsAreShared(t *testing.T) {
	svcs, pxs := largeMesh(20, 3, 40, 2) // proxy i and i+20: same service, same upstreams
	pub, _ := benchPublisher()
	cat := publishMesh(t, pub, svcs, pxs)
	a, b, other := pub.Snapshot("proxy-00001"), pub.Snapshot("proxy-00021"), pub.Snapshot("proxy-00002")
	same := func(x, y *Snapshot, typ string) bool {
		xs, _ := x.Resources(typ)
		ys, _ := y.Resources(typ)
		return len(xs) > 0 && &xs[0] == &ys[0]
	}
	for _, typ := range []string{resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.RouteType} {
		if !same(a, b, typ) || a.GetVersion(typ) != b.GetVersion(typ) {
			t.Errorf("%s: sidecars of one service with the same upstreams do not share the set", typ)
		}
		if same(a, other, typ) || a.GetVersion(typ) == other.GetVersion(typ) {
			t.Errorf("%s: proxies of different services share a set", typ)
		}
	}
	if same(a, b, resourcev3.ListenerType) {
		t.Error("listener sets shared although each inbound listener carries its proxy's address")
	}
	// Shared or not, a snapshot holds exactly its proxy's resources.
	for _, id := range []string{"proxy-00001", "proxy-00021"} {
		res, err := xds.Translate(cat, id, xds.Options{TrustDomain: "cluster.local"})
		if err != nil {
			t.Fatal(err)
		}
		snap := pub.Snapshot(id)
		for typ, want := range res.ByType() {
			got := snap.GetVersionMap(typ)
			if len(got) != len(want) {
				t.Fatalf("%s %s: %d resources, want %d", id, typ, len(got), len(want))
			}
			for _, r := range want {
				if got[r.Name] != r.Hash {
					t.Errorf("%s %s %s: version %q, want %q", id, typ, r.Name, got[r.Name], r.Hash)
				}
			}
			// The encodings the server answers from are the snapshot's
			// resources, sorted by name.
			sorted, v := snap.Resources(typ)
			if v != snap.GetVersion(typ) || len(sorted) != len(want) {
				t.Fatalf("%s %s: Resources gave %d resources, version %q", id, typ, len(sorted), v)
			}
			for i, r := range sorted {
				if r.Name != want[i].Name || r.Message != snap.GetResources(typ)[r.Name] {
					t.Errorf("%s %s: resource %d is %s, not the snapshot's %s", id, typ, i, r.Name, want[i].Name)
				}
			}
		}
	}
}

// The table of shared sets belongs to one publisher and forgets a set as
// soon as the last snapshot holding it is replaced or removed, so a
// long-running meshd does not accumulate the sets of every catalog it ever
// served, and two publishers never share state.
func TestTypeSetsAreForgotten(t *testing.T) {
	svcs, pxs := largeMesh(20, 3, 40, 2)
	pub, _ := benchPublisher()
	publishMesh(t, pub, svcs, pxs)
	full := pub.sets.size()
	if full == 0 {
		t.Fatal("no sets held")
	}
	// Held sets are exactly those of the current snapshots.
	distinct := func() int {
		seen := map[*typeSet]bool{}
		for _, st := range pub.proxies {
			for _, ts := range st.snap.sets {
				if ts != nil {
					seen[ts] = true
				}
			}
		}
		return len(seen)
	}
	if d := distinct(); d != full {
		t.Fatalf("table holds %d sets, snapshots use %d", full, d)
	}
	other, _ := benchPublisher()
	if other.sets.size() != 0 {
		t.Fatal("a new publisher starts with another publisher's sets")
	}
	// Change every endpoint: every cluster/endpoint set is replaced.
	for i := range svcs {
		for e := range svcs[i].Endpoints {
			svcs[i].Endpoints[e].Port = 15002
		}
	}
	publishMesh(t, pub, svcs, pxs)
	if d, n := distinct(), pub.sets.size(); d != n {
		t.Fatalf("after a change the table holds %d sets, snapshots use %d", n, d)
	}
	// Remove every proxy: nothing is held.
	publishMesh(t, pub, svcs, nil)
	if n := pub.sets.size(); n != 0 {
		t.Fatalf("%d sets held with no proxies", n)
	}
}

// BenchmarkPublishPolicyChange publishes an authorization policy of one
// service changed (the namespaces it allows, alternating), at 1,000, 3,000
// and 10,000 proxies, scoped and with every service visible. A change of
// authorization policies alone visits the proxies of the policies'
// namespaces (a tenth of the fleet here); input fingerprints then skip the
// ones it does not concern.
//
//	go test -run '^$' -bench PublishPolicyChange -benchtime 20x ./snapshot/
func BenchmarkPublishPolicyChange(b *testing.B) {
	for _, c := range []struct {
		name                         string
		proxies, services, upstreams int
	}{
		{"scoped/1000", 1000, 200, 5}, {"scoped/3000", 3000, 600, 5}, {"scoped/10000", 10000, 1000, 5},
		{"visible/1000", 1000, 200, 0}, {"visible/3000", 3000, 200, 0}, {"visible/10000", 10000, 200, 0},
	} {
		b.Run(c.name, func(b *testing.B) {
			var svcs []mesh.Service
			var pxs []mesh.Proxy
			if c.upstreams == 0 {
				svcs, pxs = allServicesMesh(c.services, 10, c.proxies)
			} else {
				svcs, pxs = largeMesh(c.services, 10, c.proxies, c.upstreams)
			}
			pub, _ := benchPublisher()
			publishMesh(b, pub, svcs, pxs)
			policy := func(ns string) *mesh.PolicySet {
				return &mesh.PolicySet{RootNamespace: mesh.DefaultRootNamespace, Authorizations: []mesh.AuthorizationPolicy{{
					Name: "callers", Namespace: svcs[1].Namespace, Service: svcs[1].Name, Action: mesh.ActionAllow,
					Rules: []mesh.Rule{{From: []mesh.Source{{Namespaces: []string{ns}}}}},
				}}}
			}
			policies := []*mesh.PolicySet{policy("ns-2"), policy("ns-3")}
			pub.Update(Update{Policy: policies[1]})
			if _, err := pub.Publish(); err != nil {
				b.Fatal(err)
			}
			var st Stats
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				pub.Update(Update{Policy: policies[i%2]})
				i++
				var err error
				if st, err = pub.Publish(); err != nil {
					b.Fatal(err)
				}
			}
			if st.Pushed == 0 {
				b.Fatalf("nothing pushed: %+v", st)
			}
			b.ReportMetric(float64(st.Visited), "visited/op")
			b.ReportMetric(float64(st.Rendered), "rendered/op")
			b.ReportMetric(float64(st.Pushed), "pushed/op")
		})
	}
}
