package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/internal/consultest"
	"github.com/meshd/meshd/internal/envoytest"
	"github.com/meshd/meshd/internal/promtext"
	"github.com/meshd/meshd/internal/testwait"
	"github.com/meshd/meshd/telemetry"
)

// Traffic telemetry (issue 15): real Envoy sidecars report every inbound
// request and connection to meshd; meshctl edges, stat, tap and meshd's
// /metrics show traffic of a known shape with exactly its counts.

const telemetryPolicies = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: api-deny, namespace: default}
spec:
  selector: {matchLabels: {app: api}}
  action: DENY
  rules:
    - from: [{source: {principals: ["cluster.local/ns/default/sa/web"]}}]
      to: [{operation: {paths: ["/secret*"]}}]
---
` + greeterDenyPolicy

// greeterDenyPolicy denies web gRPC's EmptyCall on greeter.
const greeterDenyPolicy = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: greeter-deny, namespace: default}
spec:
  selector: {matchLabels: {app: greeter}}
  action: DENY
  rules:
    - from: [{source: {principals: ["cluster.local/ns/default/sa/web"]}}]
      to: [{operation: {paths: ["/grpc.testing.TestService/EmptyCall"]}}]
`

const (
	apiDenyRule   = "default/api-deny/rule-0"
	greeterDenied = "default/greeter-deny/rule-0"
)

// waitConfigured waits, without sending traffic (every request reaching a
// sidecar is counted), until the servers have their deny rules, and then
// as waitConfiguredPlain.
func (e *enforceMesh) waitConfigured(t *testing.T) {
	t.Helper()
	for name, c := range map[string]struct {
		envoy *envoytest.Envoy
		rule  string
	}{"api": {e.apiEnvoy, apiDenyRule}, "greeter": {e.greeterEnvoy, greeterDenied}} {
		eventually(t, 30*time.Second, func() error {
			if !strings.Contains(c.envoy.AdminGET(t, "/config_dump"), c.rule) {
				return fmt.Errorf("%s's sidecar does not have rule %s yet", name, c.rule)
			}
			return nil
		})
	}
	e.waitConfiguredPlain(t)
}

// waitConfiguredPlain waits, without sending traffic, until every listener
// is active and web's sidecar has healthy endpoints for api, greeter and
// db.
func (e *enforceMesh) waitConfiguredPlain(t *testing.T) {
	t.Helper()
	assertEnvoyAccepted(t, "api", e.apiEnvoy, 1)
	assertEnvoyAccepted(t, "greeter", e.greeterEnvoy, 1)
	assertEnvoyAccepted(t, "db", e.dbEnvoy, 1)
	assertEnvoyAccepted(t, "web", e.webEnvoy, 3)
	eventually(t, 30*time.Second, func() error {
		clusters := e.webEnvoy.AdminGET(t, "/clusters")
		for _, svc := range []string{"api", "greeter", "db"} {
			if !regexp.MustCompile(`outbound\|` + svc + `\.default::127\.0\.0\.1:\d+::health_flags::healthy`).MatchString(clusters) {
				return fmt.Errorf("web's sidecar has no healthy %s endpoint yet", svc)
			}
		}
		return nil
	})
}

