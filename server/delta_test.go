package server

import (
	"context"
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
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
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
	snap, err := f.cache.GetSnapshot(node.Id)
	if err != nil {
		t.Fatal(err)
	}
	var eds []string
	for n := range snap.GetResources(resourcev3.EndpointType) {
		eds = append(eds, n)
	}
	slices.Sort(eds)
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
