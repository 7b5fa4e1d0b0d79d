package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshd/meshd/policy"
)

var (
	quickstartCatalog = filepath.Join("..", "..", "examples", "quickstart", "catalog.yaml")
	quickstartPolicy  = filepath.Join("..", "..", "examples", "quickstart", "policy")
)

// TestAnalyzeQuickstart pins the example policy: it must stay clean.
func TestAnalyzeQuickstart(t *testing.T) {
	r := runArgs("analyze", "--catalog", quickstartCatalog, "--policy-dir", quickstartPolicy)
	if r.code != exitOK || r.stdout != "" {
		t.Fatalf("exit %d, findings:\n%s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	want := "meshctl analyze: 0 errors, 0 warnings; catalog: 6 services, 6 proxies; policy: 2 files, 1 PeerAuthentication, 2 AuthorizationPolicies\n"
	if r.stderr != want {
		t.Errorf("stderr %q, want %q", r.stderr, want)
	}
}

// Without the mesh-wide STRICT policy the quickstart's proxyless gRPC
// server is PERMISSIVE (an error) and api's principal rule meets plaintext
// (a warning). Flags after a positional argument still count.
func TestAnalyzeFindings(t *testing.T) {
	api := filepath.Join(quickstartPolicy, "api.yaml")
	r := runArgs("analyze", api, "--catalog", quickstartCatalog)
	if r.code != exitError {
		t.Errorf("exit %d, want %d", r.code, exitError)
	}
	want := "error: " + quickstartCatalog + ": proxy hello.default: proxy hello.default is a proxyless gRPC server and its effective mTLS mode is PERMISSIVE: gRPC servers support STRICT and DISABLE only; PERMISSIVE is the mesh default here (meshd --mtls-mode): make the default STRICT or select the server with a PeerAuthentication in mode STRICT\n" +
		"warning: " + api + ":6: AuthorizationPolicy default/api-allow-web: spec.rules[0].from[0].source.principals: the policy applies to api.default (PERMISSIVE): plaintext callers have no identity, so such rules only work under STRICT; this rule never allows a plaintext caller\n"
	if r.stdout != want {
		t.Errorf("stdout:\n%s\nwant:\n%s", r.stdout, want)
	}
	if !strings.HasPrefix(r.stderr, "meshctl analyze: 1 error, 1 warning;") {
		t.Errorf("stderr %q", r.stderr)
	}

	// With STRICT as the mesh default both go away; warnings alone exit 0.
	r = runArgs("analyze", "--catalog", quickstartCatalog, "--mtls-mode", "strict", api, "--trust-domain", "example.org")
	if r.code != exitOK {
		t.Errorf("exit %d, want 0 (warnings only); stdout:\n%s", r.code, r.stdout)
	}
	if !strings.Contains(r.stdout, `warning: `+api+`:6: AuthorizationPolicy default/api-allow-web: spec.rules[0].from[0].source.principals[0]: principal "cluster.local/ns/default/sa/web" is in trust domain "cluster.local", but the mesh's is "example.org"`) ||
		strings.Contains(r.stdout, "error:") {
		t.Errorf("stdout:\n%s", r.stdout)
	}
}

func TestAnalyzeErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: x, namespace: prod}
spec:
  action: CUSTOM
  rules:
    - when:
        - key: destination.ip
          values: [10.0.0.1]
`), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "empty.yml"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	catalog := filepath.Join(dir, "catalog.txt") // not read as policy
	if err := os.WriteFile(catalog, []byte("services:\n  - name: web\n    prot: http\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := runArgs("analyze", "--catalog", catalog, "--policy-dir", dir)
	if r.code != exitError {
		t.Errorf("exit %d, want %d", r.code, exitError)
	}
	want := []string{
		"error: " + catalog + `:3: unknown field "prot" in service (services[0]); did you mean "protocol"? see docs/catalog.md`,
		"error: " + bad + ":5: AuthorizationPolicy prod/x: spec.action: CUSTOM (external authorization) is not supported: use ALLOW, DENY or AUDIT",
		"error: " + bad + `:8: AuthorizationPolicy prod/x: spec.rules[0].when[0].key: when key "destination.ip" is not supported; supported keys: request.headers[<name>], source.ip, source.namespace, source.principal, destination.port, connection.sni`,
		"error: " + filepath.Join(dir, "empty.yml") + ": file holds no policy: delete the file to remove its policies",
	}
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	if len(lines) != len(want) {
		t.Fatalf("got %d findings, want %d:\n%s", len(lines), len(want), r.stdout)
	}
	for i, w := range want {
		if !strings.HasPrefix(lines[i], w) {
			t.Errorf("finding %d:\n got %s\nwant %s", i, lines[i], w)
		}
	}
	if !strings.HasPrefix(r.stderr, "meshctl analyze: 4 errors, 0 warnings") {
		t.Errorf("stderr %q", r.stderr)
	}

	if r := runArgs("analyze", "--policy-dir", filepath.Join(dir, "missing")); r.code != exitError || !strings.Contains(r.stdout, "error: "+filepath.Join(dir, "missing")+": cannot read policy directory") {
		t.Errorf("missing directory: exit %d, stdout %q", r.code, r.stdout)
	}
}

func TestAnalyzeJSON(t *testing.T) {
	r := runArgs("analyze", "--catalog", quickstartCatalog, "-o", "json", "--", filepath.Join(quickstartPolicy, "api.yaml"))
	if r.code != exitError {
		t.Errorf("exit %d, want %d", r.code, exitError)
	}
	var rep struct {
		Findings []policy.Finding `json:"findings"`
		Errors   int              `json:"errors"`
		Warnings int              `json:"warnings"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, r.stdout)
	}
	if rep.Errors != 1 || rep.Warnings != 1 || len(rep.Findings) != 2 {
		t.Fatalf("report %+v", rep)
	}
	f := rep.Findings[1]
	if f.Severity != policy.SeverityWarning || f.Policy != "AuthorizationPolicy default/api-allow-web" ||
		f.Field != "spec.rules[0].from[0].source.principals" || !strings.HasSuffix(f.File, "api.yaml:6") {
		t.Errorf("finding %+v", f)
	}

	r = runArgs("analyze", "--catalog", quickstartCatalog, "--policy-dir", quickstartPolicy, "--output", "json")
	if r.code != exitOK || !strings.Contains(r.stdout, `"findings": []`) {
		t.Errorf("clean JSON: exit %d\n%s", r.code, r.stdout)
	}
}

