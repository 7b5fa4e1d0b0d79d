package server

import (
	"context"
	"fmt"
	"maps"
	"net"
	"slices"
	"strconv"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/config"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/meshd/meshd/internal/testwait"
	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/snapshot"
)

type deltaClient = clientStream[discoveryv3.DeltaDiscoveryRequest, discoveryv3.DeltaDiscoveryResponse]

// deltaSummary is a response as a comparable value: the type, the system
// version, each resource's name, version and bytes, and the removed names.
func deltaSummary(r *discoveryv3.DeltaDiscoveryResponse) []string {
	out := []string{"type " + r.GetTypeUrl(), "version " + r.GetSystemVersionInfo()}
	var res []string
	for _, x := range r.GetResources() {
		res = append(res, "resource "+x.GetName()+" "+x.GetVersion()+" "+x.GetResource().GetTypeUrl()+" "+string(x.GetResource().GetValue()))
	}
	slices.Sort(res)
	rm := slices.Clone(r.GetRemovedResources())
	slices.Sort(rm)
	for _, n := range rm {
		res = append(res, "removed "+n)
	}
	return append(out, res...)
}

// Delta answers as go-control-plane's delta server does, over the same
// snapshots: wildcard clusters, endpoint sets subscribed one by one, a
// snapshot change (only the changed resource), an unsubscription, and a
// reconnect that declares what it has (nothing resent).
func TestDeltaAnswersAsGoControlPlane(t *testing.T) {
	f := startServer(t)
	gs := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(gs, serverv3.NewServer(context.Background(), f.cache.SnapshotCache, nil,
		config.DeactivateLegacyWildcardForTypes(nonWildcardTypes)))
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
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ours := f.dial(t)
	open := func() (*deltaClient, *deltaClient) {
		t.Helper()
		a, err := discoveryv3.NewAggregatedDiscoveryServiceClient(ours).DeltaAggregatedResources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		b, err := discoveryv3.NewAggregatedDiscoveryServiceClient(ref).DeltaAggregatedResources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return pump(a), pump(b)
	}
	a, b := open()
	both := func(what string, req *discoveryv3.DeltaDiscoveryRequest) *discoveryv3.DeltaDiscoveryResponse {
		t.Helper()
		if err := a.st.Send(req); err != nil {
			t.Fatal(err)
		}
		if err := b.st.Send(req); err != nil {
			t.Fatal(err)
		}
		ra, rb := a.next(t), b.next(t)
		if x, y := deltaSummary(ra), deltaSummary(rb); !slices.Equal(x, y) {
			t.Fatalf("%s: ours\n%q\ngo-control-plane\n%q", what, x, y)
		}
		return ra
	}
	ack := func(typ string, r *discoveryv3.DeltaDiscoveryResponse) *discoveryv3.DeltaDiscoveryRequest {
		return &discoveryv3.DeltaDiscoveryRequest{TypeUrl: typ, ResponseNonce: r.GetNonce()}
	}
	node := &corev3.Node{Id: "web.default", UserAgentName: "envoy"}
	node2 := &corev3.Node{Id: "web.default", UserAgentName: "envoy"}
	cds := both("CDS wildcard", &discoveryv3.DeltaDiscoveryRequest{Node: node, TypeUrl: resourcev3.ClusterType})
	if len(cds.GetResources()) == 0 {
		t.Fatal("no clusters")
	}
	eds := endpointNames(t, f.cache, node.Id)
	e1 := both("EDS first name", &discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNamesSubscribe: eds[:1]})
	e2 := both("EDS second name", &discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNamesSubscribe: eds[1:2], ResponseNonce: e1.GetNonce()})
	if len(e2.GetResources()) != 1 || e2.GetResources()[0].GetName() != eds[1] {
		t.Fatalf("adding %s sent %v", eds[1], deltaSummary(e2))
	}
	// ACKs: nothing new.
	for _, c := range []*deltaClient{a, b} {
		if err := c.st.Send(ack(resourcev3.EndpointType, e2)); err != nil {
			t.Fatal(err)
		}
		if err := c.st.Send(ack(resourcev3.ClusterType, cds)); err != nil {
			t.Fatal(err)
		}
	}
	if r := a.within(t, 300*time.Millisecond); r != nil {
		t.Fatalf("ACKs answered: %v", deltaSummary(r))
	}
	if r := b.within(t, 300*time.Millisecond); r != nil {
		t.Fatalf("go-control-plane answered ACKs: %v", deltaSummary(r))
	}

	// A change to api's endpoints: only that endpoint set, to both.
	changed := ""
	f.publishAPIEndpointAdded(t)
	ra, rb := a.next(t), b.next(t)
	if x, y := deltaSummary(ra), deltaSummary(rb); !slices.Equal(x, y) {
		t.Fatalf("push after the change: ours\n%q\ngo-control-plane\n%q", x, y)
	}
	for _, r := range ra.GetResources() {
		changed = r.GetName()
	}
	if ra.GetTypeUrl() != resourcev3.EndpointType || len(ra.GetResources()) != 1 || !slices.Contains(eds[:2], changed) {
		t.Fatalf("push after an api endpoint change: %v", deltaSummary(ra))
	}
	if r := a.within(t, 300*time.Millisecond); r != nil {
		t.Fatalf("a second push for one change: %v", deltaSummary(r))
	}

	// Unsubscribing is not answered.
	if err := a.st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNamesUnsubscribe: eds[:1], ResponseNonce: ra.GetNonce()}); err != nil {
		t.Fatal(err)
	}
	if r := a.within(t, 300*time.Millisecond); r != nil {
		t.Fatalf("an unsubscription was answered: %v", deltaSummary(r))
	}

	// A new stream that declares every cluster it has gets an empty
	// answer (wildcard's first), as from go-control-plane.
	have := map[string]string{}
	for _, r := range cds.GetResources() {
		have[r.GetName()] = r.GetVersion()
	}
	a, b = open()
	re := both("reconnect with initial versions", &discoveryv3.DeltaDiscoveryRequest{Node: node2, TypeUrl: resourcev3.ClusterType, InitialResourceVersions: have})
	if len(re.GetResources()) != 0 || len(re.GetRemovedResources()) != 0 {
		t.Fatalf("reconnect resent: %v", deltaSummary(re))
	}
}

