package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/metadata"

	"github.com/meshd/meshd/internal/testwait"
)

func TestCallerFromXFCC(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		// What Envoy's SANITIZE_SET with Uri: true produces.
		{"By=spiffe://cluster.local/ns/default/sa/api;Hash=8d3f;URI=spiffe://cluster.local/ns/default/sa/web", "spiffe://cluster.local/ns/default/sa/web"},
		// Quoted values may hold separators; the key is case-insensitive.
		{`By="spiffe://a;b";Subject="CN=web,O=meshd";uri="spiffe://td/ns/x/sa/y"`, "spiffe://td/ns/x/sa/y"},
		// Several hops: the last element is the nearest caller.
		{"URI=spiffe://td/ns/a/sa/first,URI=spiffe://td/ns/a/sa/second", "spiffe://td/ns/a/sa/second"},
		{`URI="spiffe://td/ns/a/sa/q\"uote"`, `spiffe://td/ns/a/sa/q"uote`},
		{"By=spiffe://td/ns/a/sa/api;Hash=00", ""},
		{"", ""},
	} {
		if got := callerFromXFCC(tc.in); got != tc.want {
			t.Errorf("callerFromXFCC(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

var quietLog = slog.New(slog.NewTextHandler(io.Discard, nil))

// serve runs one service mode on a free loopback port until the test ends
// and returns its address.
func serve(t *testing.T, f func(context.Context, string, string, *slog.Logger, func(string)) error, name string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	addrc, done := make(chan string, 1), make(chan error, 1)
	go func() { done <- f(ctx, "127.0.0.1:0", name, quietLog, func(a string) { addrc <- a }) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("%s stopped with %v", name, err)
		}
	})
	select {
	case a := <-addrc:
		return a
	case err := <-done:
		t.Fatalf("%s did not start: %v", name, err)
	}
	return ""
}

func serveHTTPFor(upstreams ...string) func(context.Context, string, string, *slog.Logger, func(string)) error {
	return func(ctx context.Context, l, n string, log *slog.Logger, r func(string)) error {
		return serveHTTP(ctx, l, n, upstreams, log, r)
	}
}

func TestHTTPServiceReportsCallerAndUpstreams(t *testing.T) {
	// An upstream behind a sidecar that denies the call, as Envoy's RBAC
	// filter answers.
	denied := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusForbidden)
		io.WriteString(w, "RBAC: access denied")
	}))
	defer denied.Close()
	api := serve(t, serveHTTPFor(), "api")
	web := serve(t, serveHTTPFor("http://"+api), "web")

	req, _ := http.NewRequest(http.MethodPost, "http://"+web+"/orders?id=7", nil)
	req.Header.Set(xfccHeader, "By=spiffe://td/ns/default/sa/web;URI=spiffe://td/ns/default/sa/frontend")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var rep httpReply
	json.NewDecoder(resp.Body).Decode(&rep)
	resp.Body.Close()
	if resp.StatusCode != 200 || rep.Service != "web" || rep.Caller != "spiffe://td/ns/default/sa/frontend" || rep.Method != "POST" || rep.Path != "/orders?id=7" {
		t.Fatalf("web answered %d %+v", resp.StatusCode, rep)
	}
	// The hop to api carried no XFCC (no sidecar here): api reports none,
	// and got the same method and path.
	if len(rep.Upstreams) != 1 || rep.Upstreams[0].Reply == nil || rep.Upstreams[0].Reply.Service != "api" ||
		rep.Upstreams[0].Reply.Caller != "" || rep.Upstreams[0].Reply.Method != "POST" || rep.Upstreams[0].Reply.Path != "/orders?id=7" {
		t.Fatalf("upstream answer %+v", rep.Upstreams)
	}

	// A refused upstream makes the chain a 502 that says why.
	chain := serve(t, serveHTTPFor(denied.URL), "web2")
	c, _ := newHTTPClient("http://"+chain+"/admin", http.MethodGet)
	desc, err := c.call(context.Background())
	if err == nil || !strings.Contains(desc, "-> 502 service=web2 caller=none | upstream "+denied.URL+`/admin -> 403 body="RBAC: access denied"`) {
		t.Fatalf("call through a denied upstream: %q, %v", desc, err)
	}

	if code, body := get(t, "http://"+api+"/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("/healthz: %d %q", code, body)
	}
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestGRPCServiceReportsCaller(t *testing.T) {
	addr := serve(t, serveGRPC, "greeter")
	c, err := newGRPCClient(addr, "web", false)
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	// As the sidecar would set it.
	ctx := metadata.AppendToOutgoingContext(context.Background(), xfccHeader, "By=spiffe://td/ns/default/sa/greeter;URI=spiffe://td/ns/default/sa/web")
	desc, err := c.call(ctx)
	want := `-> OK service=greeter caller=spiffe://td/ns/default/sa/web message="Hello web, from greeter; caller spiffe://td/ns/default/sa/web"`
	if err != nil || !strings.HasSuffix(desc, want) {
		t.Fatalf("SayHello: %q, %v; want suffix %q", desc, err, want)
	}
	c.health = true
	if desc, err := c.call(context.Background()); err != nil || !strings.HasSuffix(desc, "-> SERVING") {
		t.Fatalf("health: %q, %v", desc, err)
	}
}

