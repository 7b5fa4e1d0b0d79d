package consul

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestNewWatcherOptions(t *testing.T) {
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("  s3cr3t\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A stand-in for Consul's HTTP API that records the token it is sent:
	// what matters here is what the client puts on the wire.
	var gotToken string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotToken = r.Header.Get("X-Consul-Token")
		_, _ = w.Write([]byte(`"127.0.0.1:8300"`))
	}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	t.Setenv("CONSUL_HTTP_TOKEN", "from-env")
	t.Setenv("CONSUL_HTTP_ADDR", host)

	cases := []struct {
		name      string
		o         Options
		wantErr   string
		wantAddr  string
		wantToken string
	}{
		{name: "environment", o: Options{}, wantAddr: host, wantToken: "from-env"},
		{name: "token file wins and is trimmed", o: Options{Address: srv.URL + "/", Token: "flag", TokenFile: tokenFile},
			wantAddr: host, wantToken: "s3cr3t"},
		{name: "token", o: Options{Address: host, Token: "flag"}, wantAddr: host, wantToken: "flag"},
		{name: "missing token file", o: Options{TokenFile: filepath.Join(dir, "nope")}, wantErr: "reading ACL token file: open " + filepath.Join(dir, "nope")},
		{name: "empty token file", o: Options{TokenFile: empty}, wantErr: "ACL token file " + empty + " is empty"},
		{name: "wait above Consul's maximum", o: Options{WaitTime: 11 * time.Minute}, wantErr: "above Consul's maximum of 10m"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w, err := NewWatcher(tc.o)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want it to contain %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if w.opts.Address != tc.wantAddr || w.Status().Address != tc.wantAddr {
				t.Errorf("address = %q, want %q", w.opts.Address, tc.wantAddr)
			}
			gotToken = ""
			if _, err := w.client.Status().Leader(); err != nil {
				t.Fatal(err)
			}
			if gotToken != tc.wantToken {
				t.Errorf("token sent = %q, want %q", gotToken, tc.wantToken)
			}
			if w.opts.WaitTime != DefaultWaitTime || w.opts.MinBackoff != DefaultMinBackoff || w.opts.MaxBackoff != DefaultMaxBackoff {
				t.Errorf("defaults not applied: %+v", w.opts)
			}
		})
	}
}
