package policy

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/meshd/meshd/internal/inputfile"
	"github.com/meshd/meshd/mesh"
)

// everyField uses every accepted field once, in two documents of each kind.
const everyField = `# leading comment
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: api-mtls
  namespace: prod
  labels: {team: a}
  annotations: {note: x}
spec:
  selector:
    matchLabels:
      app: api
      version: v1
  mtls:
    mode: STRICT
  portLevelMtls:
    8080:
      mode: PERMISSIVE
    "9090":
      mode: DISABLE
    9091: {}
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata:
  name: mesh
  namespace: meshd-system
spec:
  mtls: {mode: UNSET}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: api-allow
  namespace: prod
spec:
  selector:
    matchLabels: {app: api}
  action: ALLOW
  rules:
    - from:
        - source:
            principals: ["cluster.local/ns/prod/sa/web", "*/sa/admin"]
            notPrincipals: ["cluster.local/ns/prod/sa/evil"]
            namespaces: ["prod", "dev-*"]
            notNamespaces: ["test"]
            ipBlocks: ["10.0.0.0/8", "192.168.1.1"]
            notIpBlocks: ["10.1.0.0/16"]
            remoteIpBlocks: ["203.0.113.0/24"]
            notRemoteIpBlocks: ["203.0.113.7", "2001:db8::/32"]
        - source:
            namespaces: [ops]
      to:
        - operation:
            hosts: ["api.example.com", "*.example.org"]
            notHosts: ["admin.example.com"]
            ports: ["8080", 9090]
            notPorts: ["9999"]
            methods: ["GET", "HEAD"]
            notMethods: ["DELETE"]
            paths: ["/api/*", "*.json", "/exact", "*"]
            notPaths: ["/api/admin*"]
      when:
        - key: request.headers[x-user]
          values: ["alice", "bob*"]
        - key: source.ip
          notValues: ["10.9.0.0/16"]
        - key: source.namespace
          values: ["prod"]
        - key: source.principal
          values: ["cluster.local/ns/prod/sa/web"]
        - key: destination.port
          values: ["8080"]
        - key: connection.sni
          values: ["*.svc"]
    - {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-all
spec:
  action: DENY
  rules:
    - to:
        - operation: {paths: ["/private"]}
---
---
`

func TestParseEveryField(t *testing.T) {
	peers, authzs, err := parseIstio("p.yaml", []byte(everyField))
	if err != nil {
		t.Fatal(err)
	}
	wantPeers := []mesh.PeerAuthentication{
		{
			Name: "api-mtls", Namespace: "prod", Source: "p.yaml:2",
			Selector:  map[string]string{"app": "api", "version": "v1"},
			Mode:      mesh.MTLSStrict,
			PortModes: map[uint32]mesh.MTLSMode{8080: mesh.MTLSPermissive, 9090: mesh.MTLSDisable, 9091: mesh.MTLSUnset},
		},
		{Name: "mesh", Namespace: "meshd-system", Source: "p.yaml:23", Mode: mesh.MTLSUnset},
	}
	wantAuthz := []mesh.AuthorizationPolicy{
		{
			Name: "api-allow", Namespace: "prod", Source: "p.yaml:31",
			Selector: map[string]string{"app": "api"},
			Action:   mesh.ActionAllow,
			Rules: []mesh.Rule{
				{
					From: []mesh.Source{
						{
							Principals:        []string{"cluster.local/ns/prod/sa/web", "*/sa/admin"},
							NotPrincipals:     []string{"cluster.local/ns/prod/sa/evil"},
							Namespaces:        []string{"prod", "dev-*"},
							NotNamespaces:     []string{"test"},
							IPBlocks:          []string{"10.0.0.0/8", "192.168.1.1"},
							NotIPBlocks:       []string{"10.1.0.0/16"},
							RemoteIPBlocks:    []string{"203.0.113.0/24"},
							NotRemoteIPBlocks: []string{"203.0.113.7", "2001:db8::/32"},
						},
						{Namespaces: []string{"ops"}},
					},
					To: []mesh.Operation{{
						Hosts:      []string{"api.example.com", "*.example.org"},
						NotHosts:   []string{"admin.example.com"},
						Ports:      []uint32{8080, 9090},
						NotPorts:   []uint32{9999},
						Methods:    []string{"GET", "HEAD"},
						NotMethods: []string{"DELETE"},
						Paths:      []string{"/api/*", "*.json", "/exact", "*"},
						NotPaths:   []string{"/api/admin*"},
					}},
					When: []mesh.Condition{
						{Key: "request.headers[x-user]", Values: []string{"alice", "bob*"}},
						{Key: "source.ip", NotValues: []string{"10.9.0.0/16"}},
						{Key: "source.namespace", Values: []string{"prod"}},
						{Key: "source.principal", Values: []string{"cluster.local/ns/prod/sa/web"}},
						{Key: "destination.port", Values: []string{"8080"}},
						{Key: "connection.sni", Values: []string{"*.svc"}},
					},
				},
				{},
			},
		},
		{
			Name: "deny-all", Namespace: "default", Source: "p.yaml:78", Action: mesh.ActionDeny,
			Rules: []mesh.Rule{{To: []mesh.Operation{{Paths: []string{"/private"}}}}},
		},
	}
	if !reflect.DeepEqual(peers, wantPeers) {
		t.Errorf("peer authentications:\n got %+v\nwant %+v", peers, wantPeers)
	}
	if !reflect.DeepEqual(authzs, wantAuthz) {
		t.Errorf("authorization policies:\n got %+v\nwant %+v", authzs, wantAuthz)
	}
}

