package e2e

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/internal/envoytest"
)

const apiPolicies = `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: api, namespace: default}
spec:
  selector: {matchLabels: {app: api}}
  mtls: {mode: %s}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: legacy, namespace: default}
spec:
  selector: {matchLabels: {app: legacy}}
  mtls: {mode: %s}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: api-deny, namespace: default}
spec:
  selector: {matchLabels: {app: api}}
  action: DENY
  rules:
    - to: [{operation: {paths: ["/secret/*"]}}]
    - from: [{source: {notPrincipals: ["cluster.local/ns/default/sa/ops"]}}]
      to: [{operation: {methods: ["DELETE"]}}]
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: api-allow, namespace: default}
spec:
  selector: {matchLabels: {app: api}}
  action: ALLOW
  rules:
    - from: [{source: {principals: ["cluster.local/ns/default/sa/web"]}}]
      to: [{operation: {methods: ["GET", "HEAD"], paths: ["/api/*"]}}]
    - from: [{source: {principals: ["cluster.local/ns/default/sa/ops"]}}]
    - to: [{operation: {paths: ["/public"]}}]
    - from: [{source: {namespaces: ["default"]}}]
      when: [{key: "request.headers[x-token]", values: ["letmein"]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: db-callers, namespace: default}
spec:
  selector: {matchLabels: {app: db}}
  rules:
    - from: [{source: {principals: ["cluster.local/ns/default/sa/web"]}}]
`

type policyMesh struct {
	api, db, legacy                                   sidecarPorts
	webAdmin, opsAdmin                                uint32
	webToAPI, webToDB, webToLegacy, opsToAPI, opsToDB uint32
}

func (p *policyMesh) catalog() string {
	return fmt.Sprintf(`services:
  - {name: api, protocol: http, endpoints: [{address: 127.0.0.1, port: %d, labels: {app: api}}]}
  - {name: db, protocol: tcp, endpoints: [{address: 127.0.0.1, port: %d, labels: {app: db}}]}
  - {name: legacy, protocol: http, endpoints: [{address: 127.0.0.1, port: %d, labels: {app: legacy}}]}
  - {name: web, protocol: http}
  - {name: ops, protocol: http}
proxies:
  - {service: api, address: 127.0.0.1, publicPort: %d, appPort: %d}
  - {service: db, address: 127.0.0.1, publicPort: %d, appPort: %d}
  - {service: legacy, address: 127.0.0.1, publicPort: %d, appPort: %d}
  - {service: web, upstreams: [{service: api, localPort: %d}, {service: db, localPort: %d}, {service: legacy, localPort: %d}]}
  - {service: ops, upstreams: [{service: api, localPort: %d}, {service: db, localPort: %d}]}
`, p.api.public, p.db.public, p.legacy.public,
		p.api.public, p.api.app, p.db.public, p.db.app, p.legacy.public, p.legacy.app,
		p.webToAPI, p.webToDB, p.webToLegacy, p.opsToAPI, p.opsToDB)
}

