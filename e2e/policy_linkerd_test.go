package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/internal/envoytest"
)

// Linkerd's policy resources, end to end: each phase writes a set of
// Linkerd (and, once, Istio) documents and states, independently of meshd,
// which caller may reach which workload under Linkerd's semantics. Every
// expectation is checked through real Envoy sidecars (and, in
// TestGRPCLinkerdPolicy, proxyless gRPC) once the phase is in force.

// writePolicyFile replaces dir/policies.yaml atomically (write + rename),
// as a deployment tool would.
func writePolicyFile(t testing.TB, dir, content string) {
	t.Helper()
	tmp := filepath.Join(dir, ".policies.tmp")
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "policies.yaml")); err != nil {
		t.Fatal(err)
	}
}

// linkerdNamespace is a Namespace document setting a default inbound policy.
func linkerdNamespace(ns, policy string) string {
	return fmt.Sprintf("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: %s\n  annotations: {config.linkerd.io/default-inbound-policy: %s}\n---\n", ns, policy)
}

type linkerdMesh struct {
	api, lbl, other, db sidecarPorts
	webAdmin, opsAdmin  uint32
	// Each caller sidecar's loopback port per target.
	web, ops map[string]uint32
}

func (l *linkerdMesh) catalog() string {
	return fmt.Sprintf(`services:
  - {name: api, protocol: http, endpoints: [{address: 127.0.0.1, port: %d, labels: {app: api}}]}
  - name: lbl
    protocol: http
    endpoints: [{address: 127.0.0.1, port: %d, labels: {app: lbl, config.linkerd.io/default-inbound-policy: cluster-unauthenticated}}]
  - {name: other, namespace: other, protocol: http, endpoints: [{address: 127.0.0.1, port: %d, labels: {app: other}}]}
  - {name: db, protocol: tcp, endpoints: [{address: 127.0.0.1, port: %d, labels: {app: db}}]}
  - {name: web, protocol: http}
  - {name: ops, namespace: ops, protocol: http}
proxies:
  - {service: api, address: 127.0.0.1, publicPort: %d, appPort: %d}
  - {service: lbl, address: 127.0.0.1, publicPort: %d, appPort: %d}
  - {service: other, namespace: other, address: 127.0.0.1, publicPort: %d, appPort: %d}
  - {service: db, address: 127.0.0.1, publicPort: %d, appPort: %d}
  - service: web
    upstreams: [{service: api, localPort: %d}, {service: lbl, localPort: %d}, {service: other, namespace: other, localPort: %d}, {service: db, localPort: %d}]
  - service: ops
    namespace: ops
    upstreams: [{service: api, namespace: default, localPort: %d}, {service: lbl, namespace: default, localPort: %d}, {service: other, namespace: other, localPort: %d}, {service: db, namespace: default, localPort: %d}]
`, l.api.public, l.lbl.public, l.other.public, l.db.public,
		l.api.public, l.api.app, l.lbl.public, l.lbl.app, l.other.public, l.other.app, l.db.public, l.db.app,
		l.web["api"], l.web["lbl"], l.web["other"], l.web["db"], l.ops["api"], l.ops["lbl"], l.ops["other"], l.ops["db"])
}

// The callers: web (default/web) and ops (ops/ops) through their sidecars,
// which connect from 127.0.0.1; batch (batch/batch), a direct mTLS client
// from 127.0.0.2; and plaintext clients from 127.0.0.1 and 127.0.0.2. meshd
// runs with --cluster-networks 127.0.0.1/32, so 127.0.0.2 is outside the
// cluster.
var linkerdCallers = []string{"web", "ops", "batch", "plain1", "plain2"}

// linkerdPhase is one policy set and who may reach what under it: allow
// maps "target" (or "target path") to the callers admitted.
type linkerdPhase struct {
	name  string
	docs  string
	allow map[string][]string
}

// Outside the phases' own documents: lbl's endpoint label says
// cluster-unauthenticated, and other's namespace follows meshd's
// --default-inbound-policy all-authenticated.
var (
	lblAllowed   = []string{"web", "ops", "plain1"}
	otherAllowed = []string{"web", "ops", "batch"}
	all          = linkerdCallers
	authed       = []string{"web", "ops", "batch"}
)