func TestParseDefaults(t *testing.T) {
	in := `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-everything, namespace: shop}
spec: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-spec}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-everything}
spec:
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: ns}
---
defaults: &d {mode: STRICT}
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: merged, namespace: shop}
spec:
  mtls:
    <<: *d
`
	// The last document's "defaults" key is unknown: check the error, then
	// parse without it.
	if _, _, err := parseIstio("d.yaml", []byte(in)); err == nil || !strings.Contains(err.Error(), `d.yaml:20: PeerAuthentication shop/merged: defaults: unknown field "defaults" in a policy document`) {
		t.Fatalf("want the unknown defaults field reported, got %v", err)
	}
	in = strings.Replace(in, "defaults: &d {mode: STRICT}\n", "", 1)
	in = strings.Replace(in, "  mtls:\n    <<: *d\n", "  mtls: &d {mode: STRICT}\n  portLevelMtls: null\n", 1)
	peers, authzs, err := parseIstio("d.yaml", []byte(in))
	if err != nil {
		t.Fatal(err)
	}
	wantAuthz := []mesh.AuthorizationPolicy{
		{Name: "deny-everything", Namespace: "shop", Action: mesh.ActionAllow, Source: "d.yaml:1"},
		{Name: "no-spec", Namespace: "default", Action: mesh.ActionAllow, Source: "d.yaml:6"},
		{Name: "allow-everything", Namespace: "default", Action: mesh.ActionAllow, Rules: []mesh.Rule{{}}, Source: "d.yaml:10"},
	}
	wantPeers := []mesh.PeerAuthentication{
		{Name: "ns", Namespace: "default", Mode: mesh.MTLSUnset, Source: "d.yaml:16"},
		{Name: "merged", Namespace: "shop", Mode: mesh.MTLSStrict, Source: "d.yaml:20"},
	}
	if !reflect.DeepEqual(authzs, wantAuthz) {
		t.Errorf("authorization policies:\n got %+v\nwant %+v", authzs, wantAuthz)
	}
	if !reflect.DeepEqual(peers, wantPeers) {
		t.Errorf("peer authentications:\n got %+v\nwant %+v", peers, wantPeers)
	}
}

func TestParseMergeKey(t *testing.T) {
	in := `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: merge}
spec:
  rules:
    - from:
        - source: &src {namespaces: [prod], principals: [cluster.local/ns/prod/sa/a]}
    - from:
        - source:
            <<: *src
            namespaces: [dev]
`
	_, authzs, err := parseIstio("m.yaml", []byte(in))
	if err != nil {
		t.Fatal(err)
	}
	got := authzs[0].Rules[1].From[0]
	want := mesh.Source{Namespaces: []string{"dev"}, Principals: []string{"cluster.local/ns/prod/sa/a"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("merged source: got %+v, want %+v (explicit keys win over merged ones)", got, want)
	}
}

const header = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: ns}\n"
const peerHeader = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: pa, namespace: ns}\n"

