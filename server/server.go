// Package server is meshd's xDS gRPC server: its own state-of-the-world
// and delta stream loops (which own the ACK/NACK protocol), the snapshot
// cache that wakes them, and the gRPC plumbing (TLS, keepalives, buffer
// pool, codec). Authentication (server/auth), stream status
// (server/tracker), the CA service (server/caservice) and the admin API
// (server/admin) are packages of their own.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	endpointservice "github.com/envoyproxy/go-control-plane/envoy/service/endpoint/v3"
	listenerservice "github.com/envoyproxy/go-control-plane/envoy/service/listener/v3"
	routeservice "github.com/envoyproxy/go-control-plane/envoy/service/route/v3"
	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/config"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/experimental"
	"google.golang.org/grpc/keepalive"

	"github.com/meshd/meshd/internal/metrics"
	"github.com/meshd/meshd/server/auth"
	"github.com/meshd/meshd/server/tracker"
)

// Options configure the xDS server.
type Options struct {
	// TLS is required (server certificate from the mesh CA) unless
	// Auth.Insecure (--insecure-xds, development only) asks for plaintext.
	TLS     *tls.Config
	Logger  *slog.Logger
	Tracker *tracker.Tracker
	// Events, when set, is told of stream openings, closings and ACKs (the
	// publisher, for mTLS migrations); it must never block.
	Events Events
	// Keepalive: how often to ping an idle proxy and how long to wait for
	// the answer. Dead peers (a VM that vanished) are detected in
	// KeepaliveTime+KeepaliveTimeout rather than at TCP timeout.
	KeepaliveTime, KeepaliveTimeout time.Duration
	// HandshakeTimeout bounds a new connection's TLS and HTTP/2 handshakes
	// (gRPC's default is 120 s; issue 13: stalled handshakes lived that
	// long). Zero: 5 s.
	HandshakeTimeout time.Duration
	// PaceHandshake, when set, is given each new connection before its
	// handshake and returns the connection the handshake is to use and a
	// function called when it is over (server/connlimit's PaceHandshake:
	// a bound on handshakes computed at once, each with its own deadline
	// from its start).
	PaceHandshake func(raw net.Conn) (paced net.Conn, end func())
	// MaxConnectionIdle closes a connection that has had no stream for
	// this long (an agent between renewals, a proxy whose streams were
	// ended); MaxConnectionAge sends a connection GOAWAY after about this
	// long (±10%), so every proxy reconnects, re-authenticates and may land
	// on another replica, and MaxConnectionAgeGrace is how long its streams
	// may then continue. Zero: not enforced.
	MaxConnectionIdle, MaxConnectionAge, MaxConnectionAgeGrace time.Duration
	// Auth, when set, authenticates every xDS stream (auth.go). With
	// Auth.Insecure the server speaks plaintext and TLS may be nil.
	Auth *auth.Authenticator
	// Register adds further services (the CA service) to the gRPC server.
	Register []func(*grpc.Server)
}

// XDS is the running xDS gRPC server.
type XDS struct {
	grpc *grpc.Server
	log  *slog.Logger
	// cancel ends go-control-plane's server context.
	cancel context.CancelFunc
}