const apiServer = `apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: {name: api-http, namespace: default, labels: {tier: web}}
spec:
  podSelector: {matchLabels: {app: api}}
  port: %d
`

func linkerdPhases(l *linkerdMesh) []linkerdPhase {
	server := fmt.Sprintf(apiServer, l.api.app)
	std := func(api, db []string) map[string][]string {
		return map[string][]string{"api": api, "db": db, "lbl": lblAllowed, "other": otherAllowed}
	}
	return []linkerdPhase{
		{"namespace default all-unauthenticated", linkerdNamespace("default", "all-unauthenticated"), std(all, all)},
		{"namespace default all-authenticated", linkerdNamespace("default", "all-authenticated"), std(authed, authed)},
		{"namespace default cluster-authenticated", linkerdNamespace("default", "cluster-authenticated"), std([]string{"web", "ops"}, []string{"web", "ops"})},
		{"namespace default cluster-unauthenticated", linkerdNamespace("default", "cluster-unauthenticated"), std([]string{"web", "ops", "plain1"}, []string{"web", "ops", "plain1"})},
		{"namespace default deny; other's namespace audit over the flag", linkerdNamespace("default", "deny") + linkerdNamespace("other", "audit"),
			map[string][]string{"api": nil, "db": nil, "lbl": lblAllowed, "other": all}},
		{"namespace default audit", linkerdNamespace("default", "audit"), std(all, all)},
		// Without a Namespace document, default's workloads (db here)
		// follow meshd's --default-inbound-policy all-authenticated.
		{"a Server without authorization denies its port", server, std(nil, authed)},
		{"ServerAuthorizations: a service account from the cluster, unauthenticated from a network with an exception", server + `---
apiVersion: policy.linkerd.io/v1beta1
kind: ServerAuthorization
metadata: {name: api-web, namespace: default}
spec:
  server: {name: api-http}
  client:
    meshTLS: {serviceAccounts: [{name: web}]}
---
apiVersion: policy.linkerd.io/v1beta1
kind: ServerAuthorization
metadata: {name: api-loopback, namespace: default}
spec:
  server: {selector: {matchLabels: {tier: web}}}
  client:
    unauthenticated: true
    networks: [{cidr: 127.0.0.0/8, except: [127.0.0.1]}]
`, std([]string{"web", "batch", "plain2"}, authed)}, // unauthenticated admits mTLS callers too
		{"AuthorizationPolicies: MeshTLSAuthentication and NetworkAuthentication together; a Namespace target with a ServiceAccount", `apiVersion: policy.linkerd.io/v1beta1
kind: Server
metadata: {name: api-by-name, namespace: default}
spec:
  podSelector: {matchLabels: {app: api}}
  port: api
  proxyProtocol: HTTP/1
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: api-outside, namespace: default}
spec:
  targetRef: {group: policy.linkerd.io, kind: Server, name: api-by-name}
  requiredAuthenticationRefs:
    - {group: policy.linkerd.io, kind: MeshTLSAuthentication, name: ops-and-batch}
    - {group: policy.linkerd.io, kind: NetworkAuthentication, name: outside, namespace: infra}
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: default-web, namespace: default}
spec:
  targetRef: {kind: Namespace, name: default}
  requiredAuthenticationRefs: [{kind: ServiceAccount, name: web}]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: MeshTLSAuthentication
metadata: {name: ops-and-batch, namespace: default}
spec:
  identities: [ops.ops.serviceaccount.identity.linkerd.cluster.local, "spiffe://cluster.local/ns/batch/sa/batch"]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: NetworkAuthentication
metadata: {name: outside, namespace: infra}
spec:
  networks: [{cidr: 127.0.0.2/32}]
`, std([]string{"web", "batch"}, authed)},
		{"accessPolicy all-authenticated; an opaque Server with a namespace-wide identity", strings.Replace(server, "  port:", "  accessPolicy: all-authenticated\n  port:", 1) + fmt.Sprintf(`---
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: {name: db, namespace: default}
spec:
  podSelector: {matchExpressions: [{key: app, operator: In, values: [db]}]}
  port: %d
  proxyProtocol: opaque
---
apiVersion: policy.linkerd.io/v1beta1
kind: ServerAuthorization
metadata: {name: db-default, namespace: default}
spec:
  server: {name: db}
  client:
    meshTLS: {identities: ["*.default.serviceaccount.identity.linkerd.cluster.local"]}
`, l.db.app), std(authed, []string{"web"})},
		{"a Server for another port leaves the default in force", linkerdNamespace("default", "all-authenticated") + strings.Replace(server, fmt.Sprintf("port: %d", l.api.app), "port: 9999", 1),
			std(authed, authed)},
		{"Istio and Linkerd together: both must allow", server + `---
apiVersion: policy.linkerd.io/v1beta1
kind: ServerAuthorization
metadata: {name: api-web-ops, namespace: default}
spec:
  server: {name: api-http}
  client:
    meshTLS:
      serviceAccounts: [{name: web}, {name: ops, namespace: ops}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: api-http, namespace: default}
spec:
  selector: {matchLabels: {app: api}}
  rules:
    - from: [{source: {principals: ["cluster.local/ns/ops/sa/ops", "cluster.local/ns/batch/sa/batch"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: api-secret, namespace: default}
spec:
  selector: {matchLabels: {app: api}}
  action: DENY
  rules:
    - to: [{operation: {paths: ["/secret/*"]}}]
`, map[string][]string{"api": {"ops"}, "api /secret/x": nil, "db": authed, "lbl": lblAllowed, "other": otherAllowed}},
	}
}

