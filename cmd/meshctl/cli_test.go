package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/meshd/meshd/sds"
)

func TestCompletionScripts(t *testing.T) {
	for shell, want := range map[string]string{
		"bash": "__start_meshctl",
		"zsh":  "#compdef meshctl",
		"fish": "complete -c meshctl",
	} {
		r := runArgs("completion", shell)
		if r.code != exitOK || !strings.Contains(r.stdout, want) {
			t.Errorf("completion %s: code %d, stderr %q, script lacks %q", shell, r.code, r.stderr, want)
		}
	}
	// What the scripts call: commands, subcommands and -o formats complete.
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"__complete", "to"}, []string{"token"}},
		{[]string{"__complete", "token", ""}, []string{"create", "list", "revoke"}},
		{[]string{"__complete", "certs", "list", "-o", ""}, []string{"table", "json", "yaml"}},
		{[]string{"__complete", "bootstrap", "--flavor", ""}, []string{"envoy", "grpc"}},
		{[]string{"__complete", "help", "c"}, []string{"ca", "certs", "completion"}},
	} {
		r := runArgs(c.args...)
		for _, w := range c.want {
			if !strings.Contains(r.stdout, w) {
				t.Errorf("meshctl %v: completions lack %q:\n%s", c.args, w, r.stdout)
			}
		}
	}
}