func TestTelemetryCountsTrafficOfKnownShape(t *testing.T) {
	e := startEnforceMeshWith(t, "PERMISSIVE", telemetryPolicies)
	e.waitConfigured(t)

	const (
		nHTTP      = 7 // web → api over mTLS, allowed
		kHTTP      = 3 // web → api over mTLS, denied by api-deny
		mPlaintext = 4 // the test → api's public port in plaintext (PERMISSIVE)
		nGRPC      = 5 // web → greeter, allowed
		kGRPC      = 2 // web → greeter EmptyCall, denied by greeter-deny
		lTCP       = 3 // web → db connections
	)
	client := &http.Client{Timeout: 10 * time.Second}
	// Each request once: a request that reached a sidecar is counted there,
	// whatever its outcome, so a retried request would spoil the counts.
	get := func(url string, want int) {
		t.Helper()
		resp, err := client.Get(url)
		if err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Fatalf("GET %s: %d, want %d", url, resp.StatusCode, want)
		}
	}
	for range nHTTP {
		get(fmt.Sprintf("http://127.0.0.1:%d/hello", e.webAPI), 200)
	}
	for range kHTTP {
		get(fmt.Sprintf("http://127.0.0.1:%d/secret/x", e.webAPI), 403)
	}
	for range mPlaintext {
		get(fmt.Sprintf("http://127.0.0.1:%d/hello", e.api.public), 200)
	}
	cc, err := grpc.NewClient(fmt.Sprintf("127.0.0.1:%d", e.webGreeter), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	greeter := testgrpc.NewTestServiceClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for range nGRPC {
		if _, err := greeter.UnaryCall(ctx, &testgrpc.SimpleRequest{}); err != nil {
			t.Fatalf("UnaryCall: %v", err)
		}
	}
	for range kGRPC {
		if _, err := greeter.EmptyCall(ctx, &testgrpc.Empty{}); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("EmptyCall: %v, want PermissionDenied", err)
		}
	}
	for range lTCP {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", e.webDB), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintln(c, "ping")
		line, err := bufio.NewReader(c).ReadString('\n')
		c.Close() // the tcp_proxy reports the connection when it closes
		if err != nil || line != "db:ping\n" {
			t.Fatalf("tcp echo %q: %v", line, err)
		}
	}

	// meshctl edges -o json: wait for the sidecars' flushes, then every
	// edge has exactly its counts.
	type edgeKey struct {
		src, dst string
		mtls     bool
	}
	want := map[edgeKey]func(telemetry.EdgeStats) error{
		{webSPIFFE, "api.default", true}: expectEdge(nHTTP+kHTTP, 0, kHTTP, map[string]uint64{"2xx": nHTTP, "4xx": kHTTP}, apiDenyRule, "spiffe://cluster.local/ns/default/sa/api"),
		{"", "api.default", false}:       expectEdge(mPlaintext, 0, 0, map[string]uint64{"2xx": mPlaintext}, "", "spiffe://cluster.local/ns/default/sa/api"),
		// A denied gRPC call is HTTP 200 with grpc-status 7: a gRPC error.
		{webSPIFFE, "greeter.default", true}: expectEdge(nGRPC+kGRPC, 0, kGRPC, map[string]uint64{"2xx": nGRPC, "grpc_error": kGRPC}, greeterDenied, "spiffe://cluster.local/ns/default/sa/greeter"),
		{webSPIFFE, "db.default", true}:      expectEdge(0, lTCP, 0, nil, "", "spiffe://cluster.local/ns/default/sa/db"),
	}
	var edges telemetry.EdgesReport
	eventually(t, 15*time.Second, func() error {
		edges = telemetry.EdgesReport{}
		out := e.m.runMeshctl("edges", "-o", "json", "--admin-address", e.m.adminAddr, "--admin-token-file", e.m.adminTokenFile())
		if err := json.Unmarshal([]byte(out), &edges); err != nil {
			t.Fatalf("meshctl edges -o json: %v\n%s", err, out)
		}
		if len(edges.Edges) != len(want) {
			return fmt.Errorf("%d edges, want %d: %+v", len(edges.Edges), len(want), edges.Edges)
		}
		for _, ed := range edges.Edges {
			check, ok := want[edgeKey{ed.Source, ed.Destination, ed.MTLS}]
			if !ok {
				t.Fatalf("unexpected edge %+v", ed)
			}
			if err := check(ed); err != nil {
				return fmt.Errorf("%s → %s: %w", ed.Source, ed.Destination, err)
			}
		}
		return nil
	})
	for _, ed := range edges.Edges {
		if !ed.MTLS && ed.SourceAddress != "127.0.0.1" {
			t.Errorf("the plaintext edge names its caller %q, want 127.0.0.1", ed.SourceAddress)
		}
		if ed.FirstSeen.IsZero() || ed.LastSeen.Before(ed.FirstSeen) {
			t.Errorf("edge %s → %s seen %v..%v", ed.Source, ed.Destination, ed.FirstSeen, ed.LastSeen)
		}
	}
	table := e.m.runMeshctl("edges", "--admin-address", e.m.adminAddr)
	t.Logf("meshctl edges:\n%s", table)
	for _, row := range [][]string{
		{webSPIFFE, "api.default", "spiffe://cluster.local/ns/default/sa/api", "mTLS, partly denied", "10", "3", apiDenyRule},
		{"plaintext from 127.0.0.1", "api.default", "spiffe://cluster.local/ns/default/sa/api", "plaintext", "4", "0"},
		{webSPIFFE, "greeter.default", "spiffe://cluster.local/ns/default/sa/greeter", "mTLS, partly denied", "7", "2", greeterDenied},
		{webSPIFFE, "db.default", "spiffe://cluster.local/ns/default/sa/db", "mTLS", "3 conns", "0"},
	} {
		checkTableRow(t, table, row)
	}

	// meshctl stat: per service over the window.
	var stats telemetry.StatsReport
	out := e.m.runMeshctl("stat", "-o", "json", "--window", "5m", "--admin-address", e.m.adminAddr)
	if err := json.Unmarshal([]byte(out), &stats); err != nil {
		t.Fatalf("meshctl stat -o json: %v\n%s", err, out)
	}
	byName := map[string]telemetry.ServiceStats{}
	for _, s := range stats.Services {
		byName[s.Service] = s
	}
	if api := byName["api"]; api.Namespace != "default" || api.Protocol != "http" || api.Requests != nHTTP+kHTTP+mPlaintext || api.Denied != kHTTP ||
		api.MTLS != nHTTP+kHTTP || api.Success != nHTTP+mPlaintext || api.SuccessRate == nil || *api.SuccessRate != 1 ||
		api.P50Ms == nil || *api.P50Ms <= 0 || api.P99Ms == nil || *api.P99Ms < *api.P50Ms || api.RPS <= 0 ||
		fmt.Sprintf("%.4f", api.MTLSPercent) != fmt.Sprintf("%.4f", 100*float64(nHTTP+kHTTP)/float64(nHTTP+kHTTP+mPlaintext)) {
		t.Errorf("stat api: %+v", api)
	}
	if g := byName["greeter"]; g.Requests != nGRPC+kGRPC || g.Denied != kGRPC || g.Success != nGRPC || g.MTLSPercent != 100 || g.SuccessRate == nil || *g.SuccessRate != 1 {
		t.Errorf("stat greeter: %+v", g)
	}
	if db := byName["db"]; db.Protocol != "tcp" || db.Connections != lTCP || db.Requests != 0 || db.SuccessRate != nil || db.MTLSPercent != 100 {
		t.Errorf("stat db: %+v", db)
	}
	if len(stats.Services) != 3 {
		t.Errorf("stat lists %d services, want api, greeter and db: %+v", len(stats.Services), stats.Services)
	}
	table = e.m.runMeshctl("stat", "api", "--admin-address", e.m.adminAddr)
	t.Logf("meshctl stat api:\n%s\nmeshctl stat:\n%s", table, e.m.runMeshctl("stat", "--admin-address", e.m.adminAddr))
	checkTableRow(t, table, []string{"api", "default", "100.00%"})
	if !strings.Contains(table, "71%") || !strings.Contains(table, "14") {
		t.Errorf("meshctl stat api: want 71%% mTLS and 14 requests:\n%s", table)
	}

	// meshd's /metrics: the mesh-level series, with the same counts.
	_, metricsText := e.m.adminGET("/metrics")
	apiLabels := map[string]string{"destination_service": "api", "destination_namespace": "default", "source_address": ""}
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   string
	}{
		{"meshd_mesh_requests_total", with(apiLabels, "source_identity", webSPIFFE, "tls", "mtls", "decision", "allow", "response_class", "2xx"), fmt.Sprint(nHTTP)},
		{"meshd_mesh_requests_total", with(apiLabels, "source_identity", webSPIFFE, "tls", "mtls", "decision", "deny", "response_class", "4xx"), fmt.Sprint(kHTTP)},
		{"meshd_mesh_requests_total", with(apiLabels, "source_identity", "", "source_address", "127.0.0.1", "tls", "plaintext", "decision", "allow", "response_class", "2xx"), fmt.Sprint(mPlaintext)},
		{"meshd_mesh_requests_total", with(apiLabels, "destination_service", "greeter", "source_identity", webSPIFFE, "tls", "mtls", "decision", "deny", "response_class", "grpc_error"), fmt.Sprint(kGRPC)},
		{"meshd_mesh_tcp_connections_total", with(apiLabels, "destination_service", "db", "source_identity", webSPIFFE, "tls", "mtls", "decision", "allow"), fmt.Sprint(lTCP)},
		{"meshd_mesh_request_duration_seconds_count", map[string]string{"destination_service": "api", "destination_namespace": "default"}, fmt.Sprint(nHTTP + mPlaintext)},
	} {
		if got, ok := promtext.Find(metricsText, c.name, c.labels); !ok || got != c.want {
			t.Errorf("/metrics %s%v = %q (present %v), want %s", c.name, c.labels, got, ok, c.want)
		}
	}
	if v, ok := promtext.Find(metricsText, "meshd_mesh_plaintext_in_strict_total", map[string]string{"destination_service": "api", "destination_namespace": "default"}); !ok || v != "0" {
		t.Errorf("plaintext to a PERMISSIVE workload: meshd_mesh_plaintext_in_strict_total = %q (present %v), want 0", v, ok)
	}

	// meshctl tap shows a denied request, with the rule, within a second.
	t.Run("tap", func(t *testing.T) {
		tap := exec.Command(filepath.Join(binDir, "meshctl"), "tap", "api", "--denied", "--count", "1", "-o", "json", "--admin-address", e.m.adminAddr, "--admin-token-file", e.m.adminTokenFile())
		stderr, _ := tap.StderrPipe()
		stdout, _ := tap.StdoutPipe()
		if err := tap.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tap.Process.Kill(); tap.Wait() })
		started := make(chan string, 1)
		go func() {
			line, _ := bufio.NewReader(stderr).ReadString('\n')
			started <- line
		}()
		if line := testwait.Recv(t, started, testwait.Timeout, "meshctl tap to start"); !strings.HasPrefix(line, "tapping api.default") {
			t.Fatalf("meshctl tap said %q", line)
		}
		lines := make(chan string, 1)
		go func() {
			line, _ := bufio.NewReader(stdout).ReadString('\n')
			lines <- line
		}()
		get(fmt.Sprintf("http://127.0.0.1:%d/hello", e.webAPI), 200) // not denied: not shown
		get(fmt.Sprintf("http://127.0.0.1:%d/secret/tapped", e.webAPI), 403)
		answered := time.Now()
		line := testwait.Recv(t, lines, testwait.Timeout, "the denied request on meshctl tap")
		t.Logf("meshctl tap -o json: %s", line)
		shown := time.Since(answered)
		var ev telemetry.Event
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("tap line %q: %v", line, err)
		}
		if !ev.Denied || ev.Policy != apiDenyRule || ev.Path != "/secret/tapped" || ev.Source != webSPIFFE || ev.Status != 403 ||
			!ev.MTLS || ev.Destination != "api.default" || ev.Method != "GET" || ev.Node != "api.default" {
			t.Errorf("tap event %+v", ev)
		}
		t.Logf("the denied request was on meshctl tap %v after its answer", shown.Round(time.Millisecond))
		if shown > time.Second {
			t.Errorf("meshctl tap showed the denied request %v after it was answered, want within 1s", shown)
		}
		if err := tap.Wait(); err != nil {
			t.Errorf("meshctl tap --count 1: %v", err)
		}
	})
}