// phaseInForce waits until verify finds nothing wrong (the phase's policy
// is in force), then checks once more that it stays so.
func phaseInForce(t *testing.T, phase string, verify func() []string) {
	t.Helper()
	eventually(t, 30*time.Second, func() error {
		if wrong := verify(); len(wrong) > 0 {
			return fmt.Errorf("%s not in force: %s", phase, strings.Join(wrong, "; "))
		}
		return nil
	})
	if wrong := verify(); len(wrong) > 0 {
		t.Errorf("%s: %s", phase, strings.Join(wrong, "; "))
	}
}

// linkerdClient reaches the targets as one caller.
type linkerdClient struct {
	l      *linkerdMesh
	caller string
	certs  string // batch's certificate directory
}

func (c *linkerdClient) dialer() *net.Dialer {
	from := "127.0.0.1"
	if c.caller == "batch" || c.caller == "plain2" {
		from = "127.0.0.2"
	}
	return &net.Dialer{Timeout: 3 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
}

func (c *linkerdClient) public(target string) uint32 {
	return map[string]uint32{"api": c.l.api.public, "lbl": c.l.lbl.public, "other": c.l.other.public, "db": c.l.db.public}[target]
}

func (c *linkerdClient) tlsConfig(t testing.TB, target string) *tls.Config {
	cert, err := tls.LoadX509KeyPair(filepath.Join(c.certs, "cert.pem"), filepath.Join(c.certs, "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	ca, err := os.ReadFile(filepath.Join(c.certs, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	ns := "default"
	if target == "other" {
		ns = "other"
	}
	// "meshd" first: a PERMISSIVE sidecar sends TLS offering it to its
	// mTLS chain.
	return &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, ServerName: target + "." + ns, NextProtos: []string{"meshd", "http/1.1"}}
}

// get sends GET path to target and returns the status (0 with an error
// when no HTTP answer came).
func (c *linkerdClient) get(t testing.TB, target, path string) (int, error) {
	addr := fmt.Sprintf("127.0.0.1:%d", c.public(target))
	tr := &http.Transport{DialContext: c.dialer().DialContext, DisableKeepAlives: true}
	switch c.caller {
	case "web":
		addr = fmt.Sprintf("127.0.0.1:%d", c.l.web[target])
		tr.DialContext = (&net.Dialer{Timeout: 3 * time.Second}).DialContext
	case "ops":
		addr = fmt.Sprintf("127.0.0.1:%d", c.l.ops[target])
		tr.DialContext = (&net.Dialer{Timeout: 3 * time.Second}).DialContext
	case "batch":
		tr.TLSClientConfig = c.tlsConfig(t, target)
		tr.ForceAttemptHTTP2 = false
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	scheme := "http"
	if c.caller == "batch" {
		scheme = "https"
	}
	cl := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	defer tr.CloseIdleConnections()
	resp, err := cl.Get(scheme + "://" + addr + path)
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

// echo sends a line over TCP to db and returns what came back
// ("db:ping-linkerd" when the connection was admitted; "" when the sidecar
// closed it). The line is longer than a TLS record header: a PERMISSIVE
// sidecar's TLS inspector waits for 5 bytes before it can tell plaintext
// from TLS.
func (c *linkerdClient) echo(t testing.TB) (string, error) {
	var conn net.Conn
	var err error
	switch c.caller {
	case "web":
		conn, err = net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", c.l.web["db"]), 3*time.Second)
	case "ops":
		conn, err = net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", c.l.ops["db"]), 3*time.Second)
	case "batch":
		conn, err = tls.DialWithDialer(c.dialer(), "tcp", fmt.Sprintf("127.0.0.1:%d", c.l.db.public), c.tlsConfig(t, "db"))
	default:
		conn, err = c.dialer().Dial("tcp", fmt.Sprintf("127.0.0.1:%d", c.l.db.public))
	}
	if err != nil {
		return "", err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := conn.Write([]byte("ping-linkerd")); err != nil {
		return "", err
	}
	b, err := io.ReadAll(conn)
	return string(b), err
}

// check reports whether caller's request to target (e.g. "api" or
// "api /secret/x") had the outcome allowed says, and what it got.
func (c *linkerdClient) check(t testing.TB, target string, allowed bool) (bool, string) {
	svc, path, _ := strings.Cut(target, " ")
	if path == "" {
		path = "/items"
	}
	if svc == "db" {
		got, err := c.echo(t)
		if allowed {
			return got == "db:ping-linkerd", fmt.Sprintf("%q (%v)", got, err)
		}
		return got == "", fmt.Sprintf("%q (%v)", got, err)
	}
	code, err := c.get(t, svc, path)
	if allowed {
		return code == 200, fmt.Sprintf("%d (%v)", code, err)
	}
	return code == 403, fmt.Sprintf("%d (%v)", code, err)
}

func TestEnvoyLinkerdPolicy(t *testing.T) {
	envoytest.Binary(t)
	l := &linkerdMesh{api: ports(t), lbl: ports(t), other: ports(t), db: ports(t),
		webAdmin: envoytest.FreePort(t), opsAdmin: envoytest.FreePort(t), web: map[string]uint32{}, ops: map[string]uint32{}}
	for _, target := range []string{"api", "lbl", "other", "db"} {
		l.web[target], l.ops[target] = envoytest.FreePort(t), envoytest.FreePort(t)
	}
	phases := linkerdPhases(l)
	policyDir := t.TempDir()
	writePolicyFile(t, policyDir, phases[0].docs)
	m := startMeshd(t, l.catalog(), "--policy-dir", policyDir, "--mtls-mode", "PERMISSIVE",
		"--default-inbound-policy", "all-authenticated", "--cluster-networks", "127.0.0.1/32")
	startHTTPApp(t, "api", l.api.app)
	startHTTPApp(t, "lbl", l.lbl.app)
	startHTTPApp(t, "other", l.other.app)
	startTCPEcho(t, l.db.app)
	api := startSidecar(t, m, "api", "", l.api.admin)
	startSidecar(t, m, "lbl", "", l.lbl.admin)
	other := startSidecar(t, m, "other", "", l.other.admin, "--namespace", "other")
	startSidecar(t, m, "db", "", l.db.admin)
	startSidecar(t, m, "web", "", l.webAdmin)
	startSidecar(t, m, "ops", "", l.opsAdmin, "--namespace", "ops")
	certs := filepath.Join(m.dir, "certs-batch")
	m.meshctl("certs", "issue", "--service", "batch", "--namespace", "batch", "--data-dir", m.dataDir, "--out", certs)
	clients := map[string]*linkerdClient{}
	for _, c := range linkerdCallers {
		clients[c] = &linkerdClient{l: l, caller: c, certs: certs}
	}

	// verify lists what a phase's expectations say and the sidecars do not.
	verify := func(ph linkerdPhase) func() []string {
		return func() []string {
			var wrong []string
			for target, admitted := range ph.allow {
				for _, c := range linkerdCallers {
					want := slices.Contains(admitted, c)
					if ok, got := clients[c].check(t, target, want); !ok {
						wrong = append(wrong, fmt.Sprintf("%s → %s: got %s, want allowed=%v", c, target, got, want))
					}
				}
			}
			return wrong
		}
	}
	cases := 0
	for i, ph := range phases {
		writePolicyFile(t, policyDir, ph.docs)
		// HTTP policy is a route update applied to the next request; tcp
		// policy a listener update applied to new connections.
		phaseInForce(t, fmt.Sprintf("phase %d (%s)", i, ph.name), verify(ph))
		cases += len(ph.allow) * len(linkerdCallers)
	}
	t.Logf("%d cases over %d phases", cases, len(phases))
	if cases < 20 {
		t.Fatalf("only %d cases", cases)
	}

	t.Run("denials name the Linkerd decision", func(t *testing.T) {
		eventually(t, 10*time.Second, func() error {
			for _, want := range []string{
				// A Server without authorization (phase 6), as seen by web.
				"rbac_access_denied_matched_policy[default/server:api-http/rule-0] peer=spiffe://cluster.local/ns/default/sa/web GET /items",
				// The namespace default deny (phase 4), for batch.
				"rbac_access_denied_matched_policy[meshd-system/default:deny/rule-0] peer=spiffe://cluster.local/ns/batch/sa/batch GET /items",
				// Istio's ALLOW leaves web out although Linkerd admits it.
				"rbac_access_denied_matched_policy[none] peer=spiffe://cluster.local/ns/default/sa/web GET /items",
			} {
				if !strings.Contains(api.Log(), want) {
					return fmt.Errorf("api sidecar log lacks %q", want)
				}
			}
			return nil
		})
	})

	t.Run("audit admits everybody and records each request", func(t *testing.T) {
		// The default:audit rule recorded every request of its phases on
		// both of each sidecar's chains (mTLS and plaintext callers).
		for _, c := range []struct {
			e      *envoytest.Envoy
			prefix string
		}{{api, "api.default"}, {other, "other.other"}} {
			var total int64
			for _, chain := range []string{"inbound_mtls.", "inbound_plaintext."} {
				n, _ := c.e.Stat(t, "http."+chain+c.prefix+".rbac.audit.policy.meshd-system/default:audit/rule-0.shadow_denied")
				if n == 0 {
					t.Errorf("%s: the audit rule recorded nothing on %s", c.prefix, chain)
				}
				total += n
			}
			if total < int64(len(linkerdCallers)) {
				t.Errorf("%s: the audit rule recorded %d requests, want at least one per caller", c.prefix, total)
			}
		}
	})

	t.Run("policy changes fail none of web's allowed requests", func(t *testing.T) {
		// Out of the last phase (which denies web) first.
		flowURL := fmt.Sprintf("http://127.0.0.1:%d/flow", l.web["api"])
		writePolicyFile(t, policyDir, phases[0].docs)
		eventually(t, 30*time.Second, httpOK(flowURL))
		f := startFlow(10*time.Millisecond, httpOK(flowURL))
		for _, i := range []int{7, 1, 8, 9, 10, 0} {
			writePolicyFile(t, policyDir, phases[i].docs)
			phaseInForce(t, fmt.Sprintf("phase %d (%s)", i, phases[i].name), verify(phases[i]))
			f.waitMore(t, 10)
		}
		defer func() {
			if t.Failed() {
				for _, line := range strings.Split(api.Log(), "\n") {
					if strings.Contains(line, "/flow") {
						t.Log(line)
					}
				}
			}
		}()
		f.stop(t, 50)
	})
}

// TestGRPCLinkerdPolicy: the same semantics through proxyless gRPC, whose
// servers are STRICT or DISABLE. Callers are proxyless clients with three
// identities, all on 127.0.0.1, which this meshd's cluster networks
// (10.0.0.0/8) leave outside the cluster.
func TestGRPCLinkerdPolicy(t *testing.T) {
	port := envoytest.FreePort(t)
	policyDir := t.TempDir()
	writeGRPCPolicies(t, policyDir, "STRICT", "")
	m := startMeshd(t, grpcPolicyCatalog(port), "--policy-dir", policyDir, "--default-inbound-policy", "deny", "--cluster-networks", "10.0.0.0/8")
	startProxylessServer(t, m, "greeter-1", port)
	callers := []grpcCaller{
		{name: "web", client: newCaller(t, m, "web", "web", "default", "web-1")},
		{name: "ops", client: newCaller(t, m, "ops", "ops", "default", "ops-1")},
		{name: "batch", client: newCaller(t, m, "batch", "batch", "batch", "batch-1")},
	}
	server := "apiVersion: policy.linkerd.io/v1beta3\nkind: Server\nmetadata: {name: greeter, namespace: default}\nspec:\n  podSelector: {matchLabels: {app: greeter}}\n" +
		fmt.Sprintf("  port: %d\n  proxyProtocol: gRPC\n", port)
	saz := func(name, client string) string {
		return "---\napiVersion: policy.linkerd.io/v1beta1\nkind: ServerAuthorization\nmetadata: {name: " + name + ", namespace: default}\nspec:\n  server: {name: greeter}\n  client:\n" + client
	}
	none, everyone := []string{}, []string{"web", "ops", "batch"}
	phases := []struct {
		name, mode, docs string
		allowed          []string
	}{
		{"no Linkerd document: meshd's --default-inbound-policy deny", "STRICT", "", none},
		{"namespace default all-unauthenticated", "STRICT", linkerdNamespace("default", "all-unauthenticated"), everyone},
		{"namespace default all-authenticated", "STRICT", linkerdNamespace("default", "all-authenticated"), everyone},
		{"namespace default cluster-authenticated: loopback is outside 10.0.0.0/8", "STRICT", linkerdNamespace("default", "cluster-authenticated"), none},
		{"namespace default cluster-unauthenticated: loopback is outside 10.0.0.0/8", "STRICT", linkerdNamespace("default", "cluster-unauthenticated"), none},
		{"namespace default deny", "STRICT", linkerdNamespace("default", "deny"), none},
		{"namespace default audit (gRPC does not audit; it admits)", "STRICT", linkerdNamespace("default", "audit"), everyone},
		{"DISABLE: all-authenticated admits no plaintext caller", "DISABLE", linkerdNamespace("default", "all-authenticated"), none},
		{"DISABLE: all-unauthenticated admits plaintext", "DISABLE", linkerdNamespace("default", "all-unauthenticated"), everyone},
		{"DISABLE: an unauthenticated ServerAuthorization from loopback", "DISABLE", server + saz("loopback", "    unauthenticated: true\n    networks: [{cidr: 127.0.0.0/8}]\n"), everyone},
		{"a Server without authorization", "STRICT", linkerdNamespace("default", "all-unauthenticated") + server, none},
		{"a service account, from loopback", "STRICT", server + saz("web", "    meshTLS: {serviceAccounts: [{name: web}]}\n    networks: [{cidr: 127.0.0.0/8}]\n"), []string{"web"}},
		{"a service account without networks: the cluster's, which loopback is not in", "STRICT", server + saz("web", "    meshTLS: {serviceAccounts: [{name: web}]}\n"), none},
		{"an AuthorizationPolicy with a MeshTLSAuthentication (identity and Namespace reference), port by name", "STRICT",
			strings.Replace(server, fmt.Sprintf("port: %d", port), "port: greeter", 1) + `---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: greeter-callers, namespace: default}
spec:
  targetRef: {group: policy.linkerd.io, kind: Server, name: greeter}
  requiredAuthenticationRefs: [{group: policy.linkerd.io, kind: MeshTLSAuthentication, name: callers}]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: MeshTLSAuthentication
metadata: {name: callers, namespace: default}
spec:
  identities: [ops.default.serviceaccount.identity.linkerd.cluster.local]
  identityRefs: [{kind: Namespace, name: batch}]
`, []string{"ops", "batch"}},
		{"any identity from loopback except 127.0.0.1", "STRICT", server + saz("not-me", "    meshTLS: {identities: ['*']}\n    networks: [{cidr: 127.0.0.0/8, except: [127.0.0.1]}]\n"), none},
		{"Istio and Linkerd together: both must allow", "STRICT", server + saz("ops-batch", "    meshTLS: {serviceAccounts: [{name: ops}, {name: batch, namespace: batch}]}\n    networks: [{cidr: 0.0.0.0/0}]\n") + `---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: greeter-allow, namespace: default}
spec:
  selector: {matchLabels: {app: greeter}}
  rules: [{from: [{source: {principals: ["cluster.local/ns/default/sa/web", "cluster.local/ns/default/sa/ops"]}}]}]
`, []string{"ops"}},
	}
	ctx := context.Background()
	verify := func(allowed []string) func() []string {
		return func() []string {
			var wrong []string
			for _, c := range callers {
				for _, method := range []string{"EmptyCall", "UnaryCall"} {
					err := invoke(ctx, c.client, method, nil)
					want := slices.Contains(allowed, c.name)
					if want && err != nil || !want && status.Code(err) != codes.PermissionDenied {
						wrong = append(wrong, fmt.Sprintf("%s %s: %v, want allowed=%v", c.name, method, err, want))
					}
				}
			}
			return wrong
		}
	}
	cases := 0
	for i, ph := range phases {
		writeGRPCPolicies(t, policyDir, ph.mode, ph.docs)
		phaseInForce(t, fmt.Sprintf("phase %d (%s)", i, ph.name), verify(ph.allowed))
		cases += 2 * len(callers)
	}
	t.Logf("%d cases over %d phases", cases, len(phases))

	// gRPC closes a server's connections when its listener changes; web's
	// calls reconnect under the new policy without failing.
	t.Run("policy changes fail none of web's allowed RPCs", func(t *testing.T) {
		writeGRPCPolicies(t, policyDir, "STRICT", phases[1].docs)
		phaseInForce(t, "phase 1", verify(phases[1].allowed))
		f := startFlow(5*time.Millisecond, func() error { return invoke(ctx, callers[0].client, "UnaryCall", nil) })
		for _, i := range []int{2, 6, 11, 1} {
			writeGRPCPolicies(t, policyDir, phases[i].mode, phases[i].docs)
			phaseInForce(t, fmt.Sprintf("phase %d (%s)", i, phases[i].name), verify(phases[i].allowed))
			f.waitMore(t, 10)
		}
		f.stop(t, 40)
	})

	t.Run("the endpoint label overrides the namespace default", func(t *testing.T) {
		writeGRPCPolicies(t, policyDir, "STRICT", linkerdNamespace("default", "all-unauthenticated"))
		eventually(t, 30*time.Second, func() error { return invoke(ctx, callers[0].client, "UnaryCall", nil) })
		m.writeCatalog(strings.Replace(grpcPolicyCatalog(port), "labels: {app: greeter}", "labels: {app: greeter, config.linkerd.io/default-inbound-policy: deny}", 1))
		eventually(t, 30*time.Second, func() error {
			for _, c := range callers {
				if err := invoke(ctx, c.client, "UnaryCall", nil); status.Code(err) != codes.PermissionDenied {
					return fmt.Errorf("%s: %v, want PermissionDenied", c.name, err)
				}
			}
			return nil
		})
		m.writeCatalog(grpcPolicyCatalog(port))
		eventually(t, 30*time.Second, func() error { return invoke(ctx, callers[0].client, "UnaryCall", nil) })
	})
}
