package server

import (
	"context"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/snapshot"
	"github.com/meshd/meshd/xds"
)

// clientStream is a client stream (SotW or delta) whose responses a
// goroutine reads, so a test can wait for one or for a quiet period.
type clientStream[Req, Resp any] struct {
	st   grpc.BidiStreamingClient[Req, Resp]
	resp chan *Resp
}

func pump[Req, Resp any](st grpc.BidiStreamingClient[Req, Resp]) *clientStream[Req, Resp] {
	c := &clientStream[Req, Resp]{st: st, resp: make(chan *Resp, 16)}
	go func() {
		for {
			r, err := st.Recv()
			if err != nil {
				close(c.resp)
				return
			}
			c.resp <- r
		}
	}()
	return c
}

// within returns the next response, or nil if none comes within d.
func (c *clientStream[Req, Resp]) within(t *testing.T, d time.Duration) *Resp {
	t.Helper()
	select {
	case r, ok := <-c.resp:
		if !ok {
			t.Fatal("stream ended")
		}
		return r
	case <-time.After(d):
		return nil
	}
}

func (c *clientStream[Req, Resp]) next(t *testing.T) *Resp {
	t.Helper()
	r := c.within(t, 5*time.Second)
	if r == nil {
		t.Fatal("no response within 5s")
	}
	return r
}

func (c *clientStream[Req, Resp]) request(t *testing.T, req *Req) {
	t.Helper()
	if err := c.st.Send(req); err != nil {
		t.Fatal(err)
	}
}

func names(resp *discoveryv3.DiscoveryResponse) []string {
	var out []string
	for _, a := range resp.GetResources() {
		var m proto.Message
		switch resp.GetTypeUrl() {
		case resourcev3.ClusterType:
			m = &clusterv3.Cluster{}
		case resourcev3.EndpointType:
			m = &endpointv3.ClusterLoadAssignment{}
		default:
			return nil
		}
		if err := a.UnmarshalTo(m); err != nil {
			return nil
		}
		out = append(out, cachev3.GetResourceName(m))
	}
	return out
}

// The SotW loop answers what go-control-plane's SotW server answers: the
// same version and the same resources, byte for byte, for wildcard and
// named subscriptions and for a name added at the same version. Both serve
// the same snapshots (the quickstart, published by the real publisher).
func TestSotWAnswersAsGoControlPlane(t *testing.T) {
	f := startServer(t)
	cache := f.cache

	// go-control-plane's own server over the same cache, plaintext.
	gs := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(gs, serverv3.NewServer(context.Background(), cache.SnapshotCache, nil))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	ref, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ref.Close() })

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	o, err := discoveryv3.NewAggregatedDiscoveryServiceClient(f.dial(t)).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	th, err := discoveryv3.NewAggregatedDiscoveryServiceClient(ref).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ours, theirs := pump(o), pump(th)
	node := &corev3.Node{Id: "web.default", UserAgentName: "envoy"}
	snap, err := cache.GetSnapshot(node.Id)
	if err != nil {
		t.Fatal(err)
	}
	var eds []string
	for n := range snap.GetResources(resourcev3.EndpointType) {
		eds = append(eds, n)
	}
	slices.Sort(eds)
	if len(eds) < 2 {
		t.Fatalf("the quickstart's web should have at least 2 endpoint sets, has %v", eds)
	}

	// What our stream has sent, by encoding: go-control-plane answers
	// every type with the whole state of the world, ours with only what
	// the stream has not had, for all but listeners and clusters
	// (pseudo-delta).
	had := map[string]bool{}
	both := func(what string, req *discoveryv3.DiscoveryRequest) (*discoveryv3.DiscoveryResponse, *discoveryv3.DiscoveryResponse) {
		t.Helper()
		ours.request(t, proto.Clone(req).(*discoveryv3.DiscoveryRequest))
		theirs.request(t, proto.Clone(req).(*discoveryv3.DiscoveryRequest))
		a, b := ours.next(t), theirs.next(t)
		if a.GetVersionInfo() != b.GetVersionInfo() || a.GetTypeUrl() != b.GetTypeUrl() {
			t.Fatalf("%s: version/type %q %s, go-control-plane %q %s", what, a.GetVersionInfo(), a.GetTypeUrl(), b.GetVersionInfo(), b.GetTypeUrl())
		}
		// go-control-plane's order follows a map; compare as sets of encodings.
		enc := func(r *discoveryv3.DiscoveryResponse, skipHad bool) []string {
			var out []string
			for _, a := range r.GetResources() {
				e := a.GetTypeUrl() + "\x00" + string(a.GetValue())
				if !skipHad || !had[e] {
					out = append(out, e)
				}
			}
			slices.Sort(out)
			return out
		}
		pseudo := a.GetTypeUrl() != resourcev3.ListenerType && a.GetTypeUrl() != resourcev3.ClusterType
		if mine := enc(a, false); !slices.Equal(mine, enc(b, pseudo)) {
			t.Fatalf("%s: resources differ from go-control-plane's: %d vs %d (names %v vs %v)", what, len(a.GetResources()), len(b.GetResources()), names(a), names(b))
		}
		if len(a.GetResources()) == 0 {
			t.Fatalf("%s: empty response", what)
		}
		for _, e := range enc(a, false) {
			had[e] = true
		}
		return a, b
	}

	// Wildcard clusters, with the node on the first request only.
	a, b := both("CDS wildcard", &discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resourcev3.ClusterType})
	if got := names(a); !slices.IsSorted(got) {
		t.Errorf("clusters not in name order: %v", got)
	}
	_ = b
	// One endpoint set by name, then a second one added at the same version.
	a, b = both("EDS one name", &discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNames: eds[:1]})
	if got := names(a); !slices.Equal(got, eds[:1]) {
		t.Fatalf("EDS for %v answered %v", eds[:1], got)
	}
	a, _ = both("EDS name added", &discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNames: eds[:2],
		VersionInfo: a.GetVersionInfo(), ResponseNonce: a.GetNonce()})
	if got := names(a); !slices.Equal(got, eds[1:2]) {
		t.Fatalf("EDS for %v after %v answered %v, want only the new one (pseudo-delta)", eds[:2], eds[:1], got)
	}
	// Listeners and the secrets the proxy needs.
	both("LDS wildcard", &discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ListenerType})
	var secrets []string
	for n := range snap.GetResources(resourcev3.SecretType) {
		secrets = append(secrets, n)
	}
	both("SDS", &discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.SecretType, ResourceNames: secrets})
}

