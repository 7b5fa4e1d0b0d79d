package e2e

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// adminRequest makes one request to meshd's admin API with exactly the
// given headers ("Host" sets the Host) and returns the status and body.
func (m *meshd) adminRequest(t *testing.T, method, path string, hdr map[string]string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+m.adminAddr+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		if k == "Host" {
			req.Host = v
		} else {
			req.Header.Set(k, v)
		}
	}
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestAdminAPICredentials (issue 13): on a real meshd, health, readiness
// and metrics answer anyone; every sensitive endpoint is refused without
// the admin token, with a wrong one, with a foreign Origin (a web page), a
// foreign Host (DNS rebinding) or a text/plain POST — the issue's
// `curl -X POST -H 'Origin: http://evil.example' -H 'Content-Type:
// text/plain' …/ca/rotate-intermediate` starts no rotation — and served
// with them; meshctl works with the token and exits 4 with a wrong one.
// Binding the admin API beyond loopback is warned about.
func TestAdminAPICredentials(t *testing.T) {
	e := newIdentityMesh(t)
	m := startMeshd(t, e.catalog(), "--admin-hosts", "meshd-admin.example")
	tok := m.adminToken()
	if info, err := os.Stat(m.adminTokenFile()); err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("admin token file: %v, want mode 0600", err)
	}
	for _, p := range []string{"/healthz", "/readyz", "/metrics"} {
		if code, _ := m.adminRequest(t, "GET", p, map[string]string{"Host": "scraper.example"}); code != 200 {
			t.Errorf("GET %s without credentials: %d, want 200", p, code)
		}
	}
	// The request, from a page in a browser on meshd's host.
	code, body := m.adminRequest(t, "POST", "/ca/rotate-intermediate", map[string]string{"Origin": "http://evil.example", "Content-Type": "text/plain"})
	if code != http.StatusForbidden {
		t.Errorf("cross-site text/plain POST: %d %s, want 403", code, body)
	}
	if st := m.caStatus(t); st.Rotation != nil {
		t.Fatalf("a refused request started a rotation: %+v", st.Rotation)
	}

	endpoints := []struct {
		method, path string
		want         int // what the handler answers once let through
	}{
		{"GET", "/debug/status", 200}, {"GET", "/debug/config_dump?proxy=web.default", 200},
		{"GET", "/debug/pprof/", 200}, {"GET", "/debug/pprof/heap", 200}, {"GET", "/ca/status", 200},
		{"GET", "/telemetry/edges", 200},
		{"POST", "/debug/gc", 200}, {"POST", "/migrations/force?proxy=web.default", 404},
		{"POST", "/ca/rotate-root", 202}, {"POST", "/ca/rotate-root/abort", 202},
		{"POST", "/ca/rotate-intermediate", 202}, {"POST", "/ca/rotate-intermediate/abort", 202},
	}
	good := func(method string) map[string]string {
		h := map[string]string{"Authorization": "Bearer " + tok}
		if method == "POST" {
			h["Content-Type"] = "application/json"
		}
		return h
	}
	with := func(h map[string]string, k, v string) map[string]string {
		out := map[string]string{}
		for hk, hv := range h {
			out[hk] = hv
		}
		if v == "" {
			delete(out, k)
		} else {
			out[k] = v
		}
		return out
	}
	for _, ep := range endpoints {
		g := good(ep.method)
		refusals := []refusal{
			{"no token", with(g, "Authorization", ""), 401},
			{"wrong token", with(g, "Authorization", "Bearer not-"+tok), 401},
			{"foreign Origin", with(g, "Origin", "http://evil.example"), 403},
			{"foreign Host", with(g, "Host", fmt.Sprintf("evil.example:%s", strings.Split(m.adminAddr, ":")[1])), 403},
		}
		if ep.method == "POST" {
			refusals = append(refusals, refusal{"text/plain POST", with(g, "Content-Type", "text/plain"), 415})
		}
		for _, r := range refusals {
			if code, body := m.adminRequest(t, ep.method, ep.path, r.hdr); code != r.want {
				t.Errorf("%s %s with %s: %d %s, want %d", ep.method, ep.path, r.what, code, firstLines(body, 2), r.want)
			}
		}
		for _, host := range []string{"", "localhost", "meshd-admin.example"} {
			hdr := g
			if host != "" {
				hdr = with(g, "Host", host+":"+strings.Split(m.adminAddr, ":")[1])
			}
			if ep.method == "POST" && host != "" {
				continue // an action once is enough
			}
			if code, body := m.adminRequest(t, ep.method, ep.path, hdr); code != ep.want {
				t.Errorf("%s %s with the token (Host %q): %d %s, want %d", ep.method, ep.path, host, code, firstLines(body, 2), ep.want)
			}
		}
	}
	if n := m.metric(t, "meshd_admin_requests_refused_total"); n < float64(4*len(endpoints)) {
		t.Errorf("meshd_admin_requests_refused_total = %v, want every refusal counted", n)
	}

	// meshctl: with meshd's token, and refused (exit status 4) with another.
	if out := m.runMeshctl("ca", "status", "--admin-address", m.adminAddr); !strings.Contains(out, "trust domain:") {
		t.Errorf("meshctl ca status with the token:\n%s", out)
	}
	wrong := filepath.Join(m.dir, "wrong.token")
	if err := os.WriteFile(wrong, []byte("not-this-meshds-token-at-all\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, errOut, err := m.tryMeshctl("ca", "rotate-root", "--admin-address", m.adminAddr, "--admin-token-file", wrong)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 4 || !strings.Contains(errOut, "was refused") {
		t.Errorf("meshctl with a wrong token: %v, %s; want exit status 4 naming the token file", err, errOut)
	}

	// Beyond loopback: warned about at start.
	wide := startMeshd(t, e.catalog(), "--admin-listen", "0.0.0.0:0")
	log, _ := os.ReadFile(wide.logPath)
	if !strings.Contains(string(log), "the admin API listens beyond loopback") {
		t.Errorf("no warning for --admin-listen 0.0.0.0:\n%s", log)
	}
	if code, _ := wide.adminRequest(t, "GET", "/debug/status", nil); code != 401 {
		t.Errorf("GET /debug/status on 0.0.0.0 without the token: %d, want 401", code)
	}
}

type refusal struct {
	what string
	hdr  map[string]string
	want int
}
