package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/bootstrap"
	"github.com/meshd/meshd/internal/envoytest"
)

// Enforcement in motion (issue 11): a policy or mTLS change governs
// connections that are already open. The mesh: api (http), greeter (grpc)
// and db (tcp) behind Envoy sidecars, called by two identities, web and
// ops, through their own sidecars.

type enforceMesh struct {
	api, greeter, db                sidecarPorts
	webAdmin, opsAdmin              uint32
	webAPI, webGreeter, webDB       uint32 // web's loopback ports per upstream
	opsAPI, opsGreeter, opsDB       uint32
	m                               *meshd
	apiEnvoy, greeterEnvoy, dbEnvoy *envoytest.Envoy
	webEnvoy, opsEnvoy              *envoytest.Envoy
	policyDir                       string
}

func (e *enforceMesh) catalog() string {
	return fmt.Sprintf(`services:
  - {name: api, protocol: http, endpoints: [{address: 127.0.0.1, port: %d, labels: {app: api}}]}
  - {name: greeter, protocol: grpc, endpoints: [{address: 127.0.0.1, port: %d, labels: {app: greeter}}]}
  - {name: db, protocol: tcp, endpoints: [{address: 127.0.0.1, port: %d, labels: {app: db}}]}
  - {name: web, protocol: http}
  - {name: ops, protocol: http}
proxies:
  - {service: api, address: 127.0.0.1, publicPort: %d, appPort: %d}
  - {service: greeter, address: 127.0.0.1, publicPort: %d, appPort: %d}
  - {service: db, address: 127.0.0.1, publicPort: %d, appPort: %d}
  - {service: web, upstreams: [{service: api, localPort: %d}, {service: greeter, localPort: %d}, {service: db, localPort: %d}]}
  - {service: ops, upstreams: [{service: api, localPort: %d}, {service: greeter, localPort: %d}, {service: db, localPort: %d}]}
`, e.api.public, e.greeter.public, e.db.public,
		e.api.public, e.api.app, e.greeter.public, e.greeter.app, e.db.public, e.db.app,
		e.webAPI, e.webGreeter, e.webDB, e.opsAPI, e.opsGreeter, e.opsDB)
}

// peerAuth is api's, greeter's and db's mTLS mode.
const enforcePeerAuth = `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: meshd-system}
spec:
  mtls: {mode: %s}
`

// writeEnforcePolicy replaces the policy set atomically (write + rename)
// and returns when the rename happened.
func (e *enforceMesh) writePolicy(t testing.TB, mode, docs string) time.Time {
	t.Helper()
	content := fmt.Sprintf(enforcePeerAuth, mode)
	if docs != "" {
		content += "---\n" + docs
	}
	tmp := filepath.Join(e.policyDir, ".policies.tmp")
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(e.policyDir, "policies.yaml")); err != nil {
		t.Fatal(err)
	}
	return time.Now()
}

// startEnforceMesh starts meshd, the apps and the five sidecars with the
// policy mode and documents given.
func startEnforceMesh(t testing.TB, mode, docs string) *enforceMesh {
	envoytest.Binary(t)
	e := &enforceMesh{api: ports(t), greeter: ports(t), db: ports(t),
		webAdmin: envoytest.FreePort(t), opsAdmin: envoytest.FreePort(t),
		webAPI: envoytest.FreePort(t), webGreeter: envoytest.FreePort(t), webDB: envoytest.FreePort(t),
		opsAPI: envoytest.FreePort(t), opsGreeter: envoytest.FreePort(t), opsDB: envoytest.FreePort(t),
		policyDir: t.TempDir()}
	e.writePolicy(t, mode, docs)
	e.m = startMeshd(t, e.catalog(), "--policy-dir", e.policyDir)
	startHTTPApp(t, "api", e.api.app)
	startLineEcho(t, e.db.app)
	startGRPCApp(t, e.greeter.app)
	e.apiEnvoy = startSidecar(t, e.m, "api", "", e.api.admin)
	e.greeterEnvoy = startSidecar(t, e.m, "greeter", "", e.greeter.admin)
	e.dbEnvoy = startSidecar(t, e.m, "db", "", e.db.admin)
	e.webEnvoy = startSidecar(t, e.m, "web", "", e.webAdmin)
	e.opsEnvoy = startSidecar(t, e.m, "ops", "", e.opsAdmin)
	return e
}