// The protocol rules go-control-plane's loop followed, kept by ours: one
// response per type in flight, stale nonces ignored, an ACK answered only
// when something changed, an empty name list for a non-wildcard type
// subscribing to nothing, a per-type stream with no type URL.
func TestSotWProtocol(t *testing.T) {
	f := startServer(t)
	cache := f.cache
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cc := f.dial(t)
	ads, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st := pump(ads)
	const quiet = 300 * time.Millisecond
	node := &corev3.Node{Id: "web.default", UserAgentName: "envoy"}
	send := func(req *discoveryv3.DiscoveryRequest) { t.Helper(); st.request(t, req) }
	send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resourcev3.ClusterType})
	cds := st.next(t)
	if cds.GetTypeUrl() != resourcev3.ClusterType || len(cds.GetResources()) == 0 || cds.GetNonce() == "" {
		t.Fatalf("first CDS response: %v", cds)
	}
	// ACK: nothing new to send.
	send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ClusterType, VersionInfo: cds.GetVersionInfo(), ResponseNonce: cds.GetNonce()})
	if r := st.within(t, quiet); r != nil {
		t.Fatalf("an ACK of the current version was answered: %v", r)
	}
	// Endpoints named by nothing: subscribed to nothing, not answered.
	send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.EndpointType})
	if r := st.within(t, quiet); r != nil {
		t.Fatalf("an empty EDS subscription was answered: %v", r)
	}

	// A new snapshot while a CDS response is unanswered: the next one
	// waits for the answer. (A snapshot set directly, not by the
	// publisher: served by encoding its resources.)
	setClusters := func(version string, names ...string) {
		t.Helper()
		var rs []types.Resource
		for _, n := range names {
			rs = append(rs, &clusterv3.Cluster{Name: n, ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC}})
		}
		s, err := cachev3.NewSnapshot(version, map[resourcev3.Type][]types.Resource{resourcev3.ClusterType: rs})
		if err != nil {
			t.Fatal(err)
		}
		if err := cache.SetSnapshot(ctx, node.Id, s); err != nil {
			t.Fatal(err)
		}
	}
	setClusters("v1", "a", "b")
	r1 := st.next(t)
	if r1.GetVersionInfo() != "v1" || !slices.Equal(names(r1), []string{"a", "b"}) {
		t.Fatalf("after SetSnapshot v1: version %q clusters %v", r1.GetVersionInfo(), names(r1))
	}
	setClusters("v2", "a", "b", "c")
	if r := st.within(t, quiet); r != nil {
		t.Fatalf("v2 sent while v1 was unanswered: %v", r)
	}
	// A stale nonce (the first response's) is ignored, even with a version
	// that would call for an answer.
	send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ClusterType, VersionInfo: "old", ResponseNonce: cds.GetNonce()})
	if r := st.within(t, quiet); r != nil {
		t.Fatalf("a request with a stale nonce was answered: %v", r)
	}
	// The answer to v1 (a NACK here: the tracker records it) lets v2 go.
	send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ClusterType, VersionInfo: cds.GetVersionInfo(), ResponseNonce: r1.GetNonce(),
		ErrorDetail: &statuspb.Status{Message: "cluster b: bad"}})
	r2 := st.next(t)
	if r2.GetVersionInfo() != "v2" || !slices.Equal(names(r2), []string{"a", "b", "c"}) {
		t.Fatalf("after the answer to v1: version %q clusters %v", r2.GetVersionInfo(), names(r2))
	}
	// A NACK of v2 is not answered with v2 again.
	send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ClusterType, VersionInfo: cds.GetVersionInfo(), ResponseNonce: r2.GetNonce(),
		ErrorDetail: &statuspb.Status{Message: "cluster c: bad"}})
	if r := st.within(t, quiet); r != nil {
		t.Fatalf("a NACKed version was resent: %v", r)
	}
	if ns, ok := f.tracker.Node(node.Id); !ok || ns.Types["Cluster"] == nil || ns.Types["Cluster"].Nacked != "v2" {
		t.Fatalf("tracker status after the NACK: %+v", ns)
	}

	// A per-type stream (CDS service) without type URLs.
	cds2, err := clusterservice.NewClusterDiscoveryServiceClient(cc).StreamClusters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cst := pump(cds2)
	cst.request(t, &discoveryv3.DiscoveryRequest{Node: node})
	r := cst.next(t)
	if r.GetTypeUrl() != resourcev3.ClusterType || r.GetVersionInfo() != "v2" || !slices.Equal(names(r), []string{"a", "b", "c"}) {
		t.Fatalf("CDS stream: type %q version %q clusters %v", r.GetTypeUrl(), r.GetVersionInfo(), names(r))
	}
}

