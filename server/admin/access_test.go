package admin

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

const testToken = "0123456789abcdef-admin-token"

// sensitive are the endpoints that need the admin token (every one meshd
// serves besides health, readiness and metrics; and unknown paths, since
// the default is closed).
var sensitive = []struct{ method, path string }{
	{"GET", "/debug/status"}, {"GET", "/debug/config_dump?proxy=web.default"},
	{"GET", "/debug/pprof/"}, {"GET", "/debug/pprof/heap"}, {"GET", "/debug/pprof/profile?seconds=1"},
	{"GET", "/ca/status"}, {"GET", "/telemetry/edges"}, {"GET", "/telemetry/tap?service=api"},
	{"POST", "/debug/gc"}, {"POST", "/ca/rotate-root"}, {"POST", "/ca/rotate-intermediate"},
	{"POST", "/ca/rotate-root/abort"}, {"POST", "/ca/rotate-intermediate/abort"},
	{"POST", "/migrations/force?proxy=web.default"}, {"GET", "/something-added-later"},
	{"POST", "/healthz"}, // only GET and HEAD of the public paths are public
}

// TestAccess: health, readiness and metrics are open (whatever the Host:
// scrapers use any address); every other endpoint is refused without the
// admin token, with a wrong one, from a Host that is not an address,
// localhost or an --admin-hosts name (DNS rebinding), with a cross-site
// Origin or Sec-Fetch-Site (a web page), and as a POST in another type
// than application/json (a form); with all in order it is served. Each
// refusal is counted by reason.
func TestAccess(t *testing.T) {
	a := NewAccess(testToken, []string{" meshd-admin.example "}, slog.New(slog.DiscardHandler))
	reached := false
	h := a.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { reached = true }))
	do := func(method, path string, hdr map[string]string) int {
		t.Helper()
		reached = false
		r := httptest.NewRequest(method, path, nil)
		r.Host = "127.0.0.1:15014"
		for k, v := range hdr {
			if k == "Host" {
				r.Host = v
			} else {
				r.Header.Set(k, v)
			}
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code == 0 || w.Code == 200 {
			if !reached {
				t.Fatalf("%s %s: answered %d without reaching the handler", method, path, w.Code)
			}
			return 200
		}
		if reached {
			t.Fatalf("%s %s: refused %d but the handler ran", method, path, w.Code)
		}
		return w.Code
	}
	for _, p := range []string{"/healthz", "/readyz", "/metrics"} {
		for _, m := range []string{"GET", "HEAD"} {
			if code := do(m, p, map[string]string{"Host": "evil.example"}); code != 200 {
				t.Errorf("%s %s without credentials: %d, want served", m, p, code)
			}
		}
	}
	good := func(method string) map[string]string {
		h := map[string]string{"Authorization": "Bearer " + testToken}
		if method == "POST" {
			h["Content-Type"] = "application/json"
		}
		return h
	}
	with := func(base map[string]string, k, v string) map[string]string {
		out := map[string]string{k: v}
		for bk, bv := range base {
			if bk != k {
				out[bk] = bv
			}
		}
		return out
	}
	posts := 0
	for _, e := range sensitive {
		g := good(e.method)
		cases := []accessCase{
			{"no token", with(g, "Authorization", ""), 401},
			{"wrong token", with(g, "Authorization", "Bearer "+strings.Repeat("x", len(testToken))), 401},
			{"basic credentials", with(g, "Authorization", "Basic YWRtaW46YWRtaW4="), 401},
			{"DNS rebinding (foreign Host)", with(g, "Host", "evil.example:15014"), 403},
			{"cross-site Origin", with(g, "Origin", "http://evil.example"), 403},
			{"Origin of another port", with(g, "Origin", "http://127.0.0.1:8080"), 403},
			{"opaque Origin", with(g, "Origin", "null"), 403},
			{"cross-site fetch", with(g, "Sec-Fetch-Site", "cross-site"), 403},
			{"everything in order", g, 200},
			{"same Origin", with(g, "Origin", "http://127.0.0.1:15014"), 200},
			{"localhost", with(g, "Host", "localhost:15014"), 200},
			{"IPv6 loopback", with(g, "Host", "[::1]:15014"), 200},
			{"an --admin-hosts name", with(g, "Host", "MESHD-ADMIN.example:443"), 200},
		}
		if e.method == "POST" {
			posts++
			cases = append(cases,
				accessCase{"text/plain POST (what a page may send)", with(g, "Content-Type", "text/plain"), 415},
				accessCase{"form POST", with(g, "Content-Type", "application/x-www-form-urlencoded"), 415},
				accessCase{"POST without a type", with(g, "Content-Type", ""), 415},
				accessCase{"JSON with a charset", with(g, "Content-Type", "application/json; charset=utf-8"), 200})
		}
		for _, c := range cases {
			hdr := map[string]string{}
			for k, v := range c.hdr {
				if v != "" {
					hdr[k] = v
				}
			}
			if got := do(e.method, e.path, hdr); got != c.want {
				t.Errorf("%s %s, %s: %d, want %d", e.method, e.path, c.what, got, c.want)
			}
		}
	}
	for reason, want := range map[string]float64{
		"credential": 3 * float64(len(sensitive)), "host": float64(len(sensitive)),
		"origin": 4 * float64(len(sensitive)), "content_type": 3 * float64(posts),
	} {
		if got := testutil.ToFloat64(a.refused.WithLabelValues(reason)); got != want {
			t.Errorf("refusals[%s] = %v, want %v", reason, got, want)
		}
	}
}

// TestAdminToken: meshd makes a token file (0600) at first start and reads
// the same token afterwards; an empty file is refused, a file others may
// read is warned about.
func TestAdminToken(t *testing.T) {
	path := filepath.Join(t.TempDir(), TokenFileName)
	tok, created, warn, err := LoadOrCreateToken(path)
	if err != nil || !created || warn != "" || len(tok) < 40 {
		t.Fatalf("first start: %q %v %q %v", tok, created, warn, err)
	}
	if info, err := os.Stat(path); err != nil || info.Mode().Perm() != 0o600 {
		t.Errorf("token file: %v %v, want mode 0600", info.Mode(), err)
	}
	again, created, _, err := LoadOrCreateToken(path)
	if err != nil || created || again != tok {
		t.Errorf("second start: %v %v, same token %v", created, err, again == tok)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, warn, _ := LoadOrCreateToken(path); !strings.Contains(warn, "chmod 600") {
		t.Errorf("a world-readable token file is not warned about: %q", warn)
	}
	if err := os.WriteFile(path, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := LoadOrCreateToken(path); err == nil {
		t.Error("an empty token file is accepted")
	}
}

func TestLoopback(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:15014": true, "[::1]:15014": true, "localhost:15014": true, "127.1.2.3:1": true,
		"0.0.0.0:15014": false, "[::]:15014": false, "10.0.0.5:15014": false, ":15014": false, "meshd:15014": false,
	} {
		if got := Loopback(addr); got != want {
			t.Errorf("Loopback(%q) = %v, want %v", addr, got, want)
		}
	}
}

type accessCase struct {
	what string
	hdr  map[string]string
	want int
}
