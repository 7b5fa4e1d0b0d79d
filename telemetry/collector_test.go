package telemetry

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	accesslogdatav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/meshd/meshd/internal/testwait"
	"github.com/meshd/meshd/mesh"
)

const testLogName = "meshd.inbound"

// startCollector serves a Collector over real gRPC on loopback; api.default
// (node api-1) is STRICT by policy.
func startCollector(t testing.TB) (*Collector, alsv3.AccessLogServiceClient) {
	t.Helper()
	c := &Collector{Store: NewStore(Options{}), Hub: &Hub{}, LogName: testLogName,
		Resolve: func(node string) (Target, bool) {
			if node != "api-1" {
				return Target{}, false
			}
			return Target{Service: mesh.ServiceKey{Namespace: "default", Name: "api"}, Strict: true}, true
		}}
	srv := grpc.NewServer()
	c.Register(srv)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return c, alsv3.NewAccessLogServiceClient(conn)
}

func send(t *testing.T, client alsv3.AccessLogServiceClient, node, logName string, batches ...[]*accesslogdatav3.HTTPAccessLogEntry) {
	t.Helper()
	st, err := client.StreamAccessLogs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for i, b := range batches {
		m := &alsv3.StreamAccessLogsMessage{LogEntries: &alsv3.StreamAccessLogsMessage_HttpLogs{HttpLogs: &alsv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: b}}}
		if i == 0 { // Envoy identifies itself on the first message only
			m.Identifier = &alsv3.StreamAccessLogsMessage_Identifier{Node: &corev3.Node{Id: node}, LogName: logName}
		}
		if err := st.Send(m); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := st.CloseAndRecv(); err != nil {
		t.Fatal(err)
	}
}

func TestCollectorRecordsWhatEnvoySends(t *testing.T) {
	c, client := startCollector(t)
	reg := prometheus.NewPedanticRegistry()
	c.RegisterMetrics(reg)
	ok := httpEntry(webID, 200, "via_upstream", time.Millisecond, nil)
	plain := httpEntry("", 200, "via_upstream", time.Millisecond, nil)
	send(t, client, "api-1", testLogName, []*accesslogdatav3.HTTPAccessLogEntry{ok, ok}, []*accesslogdatav3.HTTPAccessLogEntry{ok, plain})
	// Entries of a node meshd does not know, or of another log, are not
	// recorded.
	send(t, client, "stranger", testLogName, []*accesslogdatav3.HTTPAccessLogEntry{ok})
	send(t, client, "api-1", "someone-elses-log", []*accesslogdatav3.HTTPAccessLogEntry{ok, ok})

	r := c.Store.Edges()
	if len(r.Edges) != 2 || r.Edges[1].Source != webID || r.Edges[1].Requests != 3 || r.Edges[1].Destination != "api.default" ||
		r.Edges[0].MTLS || r.Edges[0].Requests != 1 {
		t.Errorf("edges %+v", r.Edges)
	}
	want := `
# HELP meshd_telemetry_ignored_entries_total Access-log entries meshd did not record, by reason (unknown_node: the reporting node is not in the catalog; other_log: a log meshd did not configure).
# TYPE meshd_telemetry_ignored_entries_total counter
meshd_telemetry_ignored_entries_total{reason="other_log"} 2
meshd_telemetry_ignored_entries_total{reason="unknown_node"} 1
# HELP meshd_mesh_plaintext_in_strict_total Requests and connections that reached a workload in plaintext although policy puts it in STRICT mTLS (a migration not finished, or a sidecar that never got its STRICT listener).
# TYPE meshd_mesh_plaintext_in_strict_total counter
meshd_mesh_plaintext_in_strict_total{destination_namespace="default",destination_service="api"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "meshd_telemetry_ignored_entries_total", "meshd_mesh_plaintext_in_strict_total"); err != nil {
		t.Error(err)
	}
	testwait.For(t, testwait.Timeout, "the streams to end", func() bool { return c.streams.Load() == 0 })
}

// TestTapOverHTTP follows an event from the access log stream to a tap
// client of the admin API.
func TestTapOverHTTP(t *testing.T) {
	c, client := startCollector(t)
	mux := http.NewServeMux()
	(&API{Store: c.Store, Hub: c.Hub, Identity: func(s string) string { return "spiffe://cluster.local/ns/default/sa/" + strings.Split(s, ".")[0] }}).Register(mux)
	srv := httptest.NewServer(mux)
	defer srv.Close()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/telemetry/tap?destination=api&denied=true", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	lines := make(chan TapMessage, 16)
	go func() {
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			var m TapMessage
			if json.Unmarshal(sc.Bytes(), &m) == nil {
				lines <- m
			}
		}
		close(lines)
	}()
	first := testwait.Recv(t, lines, testwait.Timeout, "the tap's opening line")
	if first.Tapping == nil || first.Tapping.Destination != "api" || !first.Tapping.DeniedOnly {
		t.Fatalf("first line %+v", first)
	}
	denied := httpEntry(webID, 403, "rbac_access_denied_matched_policy[default/deny-web/rule-0]", time.Millisecond, nil)
	send(t, client, "api-1", testLogName, []*accesslogdatav3.HTTPAccessLogEntry{httpEntry(webID, 200, "via_upstream", time.Millisecond, nil), denied})
	m := testwait.Recv(t, lines, testwait.Timeout, "the denied request on the tap")
	if m.Event == nil || !m.Event.Denied || m.Event.Policy != "default/deny-web/rule-0" || m.Event.Node != "api-1" || m.Event.Destination != "api.default" {
		t.Errorf("tap line %+v", m)
	}

	var edges EdgesReport
	getJSON(t, srv.URL+"/telemetry/edges", &edges)
	if len(edges.Edges) != 1 || edges.Edges[0].DestinationIdentity != "spiffe://cluster.local/ns/default/sa/api" || edges.Edges[0].Denied != 1 {
		t.Errorf("edges %+v", edges)
	}
	var stats StatsReport
	getJSON(t, srv.URL+"/telemetry/stats?window=30s&service=api.default", &stats)
	if len(stats.Services) != 1 || stats.Services[0].Requests != 2 || stats.Window != "30s" {
		t.Errorf("stats %+v", stats)
	}
	if r, err := http.Get(srv.URL + "/telemetry/stats?window=1h"); err != nil || r.StatusCode != http.StatusBadRequest {
		t.Errorf("a window past the store's: %v %v", r.Status, err)
	}
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	r, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	if err := json.NewDecoder(r.Body).Decode(v); err != nil {
		t.Fatal(err)
	}
}