// A node's streams are all woken by SetSnapshot, and a closed stream —
// first, middle or last of the node's list — is no longer.
func TestCacheWakesEveryStreamOfTheNode(t *testing.T) {
	c := NewCache()
	mk := func(node string) *sotwStream {
		s := &sotwStream{node: node, wake: make(chan struct{}, 1)}
		c.register(s)
		return s
	}
	a, b, d, other := mk("n"), mk("n"), mk("n"), mk("m")
	woken := func(ss ...*sotwStream) []bool {
		var out []bool
		for _, s := range ss {
			select {
			case <-s.wake:
				out = append(out, true)
			default:
				out = append(out, false)
			}
		}
		return out
	}
	snap, err := cachev3.NewSnapshot("v1", nil)
	if err != nil {
		t.Fatal(err)
	}
	set := func() {
		t.Helper()
		if err := c.SetSnapshot(context.Background(), "n", snap); err != nil {
			t.Fatal(err)
		}
	}
	set()
	if got := woken(a, b, d, other); !slices.Equal(got, []bool{true, true, true, false}) {
		t.Fatalf("woken a, b, d, other: %v", got)
	}
	for _, step := range []struct {
		close *sotwStream
		open  []*sotwStream
	}{{b, []*sotwStream{a, d}}, {d, []*sotwStream{a}}, {a, nil}} {
		c.unregister(step.close)
		set()
		want := make([]bool, len(step.open))
		for i := range want {
			want[i] = true
		}
		got, closed := woken(step.open...), woken(step.close)[0]
		if !slices.Equal(got, want) || closed {
			t.Fatalf("after closing a stream: open streams woken %v (want all), closed stream woken %v", got, closed)
		}
	}
	if _, left := c.streams["n"]; left {
		t.Fatal("the node's entry outlived its last stream")
	}
	if c.streams["m"] != other {
		t.Fatal("another node's stream was lost")
	}
}

