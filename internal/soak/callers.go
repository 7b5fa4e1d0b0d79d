package soak

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshd/meshd/mesh"
)

// sayHello is demoapp's gRPC method (helloworld.Greeter, whose request and
// reply are wire-compatible with a StringValue).
const sayHello = "/helloworld.Greeter/SayHello"

// caller makes one kind of call to one server through a caller identity's
// sidecar, the way an application does: HTTP on one kept-alive connection,
// gRPC on one channel, tcp on a new connection per call.
type caller interface {
	call(ctx context.Context) (Outcome, string)
	close()
}

// newCaller makes the caller for a protocol; port is the caller sidecar's
// loopback port for the server.
func newCaller(proto mesh.Protocol, server, identity string, port uint32) (caller, error) {
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	switch proto {
	case mesh.ProtocolHTTP, mesh.ProtocolHTTP2:
		// One connection, kept alive between calls: policy changes must
		// reach connections that are already open (issue 11).
		tr := &http.Transport{Proxy: nil, MaxConnsPerHost: 1, MaxIdleConnsPerHost: 1, IdleConnTimeout: time.Hour}
		return &httpCaller{url: "http://" + addr + "/soak/" + identity, c: &http.Client{Transport: tr}}, nil
	case mesh.ProtocolGRPC:
		conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return nil, fmt.Errorf("gRPC client for %s: %w", addr, err)
		}
		return &grpcCaller{conn: conn, name: identity}, nil
	case mesh.ProtocolTCP:
		return &tcpCaller{addr: addr, line: "soak " + identity, want: server + " echo "}, nil
	}
	return nil, fmt.Errorf("no caller for protocol %q", proto)
}

type httpCaller struct {
	url string
	c   *http.Client
}

func (h *httpCaller) call(ctx context.Context) (Outcome, string) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.url, nil)
	if err != nil {
		return Failed, err.Error()
	}
	resp, err := h.c.Do(req)
	if err != nil {
		return Failed, err.Error()
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if err != nil {
		return Failed, fmt.Sprintf("status %d, reading the body: %v", resp.StatusCode, err)
	}
	b := strings.TrimSpace(string(body))
	switch {
	case resp.StatusCode == http.StatusOK:
		return OK, "200"
	case resp.StatusCode == http.StatusForbidden && b == "RBAC: access denied":
		return Denied, "403 " + b
	}
	return Failed, fmt.Sprintf("status %d: %.200s (response flags %q)", resp.StatusCode, b, resp.Header.Get("x-envoy-response-flags"))
}

func (h *httpCaller) close() { h.c.CloseIdleConnections() }

type grpcCaller struct {
	conn *grpc.ClientConn
	name string
}

func (g *grpcCaller) call(ctx context.Context) (Outcome, string) {
	out := new(wrapperspb.StringValue)
	err := g.conn.Invoke(ctx, sayHello, wrapperspb.String(g.name), out)
	switch status.Code(err) {
	case codes.OK:
		return OK, "OK"
	case codes.PermissionDenied:
		return Denied, "PERMISSION_DENIED: " + status.Convert(err).Message()
	}
	return Failed, err.Error()
}

func (g *grpcCaller) close() { g.conn.Close() }

type tcpCaller struct {
	addr, line, want string
}

// call sends a line and reads the echo. A connection closed (or reset)
// before any answer is what a tcp denial looks like through the sidecars:
// the server's sidecar closes it, and the caller's closes ours.
func (t *tcpCaller) call(ctx context.Context) (Outcome, string) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", t.addr)
	if err != nil {
		return Failed, err.Error()
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	if _, err := io.WriteString(c, t.line+"\n"); err != nil {
		if closedEarly(err) {
			return Denied, "closed before the request was written: " + err.Error()
		}
		return Failed, err.Error()
	}
	reply, err := bufio.NewReader(c).ReadString('\n')
	switch {
	case err == nil && strings.HasPrefix(reply, t.want):
		return OK, "echo"
	case err == nil:
		return Failed, fmt.Sprintf("unexpected answer %q", reply)
	case reply == "" && closedEarly(err):
		return Denied, "closed without an answer: " + err.Error()
	}
	return Failed, fmt.Sprintf("after %d bytes: %v", len(reply), err)
}

func closedEarly(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

func (t *tcpCaller) close() {}

// callLoop is one continuous caller: a call every interval until ctx ends,
// each recorded with the judge as it finishes.
type callLoop struct {
	idx      int
	key      LoopKey
	proto    mesh.Protocol
	c        caller
	interval time.Duration
	timeout  time.Duration
	lastEnd  atomic.Int64 // unix nanoseconds of the last finished call
}

func (l *callLoop) run(ctx context.Context, j *Judge, onViolation func(Violation)) {
	defer l.c.close()
	l.lastEnd.Store(time.Now().UnixNano())
	tick := time.NewTicker(l.interval)
	defer tick.Stop()
	for {
		cctx, cancel := context.WithTimeout(ctx, l.timeout)
		start := time.Now()
		o, detail := l.c.call(cctx)
		end := time.Now()
		cancel()
		if ctx.Err() != nil {
			// Cut short by the end of the run: not a result.
			return
		}
		l.lastEnd.Store(end.UnixNano())
		if v := j.Record(Call{Loop: l.idx, Start: start, End: end, Outcome: o, Detail: detail}); v != nil {
			onViolation(*v)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
