package telemetry

import (
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	accesslogdatav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

const (
	webID = "spiffe://cluster.local/ns/default/sa/web"
	apiID = "spiffe://cluster.local/ns/default/sa/api"
)

// fakeClock is a settable clock for the store.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func newClock() *fakeClock {
	// Aligned on a slot, so windows in tests are whole slots.
	return &fakeClock{now: time.Unix(1_800_000_000, 0)}
}

func addr(ip string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{Address: ip, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}}
}

// httpEntry is an entry shaped as Envoy 1.40 sends it from an inbound HCM.
func httpEntry(peer string, status uint32, details string, d time.Duration, trailers map[string]string) *accesslogdatav3.HTTPAccessLogEntry {
	c := &accesslogdatav3.AccessLogCommon{
		DownstreamRemoteAddress: addr("10.0.0.7", 50123),
		StartTime:               timestamppb.New(time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)),
		Duration:                durationpb.New(d),
	}
	if peer != "" {
		c.TlsProperties = &accesslogdatav3.TLSProperties{PeerCertificateProperties: &accesslogdatav3.TLSProperties_CertificateProperties{
			SubjectAltName: []*accesslogdatav3.TLSProperties_CertificateProperties_SubjectAltName{
				{San: &accesslogdatav3.TLSProperties_CertificateProperties_SubjectAltName_Uri{Uri: peer}},
			},
		}}
	}
	return &accesslogdatav3.HTTPAccessLogEntry{
		CommonProperties: c,
		Request:          &accesslogdatav3.HTTPRequestProperties{RequestMethod: corev3.RequestMethod_POST, Path: "/shop.Cart/Add", Authority: "api"},
		Response:         &accesslogdatav3.HTTPResponseProperties{ResponseCode: wrapperspb.UInt32(status), ResponseCodeDetails: details, ResponseTrailers: trailers},
	}
}

func TestFromHTTP(t *testing.T) {
	e := FromHTTP(httpEntry(webID, 200, "via_upstream", 3*time.Millisecond, map[string]string{"grpc-status": "0"}))
	if e.Source != webID || !e.MTLS || e.SourceAddress != "10.0.0.7" || e.Method != "POST" || e.Path != "/shop.Cart/Add" ||
		e.Status != 200 || e.GRPCStatus == nil || *e.GRPCStatus != 0 || e.Denied || e.DurationMs != 3 || !e.Success() || e.Protocol != ProtocolHTTP {
		t.Errorf("allowed gRPC call: %+v", e)
	}
	// A gRPC call denied by a DENY rule: HTTP 200, grpc-status 7 in the
	// trailers-only answer's headers.
	x := httpEntry(webID, 200, "rbac_access_denied_matched_policy[default/deny-web/rule-0]", time.Millisecond, nil)
	x.Response.ResponseHeaders = map[string]string{"grpc-status": "7"}
	e = FromHTTP(x)
	if !e.Denied || e.Policy != "default/deny-web/rule-0" || e.GRPCStatus == nil || *e.GRPCStatus != 7 || e.Success() || e.classIndex() != 4 {
		t.Errorf("denied gRPC call: %+v", e)
	}
	// Plaintext, no ALLOW matched.
	e = FromHTTP(httpEntry("", 403, "rbac_access_denied_matched_policy[none]", time.Millisecond, nil))
	if e.MTLS || e.Source != "" || !e.Denied || e.Policy != NoAllowMatched || e.classIndex() != 2 {
		t.Errorf("plaintext denied: %+v", e)
	}
	if e := FromHTTP(httpEntry(webID, 503, "upstream_reset", time.Second, nil)); e.Success() || e.classIndex() != 3 {
		t.Errorf("503 counted as success: %+v", e)
	}
}

func TestFromTCP(t *testing.T) {
	x := &accesslogdatav3.TCPAccessLogEntry{
		CommonProperties: &accesslogdatav3.AccessLogCommon{
			DownstreamRemoteAddress:      addr("127.0.0.1", 4000),
			ConnectionTerminationDetails: "rbac_access_denied_matched_policy[shop/no-web/rule-1]",
			Duration:                     durationpb.New(time.Millisecond),
		},
		ConnectionProperties: &accesslogdatav3.ConnectionProperties{ReceivedBytes: 10, SentBytes: 20},
	}
	e := FromTCP(x)
	if e.Protocol != ProtocolTCP || !e.Denied || e.Policy != "shop/no-web/rule-1" || e.BytesReceived != 10 || e.BytesSent != 20 || !e.Success() {
		t.Errorf("%+v", e)
	}
}

