package e2e

import (
	"bytes"
	"encoding/json"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/meshd/meshd/internal/envoytest"
)

// The README's quickstart command, run as written (modulo ports and data
// directory, which tests must not share with a developer's meshd).
func TestQuickstartCatalogServes(t *testing.T) {
	catalog, err := os.ReadFile("../examples/quickstart/catalog.yaml")
	if err != nil {
		t.Fatal(err)
	}
	m := startMeshd(t, string(catalog))
	s := m.status()
	if !s.Ready || len(s.Proxies) != 6 {
		t.Fatalf("ready=%v with %d proxies, want 6", s.Ready, len(s.Proxies))
	}
	for _, p := range s.Proxies {
		if p.Error != "" || p.Versions["Listener"] == "" {
			t.Errorf("proxy %s: error %q, versions %v", p.ID, p.Error, p.Versions)
		}
	}
	code, dump := m.adminGET("/debug/config_dump?proxy=web.default")
	if code != 200 {
		t.Fatalf("config_dump: %d %s", code, dump)
	}
	var doc struct {
		Configs []map[string]any `json:"configs"`
	}
	if err := json.Unmarshal([]byte(dump), &doc); err != nil {
		t.Fatal(err)
	}
	if len(doc.Configs) != 5 {
		t.Fatalf("config_dump has %d sections, want listeners, clusters, routes, endpoints, secrets", len(doc.Configs))
	}
	// api's SPIFFE ID is the SAN web's cluster for api accepts; web's own
	// certificate is the secret named default.
	for _, want := range []string{"inbound|15101", "outbound|9102|api.default", "outbound|api.default", "spiffe://cluster.local/ns/default/sa/api", "[redacted]"} {
		if !strings.Contains(dump, want) {
			t.Errorf("config_dump lacks %q", want)
		}
	}
	if !regexp.MustCompile(`"name":\s*"default"`).MatchString(dump) {
		t.Errorf("config_dump lacks the identity secret %q", "default")
	}
	assertNoKeyMaterial(t, "config_dump", []byte(dump))
	if code, body := m.adminGET("/debug/config_dump?proxy=nobody"); code != 404 || !strings.Contains(body, "/debug/status") {
		t.Errorf("unknown proxy: %d %q", code, body)
	}
	code, metrics := m.adminGET("/metrics")
	if code != 200 || !strings.Contains(metrics, "meshd_snapshot_builds_total") || !strings.Contains(metrics, `meshd_catalog_reloads_rejected_total{source="file"} 0`) {
		t.Errorf("metrics: %d\n%s", code, metrics)
	}
	m.stop()
	log, _ := os.ReadFile(m.logPath)
	assertNoKeyMaterial(t, "meshd log", log)
}

// assertNoKeyMaterial fails if b holds a PEM private key or the base64 body
// of one.
func assertNoKeyMaterial(t *testing.T, what string, b []byte) {
	t.Helper()
	for _, marker := range []string{"PRIVATE KEY", "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG"} { // PKCS#8 P-256 prefix
		if bytes.Contains(b, []byte(marker)) {
			t.Errorf("%s contains private key material (%q)", what, marker)
		}
	}
}

// Golden files, generated bootstraps, docs and examples are published with
// the project: none may carry key material.
func TestNoKeyMaterialInPublishedFiles(t *testing.T) {
	root, err := envoytest.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	scanned := 0
	for _, dir := range []string{"xds/testdata", "bootstrap/testdata", "discovery/file/testdata", "envoy-configs", "docs", "examples"} {
		filepath.WalkDir(filepath.Join(root, dir), func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return nil
			}
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			scanned++
			assertNoKeyMaterial(t, path, b)
			return nil
		})
	}
	if scanned < 20 {
		t.Fatalf("scanned only %d files: the directory list is stale", scanned)
	}
}

// meshd refuses to start on a bad catalog, naming file, object and field.
func TestMeshdRefusesBadCatalog(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "catalog.yaml")
	os.WriteFile(path, []byte("services:\n  - name: web\n    protocol: http\n    endpoints:\n      - {address: 127.0.0.1, port: 70000}\n"), 0o644)
	cmd := exec.Command(filepath.Join(binDir, "meshd"), "--catalog", path, "--data-dir", filepath.Join(dir, "data"),
		"--xds-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0")
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("meshd started on an invalid catalog:\n%s", out)
	}
	for _, want := range []string{path, `services[0] \"web.default\"`, "endpoints[0].port", "70000"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("error output lacks %q:\n%s", want, out)
		}
	}
	cmd = exec.Command(filepath.Join(binDir, "meshd"))
	out, err = cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "--catalog is required") {
		t.Errorf("meshd without --catalog: %v\n%s", err, out)
	}
}