// A delta client may be sent a second response of a type before it answers
// the first (it asked for more resources meanwhile); the loop matches each
// answer to what that response carried, in order, and keeps a bounded
// number of unanswered responses.
func TestDeltaAnswersOlderResponse(t *testing.T) {
	var dt deltaType
	send := func(nonce, version string) {
		if len(dt.sent) == maxUnanswered {
			dt.sent = slices.Delete(dt.sent, 0, 1)
		}
		dt.sent = append(dt.sent, sentResponse{nonce, version})
	}
	send("1", "e1")
	send("2", "e2")
	if r, ok := dt.takeAnswer("1"); !ok || r.version != "e1" {
		t.Fatalf("answer to the older response: %v %v", r, ok)
	}
	if r, ok := dt.takeAnswer("2"); !ok || r.version != "e2" {
		t.Fatalf("answer to the newer response: %v %v", r, ok)
	}
	if _, ok := dt.takeAnswer("2"); ok {
		t.Error("a repeated answer counted twice")
	}
	send("3", "e3")
	send("4", "e4")
	if r, ok := dt.takeAnswer("4"); !ok || r.version != "e4" || len(dt.sent) != 0 {
		t.Errorf("answering the newest did not settle the older: %v %v %d left", r, ok, len(dt.sent))
	}
	for i := range 3 * maxUnanswered {
		send(strconv.Itoa(100+i), "x")
	}
	if len(dt.sent) > maxUnanswered {
		t.Errorf("%d unanswered responses kept, want at most %d", len(dt.sent), maxUnanswered)
	}
}