func TestParseErrors(t *testing.T) {
	for _, c := range []struct {
		name        string
		in          string
		want        []string
		unsupported bool
	}{
		{"syntax", "kind: [\n", []string{"x.yaml:1: YAML syntax error:"}, false},
		{"tabs", "kind: x\n\tspec: {}\n", []string{"x.yaml:2: YAML syntax error:", "indent with spaces"}, false},
		{"empty file", "# nothing\n---\n", []string{"x.yaml: file holds no policy: delete the file to remove its policies"}, false},
		{"not a mapping", "- a\n", []string{"x.yaml:1: document 1: want a policy document (a mapping of field: value), got a list"}, false},
		{"missing kind", "apiVersion: security.istio.io/v1\nmetadata: {name: a}\n", []string{"x.yaml:1: document 1: kind: kind is required: use PeerAuthentication, AuthorizationPolicy, Server, ServerAuthorization, MeshTLSAuthentication, NetworkAuthentication, Namespace"}, false},
		{"unknown kind", "apiVersion: security.istio.io/v1\nkind: AuthorisationPolicy\nmetadata: {name: a}\n", []string{`x.yaml:2: document 1: kind: unknown kind "AuthorisationPolicy"; did you mean "AuthorizationPolicy"?`}, false},
		{"request authentication", "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: a}\n", []string{`x.yaml:2: document 1: kind: kind "RequestAuthentication" is not supported (JWT request authentication is not supported)`}, true},
		{"api version", "apiVersion: security.istio.io/v1alpha1\nkind: PeerAuthentication\nmetadata: {name: a}\n", []string{`x.yaml:1: PeerAuthentication default/a: apiVersion: apiVersion "security.istio.io/v1alpha1" is not supported for kind PeerAuthentication: use security.istio.io/v1 or security.istio.io/v1beta1`}, false},
		{"missing api version", "kind: PeerAuthentication\nmetadata: {name: a}\n", []string{"x.yaml:1: PeerAuthentication default/a: apiVersion: apiVersion is required"}, false},
		{"missing name", "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {namespace: a}\n", []string{"x.yaml:3: document 1: metadata.name: name is required"}, false},
		{"missing metadata", "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n", []string{"x.yaml:1: document 1: metadata: metadata is required"}, false},
		{"bad name", "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: Bad_Name}\n", []string{`x.yaml:3: PeerAuthentication default/Bad_Name: metadata.name: "Bad_Name" is not a valid name`}, false},
		{"bad namespace", "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: a, namespace: Prod}\n", []string{`x.yaml:3: PeerAuthentication Prod/a: metadata.namespace: "Prod" is not a valid name`}, false},
		{"unknown metadata field", "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: a, namespce: b}\n", []string{`x.yaml:3: PeerAuthentication default/a: metadata.namespce: unknown field "namespce" in metadata; did you mean "namespace"?`}, false},
		{"status", peerHeader + "status: {}\n", []string{"x.yaml:4: PeerAuthentication ns/pa: status: status is written by the cluster's controllers, not by users: remove it"}, false},
		{"second document named", peerHeader + "spec: {mtls: {mode: STRICT}}\n---\n" + header + "spec: {action: ALOW}\n", []string{`x.yaml:9: AuthorizationPolicy ns/p: spec.action: unknown action "ALOW": use ALLOW (the default), DENY or AUDIT; did you mean "ALLOW"?`}, false},
		{"second document unnamed", peerHeader + "---\nkind: PeerAuthentication\n", []string{"x.yaml:5: document 2: apiVersion: apiVersion is required", "x.yaml:5: document 2: metadata: metadata is required"}, false},
		{"duplicate key", peerHeader + "spec:\n  mtls: {mode: STRICT}\n  mtls: {mode: DISABLE}\n", []string{`x.yaml:6: PeerAuthentication ns/pa: spec.mtls: field "mtls" appears twice in a PeerAuthentication spec (first at line 5): keep one`}, false},
		{"duplicate policy in file", peerHeader + "---\n" + peerHeader, []string{"x.yaml:5: PeerAuthentication ns/pa: defined twice, at x.yaml:1 and at x.yaml:5: rename or remove one"}, false},
		// PeerAuthentication
		{"mode lowercase", peerHeader + "spec: {mtls: {mode: strict}}\n", []string{`x.yaml:4: PeerAuthentication ns/pa: spec.mtls.mode: unknown mode "strict": use STRICT, PERMISSIVE, DISABLE or UNSET; did you mean "STRICT"?`}, false},
		{"mode number", peerHeader + "spec: {mtls: {mode: 1}}\n", []string{`spec.mtls.mode: want a string, got the number 1 (quote it: "1")`}, false},
		{"unknown peer field", peerHeader + "spec: {mtls: {mode: STRICT}, portLevelMTLS: {}}\n", []string{`x.yaml:4: PeerAuthentication ns/pa: spec.portLevelMTLS: unknown field "portLevelMTLS" in a PeerAuthentication spec; did you mean "portLevelMtls"?`}, false},
		{"port level without selector", peerHeader + "spec:\n  portLevelMtls:\n    8080: {mode: STRICT}\n", []string{"x.yaml:5: PeerAuthentication ns/pa: spec.portLevelMtls: portLevelMtls needs a selector"}, false},
		{"port level bad port", peerHeader + "spec:\n  selector: {matchLabels: {app: a}}\n  portLevelMtls:\n    0: {mode: STRICT}\n    http: {mode: STRICT}\n", []string{`x.yaml:7: PeerAuthentication ns/pa: spec.portLevelMtls.0: "0" is not a port: use a number from 1 to 65535`, `x.yaml:8: PeerAuthentication ns/pa: spec.portLevelMtls.http: "http" is not a port`}, false},
		{"port level bad mode", peerHeader + "spec:\n  selector: {matchLabels: {app: a}}\n  portLevelMtls:\n    80: {mode: OPTIONAL}\n", []string{`x.yaml:7: PeerAuthentication ns/pa: spec.portLevelMtls.80.mode: unknown mode "OPTIONAL"`}, false},
		{"empty selector", peerHeader + "spec:\n  selector: {}\n", []string{"x.yaml:5: PeerAuthentication ns/pa: spec.selector: the selector has no matchLabels: remove selector"}, false},
		{"empty match labels", peerHeader + "spec:\n  selector: {matchLabels: {}}\n", []string{"spec.selector: the selector has no matchLabels"}, false},
		{"match expressions", peerHeader + "spec:\n  selector: {matchLabels: {a: b}, matchExpressions: []}\n", []string{`x.yaml:5: PeerAuthentication ns/pa: spec.selector.matchExpressions: unknown field "matchExpressions" in selector; accepted: matchLabels`}, false},
		{"label wildcard", peerHeader + "spec:\n  selector: {matchLabels: {app: \"web*\"}}\n", []string{"spec.selector.matchLabels.app: wildcards are not supported in selectors"}, false},
		{"label number", peerHeader + "spec:\n  selector: {matchLabels: {version: 2}}\n", []string{`x.yaml:5: PeerAuthentication ns/pa: spec.selector.matchLabels.version: want a string, got the number 2 (quote it: "2")`}, false},
		// AuthorizationPolicy: spec
		{"custom", header + "spec: {action: CUSTOM, provider: {name: ext}}\n", []string{"x.yaml:4: AuthorizationPolicy ns/p: spec.action: CUSTOM (external authorization) is not supported", "x.yaml:4: AuthorizationPolicy ns/p: spec.provider: provider is only used by the CUSTOM action"}, true},
		{"target ref", header + "spec:\n  targetRef: {kind: Gateway, name: g}\n", []string{"x.yaml:5: AuthorizationPolicy ns/p: spec.targetRef: targetRef (Gateway API policy attachment) is not supported"}, true},
		{"target refs", header + "spec:\n  targetRefs: []\n", []string{"spec.targetRefs: targetRefs (Gateway API policy attachment) are not supported"}, true},
		{"rules not a list", header + "spec:\n  rules: {from: []}\n", []string{"x.yaml:5: AuthorizationPolicy ns/p: spec.rules: want a list of rules, got a mapping"}, false},
		{"null rule", header + "spec:\n  rules:\n    -\n", []string{"x.yaml:6: AuthorizationPolicy ns/p: spec.rules[0]: empty list item: write {} for a rule that matches every request"}, false},
		{"alias bomb", header + "x0: &a0 [\"1\",\"1\",\"1\",\"1\",\"1\",\"1\",\"1\",\"1\",\"1\",\"1\"]\n" +
			"x1: &a1 [*a0,*a0,*a0,*a0,*a0,*a0,*a0,*a0,*a0,*a0]\n" +
			"spec:\n  rules:\n    - to: &to [{operation: {ports: *a0}},{operation: {ports: *a0}},{operation: {ports: *a0}},{operation: {ports: *a0}},{operation: {ports: *a0}},{operation: {ports: *a0}},{operation: {ports: *a0}},{operation: {ports: *a0}},{operation: {ports: *a0}},{operation: {ports: *a0}}]\n" +
			strings.Repeat("    - {to: *to}\n", 2000), []string{"the document holds more than 100000 values once aliases are expanded"}, false},
		{"unknown rule field", header + "spec:\n  rules:\n    - form: []\n", []string{`x.yaml:6: AuthorizationPolicy ns/p: spec.rules[0].form: unknown field "form" in a rule; did you mean "from"?`}, false},
		// from
		{"request principals", header + "spec:\n  rules:\n    - from:\n        - source: {requestPrincipals: [\"*\"]}\n", []string{"x.yaml:7: AuthorizationPolicy ns/p: spec.rules[0].from[0].source.requestPrincipals: JWT request authentication is not supported"}, true},
		{"not request principals", header + "spec:\n  rules:\n    - from:\n        - source: {notRequestPrincipals: [\"*\"]}\n", []string{"spec.rules[0].from[0].source.notRequestPrincipals: JWT request authentication is not supported"}, true},
		{"from without source", header + "spec:\n  rules:\n    - from:\n        - {}\n", []string{"x.yaml:7: AuthorizationPolicy ns/p: spec.rules[0].from[0]: from entry without source"}, false},
		{"empty source", header + "spec:\n  rules:\n    - from:\n        - source: {principals: []}\n", []string{"x.yaml:7: AuthorizationPolicy ns/p: spec.rules[0].from[0].source: the source is empty"}, false},
		{"misspelt source field", header + "spec:\n  rules:\n    - from:\n        - source: {ipblocks: [10.0.0.1]}\n", []string{`spec.rules[0].from[0].source.ipblocks: unknown field "ipblocks" in a source; did you mean "ipBlocks"?`}, false},
		{"principal spiffe", header + "spec:\n  rules:\n    - from:\n        - source:\n            principals: [\"spiffe://cluster.local/ns/a/sa/b\"]\n", []string{`x.yaml:8: AuthorizationPolicy ns/p: spec.rules[0].from[0].source.principals[0]: "spiffe://cluster.local/ns/a/sa/b": write principals without spiffe://`}, false},
		{"principal empty", header + "spec:\n  rules:\n    - from:\n        - source: {principals: [\"\"]}\n", []string{"spec.rules[0].from[0].source.principals[0]: empty value"}, false},
		{"principal middle wildcard", header + "spec:\n  rules:\n    - from:\n        - source: {principals: [\"cluster.local/*/sa/b\"]}\n", []string{`spec.rules[0].from[0].source.principals[0]: "cluster.local/*/sa/b": "*" may only be`}, false},
		{"principals not a list", header + "spec:\n  rules:\n    - from:\n        - source: {principals: cluster.local/ns/a/sa/b}\n", []string{"spec.rules[0].from[0].source.principals: want a list of strings, got the string"}, false},
		{"namespace invalid", header + "spec:\n  rules:\n    - from:\n        - source: {namespaces: [Prod]}\n", []string{`spec.rules[0].from[0].source.namespaces[0]: namespace "Prod" is not a valid name`}, false},
		{"ip block", header + "spec:\n  rules:\n    - from:\n        - source: {ipBlocks: [10.0.0.0/33], notRemoteIpBlocks: [host]}\n", []string{`spec.rules[0].from[0].source.ipBlocks[0]: "10.0.0.0/33" is not an IP address or CIDR block`, `spec.rules[0].from[0].source.notRemoteIpBlocks[0]: "host" is not an IP address`}, false},
		// to
		{"to without operation", header + "spec:\n  rules:\n    - to: [{}]\n", []string{"x.yaml:6: AuthorizationPolicy ns/p: spec.rules[0].to[0]: to entry without operation"}, false},
		{"empty operation", header + "spec:\n  rules:\n    - to: [{operation: {}}]\n", []string{"spec.rules[0].to[0].operation: the operation is empty"}, false},
		{"port range", header + "spec:\n  rules:\n    - to: [{operation: {ports: [\"0\", \"70000\", \"80-90\"]}}]\n", []string{`spec.rules[0].to[0].operation.ports[0]: "0" is not a port`, `spec.rules[0].to[0].operation.ports[1]: "70000" is not a port`, `spec.rules[0].to[0].operation.ports[2]: "80-90" is not a port`}, false},
		{"not ports type", header + "spec:\n  rules:\n    - to: [{operation: {notPorts: [[1]]}}]\n", []string{`spec.rules[0].to[0].operation.notPorts[0]: want a port number such as "8080", got a list`}, false},
		{"lowercase method", header + "spec:\n  rules:\n    - to: [{operation: {methods: [get]}}]\n", []string{`x.yaml:6: AuthorizationPolicy ns/p: spec.rules[0].to[0].operation.methods[0]: method "get" must be uppercase: "GET"`}, false},
		{"bad method", header + "spec:\n  rules:\n    - to: [{operation: {notMethods: [\"GE T\"]}}]\n", []string{`spec.rules[0].to[0].operation.notMethods[0]: "GE T" is not an HTTP method`}, false},
		{"relative path", header + "spec:\n  rules:\n    - to: [{operation: {paths: [api/v1]}}]\n", []string{`spec.rules[0].to[0].operation.paths[0]: path "api/v1" must start with "/"`}, false},
		{"path template", header + "spec:\n  rules:\n    - to: [{operation: {notPaths: [\"/a/{*}/b\"]}}]\n", []string{`spec.rules[0].to[0].operation.notPaths[0]: "/a/{*}/b": path templates ({*}, {**}) are not supported`}, false},
		{"path middle wildcard", header + "spec:\n  rules:\n    - to: [{operation: {paths: [\"/a/*/b\"]}}]\n", []string{`spec.rules[0].to[0].operation.paths[0]: "/a/*/b": "*" may only be`}, false},
		{"path both wildcards", header + "spec:\n  rules:\n    - to: [{operation: {paths: [\"*a*\"]}}]\n", []string{`"*a*": "*" may only be`}, false},
		{"empty host", header + "spec:\n  rules:\n    - to: [{operation: {hosts: [\"\"]}}]\n", []string{"spec.rules[0].to[0].operation.hosts[0]: empty value"}, false},
		// when
		{"when request auth", header + "spec:\n  rules:\n    - when:\n        - key: request.auth.claims[iss]\n          values: [a]\n", []string{`x.yaml:7: AuthorizationPolicy ns/p: spec.rules[0].when[0].key: when key "request.auth.claims[iss]" needs JWT request authentication, which meshd does not support; supported keys: request.headers[<name>], source.ip, source.namespace, source.principal, destination.port, connection.sni`}, true},
		{"when destination ip", header + "spec:\n  rules:\n    - when: [{key: destination.ip, values: [10.0.0.1]}]\n", []string{`spec.rules[0].when[0].key: when key "destination.ip" is not supported; supported keys: request.headers[<name>], source.ip`}, true},
		{"when experimental", header + "spec:\n  rules:\n    - when: [{key: experimental.envoy.filters.a, values: [x]}]\n", []string{`when key "experimental.envoy.filters.a" is not supported`}, true},
		{"when header without brackets", header + "spec:\n  rules:\n    - when: [{key: request.headers.x-user, values: [x]}]\n", []string{`when key "request.headers.x-user": write request.headers[<name>]`}, true},
		{"when empty header name", header + "spec:\n  rules:\n    - when: [{key: \"request.headers[]\", values: [x]}]\n", []string{`"" is not a header name`}, true},
		{"when no key", header + "spec:\n  rules:\n    - when: [{values: [x]}]\n", []string{"x.yaml:6: AuthorizationPolicy ns/p: spec.rules[0].when[0]: key is required"}, false},
		{"when no values", header + "spec:\n  rules:\n    - when: [{key: source.ip}]\n", []string{`spec.rules[0].when[0]: condition "source.ip" has no values or notValues`}, false},
		{"when bad values", header + "spec:\n  rules:\n    - when:\n        - {key: source.ip, values: [nope]}\n        - {key: destination.port, notValues: [\"99999\"]}\n        - {key: source.principal, values: [\"spiffe://a/ns/b/sa/c\"]}\n", []string{
			`x.yaml:7: AuthorizationPolicy ns/p: spec.rules[0].when[0].values[0]: "nope" is not an IP address`,
			`x.yaml:8: AuthorizationPolicy ns/p: spec.rules[0].when[1].notValues[0]: "99999" is not a port`,
			`x.yaml:9: AuthorizationPolicy ns/p: spec.rules[0].when[2].values[0]: "spiffe://a/ns/b/sa/c": write principals without spiffe://`,
		}, false},
		{"when unknown field", header + "spec:\n  rules:\n    - when: [{key: source.ip, value: [x]}]\n", []string{`spec.rules[0].when[0].value: unknown field "value" in a condition; did you mean "values"?`}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			peers, authzs, err := parseIstio("x.yaml", []byte(c.in))
			if err == nil {
				t.Fatalf("no error; got %+v %+v", peers, authzs)
			}
			if peers != nil || authzs != nil {
				t.Errorf("policies returned along with an error: %+v %+v", peers, authzs)
			}
			var pe *Error
			if !errors.As(err, &pe) {
				t.Errorf("error is %T, want *Error", err)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%s", w, err)
				}
			}
			if got := errors.Is(err, ErrUnsupported); got != c.unsupported {
				t.Errorf("errors.Is(err, ErrUnsupported) = %v, want %v", got, c.unsupported)
			}
		})
	}
}

