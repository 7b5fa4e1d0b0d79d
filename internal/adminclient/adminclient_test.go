package adminclient

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseAddress(t *testing.T) {
	for _, c := range []struct{ in, want, err string }{
		{in: "127.0.0.1:15014", want: "http://127.0.0.1:15014"},
		{in: ":15014", want: "http://127.0.0.1:15014"},
		{in: "[::1]:15014", want: "http://[::1]:15014"},
		{in: "meshd.example:80", want: "http://meshd.example:80"},
		{in: "http://10.0.0.5:15014", want: "http://10.0.0.5:15014"},
		{in: "https://meshd-admin.example/", want: "https://meshd-admin.example"},
		{in: "https://proxy.example/meshd/", want: "https://proxy.example/meshd"},
		{in: "", err: "empty"},
		{in: "meshd", err: "not HOST:PORT or a URL"},
		{in: "ftp://meshd:21", err: `scheme "ftp" is not supported`},
		{in: "http://", err: "has no host"},
		{in: "http://u:p@meshd:1", err: "only scheme, host, port and path"},
		{in: "http://meshd:1/?x=1", err: "only scheme, host, port and path"},
	} {
		u, err := ParseAddress(c.in)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("ParseAddress(%q) = %v, %v; want error with %q", c.in, u, err, c.err)
			}
			continue
		}
		if err != nil || u.String() != c.want {
			t.Errorf("ParseAddress(%q) = %v, %v; want %s", c.in, u, err, c.want)
		}
	}
}

func TestCalls(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/prefix/ok":
			if r.URL.Query().Get("proxy") != "web.default" {
				http.Error(w, "bad query", http.StatusBadRequest)
				return
			}
			w.Write([]byte(`{"a": 1}`))
		case "/prefix/post":
			if r.Method != http.MethodPost {
				http.Error(w, "want POST", http.StatusMethodNotAllowed)
				return
			}
			w.WriteHeader(http.StatusAccepted)
			w.Write([]byte(`{"a": 2}`))
		case "/prefix/secret":
			http.Error(w, "admin credential required", http.StatusUnauthorized)
		case "/prefix/garbage":
			w.Write([]byte("<html>"))
		default:
			http.Error(w, "no such proxy", http.StatusNotFound)
		}
	}))
	defer srv.Close()
	c, err := (&Options{Address: srv.URL + "/prefix/"}).Client()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var v struct{ A int }
	if err := c.GetJSON(ctx, "/ok", url.Values{"proxy": {"web.default"}}, &v); err != nil || v.A != 1 {
		t.Errorf("GetJSON: %v, %+v", err, v)
	}
	if err := c.PostJSON(ctx, "/post", nil, &v); err != nil || v.A != 2 {
		t.Errorf("PostJSON: %v, %+v", err, v)
	}
	err = c.GetJSON(ctx, "/secret", nil, &v)
	if !IsRefused(err) || IsUnreachable(err) || !strings.Contains(err.Error(), "401 Unauthorized") || !strings.Contains(err.Error(), "admin credential required") {
		t.Errorf("401: %v", err)
	}
	err = c.GetJSON(ctx, "/nope", nil, &v)
	if !IsNotFound(err) || IsRefused(err) || !strings.Contains(err.Error(), "no such proxy") {
		t.Errorf("404: %v", err)
	}
	if err := c.GetJSON(ctx, "/garbage", nil, &v); err == nil || !strings.Contains(err.Error(), "decoding meshd's answer") {
		t.Errorf("not JSON: %v", err)
	}
	srv.Close()
	err = c.GetJSON(ctx, "/ok", nil, &v)
	if !IsUnreachable(err) || !strings.Contains(err.Error(), "cannot reach meshd's admin API at "+srv.URL+"/prefix/ok") {
		t.Errorf("closed server: %v", err)
	}
}

// TestAdminToken: the token in --admin-token-file goes with every request,
// actions say application/json; a refusal says where the token was looked
// for; an explicit file that is missing is an error before any request.
func TestAdminToken(t *testing.T) {
	var got []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = append(got, r.Method+" "+r.Header.Get("Authorization")+" "+r.Header.Get("Content-Type"))
		if r.Header.Get("Authorization") != "Bearer s3cret-admin-token" {
			http.Error(w, "this endpoint needs meshd's admin token", http.StatusUnauthorized)
			return
		}
		w.Write([]byte(`{}`))
	}))
	defer srv.Close()
	dir := t.TempDir()
	file := filepath.Join(dir, "admin.token")
	if err := os.WriteFile(file, []byte("s3cret-admin-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := (&Options{Address: srv.URL, TokenFile: file}).Client()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := c.GetJSON(ctx, "/debug/status", nil, new(any)); err != nil {
		t.Errorf("GET with the token: %v", err)
	}
	if err := c.PostJSON(ctx, "/ca/rotate-root", nil, nil); err != nil {
		t.Errorf("POST with the token: %v", err)
	}
	want := []string{"GET Bearer s3cret-admin-token ", "POST Bearer s3cret-admin-token application/json"}
	if !slices.Equal(got, want) {
		t.Errorf("requests %q, want %q", got, want)
	}

	if err := os.WriteFile(file, []byte("another\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, _ = (&Options{Address: srv.URL, TokenFile: file}).Client()
	err = c.GetJSON(ctx, "/debug/status", nil, new(any))
	if !IsRefused(err) || !strings.Contains(err.Error(), "the admin token in "+file+" was refused") {
		t.Errorf("wrong token: %v", err)
	}
	c, _ = (&Options{Address: srv.URL}).Client()
	err = c.GetJSON(ctx, "/debug/status", nil, new(any))
	if !IsRefused(err) || !strings.Contains(err.Error(), "pass --admin-token-file") {
		t.Errorf("no token: %v", err)
	}
	if _, err := (&Options{Address: srv.URL, TokenFile: filepath.Join(dir, "missing")}).Client(); err == nil || !strings.Contains(err.Error(), "--admin-token-file") {
		t.Errorf("missing explicit token file: %v", err)
	}
}

func TestTimeoutIsUnreachable(t *testing.T) {
	block := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-block:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(block)
	c, err := (&Options{Address: srv.URL, Timeout: 50 * time.Millisecond}).Client()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.GetJSON(context.Background(), "/slow", nil, new(any)); !IsUnreachable(err) {
		t.Errorf("a request that times out: %v, want unreachable", err)
	}
}
