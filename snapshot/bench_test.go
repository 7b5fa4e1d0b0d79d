package snapshot

import (
	"fmt"
	"runtime"
	"testing"

	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"

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

func benchPublisher() (*Publisher, cachev3.SnapshotCache) {
	cache := cachev3.NewSnapshotCache(false, cachev3.IDHash{}, nil)
	return New(cache, &fakeSecrets{}, Options{Translate: xds.Options{TrustDomain: "cluster.local"}, Metrics: metrics.New()}), cache
}

// BenchmarkPublishCold renders and publishes 10,000 proxies (1,000 services
// × 10 endpoints, 5 upstreams each) from nothing, and reports the heap the
// publisher and cache retain per proxy afterwards.
func BenchmarkPublishCold(b *testing.B) {
	svcs, pxs := largeMesh(1000, 10, 10000, 5)
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
		pub.Update(cat)
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

// BenchmarkPublishEndpointChange measures one endpoint added to one service
// in the same mesh: only that service's callers are re-rendered.
func BenchmarkPublishEndpointChange(b *testing.B) {
	svcs, pxs := largeMesh(1000, 10, 10000, 5)
	cat, err := mesh.NewCatalog(svcs, pxs)
	if err != nil {
		b.Fatal(err)
	}
	pub, _ := benchPublisher()
	pub.Update(cat)
	if _, err := pub.Publish(); err != nil {
		b.Fatal(err)
	}
	// Alternate between two catalogs that differ by one endpoint of svc-0042.
	changed := make([]mesh.Service, len(svcs))
	copy(changed, svcs)
	changed[42].Endpoints = append(append([]mesh.Endpoint(nil), svcs[42].Endpoints...), mesh.Endpoint{Address: "10.99.0.1", Port: 15001})
	cat2, err := mesh.NewCatalog(changed, pxs)
	if err != nil {
		b.Fatal(err)
	}
	cats := []*mesh.Catalog{cat2, cat}
	b.ReportAllocs()
	var rendered int
	i := 0
	for b.Loop() {
		pub.Update(cats[i%2])
		i++
		st, err := pub.Publish()
		if err != nil {
			b.Fatal(err)
		}
		rendered = st.Rendered
	}
	b.ReportMetric(float64(rendered), "proxies-rendered/op")
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
