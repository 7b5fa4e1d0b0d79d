package adminclient

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
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