func TestTokenList(t *testing.T) {
	dataDir := t.TempDir()
	if _, err := sds.LoadOrCreateTokens(dataDir, defaultTrustDomain, false, nil); err != nil {
		t.Fatal(err)
	}
	if r := runArgs("token", "list", "--data-dir", dataDir); r.code != exitOK || !strings.Contains(r.stdout, "no tokens") {
		t.Fatalf("empty list: %d %q %q", r.code, r.stdout, r.stderr)
	}
	ids := map[string]string{}
	for _, svc := range []string{"web", "api"} {
		r := runArgs("token", "create", "--service", svc, "--ttl", "2h", "--data-dir", dataDir, "-o", filepath.Join(t.TempDir(), svc+".token"))
		if r.code != exitOK {
			t.Fatalf("token create: %d %s", r.code, r.stderr)
		}
		ids[svc] = strings.Fields(r.stderr)[1] // "token <id> for ..."
	}
	if r := runArgs("token", "revoke", ids["web"], "--data-dir", dataDir); r.code != exitOK {
		t.Fatalf("token revoke ID: %d %s", r.code, r.stderr)
	}
	// A token revoked without a record (signed before the register, or
	// where the data directory was read-only) is listed from the
	// revocation list.
	if r := runArgs("token", "revoke", "--id", "0123456789abcdef01234567", "--data-dir", dataDir); r.code != exitOK {
		t.Fatalf("token revoke --id: %d %s", r.code, r.stderr)
	}

	r := runArgs("token", "list", "--data-dir", dataDir)
	if r.code != exitOK {
		t.Fatalf("token list: %d %s", r.code, r.stderr)
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 4 || !strings.HasPrefix(lines[0], "ID ") {
		t.Fatalf("want a header and 3 rows:\n%s", r.stdout)
	}
	// Columns are aligned: every row's SERVICE starts where the header's does.
	col := strings.Index(lines[0], "SERVICE")
	for _, l := range lines[1:] {
		if len(l) < col || l[col-1] != ' ' || l[col] == ' ' {
			t.Errorf("row not aligned with the header:\n%s", r.stdout)
		}
	}

	r = runArgs("token", "list", "--data-dir", dataDir, "-o", "json")
	var rows []struct {
		ID, Namespace, Service, State string
		IssuedAt, Expires             time.Time
		RevokedAt                     *time.Time
		Recorded                      bool
	}
	if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil || len(rows) != 3 {
		t.Fatalf("token list -o json: %v\n%s", err, r.stdout)
	}
	byID := map[string]int{}
	for i, row := range rows {
		byID[row.ID] = i
	}
	web, api, orphan := rows[byID[ids["web"]]], rows[byID[ids["api"]]], rows[byID["0123456789abcdef01234567"]]
	if web.Service != "web" || web.Namespace != "default" || web.State != "revoked" || web.RevokedAt == nil || !web.Recorded ||
		web.Expires.Sub(web.IssuedAt) != 2*time.Hour {
		t.Errorf("web token row %+v", web)
	}
	if api.Service != "api" || api.State != "valid" || api.RevokedAt != nil || time.Until(api.Expires) <= time.Hour {
		t.Errorf("api token row %+v", api)
	}
	if orphan.State != "revoked" || orphan.Recorded || !orphan.IssuedAt.IsZero() {
		t.Errorf("unrecorded revoked token row %+v", orphan)
	}
	r = runArgs("token", "list", "--data-dir", dataDir, "--service", "api", "-o", "yaml")
	var y []map[string]any
	if err := yaml.Unmarshal([]byte(r.stdout), &y); err != nil || len(y) != 1 || y[0]["id"] != ids["api"] || y[0]["state"] != "valid" {
		t.Errorf("token list --service api -o yaml: %v\n%s", err, r.stdout)
	}
	// Never the token itself.
	b, err := os.ReadFile(filepath.Join(dataDir, "tokens", "issued.jsonl"))
	if err != nil || strings.Contains(string(b), "meshd1.") {
		t.Errorf("the register holds a token or is missing: %v\n%s", err, b)
	}
}

// A register that cannot be written (a bootstrap container's read-only
// mount of the data directory; here, as even root cannot write it, a
// directory in its place) does not stop signing: a warning says the token
// is not listed.
func TestTokenCreateUnwritableRegister(t *testing.T) {
	dataDir := t.TempDir()
	if _, err := sds.LoadOrCreateTokens(dataDir, defaultTrustDomain, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dataDir, "tokens", "issued.jsonl"), 0o700); err != nil {
		t.Fatal(err)
	}
	r := runArgs("token", "create", "--service", "web", "--data-dir", dataDir)
	if r.code != exitOK || !strings.HasPrefix(r.stdout, "meshd1.") || !strings.Contains(r.stderr, "meshctl token list will not show this token") {
		t.Errorf("code %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
}

func TestCertsListJSON(t *testing.T) {
	now := time.Date(2026, 11, 27, 8, 0, 0, 0, time.UTC)
	st := sds.Status{
		TrustDomain: "cluster.local",
		Signing:     sds.CertInfo{Subject: "meshd intermediate g2", Serial: "abc", Generation: "g2", NotAfter: now.Add(365 * 24 * time.Hour)},
		SigningRoot: sds.CertInfo{Subject: "meshd root g2", SHA256: "1111222233334444aaaa", Generation: "g2", NotAfter: now.Add(3650 * 24 * time.Hour)},
		TrustedRoots: []sds.CertInfo{
			{SHA256: "1111222233334444aaaa", Generation: "g2"},
		},
		Leaves: []sds.CertInfo{
			{SPIFFEID: "spiffe://cluster.local/ns/default/sa/api", Serial: "f00d", NotBefore: now, NotAfter: now.Add(24 * time.Hour), Generation: "g2"},
			{SPIFFEID: "spiffe://cluster.local/ns/default/sa/old", Serial: "dead", NotBefore: now, NotAfter: now.Add(time.Hour), Generation: "g0"},
		},
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { json.NewEncoder(w).Encode(st) }))
	defer srv.Close()
	r := runArgs("certs", "list", "-o", "json", "--admin-address", srv.URL)
	if r.code != exitOK {
		t.Fatalf("code %d: %s", r.code, r.stderr)
	}
	var rows []certRow
	if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil || len(rows) != 2 {
		t.Fatalf("%v\n%s", err, r.stdout)
	}
	api := rows[0]
	if api.SPIFFEID != "spiffe://cluster.local/ns/default/sa/api" || api.Serial != "f00d" || !api.NotBefore.Equal(now) ||
		!api.NotAfter.Equal(now.Add(24*time.Hour)) || api.Generation != "g2" || !api.Trusted || len(api.Chain) != 2 ||
		api.Chain[0].Kind != "intermediate" || api.Chain[0].Serial != "abc" || api.Chain[0].Subject != "meshd intermediate g2" ||
		api.Chain[1].Kind != "root" || api.Chain[1].SHA256 != "1111222233334444aaaa" || !api.Chain[1].NotAfter.Equal(now.Add(3650*24*time.Hour)) {
		t.Errorf("api row %+v", api)
	}
	if old := rows[1]; old.Trusted || len(old.Chain) != 0 || old.Generation != "g0" {
		t.Errorf("row of an untrusted generation %+v", old)
	}
	if strings.Contains(r.stdout, "PRIVATE") {
		t.Error("key material in the output")
	}
}
