package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/sds"
)

func TestCertsListShowsIdentitiesWithChain(t *testing.T) {
	now := time.Date(2026, 11, 27, 8, 0, 0, 0, time.UTC)
	st := sds.Status{
		TrustDomain: "cluster.local",
		Signing:     sds.CertInfo{Subject: "meshd intermediate g2", Serial: "abc", Generation: "g2"},
		SigningRoot: sds.CertInfo{SHA256: "1111222233334444aaaa", Generation: "g2"},
		TrustedRoots: []sds.CertInfo{
			{SHA256: "1111222233334444aaaa", Generation: "g2"},
			{SHA256: "99998888777766665555", Generation: "g1"},
		},
		Leaves: []sds.CertInfo{
			{SPIFFEID: "spiffe://cluster.local/ns/default/sa/api", Serial: "f00d", NotBefore: now, NotAfter: now.Add(24 * time.Hour), Generation: "g2"},
			{SPIFFEID: "spiffe://cluster.local/ns/default/sa/web", Serial: "beef", NotBefore: now, NotAfter: now.Add(time.Hour), Generation: "g1"},
		},
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/ca/status" {
			http.NotFound(w, r)
			return
		}
		json.NewEncoder(w).Encode(st)
	}))
	defer srv.Close()
	var out, errb bytes.Buffer
	if code := run([]string{"certs", "list", "--admin-address", strings.TrimPrefix(srv.URL, "http://")}, &out, &errb); code != exitOK {
		t.Fatalf("code %d: %s", code, errb.String())
	}
	got := out.String()
	for _, want := range []string{
		"spiffe://cluster.local/ns/default/sa/api", "f00d", "2026-11-28T08:00:00Z",
		"intermediate meshd intermediate g2 (serial abc) -> root sha256 1111222233334444",
		"spiffe://cluster.local/ns/default/sa/web", "beef", "root sha256 9999888877776666",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q:\n%s", want, got)
		}
	}
	// meshd unreachable: a clear error, exit 3.
	srv.Close()
	out.Reset()
	errb.Reset()
	if code := run([]string{"certs", "list", "--admin-address", strings.TrimPrefix(srv.URL, "http://")}, &out, &errb); code != exitUnreachable || errb.Len() == 0 {
		t.Fatalf("unreachable meshd: code %d, stderr %q", code, errb.String())
	}
}