func TestAnalyzeUsage(t *testing.T) {
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"nothing", nil, "nothing to analyze"},
		{"dir and files", []string{"--policy-dir", "d", "a.yaml"}, "give --policy-dir or policy files, not both"},
		{"output", []string{"--catalog", "c", "-o", "xml"}, `invalid argument "xml" for "-o, --output" flag: use text, json, yaml`},
		{"output typo", []string{"--catalog", "c", "-o", "jsno"}, `did you mean json?`},
		{"default mode", []string{"--catalog", "c", "--default-mode", "UNSET"}, `--mtls-mode: "UNSET" is not a default mTLS mode`},
		{"root namespace", []string{"--catalog", "c", "--root-namespace", "Istio_System"}, "--root-namespace:"},
		{"trust domain", []string{"--catalog", "c", "--trust-domain", "Example.org"}, "--trust-domain:"},
		{"unknown flag", []string{"--polcy-dir", "d"}, "unknown flag: --polcy-dir; did you mean --policy-dir?"},
		{"single dash", []string{"-catalog", "c"}, "unknown flag -catalog: long flags take two dashes, --catalog"},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := runArgs(append([]string{"analyze"}, c.args...)...)
			if r.code != exitUsage || r.stdout != "" || !strings.Contains(r.stderr, c.want) || !strings.Contains(r.stderr, "Run 'meshctl analyze --help' for usage.") {
				t.Errorf("exit %d, stdout %q, stderr %q; want exit 2 and %q", r.code, r.stdout, r.stderr, c.want)
			}
		})
	}
}

func TestAnalyzeHelp(t *testing.T) {
	for _, args := range [][]string{{"analyze", "-h"}, {"help", "analyze"}, {"analyze", "x.yaml", "--help"}} {
		r := runArgs(args...)
		if r.code != exitOK {
			t.Fatalf("%v: exit %d", args, r.code)
		}
		for _, f := range []string{"catalog", "policy-dir", "root-namespace", "trust-domain", "default-mode", "mtls-mode", "output"} {
			checkHelpExplains(t, r.stdout, f)
		}
		if !strings.Contains(r.stdout, "Examples:") || !strings.Contains(r.stdout, "plaintext") {
			t.Errorf("%v: help lacks examples or the description:\n%s", args, r.stdout)
		}
	}
	if r := runArgs("help"); !strings.Contains(r.stdout, "analyze") {
		t.Errorf("analyze is not listed in meshctl help:\n%s", r.stdout)
	}
}