func ev(src string, mtls, denied bool, status int, d time.Duration) Event {
	e := Event{Destination: "api.default", Source: src, SourceAddress: "10.0.0.7", MTLS: mtls, Protocol: ProtocolHTTP,
		Status: status, Denied: denied, DurationMs: float64(d) / float64(time.Millisecond)}
	if denied {
		e.Policy = "default/deny/rule-0"
	}
	return e
}

func TestStoreEdgesAndStats(t *testing.T) {
	clock := newClock()
	s := NewStore(Options{Now: clock.Now})
	var evs []Event
	for i := range 100 { // 100 mTLS from web: 1..100 ms, 10 of them 5xx
		st := 200
		if i%10 == 0 {
			st = 503
		}
		evs = append(evs, ev(webID, true, false, st, time.Duration(i+1)*time.Millisecond))
	}
	for range 20 { // 20 plaintext from 10.0.0.7
		evs = append(evs, ev("", false, false, 200, time.Millisecond))
	}
	for range 5 { // 5 denied from api
		evs = append(evs, ev(apiID, true, true, 403, time.Millisecond))
	}
	s.Record(evs, false)
	clock.Advance(10 * time.Second)

	r := s.Edges()
	if len(r.Edges) != 3 {
		t.Fatalf("edges %+v", r.Edges)
	}
	plain, api, web := r.Edges[0], r.Edges[1], r.Edges[2] // sorted by source: "", api, web
	if plain.Source != "" || plain.SourceAddress != "10.0.0.7" || plain.MTLS || plain.Requests != 20 || plain.Denied != 0 {
		t.Errorf("plaintext edge %+v", plain)
	}
	if api.Source != apiID || !api.MTLS || api.Requests != 5 || api.Denied != 5 || api.LastDeniedBy != "default/deny/rule-0" || api.Responses["4xx"] != 5 {
		t.Errorf("denied edge %+v", api)
	}
	if web.Source != webID || web.SourceAddress != "" || web.Requests != 100 || web.Responses["2xx"] != 90 || web.Responses["5xx"] != 10 {
		t.Errorf("mTLS edge %+v", web)
	}

	st := s.Stats(time.Minute, "api.default")
	if len(st.Services) != 1 {
		t.Fatalf("stats %+v", st)
	}
	a := st.Services[0]
	if a.Service != "api" || a.Namespace != "default" || a.Requests != 125 || a.Denied != 5 || a.MTLS != 105 || a.Success != 110 {
		t.Errorf("stats %+v", a)
	}
	if a.SuccessRate == nil || math.Abs(*a.SuccessRate-110.0/120) > 1e-9 {
		t.Errorf("success rate %v, want 110/120", a.SuccessRate)
	}
	if math.Abs(a.MTLSPercent-100*105.0/125) > 1e-9 {
		t.Errorf("mTLS %% %v", a.MTLSPercent)
	}
	// 125 events over the 10 s seen so far.
	if math.Abs(a.RPS-12.5) > 1e-9 || st.Covered != "10s" {
		t.Errorf("rps %v over %s, want 12.5 over 10s", a.RPS, st.Covered)
	}
	// Latencies of the 120 allowed: 100 spread 1..100 ms, 20 at 1 ms. The
	// true p50 is 40 ms: the estimate stays inside its bucket (20..50).
	if a.P50Ms == nil || *a.P50Ms < 20 || *a.P50Ms > 50 || *a.P99Ms < 50 || *a.P99Ms > 100 || *a.P95Ms > *a.P99Ms {
		t.Errorf("quantiles p50 %v p95 %v p99 %v", *a.P50Ms, *a.P95Ms, *a.P99Ms)
	}

	// Past the window, the stats are empty but the edges remain.
	clock.Advance(2 * time.Minute)
	if st := s.Stats(time.Minute, ""); len(st.Services) != 0 {
		t.Errorf("stats after the window: %+v", st.Services)
	}
	if st := s.Stats(5*time.Minute, ""); len(st.Services) != 1 || st.Services[0].Requests != 125 {
		t.Errorf("5m window: %+v", st.Services)
	}
	if r := s.Edges(); len(r.Edges) != 3 {
		t.Errorf("edges after the window: %d", len(r.Edges))
	}
	// An hour later idle edges and services are forgotten (on the next
	// record).
	clock.Advance(time.Hour)
	s.Record([]Event{ev(webID, true, false, 200, time.Millisecond)}, false)
	if r := s.Edges(); len(r.Edges) != 1 || r.Edges[0].Requests != 1 {
		t.Errorf("after an idle hour: %+v", r.Edges)
	}
}