// A delta proxy that reconnects holding every resource of a type at the
// version served is sent nothing, and so ACKs nothing: the stream reports
// the version as held, as an ACK would, so an mTLS migration waiting for
// that proxy completes (the soak's defect, issue 12: it stayed waiting on
// "ops.default (ClusterLoadAssignment)" until overdue). A reconnect that
// holds only part of it is sent the rest and waited for until it ACKs.
func TestDeltaReconnectHoldingEverythingCountsAsACK(t *testing.T) {
	f := startServer(t)
	apiMode := func(mode mesh.MTLSMode) {
		t.Helper()
		f.pub.Update(snapshot.Update{Policy: &mesh.PolicySet{RootNamespace: "meshd-system", DefaultMode: mesh.MTLSPermissive,
			Peer: []mesh.PeerAuthentication{{Name: "api", Namespace: "default", Mode: mode, Selector: map[string]string{"version": "v1"}}}}})
		if _, err := f.pub.Publish(); err != nil {
			t.Fatal(err)
		}
	}
	apiMode(mesh.MTLSPermissive)
	eds := endpointNames(t, f.cache, "web.default")
	cc := f.dial(t)
	node := &corev3.Node{Id: "web.default", UserAgentName: "envoy"}
	// held is what web has of each type, from every response it was sent.
	held := map[string]map[string]string{}
	hold := func(r *discoveryv3.DeltaDiscoveryResponse) *discoveryv3.DeltaDiscoveryResponse {
		m := held[r.GetTypeUrl()]
		if m == nil {
			m = map[string]string{}
			held[r.GetTypeUrl()] = m
		}
		for _, x := range r.GetResources() {
			m[x.GetName()] = x.GetVersion()
		}
		for _, n := range r.GetRemovedResources() {
			delete(m, n)
		}
		return r
	}
	open := func() (*deltaClient, context.CancelFunc) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(ctx)
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		return pump(st), cancel
	}
	ask := func(c *deltaClient, typ string, sub []string, have map[string]string) *discoveryv3.DeltaDiscoveryResponse {
		t.Helper()
		c.request(t, &discoveryv3.DeltaDiscoveryRequest{Node: node, TypeUrl: typ, ResourceNamesSubscribe: sub, InitialResourceVersions: have})
		return hold(c.next(t))
	}
	ack := func(c *deltaClient, r *discoveryv3.DeltaDiscoveryResponse) {
		t.Helper()
		c.request(t, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: r.GetTypeUrl(), ResponseNonce: r.GetNonce()})
	}
	// settled publishes (the stream events are the loop's to apply) until
	// no migration is pending.
	settled := func(what string) {
		t.Helper()
		err := testwait.Wait(5*time.Second, func() error {
			if _, err := f.pub.Publish(); err != nil {
				return err
			}
			if tr := f.pub.Transitions(); len(tr) != 0 {
				return fmt.Errorf("migration still waiting on %v", tr[0].WaitingOn)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	waitingOnWeb := func(what string) {
		t.Helper()
		tr := f.pub.Transitions()
		if len(tr) != 1 || !slices.Equal(tr[0].WaitingOn, []string{"web.default (ClusterLoadAssignment)"}) {
			t.Fatalf("%s: migrations %+v, want api's waiting on web's endpoints", what, tr)
		}
	}

	// web connects and ACKs everything; then api's endpoints change and
	// web gets them but does not ACK, so api's PERMISSIVE → STRICT waits
	// for web.
	a, closeA := open()
	for _, r := range []*discoveryv3.DeltaDiscoveryResponse{
		ask(a, resourcev3.ClusterType, nil, nil),
		ask(a, resourcev3.EndpointType, eds, nil),
		ask(a, resourcev3.ListenerType, nil, nil),
	} {
		ack(a, r)
	}
	settled("connected")
	f.publishAPIEndpointAdded(t)
	if r := hold(a.next(t)); r.GetTypeUrl() != resourcev3.EndpointType || len(r.GetResources()) != 1 {
		t.Fatalf("endpoint change pushed %v", deltaSummary(r))
	}
	apiMode(mesh.MTLSStrict)
	waitingOnWeb("web has not ACKed its new endpoints")

	// web's stream ends and it reconnects, declaring everything it holds:
	// the empty answers of its wildcard types are ACKed, its endpoints
	// are not answered at all (the listeners' answer is the point by which
	// the server has handled the endpoints request).
	closeA()
	b, closeB := open()
	ack(b, ask(b, resourcev3.ClusterType, nil, held[resourcev3.ClusterType]))
	b.request(t, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNamesSubscribe: eds, InitialResourceVersions: held[resourcev3.EndpointType]})
	if r := ask(b, resourcev3.ListenerType, nil, held[resourcev3.ListenerType]); r.GetTypeUrl() != resourcev3.ListenerType || len(r.GetResources()) != 0 {
		t.Fatalf("reconnect: %v, want the listeners' empty answer (nothing resent)", deltaSummary(r))
	} else {
		ack(b, r)
	}
	settled("web reconnected holding every resource")
	snap, err := f.cache.GetSnapshot("web.default")
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := f.tracker.Node("web.default"); st.Types["ClusterLoadAssignment"] == nil ||
		st.Types["ClusterLoadAssignment"].Acked != snap.GetVersion(resourcev3.EndpointType) {
		t.Errorf("status of web's endpoints %+v, want version %s held", st.Types["ClusterLoadAssignment"], snap.GetVersion(resourcev3.EndpointType))
	}
	if got := testutil.ToFloat64(f.metrics.ACKs.WithLabelValues("ClusterLoadAssignment")); got != 1 {
		t.Errorf("%v endpoint ACKs counted, want 1 (a held version is no ACK on the wire)", got)
	}

	// Again from no stream at all (the publisher forgets web's ACKs), with
	// one endpoint set declared at an old version: web is sent that one,
	// and a migration waits for its ACK.
	apiMode(mesh.MTLSPermissive)
	settled("back to PERMISSIVE")
	closeB()
	testwait.For(t, 5*time.Second, "web's stream to end", func() bool {
		st, _ := f.tracker.Node("web.default")
		return st.Streams == 0
	})
	if _, err := f.pub.Publish(); err != nil {
		t.Fatal(err)
	}
	c, closeC := open()
	defer closeC()
	ack(c, ask(c, resourcev3.ClusterType, nil, held[resourcev3.ClusterType]))
	stale := maps.Clone(held[resourcev3.EndpointType])
	stale[eds[0]] = "stale"
	e := ask(c, resourcev3.EndpointType, eds, stale)
	if len(e.GetResources()) != 1 || e.GetResources()[0].GetName() != eds[0] || len(e.GetRemovedResources()) != 0 {
		t.Fatalf("reconnect holding one stale endpoint set was sent %v, want that set", deltaSummary(e))
	}
	ack(c, ask(c, resourcev3.ListenerType, nil, held[resourcev3.ListenerType]))
	apiMode(mesh.MTLSStrict)
	waitingOnWeb("web has not ACKed the endpoint set it was sent")
	ack(c, e)
	settled("web ACKed the endpoint set")
}
