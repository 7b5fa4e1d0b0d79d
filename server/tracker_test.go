package server

import (
	"context"
	"io"
	"log/slog"
	"strconv"
	"testing"
	"unique"
	"unsafe"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/genproto/googleapis/rpc/status"

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

// The tracker keeps only the last response of each type per stream: an ACK
// of it records the version, a NACK of it rewrites the request to the
// rejected version (so go-control-plane does not resend it), a reply to an
// older or unknown nonce is neither, and each reply counts once.
func TestTrackerAnswersLatestNonce(t *testing.T) {
	m := metrics.New()
	tr := NewTracker(slog.New(slog.NewTextHandler(io.Discard, nil)), m, nil)
	ctx := context.Background()
	node := &corev3.Node{Id: "n"}
	_ = tr.OnStreamOpen(ctx, 7, "")
	send := func(typ, nonce, version string) {
		tr.OnStreamResponse(ctx, 7, nil, &discoveryv3.DiscoveryResponse{TypeUrl: typ, Nonce: nonce, VersionInfo: version})
	}
	reply := func(typ, nonce, version string, nack bool) *discoveryv3.DiscoveryRequest {
		req := &discoveryv3.DiscoveryRequest{Node: node, TypeUrl: typ, ResponseNonce: nonce, VersionInfo: version}
		if nack {
			req.ErrorDetail = &status.Status{Message: "rejected"}
		}
		_ = tr.OnStreamRequest(7, req)
		return req
	}
	statusOf := func(typ string) TypeStatus {
		st, _ := tr.Node("n")
		if ts := st.Types[typ]; ts != nil {
			return *ts
		}
		return TypeStatus{}
	}
	reply(resourcev3.ClusterType, "", "", false)
	send(resourcev3.ClusterType, "1", "c1")
	send(resourcev3.ListenerType, "2", "l1")
	reply(resourcev3.ClusterType, "1", "c1", false)
	if got := statusOf("Cluster"); got.Acked != "c1" || got.Sent != "c1" {
		t.Fatalf("cluster after ACK: %+v", got)
	}
	// Types are tracked separately: the listener response is still open.
	send(resourcev3.ClusterType, "3", "c2")
	if req := reply(resourcev3.ClusterType, "3", "c1", true); req.GetVersionInfo() != "c2" {
		t.Errorf("NACK of c2 not rewritten to the rejected version: %q", req.GetVersionInfo())
	}
	if got := statusOf("Cluster"); got.Nacked != "c2" || got.Acked != "c1" || got.NackError != "rejected" {
		t.Errorf("cluster after NACK: %+v", got)
	}
	reply(resourcev3.ListenerType, "2", "l1", false)
	if got := statusOf("Listener"); got.Acked != "l1" {
		t.Errorf("listener ACK lost: %+v", got)
	}
	// A repeated or stale reply is not another ACK, and an unknown nonce is
	// not rewritten.
	reply(resourcev3.ListenerType, "2", "l1", false)
	send(resourcev3.ListenerType, "4", "l2")
	reply(resourcev3.ListenerType, "2", "l1", false)
	if req := reply(resourcev3.ListenerType, "99", "l1", true); req.GetVersionInfo() != "l1" {
		t.Errorf("NACK of an unknown nonce rewritten to %q", req.GetVersionInfo())
	}
	if got := testutil.ToFloat64(m.ACKs.WithLabelValues("Listener")); got != 1 {
		t.Errorf("listener ACKs counted %v times, want 1", got)
	}
	if got := testutil.ToFloat64(m.ACKs.WithLabelValues("Cluster")); got != 1 {
		t.Errorf("cluster ACKs counted %v times, want 1", got)
	}
	// Requests keep canonical strings (go-control-plane holds them).
	req := reply(string([]byte(resourcev3.EndpointType)), "", "", false)
	req.ResourceNames = []string{string([]byte("outbound|api.default"))}
	_ = tr.OnStreamRequest(7, req)
	if unsafe.StringData(req.GetTypeUrl()) != unsafe.StringData(resourcev3.EndpointType) {
		t.Error("type URL not canonical")
	}
	if unsafe.StringData(req.ResourceNames[0]) != unsafe.StringData(unique.Make("outbound|api.default").Value()) {
		t.Error("resource name not interned")
	}
}

// A delta client may be sent a second response of a type before it answers
// the first (it asked for more resources meanwhile); answers to both still
// count, in order, and a NACK of the older one is still recorded.
func TestTrackerDeltaAnswersOlderResponse(t *testing.T) {
	m := metrics.New()
	tr := NewTracker(slog.New(slog.NewTextHandler(io.Discard, nil)), m, nil)
	ctx := context.Background()
	node := &corev3.Node{Id: "d"}
	_ = tr.OnDeltaStreamOpen(ctx, 3, "")
	_ = tr.OnStreamDeltaRequest(3, &discoveryv3.DeltaDiscoveryRequest{Node: node, TypeUrl: resourcev3.EndpointType})
	send := func(nonce, version string) {
		tr.OnStreamDeltaResponse(3, nil, &discoveryv3.DeltaDiscoveryResponse{TypeUrl: resourcev3.EndpointType, Nonce: nonce, SystemVersionInfo: version})
	}
	reply := func(nonce string, nack bool) {
		req := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResponseNonce: nonce}
		if nack {
			req.ErrorDetail = &status.Status{Message: "bad endpoints"}
		}
		_ = tr.OnStreamDeltaRequest(3, req)
	}
	statusOf := func() TypeStatus {
		st, _ := tr.Node("d")
		if ts := st.Types["ClusterLoadAssignment"]; ts != nil {
			return *ts
		}
		return TypeStatus{}
	}
	send("1", "e1")
	send("2", "e2")
	reply("1", false)
	if got := statusOf(); got.Acked != "e1" {
		t.Fatalf("ACK of the older response: %+v", got)
	}
	reply("2", false)
	if got := statusOf(); got.Acked != "e2" {
		t.Fatalf("ACK of the newer response: %+v", got)
	}
	if got := testutil.ToFloat64(m.ACKs.WithLabelValues("ClusterLoadAssignment")); got != 2 {
		t.Errorf("%v ACKs counted, want 2", got)
	}
	send("3", "e3")
	send("4", "e4")
	reply("3", true)
	if got := statusOf(); got.Nacked != "e3" || got.NackError != "bad endpoints" {
		t.Errorf("NACK of the older response not recorded: %+v", got)
	}
	// Superseded responses are bounded: a client that never answers does
	// not grow the stream's state.
	for i := range 3 * maxOlder {
		send(strconv.Itoa(100+i), "x")
	}
	tr.mu.Lock()
	n := len(tr.streams[streamKey{delta: true, id: 3}].older)
	tr.mu.Unlock()
	if n > maxOlder {
		t.Errorf("%d superseded responses kept, want at most %d", n, maxOlder)
	}
}