func TestTCPServiceEchoesWithPeer(t *testing.T) {
	addr := serve(t, serveTCP, "db")
	c := &tcpClient{addr: addr, line: `say "hi"`}
	desc, err := c.call(context.Background())
	if err != nil || !strings.Contains(desc, `-> db echo "say \"hi\"" peer=127.0.0.1:`) {
		t.Fatalf("tcp call: %q, %v", desc, err)
	}
	// A line over the bound closes the connection instead of growing a
	// buffer.
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	go conn.Write(bytes.Repeat([]byte("x"), maxLine+10))
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	// Closing with unread input may send a reset instead of a FIN.
	if n, err := conn.Read(make([]byte, 10)); !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("after an over-long line: read %d, %v; want the connection closed", n, err)
	}
}

// fakeClient fails the calls whose number (from 1) is in fail.
type fakeClient struct {
	n    atomic.Int32
	fail map[int32]bool
	// block makes a call wait for its context (a call in flight when the
	// loop is stopped).
	block int32
}

func (f *fakeClient) call(ctx context.Context) (string, error) {
	n := f.n.Add(1)
	if n == f.block {
		<-ctx.Done()
		return "call", ctx.Err()
	}
	if f.fail[n] {
		return fmt.Sprintf("call %d", n), errors.New("refused")
	}
	return fmt.Sprintf("call %d", n), nil
}
func (*fakeClient) close() {}

func TestCallLoop(t *testing.T) {
	t.Run("count, failures and summary", func(t *testing.T) {
		var out bytes.Buffer
		ok := callLoop(context.Background(), &fakeClient{fail: map[int32]bool{2: true}}, callOptions{count: 3, timeout: time.Second}, &out)
		want := "OK   call 1\nFAIL call 2: refused\nOK   call 3\nsummary: calls=3 ok=2 failed=1\nfirst failure: FAIL call 2: refused\n"
		if ok || out.String() != want {
			t.Fatalf("ok=%v, output:\n%s\nwant:\n%s", ok, out.String(), want)
		}
	})
	t.Run("one call prints one line", func(t *testing.T) {
		var out bytes.Buffer
		if ok := callLoop(context.Background(), &fakeClient{}, callOptions{count: 1, timeout: time.Second}, &out); !ok || out.String() != "OK   call 1\n" {
			t.Fatalf("ok=%v, output %q", ok, out.String())
		}
	})
	t.Run("until stopped; the call in flight is not a failure", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		f := &fakeClient{block: 5}
		var out bytes.Buffer
		done := make(chan bool)
		go func() { done <- callLoop(ctx, f, callOptions{count: 0, timeout: time.Minute, quiet: true}, &out) }()
		testwait.For(t, testwait.Timeout, "5 calls", func() bool { return f.n.Load() >= 5 })
		cancel()
		if ok := <-done; !ok || out.String() != "summary: calls=4 ok=4 failed=0\n" {
			t.Fatalf("ok=%v, output %q", ok, out.String())
		}
	})
	t.Run("no call made is not a success", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		var out bytes.Buffer
		if ok := callLoop(ctx, &fakeClient{}, callOptions{count: 0, timeout: time.Second}, &out); ok {
			t.Fatalf("ok with no call; output %q", out.String())
		}
	})
}

func TestCommandLine(t *testing.T) {
	for _, tc := range []struct {
		args     []string
		code     int
		inStderr string
	}{
		{[]string{"htp"}, 2, `unknown mode "htp"`},
		{[]string{"call"}, 2, "exactly one of --http, --grpc and --tcp"},
		{[]string{"call", "--http", "https://x:1/"}, 2, "want http://HOST:PORT"},
		{[]string{"http", "--upstream", "127.0.0.1:9102"}, 2, "want http://HOST:PORT"},
		{[]string{"tcp", "--upstream", "http://x:1"}, 2, "flag provided but not defined: -upstream"},
		{[]string{"grpc", "extra"}, 2, `unexpected argument "extra"`},
		{[]string{"http", "--listen", "127.0.0.1:99999"}, 1, "--listen"},
	} {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), tc.args, &stdout, &stderr)
		if code != tc.code || !strings.Contains(stderr.String(), tc.inStderr) {
			t.Errorf("demoapp %v: exit %d, stderr %q; want %d and %q", tc.args, code, stderr.String(), tc.code, tc.inStderr)
		}
	}
	var stdout bytes.Buffer
	if code := run(context.Background(), []string{"--version"}, &stdout, io.Discard); code != 0 || !strings.HasPrefix(stdout.String(), "demoapp ") {
		t.Errorf("--version: %d %q", code, stdout.String())
	}
}