func TestStoreCapsAndPlaintextInStrict(t *testing.T) {
	clock := newClock()
	s := NewStore(Options{Now: clock.Now, MaxEdges: 3, MaxServices: 1})
	var evs []Event
	for i := range 10 {
		evs = append(evs, ev(fmt.Sprintf("spiffe://cluster.local/ns/default/sa/c%d", i), true, false, 200, time.Millisecond))
	}
	evs = append(evs, ev("", false, false, 200, time.Millisecond))
	s.Record(evs, true)
	other := ev(webID, true, false, 200, time.Millisecond)
	other.Destination = "db.default"
	s.Record([]Event{other}, false)

	r := s.Edges()
	if len(r.Edges) != 3 || r.DroppedEvents != 9 {
		t.Errorf("edges %d dropped %d, want 3 and 9", len(r.Edges), r.DroppedEvents)
	}
	st := s.Stats(time.Minute, "")
	if len(st.Services) != 1 || st.Services[0].Requests != 11 || st.Dropped != 1 {
		t.Errorf("the service still counts every event: %+v dropped %d", st.Services, st.Dropped)
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(s)
	want := `
# HELP meshd_mesh_plaintext_in_strict_total Requests and connections that reached a workload in plaintext although policy puts it in STRICT mTLS (a migration not finished, or a sidecar that never got its STRICT listener).
# TYPE meshd_mesh_plaintext_in_strict_total counter
meshd_mesh_plaintext_in_strict_total{destination_namespace="default",destination_service="api"} 1
# HELP meshd_telemetry_dropped_events_total Access-log events not kept per edge (reason edge_limit) or per service (reason service_limit) because the store was full; still counted where room was.
# TYPE meshd_telemetry_dropped_events_total counter
meshd_telemetry_dropped_events_total{reason="edge_limit"} 9
meshd_telemetry_dropped_events_total{reason="service_limit"} 1
# HELP meshd_telemetry_edges Edges (caller → service) the telemetry store holds; at most --telemetry-max-edges.
# TYPE meshd_telemetry_edges gauge
meshd_telemetry_edges 3
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "meshd_mesh_plaintext_in_strict_total", "meshd_telemetry_dropped_events_total", "meshd_telemetry_edges"); err != nil {
		t.Error(err)
	}
}

func TestPrometheusSeries(t *testing.T) {
	clock := newClock()
	s := NewStore(Options{Now: clock.Now})
	evs := []Event{
		ev(webID, true, false, 200, 3*time.Millisecond),
		ev(webID, true, false, 200, 30*time.Millisecond),
		ev(apiID, true, true, 403, time.Millisecond),
		ev("", false, false, 503, time.Millisecond),
		{Destination: "db.default", Source: webID, MTLS: true, Protocol: ProtocolTCP},
	}
	s.Record(evs, false)
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(s)
	want := `
# HELP meshd_mesh_requests_total HTTP and gRPC requests received by mesh sidecars, by caller identity, destination service, transport, authorization decision and response class.
# TYPE meshd_mesh_requests_total counter
meshd_mesh_requests_total{decision="allow",destination_namespace="default",destination_service="api",response_class="2xx",source_address="",source_identity="spiffe://cluster.local/ns/default/sa/web",tls="mtls"} 2
meshd_mesh_requests_total{decision="allow",destination_namespace="default",destination_service="api",response_class="5xx",source_address="10.0.0.7",source_identity="",tls="plaintext"} 1
meshd_mesh_requests_total{decision="deny",destination_namespace="default",destination_service="api",response_class="4xx",source_address="",source_identity="spiffe://cluster.local/ns/default/sa/api",tls="mtls"} 1
# HELP meshd_mesh_tcp_connections_total tcp connections received by mesh sidecars (counted when they close), by caller identity, destination service, transport and authorization decision.
# TYPE meshd_mesh_tcp_connections_total counter
meshd_mesh_tcp_connections_total{decision="allow",destination_namespace="default",destination_service="db",source_address="",source_identity="spiffe://cluster.local/ns/default/sa/web",tls="mtls"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "meshd_mesh_requests_total", "meshd_mesh_tcp_connections_total"); err != nil {
		t.Error(err)
	}
	// The latency histogram holds the 3 allowed requests (1, 3 and 30 ms),
	// cumulatively.
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "meshd_mesh_request_duration_seconds" {
			continue
		}
		h := mf.GetMetric()[0].GetHistogram()
		if h.GetSampleCount() != 3 || math.Abs(h.GetSampleSum()-0.034) > 1e-9 {
			t.Errorf("histogram count %d sum %v", h.GetSampleCount(), h.GetSampleSum())
		}
		for _, b := range h.GetBucket() {
			want := map[float64]uint64{0.0005: 0, 0.001: 1, 0.002: 1, 0.005: 2, 0.01: 2, 0.02: 2, 0.05: 3}[b.GetUpperBound()]
			if b.GetUpperBound() <= 0.05 && b.GetCumulativeCount() != want {
				t.Errorf("bucket le=%v: %d, want %d", b.GetUpperBound(), b.GetCumulativeCount(), want)
			}
		}
		return
	}
	t.Error("no meshd_mesh_request_duration_seconds")
}