func do(method, url string, header map[string]string) (int, error) {
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		return 0, err
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

func writePolicies(t *testing.T, dir, mode, legacyMode string) {
	t.Helper()
	writePolicyFile(t, dir, fmt.Sprintf(apiPolicies, mode, legacyMode))
}

func TestEnvoyPolicy(t *testing.T) {
	envoytest.Binary(t)
	p := &policyMesh{api: ports(t), db: ports(t), legacy: ports(t), webAdmin: envoytest.FreePort(t), opsAdmin: envoytest.FreePort(t),
		webToAPI: envoytest.FreePort(t), webToDB: envoytest.FreePort(t), webToLegacy: envoytest.FreePort(t),
		opsToAPI: envoytest.FreePort(t), opsToDB: envoytest.FreePort(t)}
	policyDir := t.TempDir()
	writePolicies(t, policyDir, "PERMISSIVE", "DISABLE")
	m := startMeshd(t, p.catalog(), "--policy-dir", policyDir)
	startHTTPApp(t, "api", p.api.app)
	startHTTPApp(t, "legacy", p.legacy.app)
	startTCPEcho(t, p.db.app)
	api := startSidecar(t, m, "api", "", p.api.admin)
	db := startSidecar(t, m, "db", "", p.db.admin)
	legacy := startSidecar(t, m, "legacy", "", p.legacy.admin)
	startSidecar(t, m, "web", "", p.webAdmin)
	startSidecar(t, m, "ops", "", p.opsAdmin)

	web := fmt.Sprintf("http://127.0.0.1:%d", p.webToAPI)
	ops := fmt.Sprintf("http://127.0.0.1:%d", p.opsToAPI)
	plain := fmt.Sprintf("http://127.0.0.1:%d", p.api.public)
	eventually(t, 20*time.Second, func() error {
		if code, err := do("GET", web+"/api/ready", nil); err != nil || code != 200 {
			return fmt.Errorf("web → api: %d %v", code, err)
		}
		return nil
	})

	t.Run("HTTP RBAC matrix through real sidecars", func(t *testing.T) {
		cases := []struct {
			name, base, method, path string
			header                   map[string]string
			want                     int
		}{
			{"web GET allowed path", web, "GET", "/api/items", nil, 200},
			{"web HEAD allowed path", web, "HEAD", "/api/items", nil, 200},
			{"web GET prefix root", web, "GET", "/api/", nil, 200},
			{"web POST wrong method", web, "POST", "/api/items", nil, 403},
			{"web GET path outside prefix", web, "GET", "/other", nil, 403},
			{"web GET public path", web, "GET", "/public", nil, 200},
			{"web GET denied path", web, "GET", "/secret/x", nil, 403},
			{"web DELETE denied by notPrincipals", web, "DELETE", "/api/items", nil, 403},
			{"web header condition met", web, "GET", "/other", map[string]string{"x-token": "letmein"}, 200},
			{"web header condition wrong value", web, "GET", "/other", map[string]string{"x-token": "nope"}, 403},
			{"ops any method", ops, "POST", "/anything", nil, 200},
			{"ops DELETE not denied", ops, "DELETE", "/api/items", nil, 200},
			{"ops DENY beats ALLOW", ops, "GET", "/secret/x", nil, 403},
			{"ops public", ops, "GET", "/public", nil, 200},
			{"plaintext public allowed", plain, "GET", "/public", nil, 200},
			{"plaintext has no principal", plain, "GET", "/api/items", nil, 403},
			{"plaintext has no namespace", plain, "GET", "/other", map[string]string{"x-token": "letmein"}, 403},
			{"plaintext denied path", plain, "GET", "/secret/x", nil, 403},
		}
		for _, c := range cases {
			code, err := do(c.method, c.base+c.path, c.header)
			if err != nil || code != c.want {
				t.Errorf("%s: %s %s → %d (%v), want %d", c.name, c.method, c.path, code, err, c.want)
			}
		}
	})

	t.Run("PERMISSIVE serves mTLS and plaintext on one port, counted apart", func(t *testing.T) {
		mtls, _ := api.Stat(t, "http.inbound_mtls.api.default.downstream_rq_completed")
		plainN, _ := api.Stat(t, "http.inbound_plaintext.api.default.downstream_rq_completed")
		if mtls < 10 || plainN < 4 {
			t.Fatalf("api sidecar counted %d mTLS and %d plaintext requests", mtls, plainN)
		}
	})

	t.Run("denials name the policy rule", func(t *testing.T) {
		eventually(t, 10*time.Second, func() error {
			log, _ := os.ReadFile(api.LogPath)
			for _, want := range []string{
				"rbac_access_denied_matched_policy[default/api-deny/rule-0] peer=spiffe://cluster.local/ns/default/sa/web GET /secret/x",
				"rbac_access_denied_matched_policy[default/api-deny/rule-1] peer=spiffe://cluster.local/ns/default/sa/web DELETE /api/items",
				"rbac_access_denied_matched_policy[none] peer=spiffe://cluster.local/ns/default/sa/web POST /api/items",
			} {
				if !strings.Contains(string(log), want) {
					return fmt.Errorf("api sidecar log lacks %q", want)
				}
			}
			return nil
		})
	})

	t.Run("tcp network RBAC", func(t *testing.T) {
		echo := func(port uint32) (string, error) {
			c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 3*time.Second)
			if err != nil {
				return "", err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(3 * time.Second))
			if _, err := c.Write([]byte("ping")); err != nil {
				return "", err
			}
			b, err := io.ReadAll(c)
			return string(b), err
		}
		if got, err := echo(p.webToDB); got != "db:ping" {
			t.Fatalf("web → db: %q %v", got, err)
		}
		if got, _ := echo(p.opsToDB); got != "" {
			t.Fatalf("ops → db got %q; the ALLOW policy names only web", got)
		}
		if n, ok := db.Stat(t, "inbound_mtls.db.default.allow.rbac.denied"); !ok || n < 1 {
			t.Fatalf("db sidecar network RBAC denied = %d (present %v)", n, ok)
		}
	})

	t.Run("DISABLE serves plaintext and callers follow (auto mTLS)", func(t *testing.T) {
		if code, err := do("GET", fmt.Sprintf("http://127.0.0.1:%d/direct", p.legacy.public), nil); err != nil || code != 200 {
			t.Fatalf("plaintext to legacy's public port: %d %v", code, err)
		}
		if code, err := do("GET", fmt.Sprintf("http://127.0.0.1:%d/via-web", p.webToLegacy), nil); err != nil || code != 200 {
			t.Fatalf("web → legacy: %d %v", code, err)
		}
		if n, _ := legacy.Stat(t, "http.inbound_plaintext.legacy.default.downstream_rq_completed"); n < 2 {
			t.Fatalf("legacy counted %d plaintext requests", n)
		}
	})

	t.Run("PERMISSIVE to STRICT while requests flow", func(t *testing.T) {
		f := startFlow(10*time.Millisecond, httpOK(web+"/api/flow"))
		f.waitMore(t, 10)
		writePolicies(t, policyDir, "STRICT", "DISABLE")
		eventually(t, 15*time.Second, func() error {
			if _, err := do("GET", plain+"/public", nil); err == nil {
				return fmt.Errorf("plaintext still accepted")
			}
			return nil
		})
		f.waitMore(t, 10)
		f.stop(t, 20)
		m.assertAllACKed("api.default", "web.default")
	})

	// DISABLE → STRICT → DISABLE on legacy while web calls it: the server
	// and the caller change in acknowledged steps, so nothing fails.
	t.Run("DISABLE to STRICT and back while requests flow", func(t *testing.T) {
		f := startFlow(10*time.Millisecond, httpOK(fmt.Sprintf("http://127.0.0.1:%d/flow", p.webToLegacy)))
		direct := fmt.Sprintf("http://127.0.0.1:%d/direct", p.legacy.public)
		f.waitMore(t, 10)
		writePolicies(t, policyDir, "STRICT", "STRICT")
		eventually(t, 20*time.Second, func() error {
			if _, err := do("GET", direct, nil); err == nil {
				return fmt.Errorf("legacy still accepts plaintext")
			}
			return nil
		})
		// Connections opened before the switch drain gracefully, so the
		// first mTLS requests can lag the listener change a little.
		eventually(t, 15*time.Second, func() error {
			if n, _ := legacy.Stat(t, "http.inbound_mtls.legacy.default.downstream_rq_completed"); n < 1 {
				return fmt.Errorf("web does not reach legacy over mTLS after the switch")
			}
			return nil
		})
		writePolicies(t, policyDir, "STRICT", "DISABLE")
		eventually(t, 20*time.Second, func() error {
			if code, err := do("GET", direct, nil); err != nil || code != 200 {
				return fmt.Errorf("legacy does not accept plaintext yet: %d %v", code, err)
			}
			return nil
		})
		eventually(t, 20*time.Second, func() error {
			if _, body := m.adminGET("/debug/status"); strings.Contains(body, `"migrations"`) {
				return fmt.Errorf("migration still pending")
			}
			return nil
		})
		f.waitMore(t, 10)
		f.stop(t, 20)
	})
}