// TestParseReportsEverything checks that one pass reports every problem in
// every document, in file order.
func TestParseReportsEverything(t *testing.T) {
	in := header + "spec:\n  action: CUSTOM\n  rules:\n    - from: [{source: {principals: [\"\"]}}]\n---\n" + peerHeader + "spec: {mtls: {mode: LOOSE}}\n"
	_, _, err := parseIstio("x.yaml", []byte(in))
	if err == nil {
		t.Fatal("no error")
	}
	lines := strings.Split(err.Error(), "\n")
	want := []string{"x.yaml:5: ", "x.yaml:7: ", "x.yaml:12: "}
	if len(lines) != len(want) {
		t.Fatalf("got %d lines, want %d:\n%s", len(lines), len(want), err)
	}
	for i, w := range want {
		if !strings.HasPrefix(lines[i], w) {
			t.Errorf("line %d = %q, want prefix %q", i, lines[i], w)
		}
	}
}

func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func policyYAML(kind, ns, name string) string {
	return "apiVersion: security.istio.io/v1\nkind: " + kind + "\nmetadata: {name: " + name + ", namespace: " + ns + "}\n"
}

func TestLoadDir(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"b.yaml":         policyYAML("AuthorizationPolicy", "ns", "b"),
		"a.yml":          policyYAML("AuthorizationPolicy", "ns", "a") + "---\n" + policyYAML("PeerAuthentication", "ns", "a"),
		"notes.txt":      "not policy",
		".hidden.yaml":   "garbage: [",
		"same-name.yaml": policyYAML("PeerAuthentication", "other", "a"),
	})
	if err := os.Mkdir(filepath.Join(dir, "sub.yaml"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFiles(t, filepath.Join(dir, "sub.yaml"), map[string]string{"c.yaml": "garbage: ["})
	p, err := LoadDir(dir, inputfile.DefaultMaxSize)
	if err != nil {
		t.Fatal(err)
	}
	wantFiles := []string{filepath.Join(dir, "a.yml"), filepath.Join(dir, "b.yaml"), filepath.Join(dir, "same-name.yaml")}
	if !reflect.DeepEqual(p.Files, wantFiles) {
		t.Errorf("files %v, want %v", p.Files, wantFiles)
	}
	if len(p.Authorizations) != 2 || len(p.Peer) != 2 {
		t.Fatalf("got %d authorizations and %d peer authentications, want 2 and 2", len(p.Authorizations), len(p.Peer))
	}
	set := p.Set("", "")
	if set.RootNamespace != mesh.DefaultRootNamespace || set.DefaultMode != mesh.MTLSPermissive {
		t.Errorf("defaults: root %q mode %q", set.RootNamespace, set.DefaultMode)
	}
	if set.Peer[0].Namespace != "ns" || set.Peer[1].Namespace != "other" || set.Authorizations[0].Name != "a" {
		t.Errorf("set not in namespace/name order: %+v %+v", set.Peer, set.Authorizations)
	}
	if got := set.Authorizations[0].Source; got != filepath.Join(dir, "a.yml")+":1" {
		t.Errorf("source %q", got)
	}

	// A duplicate across files names both; a bad file rejects everything
	// and every problem is reported.
	writeFiles(t, dir, map[string]string{
		"c.yaml": policyYAML("AuthorizationPolicy", "ns", "b"),
	})
	_, err = LoadDir(dir, inputfile.DefaultMaxSize)
	if err == nil || !strings.Contains(err.Error(), "AuthorizationPolicy ns/b: defined twice, at "+filepath.Join(dir, "b.yaml")+":1 and at "+filepath.Join(dir, "c.yaml")+":1") {
		t.Errorf("duplicate across files: %v", err)
	}
	writeFiles(t, dir, map[string]string{
		"c.yaml": policyYAML("AuthorizationPolicy", "ns", "c") + "spec: {action: CUSTOM}\n",
		"d.yaml": "",
	})
	_, err = LoadDir(dir, inputfile.DefaultMaxSize)
	for _, w := range []string{filepath.Join(dir, "c.yaml") + ":4: AuthorizationPolicy ns/c: spec.action: CUSTOM", filepath.Join(dir, "d.yaml") + ": file holds no policy"} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("error lacks %q: %v", w, err)
		}
	}
	if !errors.Is(err, ErrEmpty) || !errors.Is(err, ErrUnsupported) {
		t.Errorf("error does not wrap ErrEmpty and ErrUnsupported: %v", err)
	}

	// An empty directory is no policy; a missing one is an error.
	empty := t.TempDir()
	if p, err := LoadDir(empty, inputfile.DefaultMaxSize); err != nil || len(p.Peer)+len(p.Authorizations) != 0 {
		t.Errorf("empty directory: %+v, %v", p, err)
	}
	if _, err := LoadDir(filepath.Join(empty, "missing"), inputfile.DefaultMaxSize); !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), "missing: cannot read policy directory") {
		t.Errorf("missing directory: %v", err)
	}
	if _, err := LoadFiles([]string{filepath.Join(empty, "nope.yaml")}, inputfile.DefaultMaxSize); !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), "nope.yaml: cannot read policy file") {
		t.Errorf("missing file: %v", err)
	}
}