func TestQuantile(t *testing.T) {
	var h [nBuckets]uint64
	if quantile(0.5, &h) != 0 {
		t.Error("empty histogram")
	}
	h[bucketOf(15*time.Millisecond)] = 100 // (10, 20] ms
	if q := quantile(0.5, &h); q != 15*time.Millisecond {
		t.Errorf("p50 of a uniform bucket = %v, want its middle", q)
	}
	h = [nBuckets]uint64{}
	h[nBuckets-1] = 1 // beyond 60 s
	if q := quantile(0.99, &h); q != 60*time.Second {
		t.Errorf("open bucket: %v", q)
	}
	if bucketOf(500*time.Microsecond) != 0 || bucketOf(time.Hour) != nBuckets-1 {
		t.Error("bucketOf")
	}
}

func TestHub(t *testing.T) {
	var h Hub
	h.Publish([]Event{ev(webID, true, false, 200, 0)}) // nobody listening: nothing happens
	all := h.Subscribe(Filter{})
	denied := h.Subscribe(Filter{Destination: "api", DeniedOnly: true})
	paths := h.Subscribe(Filter{Source: "spiffe://cluster.local/ns/default/", PathPrefix: "/shop."})
	if h.Subscribers() != 3 {
		t.Fatal(h.Subscribers())
	}
	e1, e2 := ev(webID, true, false, 200, 0), ev(apiID, true, true, 403, 0)
	e1.Path, e2.Path = "/shop.Cart/Add", "/other"
	h.Publish([]Event{e1, e2})
	if got := len(all.Events()); got != 2 {
		t.Errorf("unfiltered tap got %d events", got)
	}
	if got := <-denied.Events(); got.Source != apiID || len(denied.Events()) != 0 {
		t.Errorf("denied-only tap got %+v", got)
	}
	if got := <-paths.Events(); got.Path != "/shop.Cart/Add" || len(paths.Events()) != 0 {
		t.Errorf("path tap got %+v", got)
	}
	// A subscriber that falls behind loses events and is told.
	for range TapBuffer {
		h.Publish([]Event{e1})
	}
	if n := all.Lost(); n != 2 || h.Dropped() < 2 {
		t.Errorf("lost %d, dropped %d; want 2", n, h.Dropped())
	}
	all.Close()
	all.Close()
	denied.Close()
	paths.Close()
	if h.Subscribers() != 0 {
		t.Errorf("subscribers after close: %d", h.Subscribers())
	}
}

func TestFilterSourceForms(t *testing.T) {
	e := ev("", false, false, 200, 0)
	for _, c := range []struct {
		f    Filter
		want bool
	}{
		{Filter{Source: "10.0.0.7"}, true},
		{Filter{Source: webID}, false},
		{Filter{Destination: "api.default"}, true},
		{Filter{Destination: "api"}, true},
		{Filter{Destination: "ap"}, false},
		{Filter{Method: "post"}, false}, // ev has no method
	} {
		if got := c.f.Match(&e); got != c.want {
			t.Errorf("%+v.Match = %v, want %v", c.f, got, c.want)
		}
	}
}
