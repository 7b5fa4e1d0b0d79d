package server

import (
	"log/slog"
	"maps"
	"slices"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/stream/v3"
	"google.golang.org/protobuf/proto"

	"github.com/meshd/meshd/sds"
)

// The wire cache must answer exactly what go-control-plane's snapshot cache
// answers (same version, same resources byte for byte, same record of what
// was returned), only from the shared encodings; and leave to the cache
// every request it would not answer at once and every snapshot the
// publisher did not build.
func TestWireCacheAnswersAsTheSnapshotCache(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	ca, err := sds.LoadOrCreate(sds.Options{DataDir: t.TempDir(), TrustDomain: "cluster.local", Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	_, cache, _, _, _ := publishQuickstart(t, ca, log)
	wc := wireCache{SnapshotCache: cache}
	node := &corev3.Node{Id: "web.default"}
	snap, err := cache.GetSnapshot("web.default")
	if err != nil {
		t.Fatal(err)
	}
	var edsNames []string
	for n := range snap.GetResources(resourcev3.EndpointType) {
		edsNames = append(edsNames, n)
	}
	slices.Sort(edsNames)

	// What each answers to the same request, with a fresh subscription
	// (returned: what the client already has).
	answerWith := func(c cachev3.ConfigWatcher, req *discoveryv3.DiscoveryRequest, returned map[string]string) cachev3.Response {
		t.Helper()
		ch := make(chan cachev3.Response, 1)
		sub := stream.NewSotwSubscription(req.GetResourceNames(), req.GetTypeUrl() == resourcev3.ClusterType || req.GetTypeUrl() == resourcev3.ListenerType)
		if returned != nil {
			sub.SetReturnedResources(returned)
		}
		cancel, err := c.CreateWatch(req, &sub, ch)
		if err != nil {
			t.Fatal(err)
		}
		defer cancel()
		select {
		case r := <-ch:
			return r
		default:
			return nil
		}
	}
	answer := func(c cachev3.ConfigWatcher, req *discoveryv3.DiscoveryRequest) cachev3.Response {
		t.Helper()
		return answerWith(c, req, nil)
	}
	same := func(name string, req *discoveryv3.DiscoveryRequest) {
		t.Helper()
		got, want := answer(wc, req), answer(cache, proto.Clone(req).(*discoveryv3.DiscoveryRequest))
		if want == nil {
			t.Fatalf("%s: the snapshot cache does not answer at once; the test expects it to", name)
		}
		if got == nil {
			t.Fatalf("%s: no immediate answer", name)
		}
		if _, ok := got.(*cachev3.PassthroughResponse); !ok {
			t.Errorf("%s: answered with %T, not from the shared encodings", name, got)
		}
		g, err := got.GetDiscoveryResponse()
		if err != nil {
			t.Fatal(err)
		}
		w, err := want.GetDiscoveryResponse()
		if err != nil {
			t.Fatal(err)
		}
		if g.GetVersionInfo() != w.GetVersionInfo() || g.GetTypeUrl() != w.GetTypeUrl() {
			t.Errorf("%s: version %q type %q, want %q %q", name, g.GetVersionInfo(), g.GetTypeUrl(), w.GetVersionInfo(), w.GetTypeUrl())
		}
		key := func(r *discoveryv3.DiscoveryResponse) []string {
			var out []string
			for _, a := range r.GetResources() {
				out = append(out, a.GetTypeUrl()+"|"+string(a.GetValue()))
			}
			slices.Sort(out)
			return out
		}
		if !slices.Equal(key(g), key(w)) {
			t.Errorf("%s: %d resources differ from the snapshot cache's %d", name, len(g.GetResources()), len(w.GetResources()))
		}
		if !maps.Equal(got.GetReturnedResources(), want.GetReturnedResources()) {
			t.Errorf("%s: returned %v, want %v", name, got.GetReturnedResources(), want.GetReturnedResources())
		}
	}
	for _, typ := range []string{resourcev3.ClusterType, resourcev3.ListenerType} {
		same("wildcard "+typ, &discoveryv3.DiscoveryRequest{Node: node, TypeUrl: typ})
		same("stale version "+typ, &discoveryv3.DiscoveryRequest{Node: node, TypeUrl: typ, VersionInfo: "old"})
	}
	same("named endpoints", &discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resourcev3.EndpointType, ResourceNames: edsNames})
	same("a subset, a repeat and an unknown name", &discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resourcev3.EndpointType,
		ResourceNames: []string{edsNames[0], "outbound|nothing.default", edsNames[0]}})
	secretNames := slices.Sorted(maps.Keys(snap.GetResources(resourcev3.SecretType)))
	same("secrets", &discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resourcev3.SecretType, ResourceNames: secretNames})

	// Up to date: no answer, a watch (the cache's business).
	v := snap.GetVersion(resourcev3.ClusterType)
	has := map[string]string{}
	for n := range snap.GetResources(resourcev3.ClusterType) {
		has[n] = v
	}
	if r := answerWith(wc, &discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resourcev3.ClusterType, VersionInfo: v}, has); r != nil {
		t.Errorf("answered a request that is up to date with %T", r)
	}
	// Same version but a resource the client was never sent: the cache
	// answers that itself, as before.
	delete(has, slices.Sorted(maps.Keys(has))[0])
	if r := answerWith(wc, &discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resourcev3.ClusterType, VersionInfo: v}, has); r == nil {
		t.Error("a resource the client lacks was not sent")
	} else if _, ok := r.(*cachev3.PassthroughResponse); ok {
		t.Error("the wire cache took a request the snapshot cache decides")
	}
	// A node without a snapshot: nothing yet.
	if r := answer(wc, &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "nobody"}, TypeUrl: resourcev3.ClusterType}); r != nil {
		t.Error("answered a node without a snapshot")
	}
	// A snapshot the publisher did not build goes to the cache as before.
	clusters := snap.GetResources(resourcev3.ClusterType)
	one := clusters[slices.Sorted(maps.Keys(clusters))[0]]
	foreign, err := cachev3.NewSnapshot("v1", map[resourcev3.Type][]types.Resource{resourcev3.ClusterType: {one}})
	if err != nil {
		t.Fatal(err)
	}
	if err := cache.SetSnapshot(t.Context(), "foreign", foreign); err != nil {
		t.Fatal(err)
	}
	r := answer(wc, &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "foreign"}, TypeUrl: resourcev3.ClusterType})
	if r == nil {
		t.Fatal("no answer for a foreign snapshot")
	}
	if _, ok := r.(*cachev3.PassthroughResponse); ok {
		t.Error("answered a snapshot the publisher did not build from shared encodings")
	}
	if d, _ := r.GetDiscoveryResponse(); len(d.GetResources()) != 1 || d.GetVersionInfo() != "v1" {
		t.Errorf("foreign snapshot answer: %v", d)
	}
}
