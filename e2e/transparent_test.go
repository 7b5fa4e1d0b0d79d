package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/internal/netnstest"
	"github.com/meshd/meshd/internal/testwait"
)

// transparentCatalog: client (client-only) and api (an HTTP app on 8080)
// run transparent sidecars seeing every service; api's virtual address
// is 10.78.1.11:80. ext (10.78.0.20) is outside the mesh.
const transparentCatalog = `services:
  - name: client
  - name: api
    protocol: http
    address: 10.78.1.11
    port: 80
    endpoints: [{address: 10.78.0.11, port: 15006, labels: {app: api}}]
%[2]sproxies:
  - {service: client, address: 10.78.0.10, mode: transparent, upstreamNamespaces: ["*"], passthrough: %[1]s}
  - {service: api, address: 10.78.0.11, publicPort: 15006, appPort: 8080, mode: transparent, upstreamNamespaces: ["*"]}
`

const denyClient = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-client, namespace: default}
spec:
  selector: {matchLabels: {app: api}}
  action: DENY
  rules:
  - from:
    - source: {principals: [cluster.local/ns/default/sa/client]}
`

// TestTransparentInterception (issue 17): network-namespace hosts with
// transparent sidecars (Envoy as uid 1337) and meshctl redirect-traffic's
// iptables rules. An unmodified client calling http://<service
// address>:<port> reaches the service over mTLS through both sidecars (the
// app sees the caller's identity); a direct connection to the app's port
// is redirected to the sidecar, so STRICT refuses plaintext; a DENY policy
// applies; a non-mesh destination is reached or refused as passthrough
// says; removing the rules leaves iptables as it was.
func TestTransparentInterception(t *testing.T) {
	requireTool(t, "iptables", "iptables", "MESHD_ALLOW_NO_IPTABLES")
	requireTool(t, "setpriv", "util-linux", "MESHD_ALLOW_NO_IPTABLES")
	nm := startNetMesh(t, netip.MustParsePrefix("10.78.0.0/24"), fmt.Sprintf(transparentCatalog, "allow", ""))
	client := nm.nw.AddHost("client", netip.MustParseAddr("10.78.0.10"))
	api := nm.nw.AddHost("api", netip.MustParseAddr("10.78.0.11"))
	ext := nm.nw.AddHost("ext", netip.MustParseAddr("10.78.0.20"))
	// Virtual addresses are routed like any other destination; the
	// capture happens before the packet would leave.
	client.MustRun(t, 10*time.Second, "ip", "route", "add", "10.78.1.0/24", "dev", "eth0")

	// The apps listen on every address, as apps do: only the rules keep
	// callers from reaching them around the sidecar.
	api.Start(t, "app", nil, nm.demo, "http", "--listen", "0.0.0.0:8080", "--name", "api")
	ext.Start(t, "app", nil, nm.demo, "http", "--listen", "0.0.0.0:8080", "--name", "ext")
	nm.sidecar(client, proxyUID, "client", "default", "client.default")
	nm.sidecar(api, proxyUID, "api", "default", "api.default")

	// Before interception the app is reachable directly, in plaintext.
	var out string
	testwait.Until(t, 30*time.Second, func() (err error) {
		out, err = nm.call(ext, 0, "--http", "http://10.78.0.11:8080/")
		return err
	})
	if !strings.Contains(out, "service=api caller=none") {
		t.Fatalf("direct call before interception: %s", out)
	}

	meshctl := filepath.Join(binDir, "meshctl")
	beforeClient, _ := nat(t, client)
	beforeAPI, _ := nat(t, api)
	client.MustRun(t, 30*time.Second, meshctl, "redirect-traffic", "install", "--backend", "iptables", "--proxy-uid", fmt.Sprint(proxyUID))
	api.MustRun(t, 30*time.Second, meshctl, "redirect-traffic", "install", "--backend", "iptables", "--proxy-uid", fmt.Sprint(proxyUID),
		"--app-port", "8080", "--public-port", "15006")

	t.Run("unmodified client reaches the service over mTLS", func(t *testing.T) {
		out, err := nm.call(client, 0, "--http", "http://10.78.1.11:80/hello", "--count", "3", "--interval", "10ms")
		if err != nil || !strings.Contains(out, "-> 200 service=api caller=spiffe://cluster.local/ns/default/sa/client") {
			t.Fatalf("call to the virtual address: %v\n%s", err, out)
		}
		t.Logf("client → http://10.78.1.11:80/hello: %s", out)
		// Through both sidecars: the client's capture chain for api, and
		// api's inbound mTLS chain.
		if n := stat(t, client, "http.outbound_mtls.api.default.downstream_rq_completed"); n < 3 {
			t.Errorf("client sidecar's outbound api chain completed %d requests, want 3", n)
		}
		if n := stat(t, api, "cluster.local_app.api.default.upstream_rq_completed"); n < 3 {
			t.Errorf("api sidecar forwarded %d requests to the app, want 3", n)
		}
	})

	t.Run("direct plaintext to the app port is redirected and refused", func(t *testing.T) {
		before := stat(t, api, "listener.10.78.0.11_15006.downstream_cx_total")
		out, err := nm.call(ext, 0, "--http", "http://10.78.0.11:8080/")
		if err == nil {
			t.Fatalf("plaintext call around the sidecar succeeded: %s", out)
		}
		t.Logf("ext → http://10.78.0.11:8080/ (around the sidecar): %s", out)
		if after := stat(t, api, "listener.10.78.0.11_15006.downstream_cx_total"); after <= before {
			t.Errorf("the sidecar's inbound listener saw no new connection (%d → %d): the call was not redirected to it", before, after)
		}
		// And from the client's host too: captured, passed through, then
		// redirected at api's host.
		if out, err := nm.call(client, 0, "--http", "http://10.78.0.11:8080/"); err == nil {
			t.Errorf("plaintext call from the client's host to the app port succeeded: %s", out)
		}
	})

	t.Run("an open connection survives a service added to the visible set", func(t *testing.T) {
		// The test process dials from inside the client's namespace as
		// root: captured like the app's own connections.
		var reused []bool
		hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil, DialContext: client.DialContext}}
		get := func() {
			t.Helper()
			ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
				GotConn: func(i httptrace.GotConnInfo) { reused = append(reused, i.Reused) }})
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://10.78.1.11:80/keepalive", nil)
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
		}
		get()
		updates := stat(t, client, "listener_manager.lds.update_success")
		// A new service with a virtual address: a new chain in the capture
		// listener; api's chain is unchanged, so Envoy keeps its
		// connections (it drains only replaced chains).
		nm.writeCatalog(fmt.Sprintf(transparentCatalog, "allow", "  - {name: other, address: 10.78.1.12, port: 80}\n"))
		testwait.Until(t, 30*time.Second, func() error {
			if n := stat(t, client, "listener_manager.lds.update_success"); n <= updates {
				return fmt.Errorf("no listener update yet (%d)", n)
			}
			return nil
		})
		get()
		get()
		if !slices.Equal(reused, []bool{false, true, true}) {
			t.Errorf("connection reuse across the update: %v, want [false true true] (the open connection kept)", reused)
		}
		nm.writeCatalog(fmt.Sprintf(transparentCatalog, "allow", ""))
	})

	t.Run("a DENY policy applies", func(t *testing.T) {
		nm.writePolicy(denyClient)
		testwait.Until(t, 30*time.Second, func() error {
			out, err := nm.call(client, 0, "--http", "http://10.78.1.11:80/")
			if err == nil || !strings.Contains(out, "403") {
				return fmt.Errorf("not denied yet: %s", out)
			}
			return nil
		})
		nm.writePolicy("")
		testwait.Until(t, 30*time.Second, func() error {
			out, err := nm.call(client, 0, "--http", "http://10.78.1.11:80/")
			if err != nil {
				return fmt.Errorf("still denied: %s", out)
			}
			return nil
		})
	})

	t.Run("passthrough allow, then block", func(t *testing.T) {
		out, err := nm.call(client, 0, "--http", "http://10.78.0.20:8080/")
		if err != nil || !strings.Contains(out, "-> 200 service=ext caller=none") {
			t.Fatalf("non-mesh destination with passthrough allow: %v\n%s", err, out)
		}
		if n := stat(t, client, "tcp.passthrough.downstream_cx_total"); n < 1 {
			t.Errorf("passthrough chain counted %d connections, want the call's", n)
		}
		nm.writeCatalog(fmt.Sprintf(transparentCatalog, "block", ""))
		testwait.Until(t, 30*time.Second, func() error {
			if out, err := nm.call(client, 0, "--http", "http://10.78.0.20:8080/"); err == nil {
				return fmt.Errorf("still passed through: %s", out)
			}
			return nil
		})
		// The mesh service is still reached.
		if out, err := nm.call(client, 0, "--http", "http://10.78.1.11:80/"); err != nil {
			t.Errorf("mesh call with passthrough block: %v\n%s", err, out)
		}
		if n := stat(t, client, "tcp.blocked.downstream_cx_total"); n < 1 {
			t.Errorf("blocked chain counted %d connections", n)
		}
	})

	t.Run("rules removed cleanly", func(t *testing.T) {
		for _, h := range []*netnstest.Host{client, api} {
			h.MustRun(t, 30*time.Second, meshctl, "redirect-traffic", "remove")
		}
		for h, before := range map[*netnstest.Host]string{client: beforeClient, api: beforeAPI} {
			out := h.MustRun(t, 30*time.Second, "iptables-save")
			ipt, nft := nat(t, h)
			if ipt != before || strings.Contains(out, "MESHD") || strings.Contains(nft, "meshd") || strings.Contains(nft, "redirect") {
				t.Errorf("%s: rules left after remove:\n%s\n%s", h.Name, out, nft)
			}
		}
		// Nothing is intercepted any more: the app answers plaintext
		// directly, and ext is reached although passthrough says block.
		if out, err := nm.call(ext, 0, "--http", "http://10.78.0.11:8080/"); err != nil || !strings.Contains(out, "service=api caller=none") {
			t.Errorf("direct call after removal: %v\n%s", err, out)
		}
		if out, err := nm.call(client, 0, "--http", "http://10.78.0.20:8080/"); err != nil {
			t.Errorf("call to ext after removal: %v\n%s", err, out)
		}
	})
}
