package policy

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/meshd/meshd/internal/inputfile"
	"github.com/meshd/meshd/mesh"
)

// analyzeLinkerd loads policy as meshd does (references resolved) and
// analyzes it against testCatalog.
func analyzeLinkerd(t *testing.T, policy string, defaultMode mesh.MTLSMode, inbound mesh.DefaultInboundPolicy) []string {
	t.Helper()
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"p.yaml": policy})
	path := filepath.Join(dir, "p.yaml")
	p, err := LoadFiles([]string{path}, inputfile.DefaultMaxSize)
	if err != nil {
		t.Fatal(err)
	}
	ps := p.SetWith(Settings{DefaultMode: defaultMode, DefaultInboundPolicy: inbound})
	var out []string
	for _, f := range Analyze(AnalyzeInput{Catalog: testCatalog(t), CatalogPath: "catalog.yaml", Policy: ps, Policies: p}) {
		out = append(out, strings.ReplaceAll(f.String(), path, "p.yaml"))
	}
	return out
}

func server(name, spec string) string {
	return "apiVersion: policy.linkerd.io/v1beta3\nkind: Server\nmetadata: {name: " + name + ", namespace: prod}\nspec:\n" + spec
}

func TestAnalyzeLinkerd(t *testing.T) {
	for _, c := range []struct {
		name    string
		policy  string
		mode    mesh.MTLSMode
		inbound mesh.DefaultInboundPolicy
		want    []string
	}{
		{"clean: a Server and its authorization", server("web", "  podSelector: {matchLabels: {app: web}}\n  port: 8080\n  proxyProtocol: HTTP/1\n") +
			"---\napiVersion: policy.linkerd.io/v1beta1\nkind: ServerAuthorization\nmetadata: {name: web, namespace: prod}\nspec:\n  server: {name: web}\n  client: {meshTLS: {serviceAccounts: [{name: client}]}}\n",
			mesh.MTLSStrict, "", nil},
		{"Server selects nothing: public port given", server("web", "  podSelector: {matchLabels: {app: web}}\n  port: 15001\n"), mesh.MTLSStrict, "",
			[]string{"warning: p.yaml:1: Server prod/web: spec: the Server selects no workload: the workloads its podSelector matches have another port than 15001 (web.prod: port 8080, service web); 15001 is the sidecar's publicPort of web.prod, but a Server names the application's port (appPort 8080)"}},
		{"Server selects nothing: no labels match", server("web", "  podSelector: {matchLabels: {app: nope}}\n  port: 8080\n"), mesh.MTLSStrict, "",
			[]string{"warning: p.yaml:1: Server prod/web: spec: the Server selects no workload: no inbound proxy in namespace prod matches its podSelector and port"}},
		{"two Servers for one port; proxyProtocol disagrees", server("b-web", "  podSelector: {matchLabels: {app: web}}\n  port: web\n  proxyProtocol: gRPC\n") +
			"---\n" + server("a-web", "  podSelector: {}\n  port: 8080\n"), mesh.MTLSStrict, "",
			[]string{
				"warning: p.yaml:1: Server prod/b-web: spec.podSelector: several Servers select the port of web.prod: Server prod/a-web (the first by name) decides it and this Server is ignored there; keep one Server per workload port",
				"warning: p.yaml:1: Server prod/b-web: spec.proxyProtocol: proxyProtocol gRPC does not match the catalog's protocol of web.prod (http): meshd takes the protocol from the catalog, and proxyProtocol changes nothing",
			}},
		{"authorizations reaching no Server; identities naming nobody", server("web", "  podSelector: {matchLabels: {app: web}}\n  port: 8080\n") +
			"---\napiVersion: policy.linkerd.io/v1beta1\nkind: ServerAuthorization\nmetadata: {name: typo, namespace: prod}\nspec:\n  server: {name: wbe}\n  client:\n    meshTLS:\n      identities: [ghost.prod.serviceaccount.identity.linkerd.cluster.local, web.prod.serviceaccount.identity.linkerd.other.domain]\n" +
			"---\napiVersion: policy.linkerd.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: ns, namespace: empty}\nspec:\n  targetRef: {kind: Namespace, name: empty}\n  requiredAuthenticationRefs: [{kind: ServiceAccount, name: web, namespace: nowhere}]\n" +
			"---\napiVersion: policy.linkerd.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: gone, namespace: prod}\nspec:\n  targetRef: {group: policy.linkerd.io, kind: Server, name: gone}\n  requiredAuthenticationRefs: []\n",
			mesh.MTLSStrict, "",
			[]string{
				"warning: p.yaml:8: ServerAuthorization prod/typo: spec.client.meshTLS.identities[0]: identity cluster.local/ns/prod/sa/ghost names no workload: no service in the catalog runs as service account ghost in namespace prod",
				"warning: p.yaml:8: ServerAuthorization prod/typo: spec.client.meshTLS.identities[1]: identity in trust domain \"other.domain\", but the mesh's is \"cluster.local\" (meshd --trust-domain; Linkerd's identity trust domain is meshd's), so it matches no workload",
				"warning: p.yaml:8: ServerAuthorization prod/typo: spec.server.name: there is no Server prod/wbe, so this authorization admits nobody anywhere",
				"warning: p.yaml:17: AuthorizationPolicy.policy.linkerd.io empty/ns: spec.requiredAuthenticationRefs[0]: identity cluster.local/ns/nowhere/sa/web names no workload: no service in the catalog runs as service account web in namespace nowhere",
				"warning: p.yaml:17: AuthorizationPolicy.policy.linkerd.io empty/ns: spec.targetRef: namespace empty has no Server: a policy targeting a Namespace applies to its Servers only, and ports no Server selects follow the default inbound policy",
				"warning: p.yaml:24: AuthorizationPolicy.policy.linkerd.io prod/gone: spec.targetRef.name: there is no Server prod/gone, so this policy applies to nothing",
			}},
		{"Istio and Linkerd on one workload", server("web", "  podSelector: {matchLabels: {app: web}}\n  port: 8080\n") + "---\n" + authz("web", "  selector: {matchLabels: {app: web}}\n  rules: [{}]\n"),
			mesh.MTLSStrict, "",
			[]string{"warning: catalog.yaml: proxy web.prod: Istio (or Consul) authorization (prod/web) and Linkerd's Server prod/web both apply: a request must be allowed by both (docs/policy.md, \"Istio and Linkerd on one workload\")"}},
		{"Istio and a default inbound policy on one workload", authz("db", "  selector: {matchLabels: {app: db}}\n  rules: [{}]\n"), mesh.MTLSStrict, mesh.DefaultAllAuthenticated,
			[]string{"warning: catalog.yaml: proxy db.prod: Istio (or Consul) authorization (prod/db) and Linkerd's default inbound policy all-authenticated both apply: a request must be allowed by both (docs/policy.md, \"Istio and Linkerd on one workload\")"}},
		{"unauthenticated clients on a STRICT workload", server("web", "  podSelector: {matchLabels: {app: web}}\n  port: 8080\n") +
			"---\napiVersion: policy.linkerd.io/v1beta1\nkind: ServerAuthorization\nmetadata: {name: probes, namespace: prod}\nspec:\n  server: {name: web}\n  client: {unauthenticated: true}\n",
			mesh.MTLSStrict, "",
			[]string{"warning: p.yaml:8: ServerAuthorization prod/probes: admits unauthenticated (plaintext) clients, but meshd refuses plaintext before authorization on STRICT workloads, so only mTLS clients get in (make them PERMISSIVE with a PeerAuthentication to admit plaintext, as Linkerd's proxies do): web.prod (Server prod/web)"}},
		{"identities on a DISABLE workload", server("web", "  podSelector: {matchLabels: {app: web}}\n  port: 8080\n") +
			"---\napiVersion: policy.linkerd.io/v1beta1\nkind: ServerAuthorization\nmetadata: {name: ids, namespace: prod}\nspec:\n  server: {name: web}\n  client: {meshTLS: {identities: ['*']}}\n" +
			"---\n" + peer("web", "  selector: {matchLabels: {app: web}}\n  mtls: {mode: DISABLE}\n"),
			mesh.MTLSStrict, "",
			[]string{"warning: p.yaml:8: ServerAuthorization prod/ids: admits only clients with a mesh identity, but every caller of a DISABLE workload arrives in plaintext, without an identity, so it admits nobody on: web.prod (Server prod/web)"}},
		{"a namespace default on DISABLE", "apiVersion: v1\nkind: Namespace\nmetadata: {name: prod, annotations: {config.linkerd.io/default-inbound-policy: cluster-authenticated}}\n",
			mesh.MTLSDisable, "",
			[]string{"warning: p.yaml:1: Namespace prod: admits only clients with a mesh identity, but every caller of a DISABLE workload arrives in plaintext, without an identity, so it admits nobody on: db.prod (default inbound policy cluster-authenticated), hello.prod (default inbound policy cluster-authenticated), web.prod (default inbound policy cluster-authenticated)"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			mine := analyzeLinkerd(t, c.policy, c.mode, c.inbound)
			slices.Sort(mine)
			want := slices.Clone(c.want)
			slices.Sort(want)
			if !slices.Equal(mine, want) {
				t.Errorf("findings:\n  %s\nwant:\n  %s", strings.Join(mine, "\n  "), strings.Join(want, "\n  "))
			}
		})
	}
}
