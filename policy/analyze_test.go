package policy

import (
	"strings"
	"testing"

	"github.com/meshd/meshd/mesh"
)

// testCatalog: web (http, sidecar), db (tcp, sidecar), hello (proxyless gRPC
// server) and client (client-only sidecar), all in namespace prod.
func testCatalog(t *testing.T) *mesh.Catalog {
	t.Helper()
	cat, err := mesh.NewCatalog([]mesh.Service{
		{Name: "web", Namespace: "prod", Protocol: mesh.ProtocolHTTP, Endpoints: []mesh.Endpoint{{Address: "10.0.0.1", Port: 15001, Labels: map[string]string{"app": "web"}}}},
		{Name: "db", Namespace: "prod", Protocol: mesh.ProtocolTCP, Endpoints: []mesh.Endpoint{{Address: "10.0.0.2", Port: 15001, Labels: map[string]string{"app": "db"}}}},
		{Name: "hello", Namespace: "prod", Protocol: mesh.ProtocolGRPC, Endpoints: []mesh.Endpoint{{Address: "10.0.0.3", Port: 50051, Labels: map[string]string{"app": "hello"}}}},
		{Name: "client", Namespace: "prod", Protocol: mesh.ProtocolHTTP},
	}, []mesh.Proxy{
		{Service: "web", Namespace: "prod", Address: "10.0.0.1", PublicPort: 15001, AppPort: 8080},
		{Service: "db", Namespace: "prod", Address: "10.0.0.2", PublicPort: 15001, AppPort: 5432},
		{Service: "hello", Namespace: "prod", Flavor: mesh.FlavorGRPC, Address: "10.0.0.3", PublicPort: 50051},
		{Service: "client", Namespace: "prod", Address: "10.0.0.4", Upstreams: []mesh.Upstream{{Service: "web", LocalPort: 9001}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return cat
}

// strictMesh makes every workload STRICT, so that findings about modes only
// appear where a test asks for them.
const strictMesh = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: mesh, namespace: meshd-system}\nspec: {mtls: {mode: STRICT}}\n---\n"

func analyzeYAML(t *testing.T, policy string, defaultMode mesh.MTLSMode) []string {
	t.Helper()
	peers, authzs, err := parseIstio("p.yaml", []byte(policy))
	if err != nil {
		t.Fatal(err)
	}
	ps := (&Policies{Peer: peers, Authorizations: authzs}).Set("", defaultMode)
	var out []string
	for _, f := range Analyze(AnalyzeInput{Catalog: testCatalog(t), CatalogPath: "catalog.yaml", Policy: ps}) {
		out = append(out, f.String())
	}
	return out
}

func authz(name, spec string) string {
	return "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: " + name + ", namespace: prod}\nspec:\n" + spec
}

func peer(name, spec string) string {
	return "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: " + name + ", namespace: prod}\nspec:\n" + spec
}

func TestAnalyze(t *testing.T) {
	for _, c := range []struct {
		name   string
		policy string
		mode   mesh.MTLSMode
		want   []string // exactly these findings, in this order
	}{
		{
			name: "clean",
			policy: strictMesh + authz("web", `  selector: {matchLabels: {app: web}}
  rules:
    - from: [{source: {principals: [cluster.local/ns/prod/sa/client], namespaces: [prod]}}]
      to: [{operation: {methods: [GET], paths: ["/api/*"]}}]
`),
		},
		{
			name:   "selector matches nothing",
			policy: strictMesh + authz("p", "  selector: {matchLabels: {app: nope, tier: x}}\n"),
			want:   []string{"warning: p.yaml:6: AuthorizationPolicy prod/p: spec.selector: matchLabels {app: nope, tier: x} select no workload in the catalog: no inbound proxy in namespace prod serves an endpoint with these labels"},
		},
		{
			name:   "namespace without workloads",
			policy: strictMesh + "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: staging}\n",
			want:   []string{"warning: p.yaml:6: AuthorizationPolicy staging/p: metadata.namespace: namespace staging has no workload (inbound proxy) in the catalog, so this policy applies to nothing"},
		},
		{
			name: "principals naming no identity",
			policy: strictMesh + authz("p", `  selector: {matchLabels: {app: web}}
  rules:
    - from: [{source: {principals: [cluster.local/ns/prod/sa/ghost, example.org/ns/prod/sa/client, "prod/client", "cluster.local/ns/prod/*"], notNamespaces: [qa]}}]
      when: [{key: source.principal, notValues: [cluster.local/ns/dev/sa/web]}]
`),
			want: []string{
				`warning: p.yaml:6: AuthorizationPolicy prod/p: spec.rules[0].from[0].source.notNamespaces[0]: namespace "qa" has no service in the catalog, so no caller comes from it`,
				`warning: p.yaml:6: AuthorizationPolicy prod/p: spec.rules[0].from[0].source.principals[0]: principal "cluster.local/ns/prod/sa/ghost" names an identity that does not exist: no service in the catalog runs as service account ghost in namespace prod`,
				`warning: p.yaml:6: AuthorizationPolicy prod/p: spec.rules[0].from[0].source.principals[1]: principal "example.org/ns/prod/sa/client" is in trust domain "example.org", but the mesh's is "cluster.local" (--trust-domain), so it matches no workload`,
				`warning: p.yaml:6: AuthorizationPolicy prod/p: spec.rules[0].from[0].source.principals[2]: principal "prod/client" is not of the form <trust-domain>/ns/<namespace>/sa/<service-account>, so it matches no meshd workload identity`,
				`warning: p.yaml:6: AuthorizationPolicy prod/p: spec.rules[0].when[0].notValues[0]: principal "cluster.local/ns/dev/sa/web" names an identity that does not exist: no service in the catalog runs as service account web in namespace dev`,
			},
		},
		{
			name:   "two policies at one level",
			policy: strictMesh + peer("b", "  selector: {matchLabels: {app: web}}\n  mtls: {mode: DISABLE}\n") + "---\n" + peer("a", "  selector: {matchLabels: {app: web}}\n  mtls: {mode: STRICT}\n"),
			want:   []string{"warning: p.yaml:6: PeerAuthentication prod/b: 2 workload-level (selector) PeerAuthentications (prod/a, prod/b) apply to web.prod: prod/a wins (the first by namespace/name) and this policy is ignored there; keep one policy per workload and level"},
		},
		{
			name:   "port-level mode for a port the workload does not have",
			policy: strictMesh + peer("web", "  selector: {matchLabels: {app: web}}\n  portLevelMtls:\n    15001: {mode: DISABLE}\n    8080: {mode: STRICT}\n"),
			want:   []string{"warning: p.yaml:6: PeerAuthentication prod/web: spec.portLevelMtls.15001: no workload this policy selects has port 15001, so this port-level mode applies to nothing (workload ports: web.prod: 8080); 15001 is the sidecar's publicPort of web.prod, but port-level modes name the application's port (appPort 8080)"},
		},
		{
			name: "plaintext bypass under PERMISSIVE",
			policy: peer("grpc", "  selector: {matchLabels: {app: hello}}\n  mtls: {mode: STRICT}\n") + "---\n" + authz("allow", `  rules:
    - from: [{source: {principals: [cluster.local/ns/prod/sa/client]}}]
    - from: [{source: {notNamespaces: [prod]}}]
`) + "---\n" + authz("deny", `  action: DENY
  rules:
    - from: [{source: {namespaces: [prod]}}]
    - from: [{source: {notPrincipals: [cluster.local/ns/prod/sa/client]}}]
`),
			mode: mesh.MTLSPermissive,
			want: []string{
				"warning: p.yaml:8: AuthorizationPolicy prod/allow: spec.rules[0].from[0].source.principals: the policy applies to db.prod (PERMISSIVE), web.prod (PERMISSIVE): plaintext callers have no identity, so such rules only work under STRICT; this rule never allows a plaintext caller",
				"warning: p.yaml:8: AuthorizationPolicy prod/allow: spec.rules[1].from[0].source.notNamespaces: the policy applies to db.prod (PERMISSIVE), web.prod (PERMISSIVE): plaintext callers have no identity, so such rules only work under STRICT; a plaintext caller matches this not-rule and is allowed",
				"warning: p.yaml:16: AuthorizationPolicy prod/deny: spec.rules[0].from[0].source.namespaces: the policy applies to db.prod (PERMISSIVE), web.prod (PERMISSIVE): plaintext callers have no identity, so such rules only work under STRICT; a caller this rule denies is not denied when it connects in plaintext",
			},
		},
		{
			name: "HTTP-only fields on a tcp service",
			policy: strictMesh + authz("allow-db", `  selector: {matchLabels: {app: db}}
  rules:
    - to: [{operation: {ports: ["5432"], paths: ["/x"]}}]
      when: [{key: "request.headers[x-a]", values: [b]}]
`) + "---\n" + authz("deny-db", `  selector: {matchLabels: {app: db}}
  action: DENY
  rules:
    - from: [{source: {ipBlocks: [10.9.0.0/16]}}]
      to: [{operation: {methods: [DELETE]}}]
`),
			want: []string{
				"warning: p.yaml:6: AuthorizationPolicy prod/allow-db: spec.rules[0].to[0].operation.paths: service db.prod (proxy db.prod) is tcp: an HTTP-only field never matches TCP traffic, so this ALLOW rule never matches there (Istio's behaviour)",
				"warning: p.yaml:6: AuthorizationPolicy prod/allow-db: spec.rules[0].when[0]: service db.prod (proxy db.prod) is tcp: an HTTP-only field never matches TCP traffic, so this ALLOW rule never matches there (Istio's behaviour)",
				"warning: p.yaml:15: AuthorizationPolicy prod/deny-db: spec.rules[0].to[0].operation.methods: service db.prod (proxy db.prod) is tcp: HTTP-only fields are ignored there and this DENY rule keeps only its TCP fields, so it matches more connections than on HTTP (Istio's behaviour)",
			},
		},
		{
			name: "gRPC methods",
			policy: strictMesh + authz("hello", `  selector: {matchLabels: {app: hello}}
  rules:
    - to: [{operation: {methods: [GET, POST]}}]
`),
			want: []string{`warning: p.yaml:6: AuthorizationPolicy prod/hello: spec.rules[0].to[0].operation.methods: every request to gRPC service hello.prod is a POST, so method "GET" never matches; match gRPC methods with paths (/package.Service/Method)`},
		},
		{
			name: "gRPC server PERMISSIVE by default",
			mode: mesh.MTLSPermissive,
			policy: peer("web", "  selector: {matchLabels: {app: web}}\n  mtls: {mode: STRICT}\n") + "---\n" +
				peer("db", "  selector: {matchLabels: {app: db}}\n  mtls: {mode: DISABLE}\n"),
			want: []string{"error: catalog.yaml: proxy hello.prod: proxy hello.prod is a proxyless gRPC server and its effective mTLS mode is PERMISSIVE: gRPC servers support STRICT and DISABLE only; PERMISSIVE is the mesh default here (meshd --mtls-mode): make the default STRICT or select the server with a PeerAuthentication in mode STRICT"},
		},
		{
			name:   "gRPC server PERMISSIVE by policy",
			mode:   mesh.MTLSStrict,
			policy: peer("hello", "  selector: {matchLabels: {app: hello}}\n  mtls: {mode: STRICT}\n  portLevelMtls:\n    50051: {mode: PERMISSIVE}\n"),
			want:   []string{"error: p.yaml:1: PeerAuthentication prod/hello: spec.portLevelMtls.50051.mode: proxy hello.prod is a proxyless gRPC server and its effective mTLS mode is PERMISSIVE: gRPC servers support STRICT and DISABLE only; use STRICT (or DISABLE) for it"},
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := analyzeYAML(t, c.policy, c.mode)
			if strings.Join(got, "\n") != strings.Join(c.want, "\n") {
				t.Errorf("findings:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(c.want, "\n"))
			}
		})
	}
}

func TestAnalyzeWithoutCatalog(t *testing.T) {
	peers, authzs, err := parseIstio("p.yaml", []byte(authz("p", "  rules:\n    - from: [{source: {principals: [other.domain/ns/a/sa/b, cluster.local/ns/x/sa/y]}}]\n")))
	if err != nil {
		t.Fatal(err)
	}
	got := Analyze(AnalyzeInput{Policy: (&Policies{Peer: peers, Authorizations: authzs}).Set("", "")})
	if len(got) != 1 || !strings.Contains(got[0].String(), `principal "other.domain/ns/a/sa/b" is in trust domain "other.domain"`) {
		t.Errorf("without a catalog only the trust domain can be checked; got %v", got)
	}
}

// TestDecideMatchesMTLSModeFor keeps decide (which also says which policy
// decided) in step with mesh.PolicySet.MTLSModeFor over every combination of
// levels, modes and port modes.
func TestDecideMatchesMTLSModeFor(t *testing.T) {
	modes := []mesh.MTLSMode{mesh.MTLSUnset, mesh.MTLSStrict, mesh.MTLSPermissive, mesh.MTLSDisable}
	w := mesh.Workload{Namespace: "prod", Labels: map[string]string{"app": "web"}, Port: 8080}
	n := 0
	for _, defaultMode := range append(modes, "") {
		for _, meshMode := range modes {
			for _, nsMode := range modes {
				for _, wlMode := range modes {
					for _, portMode := range append(modes, "") {
						ps := &mesh.PolicySet{RootNamespace: "root", DefaultMode: defaultMode, Peer: []mesh.PeerAuthentication{
							{Name: "mesh", Namespace: "root", Mode: meshMode},
							{Name: "ns", Namespace: "prod", Mode: nsMode},
							{Name: "z-ignored", Namespace: "prod", Mode: mesh.MTLSDisable},
							{Name: "wl", Namespace: "prod", Selector: map[string]string{"app": "web"}, Mode: wlMode},
							{Name: "other", Namespace: "prod", Selector: map[string]string{"app": "db"}, Mode: mesh.MTLSDisable},
							{Name: "root-selector", Namespace: "root", Selector: map[string]string{"app": "web"}, Mode: mesh.MTLSDisable},
						}}
						if portMode != "" {
							ps.Peer[3].PortModes = map[uint32]mesh.MTLSMode{8080: portMode, 9090: mesh.MTLSDisable}
						}
						got, _, _ := decide(ps, w)
						if want := ps.MTLSModeFor(w); got != want {
							t.Fatalf("default %q mesh %q ns %q workload %q port %q: decide says %q, MTLSModeFor %q", defaultMode, meshMode, nsMode, wlMode, portMode, got, want)
						}
						n++
					}
				}
			}
		}
	}
	if n != 5*4*4*4*5 {
		t.Fatalf("ran %d combinations", n)
	}
}
