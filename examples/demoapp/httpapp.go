package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// httpReply is what the HTTP service answers (as JSON) on every path but
// /healthz.
type httpReply struct {
	Service  string `json:"service"`
	Protocol string `json:"protocol"`
	Method   string `json:"method"`
	Path     string `json:"path"`
	// Caller is the caller's SPIFFE ID as the sidecar reported it; empty
	// when the request carried no x-forwarded-client-cert (it did not come
	// through a sidecar over mTLS).
	Caller string `json:"caller"`
	// XFCC is the header as received.
	XFCC      string          `json:"xfcc,omitempty"`
	Upstreams []upstreamReply `json:"upstreams,omitempty"`
}

// upstreamReply is one upstream's answer to a request passed on by the
// HTTP service.
type upstreamReply struct {
	URL    string `json:"url"`
	Status int    `json:"status,omitempty"`
	// Reply is the upstream's answer when it is a demoapp; Body is any
	// other answer (such as the sidecar's "RBAC: access denied").
	Reply *httpReply `json:"reply,omitempty"`
	Body  string     `json:"body,omitempty"`
	Error string     `json:"error,omitempty"`
}

func (u upstreamReply) ok() bool { return u.Error == "" && u.Status/100 == 2 }

// Bounds of what the service reads and waits for, so a misbehaving
// upstream or client cannot hold it.
const (
	maxBody         = 1 << 20
	upstreamTimeout = 10 * time.Second
	shutdownGrace   = 5 * time.Second
)

func checkUpstreamURL(s string) error {
	if u, err := url.Parse(s); err != nil || u.Scheme != "http" || u.Host == "" {
		return errors.New("want http://HOST:PORT[/PATH] (plaintext to the local sidecar, which adds mTLS)")
	}
	return nil
}

type httpService struct {
	name      string
	upstreams []string
	client    *http.Client
	log       *slog.Logger
}

func (s *httpService) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/healthz" {
		io.WriteString(w, "ok\n")
		return
	}
	xfcc := r.Header.Get(xfccHeader)
	rep := httpReply{Service: s.name, Protocol: "http", Method: r.Method, Path: r.URL.RequestURI(),
		Caller: callerFromXFCC(xfcc), XFCC: xfcc}
	status := http.StatusOK
	for _, base := range s.upstreams {
		u := s.callUpstream(r, base)
		if !u.ok() {
			status = http.StatusBadGateway
		}
		rep.Upstreams = append(rep.Upstreams, u)
	}
	s.log.Info("request", "method", r.Method, "path", r.URL.RequestURI(), "caller", orNone(rep.Caller), "status", status)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(rep)
}

// callUpstream sends the request's method and path (without its body) on
// to base.
func (s *httpService) callUpstream(r *http.Request, base string) upstreamReply {
	target := strings.TrimSuffix(base, "/") + r.URL.RequestURI()
	out := upstreamReply{URL: target}
	ctx, cancel := context.WithTimeout(r.Context(), upstreamTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, r.Method, target, nil)
	if err != nil {
		out.Error = err.Error()
		return out
	}
	resp, err := s.client.Do(req)
	if err != nil {
		out.Error = err.Error()
		return out
	}
	defer resp.Body.Close()
	out.Status = resp.StatusCode
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		out.Error = fmt.Sprintf("reading the answer: %v", err)
		return out
	}
	var rep httpReply
	if json.Unmarshal(body, &rep) == nil && rep.Service != "" {
		out.Reply = &rep
	} else {
		out.Body = strings.TrimSpace(string(body))
	}
	return out
}

func serveHTTP(ctx context.Context, listen, name string, upstreams []string, log *slog.Logger, ready func(string)) error {
	lis, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	svc := &httpService{name: name, upstreams: upstreams, log: log,
		client: &http.Client{Timeout: upstreamTimeout}}
	srv := &http.Server{Handler: svc, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 5 * time.Minute}
	// The sidecar speaks HTTP/1.1 to an http service and HTTP/2 without TLS
	// (h2c) to an http2 one: serve both.
	srv.Protocols = new(http.Protocols)
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	ready(lis.Addr().String())
	return serveUntil(ctx, func() error { return srv.Serve(lis) }, func() {
		sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			srv.Close()
		}
	})
}

// serveUntil runs serve until it fails or ctx ends; then stop shuts the
// server down (within shutdownGrace).
func serveUntil(ctx context.Context, serve func() error, stop func()) error {
	errc := make(chan error, 1)
	go func() { errc <- serve() }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	stop()
	return nil
}

func orNone(caller string) string {
	if caller == "" {
		return "none"
	}
	return caller
}
