package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// A client makes one call and describes its outcome in one line. err is
// set when the call failed (including an answer that refuses it, such as an
// HTTP 403 or a gRPC PermissionDenied).
type client interface {
	call(ctx context.Context) (desc string, err error)
	close()
}

type callOptions struct {
	count    int
	duration time.Duration
	interval time.Duration
	timeout  time.Duration
	quiet    bool
}

func runCall(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("demoapp call", flag.ContinueOnError)
	fs.SetOutput(stderr)
	httpURL := fs.String("http", "", "call this `URL` (plaintext, usually the local sidecar's port for the upstream: http://127.0.0.1:9102/); connections are kept alive between calls")
	grpcAddr := fs.String("grpc", "", "call helloworld.Greeter/SayHello at `HOST:PORT` (plaintext, usually the local sidecar's port for the upstream); one connection for all calls")
	tcpAddr := fs.String("tcp", "", "send a line to the TCP echo service at `HOST:PORT` and read the answer; a new connection per call")
	method := fs.String("method", http.MethodGet, "http only: the request `method`")
	message := fs.String("message", "demo", "grpc: the name SayHello greets; tcp: the `line` sent")
	healthCheck := fs.Bool("health", false, "grpc only: call grpc.health.v1.Health/Check instead of SayHello (SERVING is OK)")
	var o callOptions
	fs.IntVar(&o.count, "count", 1, "number of calls; 0: call until --duration passes or SIGINT/SIGTERM arrives")
	fs.DurationVar(&o.duration, "duration", 0, "stop calling after this long (with --count 0, or as a limit on --count)")
	fs.DurationVar(&o.interval, "interval", 100*time.Millisecond, "pause between calls")
	fs.DurationVar(&o.timeout, "timeout", 5*time.Second, "limit on each call")
	fs.BoolVar(&o.quiet, "quiet", false, "print only failed calls and the summary")
	if code, ok := parse(fs, args, stdout); !ok {
		return code
	}
	var c client
	var err error
	switch {
	case btoi(*httpURL != "")+btoi(*grpcAddr != "")+btoi(*tcpAddr != "") != 1:
		err = errors.New("give exactly one of --http, --grpc and --tcp")
	case o.count < 0:
		err = fmt.Errorf("--count %d: use 0 (until stopped) or more", o.count)
	case *httpURL != "":
		c, err = newHTTPClient(*httpURL, *method)
	case *grpcAddr != "":
		c, err = newGRPCClient(*grpcAddr, *message, *healthCheck)
	default:
		c = &tcpClient{addr: *tcpAddr, line: *message}
	}
	if err != nil {
		fmt.Fprintf(stderr, "demoapp call: %v\n", err)
		return 2
	}
	defer c.close()
	if callLoop(ctx, c, o, stdout) {
		return 0
	}
	return 1
}

// callLoop makes the calls and reports whether all succeeded (and at least
// one was made). A call cut short by ctx (the user stopping the loop) is
// not counted.
func callLoop(ctx context.Context, c client, o callOptions, w io.Writer) bool {
	start := time.Now()
	var ok, failed int
	var firstFailure string
	for o.count == 0 || ok+failed < o.count {
		if ctx.Err() != nil || (o.duration > 0 && time.Since(start) >= o.duration) {
			break
		}
		cctx, cancel := context.WithTimeout(ctx, o.timeout)
		desc, err := c.call(cctx)
		cancel()
		switch {
		case err != nil && ctx.Err() != nil:
			// Interrupted, not failed.
		case err != nil:
			failed++
			line := fmt.Sprintf("FAIL %s: %v", desc, err)
			if firstFailure == "" {
				firstFailure = line
			}
			fmt.Fprintln(w, line)
		default:
			ok++
			if !o.quiet {
				fmt.Fprintln(w, "OK   "+desc)
			}
		}
		if o.count != 0 && ok+failed >= o.count {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(o.interval):
		}
	}
	if o.count != 1 {
		fmt.Fprintf(w, "summary: calls=%d ok=%d failed=%d\n", ok+failed, ok, failed)
		if firstFailure != "" {
			fmt.Fprintf(w, "first failure: %s\n", firstFailure)
		}
	}
	return failed == 0 && ok > 0
}

type httpClient struct {
	url, method string
	c           *http.Client
}