// startLineEcho runs a tcp app that echoes every line it reads, prefixed
// with "db:", for as long as the connection lasts.
func startLineEcho(t testing.TB, port uint32) {
	serveTCP(t, port, func(c net.Conn) {
		r := bufio.NewReader(c)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			if _, err := c.Write([]byte("db:" + line)); err != nil {
				return
			}
		}
	})
}

// keepAliveClient is an HTTP client with at most one connection.
func keepAliveClient() *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxConnsPerHost: 1, MaxIdleConnsPerHost: 1, IdleConnTimeout: time.Hour}}
}

// outcome of one call: "ok", "denied" (403, or gRPC PermissionDenied), or
// a failure described.
type callRecord struct {
	start, end time.Time
	outcome    string
	// conn is the local address of the client's connection (HTTP), so a
	// test can tell that calls stayed on one connection.
	conn string
}

// caller calls every interval until stopped, recording each call.
type caller struct {
	name  string
	mu    sync.Mutex
	calls []callRecord
	stopc chan struct{}
	done  chan struct{}
}

func startCaller(t testing.TB, name string, interval time.Duration, call func() callRecord) *caller {
	c := &caller{name: name, stopc: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(c.done)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			r := call()
			c.mu.Lock()
			c.calls = append(c.calls, r)
			c.mu.Unlock()
			select {
			case <-c.stopc:
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(c.stop)
	return c
}

func (c *caller) stop() {
	select {
	case <-c.stopc:
	default:
		close(c.stopc)
	}
	<-c.done
}

// after waits until n calls that started after since have completed and
// returns them.
func (c *caller) after(t testing.TB, since time.Time, n int) []callRecord {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c.mu.Lock()
		var got []callRecord
		for _, r := range c.calls {
			if r.start.After(since) {
				got = append(got, r)
			}
		}
		c.mu.Unlock()
		if len(got) >= n {
			return got[:n]
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: only %d calls after %s within 30s", c.name, len(got), since.Format(time.StampMilli))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// all returns every call so far.
func (c *caller) all() []callRecord {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]callRecord(nil), c.calls...)
}

// httpCall is one GET through a keep-alive client, recording the
// connection it used.
func httpCall(c *http.Client, url string) callRecord {
	r := callRecord{start: time.Now()}
	ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
		GotConn: func(i httptrace.GotConnInfo) { r.conn = i.Conn.LocalAddr().String() },
	})
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		panic(err)
	}
	resp, err := c.Do(req)
	r.end = time.Now()
	switch {
	case err != nil:
		r.outcome = "error: " + err.Error()
	case resp.StatusCode == http.StatusOK:
		r.outcome = "ok"
	case resp.StatusCode == http.StatusForbidden:
		r.outcome = "denied"
	default:
		r.outcome = fmt.Sprintf("status %d", resp.StatusCode)
	}
	if resp != nil {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.Close {
			r.outcome += " (connection: close)"
		}
	}
	return r
}

// grpcCall is one UnaryCall on a client that keeps its connection.
func grpcCall(c testgrpc.TestServiceClient) callRecord {
	r := callRecord{start: time.Now()}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := c.UnaryCall(ctx, &testgrpc.SimpleRequest{})
	r.end = time.Now()
	switch status.Code(err) {
	case codes.OK:
		r.outcome = "ok"
	case codes.PermissionDenied:
		r.outcome = "denied"
	default:
		r.outcome = "error: " + err.Error()
	}
	return r
}