// Pseudo-delta state of the world (issue 14): after an endpoint change a
// proxy is sent only the endpoint set that changed, at the type's new
// version; listeners and clusters stay complete; a NACKed set is not
// resent, and the next change sends only what changed since; a resource
// the proxy stops subscribing to and subscribes to again is sent again.
func TestSotWPseudoDelta(t *testing.T) {
	f := startServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ads, err := discoveryv3.NewAggregatedDiscoveryServiceClient(f.dial(t)).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st := pump(ads)
	const quiet = 300 * time.Millisecond
	node := &corev3.Node{Id: "web.default", UserAgentName: "envoy"}
	snap, err := f.cache.GetSnapshot(node.Id)
	if err != nil {
		t.Fatal(err)
	}
	sortedNames := func(typ string) []string {
		var out []string
		for n := range snap.GetResources(typ) {
			out = append(out, n)
		}
		slices.Sort(out)
		return out
	}
	eds, rds, secrets := sortedNames(resourcev3.EndpointType), sortedNames(resourcev3.RouteType), sortedNames(resourcev3.SecretType)
	if len(eds) < 3 || len(rds) < 1 || len(secrets) != 2 {
		t.Fatalf("web's snapshot: endpoints %v routes %v secrets %v", eds, rds, secrets)
	}
	// Subscribe as Envoy does and ACK every response; last[type] is the
	// last response.
	last := map[string]*discoveryv3.DiscoveryResponse{}
	ack := func(r *discoveryv3.DiscoveryResponse, names []string) {
		t.Helper()
		last[r.GetTypeUrl()] = r
		st.request(t, &discoveryv3.DiscoveryRequest{TypeUrl: r.GetTypeUrl(), VersionInfo: r.GetVersionInfo(), ResponseNonce: r.GetNonce(), ResourceNames: names})
	}
	subscribe := map[string][]string{resourcev3.ClusterType: nil, resourcev3.ListenerType: nil,
		resourcev3.EndpointType: eds, resourcev3.RouteType: rds, resourcev3.SecretType: secrets}
	first := true
	for _, typ := range []string{resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.ListenerType, resourcev3.RouteType, resourcev3.SecretType} {
		req := &discoveryv3.DiscoveryRequest{TypeUrl: typ, ResourceNames: subscribe[typ]}
		if first {
			req.Node, first = node, false
		}
		st.request(t, req)
		r := st.next(t)
		if r.GetTypeUrl() != typ || len(r.GetResources()) != len(sortedNames(typ)) {
			t.Fatalf("first %s response: type %s, %d resources, want all %d", shortType(typ), r.GetTypeUrl(), len(r.GetResources()), len(sortedNames(typ)))
		}
		ack(r, subscribe[typ])
	}
	if r := st.within(t, quiet); r != nil {
		t.Fatalf("ACKs were answered: %s", r.GetTypeUrl())
	}

	// One api endpoint added: one response, the endpoints, carrying only
	// api's set, at the type's new version.
	f.publishAPIEndpointAdded(t)
	r := st.next(t)
	if r.GetTypeUrl() != resourcev3.EndpointType || !slices.Equal(names(r), []string{"outbound|api.default"}) {
		t.Fatalf("after an api endpoint was added: %s with %v, want endpoints with only outbound|api.default", shortType(r.GetTypeUrl()), names(r))
	}
	snap, _ = f.cache.GetSnapshot(node.Id)
	if want := snap.GetVersion(resourcev3.EndpointType); r.GetVersionInfo() != want || want == last[resourcev3.EndpointType].GetVersionInfo() {
		t.Fatalf("pseudo-delta response version %q, snapshot's %q, before %q", r.GetVersionInfo(), want, last[resourcev3.EndpointType].GetVersionInfo())
	}
	if extra := st.within(t, quiet); extra != nil {
		t.Fatalf("an endpoint change also sent %s", shortType(extra.GetTypeUrl()))
	}
	// NACK it: not resent.
	st.request(t, &discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, VersionInfo: last[resourcev3.EndpointType].GetVersionInfo(),
		ResponseNonce: r.GetNonce(), ResourceNames: eds, ErrorDetail: &statuspb.Status{Message: "test: endpoints rejected"}})
	if extra := st.within(t, quiet); extra != nil {
		t.Fatalf("a NACKed endpoint set was resent: %v", names(extra))
	}

	// Unsubscribe from db's endpoints (its cluster went, say), then
	// subscribe again: sent again although its content never changed.
	var withoutDB []string
	for _, n := range eds {
		if n != "outbound|db.default" {
			withoutDB = append(withoutDB, n)
		}
	}
	if len(withoutDB) != len(eds)-1 {
		t.Fatalf("web has no endpoints outbound|db.default: %v", eds)
	}
	st.request(t, &discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, VersionInfo: r.GetVersionInfo(), ResponseNonce: r.GetNonce(), ResourceNames: withoutDB})
	if extra := st.within(t, quiet); extra != nil {
		t.Fatalf("unsubscribing was answered: %v", names(extra))
	}
	st.request(t, &discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, VersionInfo: r.GetVersionInfo(), ResponseNonce: r.GetNonce(), ResourceNames: eds})
	again := st.next(t)
	if !slices.Equal(names(again), []string{"outbound|db.default"}) {
		t.Fatalf("subscribing again to db's endpoints answered %v, want only them", names(again))
	}
	ack(again, eds)

	// web stops calling db: clusters and listeners come complete without
	// it; the endpoints' version moves with nothing of web's subscription
	// changed, so that response is empty (Envoy drops db's endpoints with
	// its cluster, and then unsubscribes).
	var pxs []mesh.Proxy
	cur := f.pub.Catalog() // with the api endpoint added
	for _, p := range cur.Proxies() {
		c := *p
		if c.ID == node.Id {
			c.Upstreams = slices.DeleteFunc(slices.Clone(c.Upstreams), func(u mesh.Upstream) bool { return u.Service == "db" })
		}
		pxs = append(pxs, c)
	}
	var svcs []mesh.Service
	for _, s := range cur.Services() {
		svcs = append(svcs, *s)
	}
	cat, err := mesh.NewCatalog(svcs, pxs)
	if err != nil {
		t.Fatal(err)
	}
	f.pub.Update(snapshot.Update{Catalog: cat})
	if _, err := f.pub.Publish(); err != nil {
		t.Fatal(err)
	}
	snap, _ = f.cache.GetSnapshot(node.Id)
	got := map[string]*discoveryv3.DiscoveryResponse{}
	for r := st.within(t, quiet); r != nil; r = st.within(t, quiet) {
		got[r.GetTypeUrl()] = r
	}
	if c := got[resourcev3.ClusterType]; c == nil || len(c.GetResources()) != len(snap.GetResources(resourcev3.ClusterType)) || slices.Contains(names(c), "outbound|db.default") {
		t.Fatalf("clusters after db was dropped: %v, want all %d of the snapshot's, without db", names(c), len(snap.GetResources(resourcev3.ClusterType)))
	}
	if e := got[resourcev3.EndpointType]; e == nil || len(e.GetResources()) != 0 || e.GetVersionInfo() != snap.GetVersion(resourcev3.EndpointType) {
		t.Fatalf("endpoints after db was dropped: %v, want an empty response at version %s", e, snap.GetVersion(resourcev3.EndpointType))
	}
	if l := got[resourcev3.ListenerType]; l == nil || len(l.GetResources()) != len(snap.GetResources(resourcev3.ListenerType)) {
		t.Fatalf("listeners after db was dropped: want all %d of the snapshot's", len(snap.GetResources(resourcev3.ListenerType)))
	}
	for _, typ := range []string{resourcev3.RouteType, resourcev3.SecretType} {
		if got[typ] != nil {
			t.Errorf("%s resent although unchanged: %d resources", shortType(typ), len(got[typ].GetResources()))
		}
	}
}