func TestParseMode(t *testing.T) {
	for in, want := range map[string]mesh.MTLSMode{"STRICT": mesh.MTLSStrict, "permissive": mesh.MTLSPermissive, "Disable": mesh.MTLSDisable} {
		if got, err := ParseMode(in); err != nil || got != want {
			t.Errorf("ParseMode(%q) = %q, %v", in, got, err)
		}
	}
	for _, in := range []string{"UNSET", "", "on"} {
		if _, err := ParseMode(in); err == nil {
			t.Errorf("ParseMode(%q) accepted", in)
		}
	}
}

// TestDocumentedExamplesLoad keeps docs/policy.md and the quickstart's
// policy directory loadable.
func TestDocumentedExamplesLoad(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "docs", "policy.md"))
	if err != nil {
		t.Fatal(err)
	}
	blocks := strings.Split(string(doc), "```yaml\n")[1:]
	if len(blocks) == 0 {
		t.Fatal("docs/policy.md has no yaml example")
	}
	dir := t.TempDir()
	for i, b := range blocks {
		// Loaded as meshd loads a file, so that references between
		// Linkerd's resources are checked too.
		b, _, _ = strings.Cut(b, "```")
		path := filepath.Join(dir, fmt.Sprintf("example-%d.yaml", i+1))
		writeFiles(t, dir, map[string]string{filepath.Base(path): b})
		if _, err := LoadFiles([]string{path}, inputfile.DefaultMaxSize); err != nil {
			t.Errorf("example %d: %v", i+1, err)
		}
	}
	p, err := LoadDir(filepath.Join("..", "examples", "quickstart", "policy"), inputfile.DefaultMaxSize)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Files) != 2 || len(p.Peer) != 1 || len(p.Authorizations) != 2 {
		t.Errorf("quickstart policy: %d files, %d peer, %d authz", len(p.Files), len(p.Peer), len(p.Authorizations))
	}
}

// parseIstio is Parse for tests of Istio documents: their two lists.
func parseIstio(path string, data []byte) ([]mesh.PeerAuthentication, []mesh.AuthorizationPolicy, error) {
	p, err := Parse(path, data)
	if err != nil {
		return nil, nil, err
	}
	return p.Peer, p.Authorizations, nil
}