// expectEdge checks an edge's counts.
func expectEdge(requests, conns, denied uint64, responses map[string]uint64, rule, dstID string) func(telemetry.EdgeStats) error {
	return func(e telemetry.EdgeStats) error {
		if e.Requests != requests || e.Connections != conns || e.Denied != denied || e.LastDeniedBy != rule || e.DestinationIdentity != dstID {
			return fmt.Errorf("requests %d conns %d denied %d rule %q identity %q; want %d %d %d %q %q",
				e.Requests, e.Connections, e.Denied, e.LastDeniedBy, e.DestinationIdentity, requests, conns, denied, rule, dstID)
		}
		if len(responses) > 0 && !maps.Equal(e.Responses, responses) {
			return fmt.Errorf("responses %v, want %v", e.Responses, responses)
		}
		return nil
	}
}

// checkTableRow finds a line of an aligned table holding cells in order,
// separated by at least two spaces.
func checkTableRow(t *testing.T, table string, cells []string) {
	t.Helper()
	var quoted []string
	for _, c := range cells {
		quoted = append(quoted, regexp.QuoteMeta(c))
	}
	re := regexp.MustCompile(`(?m)^` + strings.Join(quoted, `\s{2,}`) + `(\s|$)`)
	if !re.MatchString(table) {
		t.Errorf("no row %q in:\n%s", cells, table)
	}
}

