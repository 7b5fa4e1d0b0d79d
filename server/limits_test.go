package server

import (
	"context"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/internal/testwait"
)

// TestStreamsPerCredentialAndNode: one credential holds at most
// MaxStreamsPerNode streams for a node (more are refused with
// ResourceExhausted, counted); an ended stream gives its slot back.
func TestStreamsPerCredentialAndNode(t *testing.T) {
	maxStreams = 3
	t.Cleanup(func() { maxStreams = 0 })
	f := startAuthServer(t, false)
	tok := f.token(t, "web", time.Hour)
	cc := f.dial(t, nil)
	ctx, cancel := context.WithCancel(withTokenCtx(context.Background(), tok))
	defer cancel()
	open := func(ctx context.Context) error {
		st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
		if err != nil {
			return err
		}
		_ = st.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "web.default"}, TypeUrl: resourcev3.ClusterType})
		_, err = st.Recv()
		return err
	}
	for i := range 3 {
		if err := open(ctx); err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
	}
	err := open(ctx)
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("fourth stream: %v, want ResourceExhausted", err)
	}
	if n := f.counter(t, "meshd_xds_auth_refused_total", "too_many_streams"); n != 1 {
		t.Errorf("too_many_streams refusals = %v, want 1", n)
	}
	if _, streams := f.auth.Grants(); streams != 3 {
		t.Errorf("%d streams hold the grant, want 3", streams)
	}
	cancel()
	testwait.For(t, testwait.Timeout, "the ended streams to release the grant", func() bool { _, n := f.auth.Grants(); return n == 0 })
	ctx2, cancel2 := context.WithCancel(withTokenCtx(context.Background(), tok))
	defer cancel2()
	if err := open(ctx2); err != nil {
		t.Errorf("after the streams ended: %v", err)
	}
}
