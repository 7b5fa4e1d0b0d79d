package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"os/exec"
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
	"github.com/meshd/meshd/internal/testwait"
	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/xds"
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
	return startEnforceMeshWith(t, mode, docs)
}

// startEnforceMeshWith is startEnforceMesh with more meshd flags.
func startEnforceMeshWith(t testing.TB, mode, docs string, meshdArgs ...string) *enforceMesh {
	return startEnforceMeshVia(t, mode, docs, nil, meshdArgs...)
}

// startEnforceMeshVia is startEnforceMeshWith where web's sidecar is
// bootstrapped with the xDS address webXDS gives for meshd's (nil: meshd's).
func startEnforceMeshVia(t testing.TB, mode, docs string, webXDS func(string) string, meshdArgs ...string) *enforceMesh {
	envoytest.Binary(t)
	e := &enforceMesh{api: ports(t), greeter: ports(t), db: ports(t),
		webAdmin: envoytest.FreePort(t), opsAdmin: envoytest.FreePort(t),
		webAPI: envoytest.FreePort(t), webGreeter: envoytest.FreePort(t), webDB: envoytest.FreePort(t),
		opsAPI: envoytest.FreePort(t), opsGreeter: envoytest.FreePort(t), opsDB: envoytest.FreePort(t),
		policyDir: t.TempDir()}
	e.writePolicy(t, mode, docs)
	e.m = startMeshd(t, e.catalog(), append([]string{"--policy-dir", e.policyDir}, meshdArgs...)...)
	startHTTPApp(t, "api", e.api.app)
	startLineEcho(t, e.db.app)
	startGRPCApp(t, e.greeter.app)
	e.apiEnvoy = startSidecar(t, e.m, "api", "", e.api.admin)
	e.greeterEnvoy = startSidecar(t, e.m, "greeter", "", e.greeter.admin)
	e.dbEnvoy = startSidecar(t, e.m, "db", "", e.db.admin)
	webM := e.m
	if webXDS != nil {
		c := *e.m
		c.xdsAddr = webXDS(e.m.xdsAddr)
		webM = &c
	}
	e.webEnvoy = startSidecar(t, webM, "web", "", e.webAdmin)
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
	var got []callRecord
	testwait.Until(t, 30*time.Second, func() error {
		c.mu.Lock()
		got = got[:0]
		for _, r := range c.calls {
			if r.start.After(since) {
				got = append(got, r)
			}
		}
		c.mu.Unlock()
		if len(got) < n {
			return fmt.Errorf("%s: only %d calls after %s", c.name, len(got), since.Format(time.StampMilli))
		}
		return nil
	})
	return got[:n]
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
// time it saw the ACK and the version. /debug/status is polled
// (testwait's back-off, at most 50 ms between looks), so that time is up
// to 50 ms after the ACK: callers judge the calls that start after it,
// which that only makes surer to follow the ACK.
func (m *meshd) waitApplied(t testing.TB, proxy, typ, before string) (time.Time, string) {
	t.Helper()
	var at time.Time
	var applied string
	testwait.Until(t, 30*time.Second, func() error {
		for _, p := range m.status().Proxies {
			if p.ID != proxy || p.XDS == nil {
				continue
			}
			v := p.Versions[typ]
			ts, ok := p.XDS.Types[typ]
			if ok && v != before && ts.Acked == v {
				at, applied = time.Now(), v
				return nil
			}
			if ok && ts.Nacked != "" {
				t.Fatalf("%s NACKed %s: %s", proxy, typ, ts.NackError)
			}
		}
		return fmt.Errorf("%s has not ACKed a new %s (was %s)", proxy, typ, before)
	})
	return at, applied
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
	// Envoy names a cluster's stats by its alt_stat_name (xds.ClusterStatName).
	webToAPIConns := "cluster." + xds.ClusterStatName(xds.OutboundClusterName(mesh.ServiceKey{Name: "api", Namespace: "default"})) + ".upstream_cx_total"
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
	mtlsCaller.after(t, time.Now(), 5)
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

// DISABLE → PERMISSIVE (soak defect 5): a caller's sidecar that moves to
// mTLS applies its new transport to new connections only, so a plaintext
// connection it opened to api while api was already PERMISSIVE (here: web's
// sidecar reconnects after api's listener changes, while what meshd sends
// web is held, so web still sends plaintext) would carry on without a
// principal, and a DENY for that principal would not match for as long as
// it lived. The migration's last step, once the callers have ACKed mTLS,
// changes api's plaintext chain (xds.FilterChainPlaintextCallers back to
// its usual name); Envoy drains that chain in place and web's next
// connection is mTLS: its calls are denied within the drain bound of the
// migration's end. ops, which the DENY does not name, loses no request.
func TestPermissiveDrainsPlaintextCallers(t *testing.T) {
	var gate *xdsGate
	e := startEnforceMeshVia(t, "DISABLE", denyWeb("api"), func(meshdAddr string) string {
		var addr string
		gate, addr = startXDSGate(t, meshdAddr)
		return addr
	})
	viaWeb := fmt.Sprintf("http://127.0.0.1:%d/web", e.webAPI)
	viaOps := fmt.Sprintf("http://127.0.0.1:%d/ops", e.opsAPI)
	eventually(t, 20*time.Second, func() error {
		for _, u := range []string{viaWeb, viaOps} {
			// Plaintext calls carry no principal: the DENY cannot match.
			if code, err := do("GET", u, nil); err != nil || code != 200 {
				return fmt.Errorf("%s under DISABLE: %d %v", u, code, err)
			}
		}
		return nil
	})
	webClient, opsClient := keepAliveClient(), keepAliveClient()
	web := startCaller(t, "web", 100*time.Millisecond, func() callRecord { return httpCall(webClient, viaWeb) })
	ops := startCaller(t, "ops", 100*time.Millisecond, func() callRecord { return httpCall(opsClient, viaOps) })
	for _, r := range web.after(t, time.Now(), 3) {
		if r.outcome != "ok" {
			t.Fatalf("web under DISABLE: %+v", r)
		}
	}
	webToAPIConns := "cluster." + xds.ClusterStatName(xds.OutboundClusterName(mesh.ServiceKey{Name: "api", Namespace: "default"})) + ".upstream_cx_total"
	webConns, _ := e.webEnvoy.Stat(t, webToAPIConns)
	inPlace, _ := e.apiEnvoy.Stat(t, "listener_manager.listener_in_place_updated")
	before := e.m.version(t, "api.default", "Listener")
	webEDS := e.m.version(t, "web.default", "ClusterLoadAssignment")

	// Hold what meshd sends web (its stream stays open), change the mode,
	// and wait until api has ACKed its PERMISSIVE listener and web's sidecar
	// has reconnected to it, in plaintext.
	gate.hold(true)
	changed := e.writePolicy(t, "PERMISSIVE", denyWeb("api"))
	e.m.waitApplied(t, "api.default", "Listener", before)
	eventually(t, 2*drainBound, func() error {
		if n, _ := e.webEnvoy.Stat(t, webToAPIConns); n <= webConns {
			return fmt.Errorf("web's sidecar has not reconnected to api (%d connections)", n)
		}
		return nil
	})
	// api's HTTP connection manager stats, per chain.
	mtlsStat := "http." + xds.InboundStatPrefix(mesh.ServiceKey{Name: "api", Namespace: "default"}, true) + "."
	plainStat := "http." + xds.InboundStatPrefix(mesh.ServiceKey{Name: "api", Namespace: "default"}, false) + "."
	mtlsOpen, _ := e.apiEnvoy.Stat(t, mtlsStat+"downstream_cx_active")
	plainDrained, _ := e.apiEnvoy.Stat(t, plainStat+"downstream_cx_drain_close")
	gate.hold(false)

	// The migration ends: web has ACKed mTLS, nothing is pending, and api
	// has ACKed its last listener.
	e.m.waitApplied(t, "web.default", "ClusterLoadAssignment", webEDS)
	var settled time.Time
	eventually(t, 60*time.Second, func() error {
		s := e.m.status()
		if len(s.Migrations) > 0 {
			return fmt.Errorf("migrations in progress: %+v", s.Migrations)
		}
		for _, p := range s.Proxies {
			if p.ID == "api.default" && p.XDS != nil {
				if v := p.Versions["Listener"]; p.XDS.Types["Listener"].Acked != v {
					return fmt.Errorf("api.default: listener %s, ACKed %s", v, p.XDS.Types["Listener"].Acked)
				}
				settled = time.Now()
				return nil
			}
		}
		return fmt.Errorf("api.default not connected")
	})
	t.Logf("migration ended %s after the policy change", settled.Sub(changed).Round(time.Millisecond))

	// Within the drain bound of the end, web's calls carry its principal:
	// every one is denied.
	for i, r := range web.after(t, settled.Add(drainBound), 5) {
		if r.outcome != "denied" {
			t.Errorf("web's call %d started %s after the migration ended: %q, want denied (its plaintext connection outlived the migration)",
				i, r.start.Sub(settled).Round(time.Millisecond), r.outcome)
		}
	}
	for _, r := range web.all() {
		if r.start.After(settled) && r.outcome == "denied" {
			t.Logf("web's first denied call started %s after the migration ended", r.start.Sub(settled).Round(time.Millisecond))
			break
		}
	}
	// The last step is a filter chain update in place: Envoy drained only
	// the chain that changed (plaintext connections closed by the drain),
	// never an mTLS connection (ops's, if it had reconnected in mTLS
	// before the last step: logged).
	if n, _ := e.apiEnvoy.Stat(t, "listener_manager.listener_in_place_updated"); n <= inPlace {
		t.Errorf("listener_in_place_updated stayed at %d, want the plaintext chain's change made in place", n)
	}
	if n, _ := e.apiEnvoy.Stat(t, plainStat+"downstream_cx_drain_close"); n <= plainDrained {
		t.Errorf("no plaintext connection closed by a drain after web ACKed mTLS (%d before, %d after)", plainDrained, n)
	}
	if n, _ := e.apiEnvoy.Stat(t, mtlsStat+"downstream_cx_drain_close"); n != 0 {
		t.Errorf("%d mTLS connections closed by a drain; only the plaintext chain changed", n)
	}
	t.Logf("mTLS connections open on api before the last step: %d", mtlsOpen)
	ops.after(t, time.Now(), 3)
	ops.stop()
	web.stop()
	for _, r := range ops.all() {
		if r.outcome != "ok" {
			t.Errorf("ops: %s at %s", r.outcome, r.start.Format(time.StampMilli))
		}
	}
	for _, r := range web.all() {
		if r.outcome != "ok" && r.outcome != "denied" {
			t.Logf("web: %s at %s", r.outcome, r.start.Format(time.StampMilli))
		}
	}
}

// xdsGate relays a sidecar's xDS connections to meshd and can hold what
// meshd sends: the stream stays open (the proxy counts as connected) but
// the proxy receives, and so ACKs, nothing new until released.
type xdsGate struct {
	mu   sync.Mutex
	cond *sync.Cond
	held bool
}

func startXDSGate(t testing.TB, target string) (*xdsGate, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &xdsGate{}
	g.cond = sync.NewCond(&g.mu)
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		g.hold(false)
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, up)
			mu.Unlock()
			go func() {
				io.Copy(up, c)
				up.Close()
			}()
			go func() {
				defer c.Close()
				buf := make([]byte, 32<<10)
				for {
					n, err := up.Read(buf)
					if n > 0 {
						g.wait()
						if _, err := c.Write(buf[:n]); err != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return g, ln.Addr().String()
}

func (g *xdsGate) hold(on bool) {
	g.mu.Lock()
	g.held = on
	g.mu.Unlock()
	g.cond.Broadcast()
}

func (g *xdsGate) wait() {
	g.mu.Lock()
	for g.held {
		g.cond.Wait()
	}
	g.mu.Unlock()
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
			time.Sleep(100 * time.Millisecond) // pacing: the session is a slow, steady echo, not a wait
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

	e.writePolicy(t, "STRICT", denyWeb("db"))
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
	// The refusal is logged and counted under the rule.
	waitLogLine(t, e.dbEnvoy, " tcp rbac_access_denied_matched_policy[default/db-deny-web/rule-0] peer=spiffe://cluster.local/ns/default/sa/web")
	if got := deniedCounters(t, e.dbEnvoy); got["inbound_mtls.db.default.deny.policy.default/db-deny-web/rule-0.rbac.denied"] < 1 {
		t.Errorf("db sidecar: no denial counted for default/db-deny-web/rule-0; its denied counters: %v", got)
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

// denyWeb is a DENY policy <svc>-deny-web for web on each service given;
// allowOnly allows only the principals given on api and greeter.
func denyWeb(svcs ...string) string {
	var b strings.Builder
	for i, svc := range svcs {
		if i > 0 {
			b.WriteString("---\n")
		}
		fmt.Fprintf(&b, `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: %s-deny-web, namespace: default}
spec:
  selector: {matchLabels: {app: %s}}
  action: DENY
  rules:
    - from: [{source: {principals: ["cluster.local/ns/default/sa/web"]}}]
`, svc, svc)
	}
	return b.String()
}

func allowOnly(principals ...string) string {
	var b strings.Builder
	for i, svc := range []string{"api", "greeter"} {
		if i > 0 {
			b.WriteString("---\n")
		}
		fmt.Fprintf(&b, `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: %s-allow, namespace: default}
spec:
  selector: {matchLabels: {app: %s}}
  action: ALLOW
  rules:
    - from: [{source: {principals: ["%s"]}}]
`, svc, svc, strings.Join(principals, `", "`))
	}
	return b.String()
}

// checkAfterChange: of the calls started after the change was ACKed, the
// second at the latest has the wanted outcome, and so do the ones after.
func checkAfterChange(t *testing.T, c *caller, acked time.Time, want string) {
	t.Helper()
	calls := c.after(t, acked, 4)
	for i, r := range calls[1:] {
		if r.outcome != want {
			t.Errorf("%s: call %d after the ACK was %q, want %q (calls after the ACK: %v)", c.name, i+2, r.outcome, want, outcomes(calls))
		}
	}
	t.Logf("%s: first calls after the ACK: %v", c.name, outcomes(calls))
}

func outcomes(calls []callRecord) []string {
	var out []string
	for _, r := range calls {
		out = append(out, r.outcome)
	}
	return out
}

// deniedCounters reads what docs/operations.md's "Which policy denied this
// request?" tells operators to read: the sidecar's rbac stats whose name
// ends in "denied", by name.
func deniedCounters(t testing.TB, e *envoytest.Envoy) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	for _, line := range strings.Split(e.AdminGET(t, "/stats?filter=rbac"), "\n") {
		name, value, ok := strings.Cut(line, ": ")
		if !ok || !strings.HasSuffix(name, "denied") {
			continue
		}
		var n int64
		fmt.Sscan(value, &n)
		out[name] = n
	}
	return out
}

// waitLogLine waits until the sidecar's standard output has a line that
// starts with the denial prefix and contains every part.
func waitLogLine(t testing.TB, e *envoytest.Envoy, parts ...string) string {
	t.Helper()
	var found string
	eventually(t, 10*time.Second, func() error {
		for _, line := range strings.Split(e.Log(), "\n") {
			ok := strings.HasPrefix(line, xds.DeniedLogPrefix)
			for _, p := range parts {
				ok = ok && strings.Contains(line, p)
			}
			if ok {
				found = line
				return nil
			}
		}
		return fmt.Errorf("no %s line with %q in the sidecar's output", xds.DeniedLogPrefix, parts)
	})
	return found
}

// An authorization change reaches connections that are open: a keep-alive
// HTTP client and a gRPC client of web, each on one connection calling
// every 100 ms through web's sidecar, are denied by the second call after
// the DENY is ACKed and allowed again by the second call after it is
// removed; the same for an ALLOW narrowed to ops and widened again. ops,
// whom no policy denies, never fails. No caller's sidecar opens a new
// connection (the policies are route updates; the listener never changes),
// and every denial is logged and counted under its rule.
func TestPolicyReachesOpenConnections(t *testing.T) {
	e := startEnforceMesh(t, "STRICT", "")
	webHTTP, opsHTTP := keepAliveClient(), keepAliveClient()
	webGRPC, opsGRPC := grpcClient(t, e.webGreeter), grpcClient(t, e.opsGreeter)
	webURL := fmt.Sprintf("http://127.0.0.1:%d/items", e.webAPI)
	opsURL := fmt.Sprintf("http://127.0.0.1:%d/items", e.opsAPI)
	eventually(t, 20*time.Second, func() error {
		for _, r := range []callRecord{httpCall(webHTTP, webURL), httpCall(opsHTTP, opsURL), grpcCall(webGRPC), grpcCall(opsGRPC)} {
			if r.outcome != "ok" {
				return fmt.Errorf("mesh not up yet: %s", r.outcome)
			}
		}
		return nil
	})
	callers := map[string]*caller{
		"web http": startCaller(t, "web http", 100*time.Millisecond, func() callRecord { return httpCall(webHTTP, webURL) }),
		"ops http": startCaller(t, "ops http", 100*time.Millisecond, func() callRecord { return httpCall(opsHTTP, opsURL) }),
		"web grpc": startCaller(t, "web grpc", 100*time.Millisecond, func() callRecord { return grpcCall(webGRPC) }),
		"ops grpc": startCaller(t, "ops grpc", 100*time.Millisecond, func() callRecord { return grpcCall(opsGRPC) }),
	}
	// The connections each caller's sidecar holds to api and greeter.
	upstreamConns := func() map[string]int64 {
		out := map[string]int64{}
		for name, s := range map[string]*envoytest.Envoy{"web": e.webEnvoy, "ops": e.opsEnvoy} {
			for _, svc := range []string{"api", "greeter"} {
				n, _ := s.Stat(t, "cluster."+xds.ClusterStatName(xds.OutboundClusterName(mesh.ServiceKey{Name: svc, Namespace: "default"}))+".upstream_cx_total")
				out[name+"→"+svc] = n
			}
		}
		return out
	}
	callers["web http"].after(t, time.Now(), 2)
	connsBefore := upstreamConns()
	for k, n := range connsBefore {
		if n == 0 {
			// Every caller has called both services: a zero is a stat name
			// that no longer exists, and the comparison below would prove nothing.
			t.Fatalf("no upstream connections counted for %s (%v): wrong cluster stat name?", k, connsBefore)
		}
	}
	listeners := map[string]string{"api.default": e.m.version(t, "api.default", "Listener"), "greeter.default": e.m.version(t, "greeter.default", "Listener")}

	phases := []struct {
		name, docs, web string
	}{
		{"DENY web", denyWeb("api", "greeter"), "denied"},
		{"DENY removed", "", "ok"},
		{"ALLOW narrowed to ops", allowOnly("cluster.local/ns/default/sa/ops"), "denied"},
		{"ALLOW widened to web and ops", allowOnly("cluster.local/ns/default/sa/web", "cluster.local/ns/default/sa/ops"), "ok"},
	}
	for _, ph := range phases {
		routes := map[string]string{"api.default": e.m.version(t, "api.default", "RouteConfiguration"), "greeter.default": e.m.version(t, "greeter.default", "RouteConfiguration")}
		e.writePolicy(t, "STRICT", ph.docs)
		ackAPI, _ := e.m.waitApplied(t, "api.default", "RouteConfiguration", routes["api.default"])
		ackGreeter, _ := e.m.waitApplied(t, "greeter.default", "RouteConfiguration", routes["greeter.default"])
		t.Logf("phase %q: route ACKed by api and greeter", ph.name)
		checkAfterChange(t, callers["web http"], ackAPI, ph.web)
		checkAfterChange(t, callers["web grpc"], ackGreeter, ph.web)
	}
	// Let the allowed callers run a little longer, then stop everyone.
	callers["ops http"].after(t, time.Now(), 3)
	for _, c := range callers {
		c.stop()
	}
	for id, v := range listeners {
		if now := e.m.version(t, id, "Listener"); now != v {
			t.Errorf("%s's listener changed (%s → %s): a policy change must only update the route", id, v, now)
		}
	}
	if after := upstreamConns(); fmt.Sprint(after) != fmt.Sprint(connsBefore) {
		t.Errorf("caller sidecars' upstream connections went from %v to %v: the policy changes should have reached the open connections", connsBefore, after)
	}
	for name, c := range callers {
		calls := c.all()
		var bad []string
		for _, r := range calls {
			if (strings.HasPrefix(name, "ops") && r.outcome != "ok") || (r.outcome != "ok" && r.outcome != "denied") {
				bad = append(bad, r.start.Format("15:04:05.000")+" "+r.outcome)
			}
		}
		if len(bad) > 0 {
			t.Errorf("%s: %d of %d calls failed: %v", name, len(bad), len(calls), bad)
		}
		if strings.HasSuffix(name, "http") {
			for _, r := range calls {
				if r.conn != calls[0].conn {
					t.Errorf("%s changed connections (%s, then %s)", name, calls[0].conn, r.conn)
					break
				}
			}
		}
		t.Logf("%s: %d calls", name, len(calls))
	}

	// Every denial is visible: a log line naming the rule and a counter per
	// rule (DENY) or for the ALLOW filter (no ALLOW rule matched).
	waitLogLine(t, e.apiEnvoy, " 403 rbac_access_denied_matched_policy[default/api-deny-web/rule-0] peer=spiffe://cluster.local/ns/default/sa/web GET /items")
	waitLogLine(t, e.apiEnvoy, " 403 rbac_access_denied_matched_policy[none] peer=spiffe://cluster.local/ns/default/sa/web GET /items")
	waitLogLine(t, e.greeterEnvoy, " 200 rbac_access_denied_matched_policy[default/greeter-deny-web/rule-0] peer=spiffe://cluster.local/ns/default/sa/web POST /grpc.testing.TestService/UnaryCall", "grpc-status=7")
	waitLogLine(t, e.greeterEnvoy, " 200 rbac_access_denied_matched_policy[none] peer=spiffe://cluster.local/ns/default/sa/web", "grpc-status=7")
	for svc, s := range map[string]*envoytest.Envoy{"api": e.apiEnvoy, "greeter": e.greeterEnvoy} {
		got := deniedCounters(t, s)
		for _, name := range []string{
			"http.inbound_mtls." + svc + ".default.rbac.deny.policy.default/" + svc + "-deny-web/rule-0.denied",
			"http.inbound_mtls." + svc + ".default.rbac.allow.denied",
		} {
			if got[name] < 1 {
				t.Errorf("%s sidecar: %s = %d; its denied counters: %v", svc, name, got[name], got)
			}
		}
		if got["http.inbound_mtls."+svc+".default.rbac.deny.denied"] != got["http.inbound_mtls."+svc+".default.rbac.deny.policy.default/"+svc+"-deny-web/rule-0.denied"] {
			t.Errorf("%s sidecar: the DENY filter's count and its only rule's differ: %v", svc, got)
		}
	}
}

// proxylessChildEnv names the bootstrap file of the proxyless gRPC server
// that TestProxylessServerProcess runs when this test binary is started as
// a helper process (its port in proxylessChildPortEnv).
const (
	proxylessChildEnv     = "MESHD_E2E_PROXYLESS_SERVER_BOOTSTRAP"
	proxylessChildPortEnv = "MESHD_E2E_PROXYLESS_SERVER_PORT"
)

// TestProxylessServerProcess is not a test: it is the proxyless gRPC
// server of TestProxylessPolicyReachesOpenConnection, in a process of its
// own so that what gRPC writes to standard output (its audit log) can be
// read as an operator would. It prints SERVING when meshd's listener is in
// force and stops when its standard input closes.
func TestProxylessServerProcess(t *testing.T) {
	path := os.Getenv(proxylessChildEnv)
	if path == "" {
		t.Skip("a helper process of TestProxylessPolicyReachesOpenConnection")
	}
	boot, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	serving := make(chan error, 8)
	srv, err := newProxylessServer(string(boot), "greeter-1", serving)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:"+os.Getenv(proxylessChildPortEnv))
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	go func() {
		for err := range serving {
			if err == nil {
				fmt.Println("SERVING")
			} else {
				fmt.Println("NOT SERVING:", err)
			}
		}
	}()
	io.Copy(io.Discard, os.Stdin)
	srv.Stop()
}

// startProxylessServerProcess runs the greeter's proxyless server for node
// greeter-1 in a helper process and returns its standard output.
func startProxylessServerProcess(t *testing.T, m *meshd, port uint32) *logWatcher {
	t.Helper()
	path := filepath.Join(t.TempDir(), "greeter-1.json")
	if err := os.WriteFile(path, []byte(proxylessServerBootstrap(t, m, "greeter-1")), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run", "^TestProxylessServerProcess$")
	cmd.Env = append(os.Environ(), proxylessChildEnv+"="+path, proxylessChildPortEnv+"="+fmt.Sprint(port))
	out := &logWatcher{}
	cmd.Stdout, cmd.Stderr = out, out
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		stdin.Close() // the helper stops when its input ends
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill() // our own child, by PID
			<-exited
		}
		if t.Failed() {
			t.Logf("proxyless server output:\n%s", out.String())
		}
	})
	eventually(t, 30*time.Second, func() error {
		if !strings.Contains(out.String(), "SERVING\n") {
			return fmt.Errorf("the proxyless server is not serving: %s", out.String())
		}
		return nil
	})
	return out
}

// auditEvents are gRPC's audit log lines in a process's output.
func auditEvents(out string) []map[string]any {
	var events []map[string]any
	for _, line := range strings.Split(out, "\n") {
		var doc struct {
			Event map[string]any `json:"grpc_audit_log"`
		}
		if json.Unmarshal([]byte(line), &doc) == nil && doc.Event != nil {
			events = append(events, doc.Event)
		}
	}
	return events
}

// A proxyless gRPC server closes its connections when its listener
// changes, so a policy change reaches a client that keeps calling: the
// second call after the server ACKs a DENY is denied, the second after the
// DENY is removed succeeds (the same for an ALLOW narrowed and widened), an
// allowed caller never fails, and each denial is in gRPC's audit log on the
// server's standard output, with the rule.
func TestProxylessPolicyReachesOpenConnection(t *testing.T) {
	port := envoytest.FreePort(t)
	policyDir := t.TempDir()
	writeGRPCPolicies(t, policyDir, "STRICT", "")
	m := startMeshd(t, grpcPolicyCatalog(port), "--policy-dir", policyDir)
	out := startProxylessServerProcess(t, m, port)
	web := newCaller(t, m, "web", "web", "default", "web-1")
	ops := newCaller(t, m, "ops", "ops", "default", "ops-1")
	eventually(t, 20*time.Second, func() error {
		for _, c := range []testgrpc.TestServiceClient{web, ops} {
			if r := grpcCall(c); r.outcome != "ok" {
				return fmt.Errorf("not up yet: %s", r.outcome)
			}
		}
		return nil
	})
	webCalls := startCaller(t, "web (proxyless)", 100*time.Millisecond, func() callRecord { return grpcCall(web) })
	opsCalls := startCaller(t, "ops (proxyless)", 100*time.Millisecond, func() callRecord { return grpcCall(ops) })
	allowOps := `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: greeter-allow, namespace: default}
spec:
  selector: {matchLabels: {app: greeter}}
  rules:
    - from: [{source: {principals: [%s]}}]
`
	for _, ph := range []struct{ name, docs, web string }{
		{"DENY web", denyWeb("greeter"), "denied"},
		{"DENY removed", "", "ok"},
		{"ALLOW narrowed to ops", fmt.Sprintf(allowOps, `"cluster.local/ns/default/sa/ops"`), "denied"},
		{"ALLOW widened to web and ops", fmt.Sprintf(allowOps, `"cluster.local/ns/default/sa/ops", "cluster.local/ns/default/sa/web"`), "ok"},
	} {
		before := m.version(t, "greeter-1", "Listener")
		writeGRPCPolicies(t, policyDir, "STRICT", ph.docs)
		acked, _ := m.waitApplied(t, "greeter-1", "Listener", before)
		t.Logf("phase %q: ACKed by the proxyless server", ph.name)
		checkAfterChange(t, webCalls, acked, ph.web)
	}
	opsCalls.after(t, time.Now(), 3)
	webCalls.stop()
	opsCalls.stop()
	for _, r := range opsCalls.all() {
		if r.outcome != "ok" {
			t.Errorf("ops (allowed throughout) failed at %s: %s", r.start.Format("15:04:05.000"), r.outcome)
		}
	}
	for _, r := range webCalls.all() {
		if r.outcome != "ok" && r.outcome != "denied" {
			t.Errorf("web failed (neither allowed nor denied) at %s: %s", r.start.Format("15:04:05.000"), r.outcome)
		}
	}

	// gRPC's audit log: a DENY names its rule; a missing ALLOW match has
	// no rule.
	found := map[string]bool{}
	eventually(t, 5*time.Second, func() error {
		for _, ev := range auditEvents(out.String()) {
			if ev["authorized"] == false && ev["principal"] == "spiffe://cluster.local/ns/default/sa/web" && ev["rpc_method"] == "/grpc.testing.TestService/UnaryCall" {
				found[fmt.Sprint(ev["matched_rule"])] = true
			}
		}
		if !found["default/greeter-deny-web/rule-0"] || !found[""] {
			return fmt.Errorf("audit log lacks web's denials by default/greeter-deny-web/rule-0 and by no ALLOW rule (found %v)", found)
		}
		return nil
	})
	for _, line := range strings.Split(out.String(), "\n") {
		if strings.Contains(line, "greeter-deny-web") {
			t.Logf("the proxyless server's audit log: %s", line)
			break
		}
	}
	for _, ev := range auditEvents(out.String()) {
		if ev["principal"] == "spiffe://cluster.local/ns/default/sa/ops" {
			t.Errorf("an allowed call was audit-logged: %v", ev)
			break
		}
	}
}