func with(m map[string]string, kv ...string) map[string]string {
	out := maps.Clone(m)
	for i := 0; i+1 < len(kv); i += 2 {
		out[kv[i]] = kv[i+1]
	}
	return out
}

// TestMonitoringMetricsAreExported: every metric examples/monitoring's alert
// rules and dashboard use (examples/monitoring/metrics.txt, which
// tools/monitoring keeps in step with them) is exported by a real meshd —
// with a catalog file, Consul and a policy directory — or by its real Envoy
// sidecars started from meshctl's bootstraps (with the stats tags), once
// traffic (allowed and denied) has flowed.
func TestMonitoringMetricsAreExported(t *testing.T) {
	agent := consultest.Start(t, "")
	e := startEnforceMeshWith(t, "STRICT", telemetryPolicies, "--consul-address", agent.Addr)
	e.waitConfigured(t)
	client := &http.Client{Timeout: 10 * time.Second}
	for _, path := range []string{"/hello", "/secret/x"} {
		resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d%s", e.webAPI, path))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", e.webDB), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintln(c, "ping")
	bufio.NewReader(c).ReadString('\n')
	c.Close()
	names := map[string]bool{}
	collect := func(text string) {
		for _, s := range promtext.Samples(text) {
			names[s.Name] = true
		}
	}
	eventually(t, 15*time.Second, func() error {
		_, text := e.m.adminGET("/metrics")
		if !strings.Contains(text, `decision="deny"`) || !strings.Contains(text, "meshd_mesh_tcp_connections_total{") {
			return fmt.Errorf("the denied request or the tcp connection is not in meshd's telemetry yet")
		}
		collect(text)
		return nil
	})
	for _, envoy := range []*envoytest.Envoy{e.apiEnvoy, e.greeterEnvoy, e.dbEnvoy, e.webEnvoy, e.opsEnvoy} {
		collect(envoy.AdminGET(t, "/stats/prometheus"))
	}
	root, err := envoytest.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	list, err := os.ReadFile(filepath.Join(root, "examples", "monitoring", "metrics.txt"))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, l := range strings.Split(string(list), "\n") {
		if l = strings.TrimSpace(l); l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		n++
		if !names[l] {
			t.Errorf("examples/monitoring uses %s, which neither meshd nor its Envoy sidecars export", l)
		}
	}
	if n < 30 {
		t.Errorf("metrics.txt lists only %d metrics", n)
	}
	// And every metric meshd exports is documented in docs/operations.md.
	ops, err := os.ReadFile(filepath.Join(root, "docs", "operations.md"))
	if err != nil {
		t.Fatal(err)
	}
	documented := 0
	for name := range names {
		if !strings.HasPrefix(name, "meshd_") {
			continue
		}
		base := name
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if b, ok := strings.CutSuffix(name, suffix); ok && names[b+"_bucket"] {
				base = b
			}
		}
		if !strings.Contains(string(ops), "`"+base+"`") {
			t.Errorf("meshd exports %s, which docs/operations.md does not document", base)
		}
		documented++
	}
	if documented < 30 {
		t.Errorf("only %d meshd metrics seen", documented)
	}
}
