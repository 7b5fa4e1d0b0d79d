package tracker

import (
	"io"
	"log/slog"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/meshd/meshd/internal/metrics"
	"github.com/meshd/meshd/xds"
)

// SotW and delta streams are numbered separately, so both start at 1; the
// tracker must keep them apart (found with a delta Envoy next to SotW
// Envoys, whose ACKs were attributed to the wrong node).
func TestTrackerSeparatesSotWAndDeltaStreamIDs(t *testing.T) {
	tr := NewTracker(slog.New(slog.NewTextHandler(io.Discard, nil)), metrics.New(), nil)
	sotw, delta := StreamKey{ID: 1}, StreamKey{Delta: true, ID: 1}
	tr.Identified(sotw, &corev3.Node{Id: "sotw-node"})
	tr.Identified(delta, &corev3.Node{Id: "delta-node"})
	tr.Sent(sotw, resourcev3.ClusterType, "1", "v-sotw", 10, nil)
	tr.Sent(delta, resourcev3.ClusterType, "1", "v-delta", 10, nil)
	tr.Acked(sotw, resourcev3.ClusterType, "1", "v-sotw")
	tr.Acked(delta, resourcev3.ClusterType, "1", "v-delta")
	for node, want := range map[string]string{"sotw-node": "v-sotw", "delta-node": "v-delta"} {
		st, ok := tr.Node(node)
		if !ok || !st.Connected {
			t.Fatalf("%s not tracked as connected: %+v", node, st)
		}
		if got := st.Types["Cluster"]; got == nil || got.Acked != want || got.Sent != want {
			t.Errorf("%s: cluster status %+v, want sent and acked %q", node, got, want)
		}
	}
	tr.Closed(delta)
	if st, _ := tr.Node("sotw-node"); !st.Connected {
		t.Error("closing the delta stream disconnected the SotW node")
	}
	if st, _ := tr.Node("delta-node"); st.Connected {
		t.Error("delta node still connected after its stream closed")
	}
}

// The tracker records what the loops report: ACKs and NACKs per type (a
// later ACK clears an earlier NACK), counted once each, and a stream that
// never named its node is counted but attributed to no one.
func TestTrackerRecordsAnswers(t *testing.T) {
	m := metrics.New()
	tr := NewTracker(slog.New(slog.NewTextHandler(io.Discard, nil)), m, nil)
	k := StreamKey{ID: 7}
	tr.Identified(k, &corev3.Node{Id: "n"})
	tr.Identified(k, &corev3.Node{Id: "other"}) // bound once: ignored
	statusOf := func(typ string) TypeStatus {
		st, _ := tr.Node("n")
		if ts := st.Types[typ]; ts != nil {
			return *ts
		}
		return TypeStatus{}
	}
	tr.Sent(k, resourcev3.ClusterType, "1", "c1", 100, nil)
	tr.Acked(k, resourcev3.ClusterType, "1", "c1")
	tr.Sent(k, resourcev3.ClusterType, "2", "c2", 100, nil)
	tr.Nacked(k, resourcev3.ClusterType, "2", "c2", "rejected")
	if got := statusOf("Cluster"); got.Nacked != "c2" || got.Acked != "c1" || got.NackError != "rejected" || got.Pushes != 2 || got.Sent != "c2" {
		t.Errorf("cluster after NACK: %+v", got)
	}
	tr.Sent(k, resourcev3.ClusterType, "3", "c3", 100, nil)
	tr.Acked(k, resourcev3.ClusterType, "3", "c3")
	if got := statusOf("Cluster"); got.Nacked != "" || got.Acked != "c3" {
		t.Errorf("a later ACK did not supersede the NACK: %+v", got)
	}
	if got := testutil.ToFloat64(m.ACKs.WithLabelValues("Cluster")); got != 2 {
		t.Errorf("%v ACKs counted, want 2", got)
	}
	if got := testutil.ToFloat64(m.NACKs.WithLabelValues("Cluster")); got != 1 {
		t.Errorf("%v NACKs counted, want 1", got)
	}
	if got := testutil.ToFloat64(m.PushBytes.WithLabelValues("Cluster")); got != 300 {
		t.Errorf("%v bytes counted, want 300", got)
	}
	if _, ok := tr.Node("other"); ok {
		t.Error("a stream's second identification created a node")
	}
	tr.Sent(StreamKey{ID: 99}, resourcev3.ClusterType, "1", "x", 1, nil) // never identified
	if n := len(tr.Status()); n != 1 {
		t.Errorf("%d nodes tracked, want 1", n)
	}
}

// An Envoy whose bootstrap does not record meshd's drain settings, or
// records a drain time above the bound, is warned about once per node
// (with the command to start Envoy with) and flagged in its status; one
// from meshctl bootstrap is not, and a gRPC proxy never is.
func TestTrackerDrainWarning(t *testing.T) {
	var logs strings.Builder
	tr := NewTracker(slog.New(slog.NewTextHandler(&logs, nil)), metrics.New(), nil)
	meta := func(fields map[string]any) *structpb.Struct {
		s, err := structpb.NewStruct(fields)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	good := map[string]any{xds.NodeMetaFlavor: "envoy", xds.NodeMetaDrainTimeS: 5, xds.NodeMetaDrainStrategy: "immediate"}
	cases := []struct {
		node string
		meta map[string]any
		want string // in the warning; "" for none
	}{
		{"current", good, ""},
		{"old", map[string]any{xds.NodeMetaFlavor: "envoy"}, "does not record MESHD_DRAIN_TIME_S"},
		{"long", map[string]any{xds.NodeMetaFlavor: "envoy", xds.NodeMetaDrainTimeS: 600, xds.NodeMetaDrainStrategy: "immediate"}, "drain time of 10m0s, above meshd's bound of 1m0s"},
		{"gradual", map[string]any{xds.NodeMetaFlavor: "envoy", xds.NodeMetaDrainTimeS: 5, xds.NodeMetaDrainStrategy: "gradual"}, `is "gradual", not "immediate"`},
		{"grpc", map[string]any{xds.NodeMetaFlavor: "grpc"}, ""},
	}
	for i, c := range cases {
		for stream := range 2 { // the second stream of a node does not warn again
			tr.Identified(StreamKey{ID: int64(10*i + stream)}, &corev3.Node{Id: c.node, Metadata: meta(c.meta)})
		}
		st, _ := tr.Node(c.node)
		n := strings.Count(logs.String(), "node="+c.node+" reason=")
		switch {
		case c.want == "" && (st.DrainWarning != "" || n != 0):
			t.Errorf("%s: warning %q, logged %d times; want none", c.node, st.DrainWarning, n)
		case c.want != "" && (!strings.Contains(st.DrainWarning, c.want) || n != 1):
			t.Errorf("%s: warning %q, logged %d times; want one containing %q", c.node, st.DrainWarning, n, c.want)
		case c.want != "" && !strings.Contains(logs.String(), "envoy -c FILE --drain-time-s 5 --drain-strategy immediate"):
			t.Errorf("%s: the log does not give the command line:\n%s", c.node, logs.String())
		}
	}
}