// NewXDS builds the gRPC server serving ADS (state-of-the-world and delta)
// and the per-type discovery services from cache.
func NewXDS(cache *Cache, o Options) (*XDS, error) {
	creds := insecure.NewCredentials()
	switch {
	case o.TLS != nil:
		creds = credentials.NewTLS(o.TLS)
	case o.Auth == nil || !o.Auth.Insecure:
		return nil, errors.New("xDS server needs a TLS configuration (plaintext only with --insecure-xds)")
	}
	if o.PaceHandshake != nil {
		creds = pacedCreds{TransportCredentials: creds, pace: o.PaceHandshake}
	}
	var auth []grpc.ServerOption
	if o.Auth != nil {
		auth = append(auth, grpc.ChainStreamInterceptor(o.Auth.StreamInterceptor()), grpc.ChainUnaryInterceptor(o.Auth.UnaryInterceptor()))
	}
	if o.KeepaliveTime == 0 {
		o.KeepaliveTime = 30 * time.Second
	}
	if o.KeepaliveTimeout == 0 {
		o.KeepaliveTimeout = 10 * time.Second
	}
	if o.HandshakeTimeout == 0 {
		o.HandshakeTimeout = 5 * time.Second
	}
	// No gRPC read buffer: over TLS the framer reads straight from the
	// tls.Conn, which already holds each decrypted record, so a buffer on
	// top only copies bytes again; in plaintext a 4 KiB buffer per
	// connection was a fifth of a proxy's heap (16 MiB of 3,000 proxies'
	// 85, issue 14) for saving one read system call per frame a proxy
	// sends (its ACKs: a handful per change).
	const readBuffer = 0
	pool := defaultBufferPool()
	gs := grpc.NewServer(append(auth,
		grpc.Creds(creds),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: o.KeepaliveTime, Timeout: o.KeepaliveTimeout,
			MaxConnectionIdle: o.MaxConnectionIdle, MaxConnectionAge: o.MaxConnectionAge, MaxConnectionAgeGrace: o.MaxConnectionAgeGrace}),
		grpc.ConnectionTimeout(o.HandshakeTimeout),
		// Proxies ping us too (Envoy's and gRPC's keepalives); allow it
		// rather than closing their connections with ENHANCE_YOUR_CALM.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		// Each proxy holds one long-lived stream; there is no reason to
		// allow a client thousands of concurrent streams.
		grpc.MaxConcurrentStreams(64),
		// Every Envoy holds its own connection, mostly idle. gRPC's default
		// 32 KiB read and 32 KiB write buffers per connection would be most
		// of a proxy's cost in meshd (measured: 100 KiB of heap per proxy
		// with one connection each, 1,000 proxies). No read buffer over
		// TLS (above) and write buffers borrowed only while writing cut
		// that. The write
		// buffer is 64 KiB because it is borrowed: a cold proxy that sees
		// 200 services is sent 300 KiB, and 16 KiB buffers made that
		// twenty write system calls (a quarter of meshd's CPU in a cold
		// sync of 3,000 such proxies).
		grpc.ReadBufferSize(readBuffer),
		grpc.WriteBufferSize(64<<10),
		grpc.SharedWriteBuffer(true),
		// No HPACK dynamic table for the headers proxies send: a proxy
		// opens one stream on its connection, so a table entry is never
		// used twice, and each connection would keep its proxy's headers
		// (a bootstrap token is most of a kilobyte) for its whole life.
		grpc.HeaderTableSize(0),
		grpc.InitialWindowSize(64<<10),
		grpc.InitialConnWindowSize(64<<10),
		// Message buffers (read, and encoded by the codec) from free lists
		// of bounded length instead of sync.Pools, which keep a whole
		// burst's buffers (bufpool.go, codec.go).
		experimental.BufferPool(pool),
		grpc.ForceServerCodecV2(poolCodec{pool: pool}),
	)...)
	ctx, cancel := context.WithCancel(context.Background())
	// go-control-plane serves fetch (unary requests). Only listeners and
	// clusters have wildcard subscriptions in xDS; for other types an empty
	// resource list means "subscribed to nothing", which go-control-plane's
	// legacy mode would read as "everything".
	gcp := serverv3.NewServer(ctx, cache, serverv3.CallbackFuncs{}, config.DeactivateLegacyWildcardForTypes(nonWildcardTypes))
	// Streams, state of the world and delta, are meshd's own loops
	// (sotw.go, delta.go); they feed the tracker and the publisher.
	if o.Tracker == nil {
		log := o.Logger
		if log == nil {
			log = slog.Default()
		}
		o.Tracker = tracker.NewTracker(log, metrics.New(), nil)
	}
	var events Events = noEvents{}
	if o.Events != nil {
		events = o.Events
	}
	xs := &sotwServer{Server: gcp, cache: cache, tracker: o.Tracker, events: events, ctx: ctx}
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(gs, xs)
	listenerservice.RegisterListenerDiscoveryServiceServer(gs, xs)
	clusterservice.RegisterClusterDiscoveryServiceServer(gs, xs)
	routeservice.RegisterRouteDiscoveryServiceServer(gs, xs)
	endpointservice.RegisterEndpointDiscoveryServiceServer(gs, xs)
	secretservice.RegisterSecretDiscoveryServiceServer(gs, xs)
	for _, r := range o.Register {
		r(gs)
	}
	return &XDS{grpc: gs, log: o.Logger, cancel: cancel}, nil
}

// Serve accepts connections on lis until Stop.
func (x *XDS) Serve(lis net.Listener) error {
	if err := x.grpc.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("xDS server: %w", err)
	}
	return nil
}

// Stop drains gracefully for up to timeout, then closes every stream. Proxies
// keep their configuration and reconnect (to this or another replica).
func (x *XDS) Stop(timeout time.Duration) {
	// xDS streams never end on their own, so a plain GracefulStop would
	// always hit the timeout: end go-control-plane's stream handlers first.
	x.cancel()
	done := make(chan struct{})
	go func() {
		x.grpc.GracefulStop()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(timeout):
		x.grpc.Stop()
	}
}

// pacedCreds runs each server handshake on the connection PaceHandshake
// gives, and tells it when the handshake is over.
type pacedCreds struct {
	credentials.TransportCredentials
	pace func(net.Conn) (net.Conn, func())
}

func (p pacedCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	paced, end := p.pace(raw)
	defer end()
	return p.TransportCredentials.ServerHandshake(paced)
}

func (p pacedCreds) Clone() credentials.TransportCredentials {
	return pacedCreds{TransportCredentials: p.TransportCredentials.Clone(), pace: p.pace}
}
