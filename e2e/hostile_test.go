//go:build unix

package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/internal/hostile"
)

// TestCatalogHostileFiles runs meshd as users do and puts issue 13's
// hostile files at its catalog path and in its policy directory: a named
// pipe, a symlink to /dev/zero, a file over --max-file-size, a mapping of
// 64,000 keys. Each must be refused, visibly (/debug/status, the rejected
// metric, the log), while meshd stays ready on the last good configuration
// and keeps following later edits; meshd's peak RSS stays bounded (before,
// /dev/zero got it OOM-killed).
func TestCatalogHostileFiles(t *testing.T) {
	catalog, err := os.ReadFile("../examples/quickstart/catalog.yaml")
	if err != nil {
		t.Fatal(err)
	}
	policyDir := t.TempDir()
	m := startMeshd(t, string(catalog), "--max-file-size", "2MiB", "--policy-dir", policyDir, "--catalog-holdoff", "20ms")

	keys := "services:\n  - name: web\n    endpoints:\n      - address: 127.0.0.1\n        port: 15101\n        labels:\n" + hostile.Keys(10, 64000)
	if len(keys) > 2<<20 {
		t.Fatalf("the 64,000-key catalog is %d bytes, over the limit the test sets", len(keys))
	}
	path := m.catalogPath
	cases := []struct {
		name string
		put  func()
		want string
	}{
		{"a named pipe", func() { hostile.PutFIFO(t, path) }, "not a regular file: a named pipe (FIFO)"},
		{"a symlink to /dev/zero", func() { hostile.PutDevZero(t, path) }, "not a regular file: a symlink to /dev/zero, a character device"},
		{"a file over --max-file-size", func() { hostile.PutSparse(t, path, 3<<20) }, "file too large: 3145728 bytes, more than 2 MiB, the limit (--max-file-size)"},
		{"a mapping of 64,000 keys", func() { hostile.PutFile(t, path, []byte(keys)) }, "too many keys in services[0].endpoints[0].labels: 64000"},
	}
	for i, tc := range cases {
		before := m.status().Catalog
		tc.put()
		eventually(t, 10*time.Second, func() error {
			if s := m.status().Catalog; s.Rejected != before.Rejected+1 {
				return fmt.Errorf("%s: rejected %d", tc.name, s.Rejected)
			}
			return nil
		})
		s := m.status()
		if !strings.Contains(s.Catalog.LastError, path+": ") || !strings.Contains(s.Catalog.LastError, tc.want) {
			t.Errorf("%s: lastError %q, want it to name %s and say %q", tc.name, s.Catalog.LastError, path, tc.want)
		}
		if code, body := m.adminGET("/readyz"); code != 200 || !s.Ready || len(s.Proxies) != 6 {
			t.Errorf("%s: /readyz %d %q, ready %v with %d proxies; want ready on the last good catalog", tc.name, code, body, s.Ready, len(s.Proxies))
		}
		if got := m.metric(t, `meshd_catalog_reloads_rejected_total{source="file"}`); got != float64(i+1) {
			t.Errorf("%s: meshd_catalog_reloads_rejected_total = %v, want %d", tc.name, got, i+1)
		}
		// Not stuck: the next good catalog is served.
		next := strings.Replace(string(catalog), "port: 15102", fmt.Sprintf("port: %d", 16000+i), 1)
		hostile.PutFile(t, path, []byte(next))
		eventually(t, 10*time.Second, func() error {
			if s := m.status().Catalog; s.Accepted != before.Accepted+1 || s.LastError != "" {
				return fmt.Errorf("after %s: catalog status %+v", tc.name, s)
			}
			return nil
		})
	}

	// The policy directory gets the same treatment.
	bad := filepath.Join(policyDir, "bad.yaml")
	hostile.PutFIFO(t, bad)
	eventually(t, 10*time.Second, func() error {
		if got := m.metric(t, `meshd_policy_reloads_rejected_total{source="dir"}`); got != 1 {
			return fmt.Errorf("meshd_policy_reloads_rejected_total = %v", got)
		}
		return nil
	})
	_, body := m.adminGET("/debug/status")
	if !strings.Contains(body, bad+": cannot read policy file: not a regular file: a named pipe (FIFO)") {
		t.Errorf("/debug/status does not show the policy error:\n%s", body)
	}
	if code, _ := m.adminGET("/readyz"); code != 200 {
		t.Errorf("/readyz %d with a refused policy file", code)
	}

	// VmHWM is the most memory meshd has ever had resident.
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", m.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
			t.Logf("meshd peak RSS: %.1f MiB", float64(kb)/1024)
			if kb == 0 || kb > 256<<10 {
				t.Errorf("meshd peak RSS %d kB, want under 256 MiB", kb)
			}
		}
	}
	log, _ := os.ReadFile(m.logPath)
	for _, tc := range cases {
		if !strings.Contains(string(log), tc.want) {
			t.Errorf("meshd's log does not say %q", tc.want)
		}
	}
}