// Linkerd's settings reach the analysis: a default inbound policy on a
// workload that Istio policies also select is reported, Linkerd documents
// are counted, and bad values are usage errors.
func TestAnalyzeLinkerd(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "web.yaml"), []byte(`apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: {name: web, namespace: default}
spec:
  podSelector: {}
  port: web
---
apiVersion: policy.linkerd.io/v1beta1
kind: ServerAuthorization
metadata: {name: web, namespace: default}
spec:
  server: {name: web}
  client: {meshTLS: {identities: ["*"]}}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	r := runArgs("analyze", "--catalog", quickstartCatalog, "--mtls-mode", "STRICT", "--default-inbound-policy", "all-authenticated",
		"--cluster-networks", "10.0.0.0/8, 127.0.0.0/8", filepath.Join(quickstartPolicy, "api.yaml"), filepath.Join(dir, "web.yaml"))
	if r.code != exitOK {
		t.Errorf("exit %d; stdout:\n%s", r.code, r.stdout)
	}
	want := "warning: " + quickstartCatalog + `: proxy api.default: Istio (or Consul) authorization (default/api-allow-web, default/api-deny-admin) and Linkerd's default inbound policy all-authenticated both apply: a request must be allowed by both (docs/policy.md, "Istio and Linkerd on one workload")` + "\n"
	if r.stdout != want {
		t.Errorf("stdout:\n%s\nwant:\n%s", r.stdout, want)
	}
	if !strings.HasSuffix(r.stderr, "policy: 2 files, 0 PeerAuthentications, 2 AuthorizationPolicies, 1 Server, 1 ServerAuthorization\n") {
		t.Errorf("stderr %q", r.stderr)
	}

	for _, c := range []struct{ args, want string }{
		{"--default-inbound-policy=all-authenticate", `--default-inbound-policy: "all-authenticate" is not a default inbound policy: use all-unauthenticated, all-authenticated, cluster-unauthenticated, cluster-authenticated, deny, audit; did you mean "all-authenticated"?`},
		{"--cluster-networks=10.0.0.0/8,10.1", `--cluster-networks: "10.1" is not an IP address or CIDR block`},
	} {
		r := runArgs("analyze", c.args, filepath.Join(dir, "web.yaml"))
		if r.code != exitUsage || !strings.Contains(r.stderr, c.want) {
			t.Errorf("%s: exit %d, stderr %q", c.args, r.code, r.stderr)
		}
	}
}

// A catalog's problems are each reported once, with their line, in text and
// in JSON (issue 15: each was printed twice, the second copy without a line
// and, in JSON, as one finding of every problem).
func TestAnalyzeCatalogProblemsOnceWithLines(t *testing.T) {
	path := filepath.Join(t.TempDir(), "catalog.yaml")
	cat := "services:\n  - name: web\n    protocol: http\n    endpoints:\n      - {address: 10.0.0.1, port: 15001}\n  - name: api\n    protocol: htp\n    endpoints:\n      - {address: 10.0.0.2, port: 99999}\n"
	if err := os.WriteFile(path, []byte(cat), 0o644); err != nil {
		t.Fatal(err)
	}
	r := runArgs("analyze", "--catalog", path)
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if r.code != exitError || len(lines) != 2 || !strings.Contains(lines[0], path+":7: ") || !strings.Contains(lines[1], path+":9: ") ||
		!strings.Contains(r.stderr, "2 errors") {
		t.Errorf("exit %d\nstdout:\n%s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	r = runArgs("analyze", "--catalog", path, "-o", "json")
	var rep analyzeReport
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Errors != 2 || len(rep.Findings) != 2 || rep.Findings[0].File != path+":7" || rep.Findings[1].File != path+":9" ||
		!strings.Contains(rep.Findings[0].Message, `unknown protocol "htp"`) {
		t.Errorf("JSON: %+v", rep)
	}
}
