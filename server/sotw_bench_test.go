package server

import (
	"context"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
)

// BenchmarkSotWPush: one endpoint change pushed by the SotW loop to 200
// streams of one proxy (its endpoint sets; 50 per connection) over TLS on
// loopback, until every stream has received and ACKed it. Client and
// server share the process, so B/op and allocs/op include the client's
// decoding.
func BenchmarkSotWPush(b *testing.B) {
	const streams = 200
	f := startServer(b)
	node := "web.default"
	snapA, err := f.cache.GetSnapshot(node)
	if err != nil {
		b.Fatal(err)
	}
	// The same catalog with one more api endpoint: web's endpoint sets
	// change, nothing else.
	f.publishAPIEndpointAdded(b)
	snapB, err := f.cache.GetSnapshot(node)
	if err != nil {
		b.Fatal(err)
	}
	if snapA.GetVersion(resourcev3.EndpointType) == snapB.GetVersion(resourcev3.EndpointType) {
		b.Fatal("the changed catalog did not change web's endpoints")
	}
	var eds []string
	for n := range snapA.GetResources(resourcev3.EndpointType) {
		eds = append(eds, n)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan struct{}, streams)
	var cc *grpc.ClientConn
	for i := range streams {
		if i%50 == 0 {
			cc = f.dial(b) // meshd allows 64 concurrent streams per connection
		}
		st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if err := st.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: node}, TypeUrl: resourcev3.EndpointType, ResourceNames: eds}); err != nil {
			b.Fatal(err)
		}
		go func() {
			for {
				r, err := st.Recv()
				if err != nil {
					return
				}
				if err := st.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNames: eds,
					VersionInfo: r.GetVersionInfo(), ResponseNonce: r.GetNonce()}); err != nil {
					return
				}
				got <- struct{}{}
			}
		}()
	}
	wait := func() {
		for range streams {
			<-got
		}
	}
	wait() // the initial responses
	snaps := []cachev3.ResourceSnapshot{snapA, snapB}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		// B is in the cache now; set A, B, A, ... so every set is a change.
		if err := f.cache.SetSnapshot(ctx, node, snaps[i%2]); err != nil {
			b.Fatal(err)
		}
		wait()
	}
	b.StopTimer()
	b.ReportMetric(streams, "pushes/op")
}
