package tracker

import (
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

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

// A node that disconnected ForgetAfter ago and is not in the catalog is
// forgotten (Consul instance ids change on every deploy: keeping every id
// ever seen grows without bound), with the bundle it ACKed; until then it
// shows as disconnected. A catalog proxy is kept however long it has been
// gone, a connected one always. The catalog is asked without the lock.
func TestTrackerForgetsNodesGoneFromTheCatalog(t *testing.T) {
	clock := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	var tr *Tracker
	lockedInKnown := false
	known := func(id string) bool {
		if !tr.mu.TryLock() {
			lockedInKnown = true
		} else {
			tr.mu.Unlock()
		}
		return id == "catalog"
	}
	tr = NewTracker(slog.New(slog.DiscardHandler), metrics.New(), known)
	tr.now = func() time.Time { return clock }
	ids := []string{"gone", "catalog", "connected", "recent"}
	for i, id := range ids {
		tr.Identified(StreamKey{ID: int64(i)}, &corev3.Node{Id: id})
	}
	tr.bundles.acked = map[string][]string{"gone": {"root"}, "catalog": {"root"}}
	tr.AgentFetchedBundle("agent", nil)
	tr.Closed(StreamKey{ID: 0}) // gone
	tr.Closed(StreamKey{ID: 1}) // catalog
	tracked := func() map[string]bool {
		out := map[string]bool{}
		for _, n := range tr.Status() {
			out[n.ID] = n.Connected
		}
		return out
	}

	clock = clock.Add(ForgetAfter - time.Second)
	tr.Closed(StreamKey{ID: 3}) // recent
	if got, want := tracked(), map[string]bool{"gone": false, "catalog": false, "connected": true, "recent": false}; !maps.Equal(got, want) {
		t.Fatalf("just under %s after the disconnect: %v, want %v", ForgetAfter, got, want)
	}

	clock = clock.Add(sweepEvery + time.Second)
	if got, want := tracked(), map[string]bool{"catalog": false, "connected": true, "recent": false}; !maps.Equal(got, want) {
		t.Fatalf("%s after the disconnect: %v, want %v", ForgetAfter+sweepEvery, got, want)
	}
	if lockedInKnown {
		t.Error("the catalog was asked with the tracker's lock held")
	}
	if _, ok := tr.bundles.acked["gone"]; ok || len(tr.bundles.acked) != 1 {
		t.Errorf("bundles ACKed after the sweep: %v, want the catalog proxy's only", tr.bundles.acked)
	}
	if len(tr.bundles.agents) != 0 {
		t.Errorf("agents after %s without a fetch: %v", ForgetAfter, tr.bundles.agents)
	}
	// A forgotten node that comes back starts afresh.
	tr.Identified(StreamKey{ID: 9}, &corev3.Node{Id: "gone"})
	if st, ok := tr.Node("gone"); !ok || !st.Connected || !st.ConnectedSince.Equal(clock) {
		t.Errorf("the node back: %+v %v", st, ok)
	}
}

// The bound: with a new node id connecting and leaving every second (a
// fleet redeployed continuously), the tracker holds the catalog's proxies
// and those gone within ForgetAfter+sweepEvery, however long it runs.
func TestTrackerMemoryBoundUnderChurn(t *testing.T) {
	clock := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	tr := NewTracker(slog.New(slog.DiscardHandler), metrics.New(), func(id string) bool { return id == "catalog" })
	tr.now = func() time.Time { return clock }
	tr.Identified(StreamKey{ID: -1}, &corev3.Node{Id: "catalog"})
	tr.Closed(StreamKey{ID: -1})
	const churn = 3 * time.Hour
	bound := int((ForgetAfter+sweepEvery)/time.Second) + 2
	most := 0
	for i := range int(churn / time.Second) {
		k := StreamKey{ID: int64(i)}
		tr.Identified(k, &corev3.Node{Id: fmt.Sprintf("instance-%d", i)})
		tr.Closed(k)
		tr.mu.Lock()
		most = max(most, len(tr.nodes))
		tr.mu.Unlock()
		clock = clock.Add(time.Second)
	}
	if most > bound {
		t.Errorf("the tracker held up to %d nodes after %s of churn, want at most %d", most, churn, bound)
	}
	if _, ok := tr.Node("catalog"); !ok {
		t.Error("the catalog proxy was forgotten")
	}
	t.Logf("%s of one new node id a second: at most %d nodes held (bound %d)", churn, most, bound)
}

// The rotation gate waits for a node while one of its streams subscribes
// to the trust bundle, whatever it was sent before: a node whose every
// stream dropped the subscription (or closed) is not waited for.
func TestBundleGateFollowsSubscriptions(t *testing.T) {
	tr := NewTracker(slog.New(slog.NewTextHandler(io.Discard, nil)), metrics.New(), nil)
	ads, sds := StreamKey{ID: 1}, StreamKey{Delta: true, ID: 1}
	tr.Identified(ads, &corev3.Node{Id: "n"})
	tr.Identified(sds, &corev3.Node{Id: "n"})
	tr.BundleSubscribed(ads, true)
	tr.BundleSubscribed(sds, true)
	tr.BundleSubscribed(StreamKey{ID: 99}, true) // never named its node: ignored
	want := func(step string, pending ...string) {
		t.Helper()
		ok, got := tr.BundleAcked("fp")
		if ok != (len(pending) == 0) || !slices.Equal(got, pending) {
			t.Errorf("%s: BundleAcked = %v %v, want pending %v", step, ok, got, pending)
		}
	}
	want("both streams subscribed", "n")
	tr.BundleSubscribed(ads, false)
	want("one stream still subscribed", "n")
	tr.BundleSubscribed(sds, false)
	want("no stream subscribed")
	tr.BundleSubscribed(ads, true)
	want("subscribed again", "n")
	tr.Closed(ads)
	want("the subscribed stream closed")
}