func newHTTPClient(rawURL, method string) (*httpClient, error) {
	if err := checkUpstreamURL(rawURL); err != nil {
		return nil, fmt.Errorf("--http %q: %w", rawURL, err)
	}
	// No proxy from the environment: the call must go to the sidecar.
	tr := &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 4, IdleConnTimeout: time.Minute}
	return &httpClient{url: rawURL, method: method, c: &http.Client{Transport: tr}}, nil
}

func (h *httpClient) call(ctx context.Context) (string, error) {
	desc := fmt.Sprintf("http %s %s", h.method, h.url)
	req, err := http.NewRequestWithContext(ctx, h.method, h.url, nil)
	if err != nil {
		return desc, err
	}
	resp, err := h.c.Do(req)
	if err != nil {
		return desc, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return desc, fmt.Errorf("reading the answer: %w", err)
	}
	desc = fmt.Sprintf("%s -> %d %s", desc, resp.StatusCode, describeHTTPBody(body))
	if resp.StatusCode/100 != 2 {
		return desc, fmt.Errorf("status %d", resp.StatusCode)
	}
	return desc, nil
}

func (h *httpClient) close() { h.c.CloseIdleConnections() }

// describeHTTPBody renders a demoapp answer (and its upstreams' answers) as
// "service=api caller=spiffe://…", anything else as body="…".
func describeHTTPBody(body []byte) string {
	var rep httpReply
	if json.Unmarshal(body, &rep) != nil || rep.Service == "" {
		return fmt.Sprintf("body=%q", strings.TrimSpace(string(body)))
	}
	return describeReply(&rep)
}

func describeReply(rep *httpReply) string {
	s := fmt.Sprintf("service=%s caller=%s", rep.Service, orNone(rep.Caller))
	for _, u := range rep.Upstreams {
		s += fmt.Sprintf(" | upstream %s -> ", u.URL)
		switch {
		case u.Error != "":
			s += "error: " + u.Error
		case u.Reply != nil:
			s += fmt.Sprintf("%d %s", u.Status, describeReply(u.Reply))
		default:
			s += fmt.Sprintf("%d body=%q", u.Status, u.Body)
		}
	}
	return s
}

type grpcClient struct {
	addr, name string
	health     bool
	conn       *grpc.ClientConn
}

func newGRPCClient(addr, name string, health bool) (*grpcClient, error) {
	// Plaintext to the local sidecar, which originates mTLS.
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("--grpc %q: %w", addr, err)
	}
	return &grpcClient{addr: addr, name: name, health: health, conn: conn}, nil
}

func (g *grpcClient) call(ctx context.Context) (string, error) {
	if g.health {
		desc := "grpc Health/Check " + g.addr
		resp, err := healthpb.NewHealthClient(g.conn).Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			return desc + " -> " + status.Code(err).String(), err
		}
		desc += " -> " + resp.GetStatus().String()
		if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			return desc, errors.New("not serving")
		}
		return desc, nil
	}
	desc := "grpc SayHello " + g.addr
	var hdr metadata.MD
	out := new(wrapperspb.StringValue)
	if err := g.conn.Invoke(ctx, sayHelloMethod, wrapperspb.String(g.name), out, grpc.Header(&hdr)); err != nil {
		return desc + " -> " + status.Code(err).String(), err
	}
	return fmt.Sprintf("%s -> OK service=%s caller=%s message=%q", desc, first(hdr.Get(serviceHeader)), orNone(first(hdr.Get(callerHeaderKey))), out.GetValue()), nil
}

func (g *grpcClient) close() { g.conn.Close() }

type tcpClient struct{ addr, line string }

func (t *tcpClient) call(ctx context.Context) (string, error) {
	desc := "tcp " + t.addr
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", t.addr)
	if err != nil {
		return desc, err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	if _, err := io.WriteString(c, t.line+"\n"); err != nil {
		return desc, err
	}
	reply, err := bufio.NewReaderSize(c, 4096).ReadString('\n')
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = errors.New("connection closed without an answer")
		}
		return desc, err
	}
	return desc + " -> " + strings.TrimSpace(reply), nil
}

func (*tcpClient) close() {}

func first(v []string) string {
	if len(v) == 0 {
		return ""
	}
	return v[0]
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