func shortType(typeURL string) string { return typeURL[strings.LastIndexByte(typeURL, '.')+1:] }

// subscribedOf picks the subscribed resources, and shares the snapshot's
// slice, allocating nothing, whenever that is exactly what is subscribed.
func TestSubscribedOf(t *testing.T) {
	all := []*xds.Resource{{Name: "a"}, {Name: "b"}, {Name: "c"}}
	for _, tc := range []struct {
		names  []string
		want   []string
		shared bool
	}{
		{[]string{"a", "b", "c"}, []string{"a", "b", "c"}, true},
		{[]string{"a", "b", "c", "d"}, []string{"a", "b", "c"}, true},
		{[]string{"a", "b"}, []string{"a", "b"}, true},
		{[]string{"b", "c"}, []string{"b", "c"}, false},
		{[]string{"a", "c"}, []string{"a", "c"}, false},
		{[]string{"0", "c"}, []string{"c"}, false},
		{[]string{"x"}, nil, true},
		{nil, nil, true},
	} {
		got := subscribedOf(all, tc.names)
		var names []string
		for _, r := range got {
			names = append(names, r.Name)
		}
		if !slices.Equal(names, tc.want) {
			t.Errorf("subscribedOf(%v) = %v, want %v", tc.names, names, tc.want)
		}
		if shared := len(got) == 0 || &got[0] == &all[0]; shared != tc.shared {
			t.Errorf("subscribedOf(%v): shares the snapshot's slice %v, want %v", tc.names, shared, tc.shared)
		}
	}
	if n := testing.AllocsPerRun(100, func() { subscribedOf(all, []string{"a", "b", "c"}) }); n != 0 {
		t.Errorf("subscribing to everything allocates %.0f times", n)
	}
}