func grpcClient(t testing.TB, port uint32) testgrpc.TestServiceClient {
	t.Helper()
	cc, err := grpc.NewClient(fmt.Sprintf("127.0.0.1:%d", port), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return testgrpc.NewTestServiceClient(cc)
}

// waitApplied waits until meshd has published a new version of typ for
// proxy (other than before) and the proxy has ACKed it, and returns the
// time it saw the ACK and the version.
func (m *meshd) waitApplied(t testing.TB, proxy, typ, before string) (time.Time, string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		s := m.status()
		for _, p := range s.Proxies {
			if p.ID != proxy || p.XDS == nil {
				continue
			}
			v := p.Versions[typ]
			if ts, ok := p.XDS.Types[typ]; ok && v != before && ts.Acked == v {
				return time.Now(), v
			}
			if ts, ok := p.XDS.Types[typ]; ok && ts.Nacked != "" {
				t.Fatalf("%s NACKed %s: %s", proxy, typ, ts.NackError)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not ACK a new %s (was %s) within 30s", proxy, typ, before)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// version is proxy's current version of typ in meshd's status.
func (m *meshd) version(t testing.TB, proxy, typ string) string {
	t.Helper()
	for _, p := range m.status().Proxies {
		if p.ID == proxy {
			return p.Versions[typ]
		}
	}
	t.Fatalf("proxy %s not in /debug/status", proxy)
	return ""
}

// drainBound is the documented bound for closing connections a change no
// longer admits: meshctl bootstrap's default drain time, with which
// envoytest starts every Envoy, plus slack for a loaded 2-core machine.
var drainBound = bootstrap.DefaultDrainTime + 3*time.Second

// PERMISSIVE → STRICT: plaintext keep-alive connections accepted before are
// closed within the drain bound (an active one at its next response, an
// idle one when the drain time ends), plaintext reconnects are refused, and
// mesh callers' mTLS connections are not touched: no failed request, no
// new connection.
func TestStrictClosesOpenPlaintextConnections(t *testing.T) {
	e := startEnforceMesh(t, "PERMISSIVE", "")
	plain := fmt.Sprintf("http://127.0.0.1:%d/plain", e.api.public)
	viaWeb := fmt.Sprintf("http://127.0.0.1:%d/mtls", e.webAPI)
	eventually(t, 20*time.Second, func() error {
		for _, u := range []string{plain, viaWeb} {
			if code, err := do("GET", u, nil); err != nil || code != 200 {
				return fmt.Errorf("%s: %d %v", u, code, err)
			}
		}
		return nil
	})

	// An idle plaintext keep-alive connection: one request, then silence.
	idle, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", e.api.public))
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	fmt.Fprintf(idle, "GET /idle HTTP/1.1\r\nHost: api\r\n\r\n")
	br := bufio.NewReader(idle)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("idle connection's first request: %v %v", resp, err)
	}
	io.Copy(io.Discard, resp.Body)
	idleClosed := make(chan time.Time, 1)
	go func() {
		io.Copy(io.Discard, br) // returns when the server closes the connection
		idleClosed <- time.Now()
	}()

	plainClient := keepAliveClient()
	plainCaller := startCaller(t, "plaintext", 100*time.Millisecond, func() callRecord { return httpCall(plainClient, plain) })
	mtlsClient := keepAliveClient()
	mtlsCaller := startCaller(t, "web (mTLS)", 100*time.Millisecond, func() callRecord { return httpCall(mtlsClient, viaWeb) })
	warm := plainCaller.after(t, time.Now(), 3)
	for _, r := range warm {
		if r.outcome != "ok" || r.conn != warm[0].conn {
			t.Fatalf("plaintext keep-alive caller before the change: %+v", warm)
		}
	}
	// web's sidecar's connections to api (refused plaintext handshakes
	// also count on api's mTLS stat prefix, so count on the caller's side).
	const webToAPIConns = "cluster.outbound|api.default.upstream_cx_total"
	mtlsConns, _ := e.webEnvoy.Stat(t, webToAPIConns)
	inPlace, _ := e.apiEnvoy.Stat(t, "listener_manager.listener_in_place_updated")
	before := e.m.version(t, "api.default", "Listener")

	e.writePolicy(t, "STRICT", "")
	acked, _ := e.m.waitApplied(t, "api.default", "Listener", before)

	// The active connection is told to close at its next response; every
	// call after that is refused (the plaintext handshake fails).
	calls := plainCaller.after(t, acked, 5)
	var closedAt time.Time
	for i, r := range calls {
		if r.outcome == "ok" && r.conn == warm[0].conn {
			continue // served on the old chain before Envoy's drain began
		}
		if closedAt.IsZero() {
			closedAt = r.end
			if !strings.Contains(r.outcome, "connection: close") && !strings.HasPrefix(r.outcome, "error") {
				t.Errorf("call %d after STRICT: %q, want the old connection closed or the call refused", i, r.outcome)
			}
			continue
		}
		if !strings.HasPrefix(r.outcome, "error") {
			t.Errorf("plaintext call %d after the old connection closed: %q, want refused", i, r.outcome)
		}
	}
	if closedAt.IsZero() || closedAt.Sub(acked) > drainBound {
		t.Fatalf("the active plaintext connection was not closed within %s of STRICT being ACKed: %+v", drainBound, calls)
	}
	t.Logf("active plaintext keep-alive connection closed %s after the ACK", closedAt.Sub(acked).Round(time.Millisecond))

	select {
	case at := <-idleClosed:
		t.Logf("idle plaintext keep-alive connection closed %s after the ACK (drain time %s)", at.Sub(acked).Round(time.Millisecond), bootstrap.DefaultDrainTime)
		if at.Sub(acked) > drainBound {
			t.Errorf("the idle plaintext connection closed %s after the ACK, bound %s", at.Sub(acked), drainBound)
		}
	case <-time.After(drainBound):
		t.Fatalf("the idle plaintext connection is still open %s after STRICT was ACKed", drainBound)
	}

	// Mesh callers lost nothing: every call succeeded, on the connections
	// they had (the mTLS chain is the same in PERMISSIVE and STRICT, so
	// Envoy's in-place update did not drain it).
	time.Sleep(500 * time.Millisecond)
	mtlsCaller.stop()
	for _, r := range mtlsCaller.all() {
		if r.outcome != "ok" {
			t.Errorf("mTLS caller: %s at %s", r.outcome, r.start.Format(time.StampMilli))
		}
	}
	if n, _ := e.webEnvoy.Stat(t, webToAPIConns); n != mtlsConns || n == 0 {
		t.Errorf("web's sidecar opened %d new connections to api during the change (%d before); the mesh callers' connections should have stayed", n-mtlsConns, mtlsConns)
	}
	if n, _ := e.apiEnvoy.Stat(t, "listener_manager.listener_in_place_updated"); n != inPlace+1 {
		t.Errorf("listener_in_place_updated went from %d to %d, want one in-place filter chain update", inPlace, n)
	}
}

// tcpSession is a long-lived tcp connection through a caller's sidecar that
// sends a line every 100 ms and reads its echo, until the connection ends.
type tcpSession struct {
	echoes atomic.Int64
	ended  chan time.Time
	err    error // set before ended is sent
}

func startTCPSession(t testing.TB, port uint32) *tcpSession {
	t.Helper()
	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	s := &tcpSession{ended: make(chan time.Time, 1)}
	ready := make(chan bool, 1)
	go func() {
		defer c.Close()
		r := bufio.NewReader(c)
		for i := 0; ; i++ {
			c.SetDeadline(time.Now().Add(5 * time.Second))
			line := fmt.Sprintf("ping %d\n", i)
			if _, err := c.Write([]byte(line)); err != nil {
				s.err = err
				break
			}
			got, err := r.ReadString('\n')
			if err != nil {
				s.err = err
				break
			}
			if got != "db:"+line {
				s.err = fmt.Errorf("echo %q for %q", got, line)
				break
			}
			if s.echoes.Add(1) == 3 {
				ready <- true
			}
			time.Sleep(100 * time.Millisecond)
		}
		if s.echoes.Load() < 3 {
			ready <- false
		}
		s.ended <- time.Now()
	}()
	if !<-ready {
		<-s.ended
		t.Fatalf("tcp session on port %d ended before it started: %v", port, s.err)
	}
	return s
}

// tcpRefused reports whether a new connection through port is closed
// without an echo (network RBAC closes it on its first bytes).
func tcpRefused(port uint32) error {
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 3*time.Second)
	if err != nil {
		return nil // refused outright
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	c.Write([]byte("hello\n"))
	b, err := bufio.NewReader(c).ReadString('\n')
	if err == nil {
		return fmt.Errorf("got an echo %q", b)
	}
	return nil
}

const dbDenyWeb = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: db-deny-web, namespace: default}
spec:
  selector: {matchLabels: {app: db}}
  action: DENY
  rules:
    - from: [{source: {principals: ["cluster.local/ns/default/sa/web"]}}]
`

// A tcp service has no per-request check: a new DENY replaces the sidecar's
// filter chain, and the connection of the identity it denies is closed
// when the drain time ends. New connections of that identity are refused;
// an allowed identity, whose connection on the old chain is closed too,
// reconnects.
func TestTCPDenyClosesOpenConnection(t *testing.T) {
	e := startEnforceMesh(t, "STRICT", "")
	eventually(t, 20*time.Second, func() error {
		for _, p := range []uint32{e.webDB, e.opsDB} {
			c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", p), time.Second)
			if err != nil {
				return err
			}
			c.SetDeadline(time.Now().Add(2 * time.Second))
			c.Write([]byte("up?\n"))
			b, err := bufio.NewReader(c).ReadString('\n')
			c.Close()
			if err != nil || b != "db:up?\n" {
				return fmt.Errorf("port %d: %q %v", p, b, err)
			}
		}
		return nil
	})
	web := startTCPSession(t, e.webDB)
	ops := startTCPSession(t, e.opsDB)
	before := e.m.version(t, "db.default", "Listener")

	e.writePolicy(t, "STRICT", dbDenyWeb)
	acked, _ := e.m.waitApplied(t, "db.default", "Listener", before)

	select {
	case at := <-web.ended:
		t.Logf("web's open tcp connection closed %s after the DENY was ACKed (%d echoes, then %v)", at.Sub(acked).Round(time.Millisecond), web.echoes.Load(), web.err)
		if at.Sub(acked) > drainBound {
			t.Errorf("closed %s after the ACK; bound %s", at.Sub(acked), drainBound)
		}
	case <-time.After(drainBound):
		t.Fatalf("web's tcp connection is still open %s after the DENY was ACKed", drainBound)
	}
	if err := tcpRefused(e.webDB); err != nil {
		t.Errorf("web's new connection to db after the DENY: %v", err)
	}
	select {
	case at := <-ops.ended:
		t.Logf("ops's connection on the replaced chain closed %s after the ACK (%v); ops may reconnect", at.Sub(acked).Round(time.Millisecond), ops.err)
	case <-time.After(drainBound):
		t.Logf("ops's connection is still open %s after the ACK", drainBound)
	}
	startTCPSession(t, e.opsDB) // fails the test unless ops reconnects and is echoed
}

// Every documented way of starting an Envoy sidecar carries the drain
// flags meshctl bootstrap prints; without them the bounds above are
// Envoy's 600 s.
func TestDocumentedEnvoyStartsCarryDrainFlags(t *testing.T) {
	root, err := envoytest.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	want := strings.Join(bootstrap.EnvoyDrainArgs(0), " ")
	var files []string
	for _, pattern := range []string{"README.md", "docs/*.md", "scripts/*.sh", "envoy-configs/*.md", "examples/*/*.md", "examples/*/*.sh", "examples/*/systemd/*.service"} {
		m, err := filepath.Glob(filepath.Join(root, pattern))
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, m...)
	}
	// A line starts Envoy if it runs an envoy binary on a config with -c
	// (not --mode validate).
	starts := 0
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, line := range strings.Split(strings.ReplaceAll(string(b), "\\\n", " "), "\n") {
			l := strings.Join(strings.Fields(line), " ")
			if !strings.Contains(l, " -c ") || strings.Contains(l, "--mode validate") ||
				!(strings.Contains(l, "envoy -c") || strings.Contains(l, `"$ENVOY" -c`) || strings.Contains(l, `install-envoy.sh)" -c`)) {
				continue
			}
			starts++
			if !strings.Contains(l, want) && !strings.Contains(l, "$drain") {
				rel, _ := filepath.Rel(root, f)
				t.Errorf("%s:%d starts Envoy without %q: %s", rel, i+1, want, strings.TrimSpace(line))
			}
		}
	}
	t.Logf("%d documented Envoy starts, each with %s", starts, want)
	if starts < 8 {
		t.Errorf("found only %d lines that start Envoy; this test's patterns are stale", starts)
	}
}
