package server

import (
	"context"
	"io"
	"log/slog"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/meshd/meshd/internal/metrics"
)

// go-control-plane numbers SotW and delta streams separately, so both
// start at 1; the tracker must keep them apart (found with a delta Envoy
// next to SotW Envoys, whose ACKs were attributed to the wrong node).
func TestTrackerSeparatesSotWAndDeltaStreamIDs(t *testing.T) {
	tr := NewTracker(slog.New(slog.NewTextHandler(io.Discard, nil)), metrics.New(), nil)
	ctx := context.Background()
	_ = tr.OnStreamOpen(ctx, 1, "")
	_ = tr.OnDeltaStreamOpen(ctx, 1, "")
	sotw := &corev3.Node{Id: "sotw-node"}
	delta := &corev3.Node{Id: "delta-node"}
	_ = tr.OnStreamRequest(1, &discoveryv3.DiscoveryRequest{Node: sotw, TypeUrl: resourcev3.ClusterType})
	_ = tr.OnStreamDeltaRequest(1, &discoveryv3.DeltaDiscoveryRequest{Node: delta, TypeUrl: resourcev3.ClusterType})
	tr.OnStreamResponse(ctx, 1, nil, &discoveryv3.DiscoveryResponse{TypeUrl: resourcev3.ClusterType, Nonce: "1", VersionInfo: "v-sotw"})
	tr.OnStreamDeltaResponse(1, nil, &discoveryv3.DeltaDiscoveryResponse{TypeUrl: resourcev3.ClusterType, Nonce: "1", SystemVersionInfo: "v-delta"})
	_ = tr.OnStreamRequest(1, &discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ClusterType, ResponseNonce: "1", VersionInfo: "v-sotw"})
	_ = tr.OnStreamDeltaRequest(1, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.ClusterType, ResponseNonce: "1"})
	for node, want := range map[string]string{"sotw-node": "v-sotw", "delta-node": "v-delta"} {
		st, ok := tr.Node(node)
		if !ok || !st.Connected {
			t.Fatalf("%s not tracked as connected: %+v", node, st)
		}
		if got := st.Types["Cluster"]; got == nil || got.Acked != want || got.Sent != want {
			t.Errorf("%s: cluster status %+v, want sent and acked %q", node, got, want)
		}
	}
	tr.OnDeltaStreamClosed(1, delta)
	if st, _ := tr.Node("sotw-node"); !st.Connected {
		t.Error("closing the delta stream disconnected the SotW node")
	}
	if st, _ := tr.Node("delta-node"); st.Connected {
		t.Error("delta node still connected after its stream closed")
	}
}
