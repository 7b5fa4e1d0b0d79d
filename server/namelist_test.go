package server

import (
	"context"
	"fmt"
	"slices"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/meshd/meshd/internal/testwait"
	"github.com/meshd/meshd/xds"
)

// Streams subscribing to the same names share one list, and a list no
// stream holds any more leaves the table.
func TestNameListsAreSharedAndForgotten(t *testing.T) {
	var lists nameLists
	a := lists.acquire([]string{"outbound|a.ns", "outbound|b.ns"})
	b := lists.acquire([]string{"outbound|a.ns", "outbound|b.ns"})
	c := lists.acquire([]string{"outbound|a.ns"})
	if a != b {
		t.Fatal("identical subscriptions got two lists")
	}
	if a == c || !slices.Equal(c.list(), []string{"outbound|a.ns"}) {
		t.Fatalf("different subscriptions share a list: %v %v", a.list(), c.list())
	}
	if !a.contains("outbound|b.ns") || a.contains("outbound|c.ns") || (*nameList)(nil).contains("x") {
		t.Fatal("contains")
	}
	if lists.acquire(nil) != nil {
		t.Fatal("an empty subscription got a list")
	}
	if n := lists.size(); n != 2 {
		t.Fatalf("%d lists held, want 2", n)
	}
	lists.release(a)
	if n := lists.size(); n != 2 {
		t.Fatalf("a list still held by one stream left the table: %d lists", n)
	}
	// c's stream changes its subscription to a's names: one list left.
	c = lists.replace(c, []string{"outbound|a.ns", "outbound|b.ns"})
	if c != b || lists.size() != 1 {
		t.Fatalf("after a resubscription: same list %v, %d lists held, want 1", c == b, lists.size())
	}
	lists.release(b)
	lists.release(c)
	lists.release(nil)
	if n := lists.size(); n != 0 {
		t.Fatalf("%d lists held with no stream", n)
	}
	// Two servers never share a table.
	var other nameLists
	if other.acquire([]string{"outbound|a.ns"}) == lists.acquire([]string{"outbound|a.ns"}) {
		t.Fatal("two tables returned one list")
	}
}

// The lists of a server's streams are its cache's, and leave the table
// when the streams end, SotW and delta alike.
func TestStreamsReleaseTheirNameLists(t *testing.T) {
	f := startServer(t)
	eds := endpointNames(t, f.cache, "web.default")
	if len(eds) < 2 {
		t.Fatalf("web's endpoint sets: %v", eds)
	}
	node := &corev3.Node{Id: "web.default", UserAgentName: "envoy"}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	conn := f.dial(t)
	ads := discoveryv3.NewAggregatedDiscoveryServiceClient(conn)
	sotw, err := ads.StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := sotw.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resourcev3.EndpointType, ResourceNames: eds}); err != nil {
		t.Fatal(err)
	}
	dctx, dcancel := context.WithCancel(ctx)
	delta, err := ads.DeltaAggregatedResources(dctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := delta.Send(&discoveryv3.DeltaDiscoveryRequest{Node: node, TypeUrl: resourcev3.EndpointType, ResourceNamesSubscribe: eds[:1]}); err != nil {
		t.Fatal(err)
	}
	if _, err := sotw.Recv(); err != nil {
		t.Fatal(err)
	}
	if _, err := delta.Recv(); err != nil {
		t.Fatal(err)
	}
	if n := f.cache.names.size(); n != 2 {
		t.Fatalf("%d name lists held by a SotW and a delta stream with different names, want 2", n)
	}
	dcancel()
	testwait.Until(t, testwait.Timeout, func() error {
		if n := f.cache.names.size(); n != 1 {
			return fmt.Errorf("%d name lists held after the delta stream ended, want 1", n)
		}
		return nil
	})
	cancel()
	testwait.Until(t, testwait.Timeout, func() error {
		if n := f.cache.names.size(); n != 0 {
			return fmt.Errorf("%d name lists held with no stream", n)
		}
		return nil
	})
}

// A delta stream's record of what the proxy has: the resources it was
// last answered from, overridden by declared versions and by names it
// unsubscribed.
func TestDeltaHeldOverrides(t *testing.T) {
	r := func(name, hash string) *xds.Resource { return &xds.Resource{Name: name, Hash: hash} }
	dt := &deltaType{have: []*xds.Resource{r("a", "1"), r("b", "2"), r("c", "3")}}
	dt.setVersion("b", "")  // tell it again
	dt.setVersion("d", "9") // declared by a reconnecting proxy
	dt.forget("c")
	dt.forget("zz") // never had: nothing to forget
	for _, tc := range []struct {
		name, version string
		had           bool
	}{{"a", "1", true}, {"b", "", true}, {"c", "", false}, {"d", "9", true}, {"zz", "", false}} {
		if v, had := dt.version(tc.name); v != tc.version || had != tc.had {
			t.Errorf("version(%s) = %q %v, want %q %v", tc.name, v, had, tc.version, tc.had)
		}
	}
	var names []string
	dt.had(func(n string) { names = append(names, n) })
	slices.Sort(names)
	if !slices.Equal(names, []string{"a", "b", "d"}) {
		t.Fatalf("had %v, want a b d", names)
	}
}
