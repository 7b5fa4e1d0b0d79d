// Package auth authenticates xDS streams and CA calls: a bootstrap token
// or a mesh client certificate must grant the node's catalog identity, and
// a stream only gets the secrets that identity may read.
package auth

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/meshd/meshd/internal/ratelog"
	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/sds"
	"github.com/meshd/meshd/server/caclient"
	"github.com/meshd/meshd/xds"
)

// TokenMetadataKey is the gRPC metadata key carrying a bootstrap token as
// "Bearer <token>" (Envoy sends it through the xDS cluster's
// initial_metadata; see bootstrap.EnvoyOptions.Token).
const TokenMetadataKey = caclient.TokenMetadataKey

// deniedSecretName replaces a secret subscription that named only other
// identities' secrets: an empty name list would turn the request into a
// wildcard subscription.
const deniedSecretName = "meshd.denied"

// TokenVerifier checks bootstrap tokens and follows their revocation list
// (sds.TokenAuthority implements it).
type TokenVerifier interface {
	// Verify checks a token: signature, trust domain, validity, revocation.
	Verify(token string) (sds.TokenClaims, error)
	// IsRevoked looks a token id up in the revocation list, re-read if its
	// file changed; Refresh only re-reads it (reporting whether it
	// changed); RevokedCached answers from the list as last read.
	IsRevoked(id string) (bool, error)
	Refresh() (bool, error)
	RevokedCached(id string) bool
	// RevocationListPath is the list's file, which Run watches.
	RevocationListPath() string
}

// ProxyLookup resolves a node id to the catalog's service for it and the
// identity that service runs as; ok is false for a node not in the catalog.
type ProxyLookup func(nodeID string) (svc mesh.ServiceKey, id mesh.Identity, ok bool)

// Authenticator enforces that an xDS stream only gets the configuration and
// secrets of the identity its credential grants: a bootstrap token (bound to
// a service) or a client certificate from the mesh CA (bound to a SPIFFE ID).
type Authenticator struct {
	Tokens      TokenVerifier
	Lookup      ProxyLookup
	TrustDomain string
	Logger      *slog.Logger
	// Insecure disables authentication (--insecure-xds): every stream is
	// served and logged with a warning. Development only.
	Insecure bool
	// RecheckEvery is how often Run sweeps the open streams' credentials
	// for expiry and revocation when no change of the revocation list is
	// seen (session.go). Zero: DefaultRecheck.
	RecheckEvery time.Duration
	// MaxStreamsPerNode bounds the streams one credential may hold open
	// for one node (xDS and access-log streams together); 0: no bound.
	// A credential grants only the nodes of its service, so it holds at
	// most this many streams per proxy of the service in the catalog.
	MaxStreamsPerNode int
	// RefusalLogEvery is the least time between two log lines of the same
	// refusal (the counters count every one). Zero: 10 seconds.
	RefusalLogEvery time.Duration
	// OnAuthenticated, when set, is told the remote address of every
	// connection on which a stream or call proved a credential (the
	// connection limiter stops timing it out and never evicts it; package
	// server/connlimit). It must not block.
	OnAuthenticated func(net.Addr)

	once          sync.Once
	refused       *prometheus.CounterVec
	ended         *prometheus.CounterVec
	secretsDenied *prometheus.CounterVec
	// refusals logs refused streams and calls, each message at most once
	// per RefusalLogEvery (internal/ratelog).
	refusals *slog.Logger
	// accessLogLog logs refusals of access-log streams at most once a
	// minute: a sidecar retries them at every flush.
	accessLogLog *slog.Logger

	// mu guards grants: one per credential holding streams (session.go).
	mu     sync.Mutex
	grants map[string]*grant
}

// refusalReasons are the reason labels of meshd_xds_auth_refused_total.
var refusalReasons = []string{"no_credential", "bad_token", "expired_token", "revoked_token", "not_a_credential",
	"bad_certificate", "no_node", "unknown_node", "identity_mismatch", "node_changed", "bad_csr", "too_many_streams"}

// accessLogMethod is Envoy's gRPC access log service (package telemetry),
// served on the xDS port behind the same authentication as xDS: the node
// of a stream's first message must be one its credential grants, so a
// sidecar can only report as itself.
const accessLogMethod = "/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs"

// RegisterMetrics adds the authenticator's counters to reg.
func (a *Authenticator) RegisterMetrics(reg prometheus.Registerer) {
	a.init()
	reg.MustRegister(a.refused, a.ended, a.secretsDenied)
}

func (a *Authenticator) init() {
	a.once.Do(func() {
		if a.Logger == nil {
			a.Logger = slog.Default()
		}
		a.refused = prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshd_xds_auth_refused_total",
			Help: "xDS streams and requests refused by authentication, by reason (no_credential, bad_token, expired_token, revoked_token, bad_certificate, not_a_credential, unknown_node, identity_mismatch, node_changed, no_node, bad_csr, too_many_streams).",
		}, []string{"reason"})
		// Each reason starts at 0, so that increase() sees the first refusal.
		for _, r := range refusalReasons {
			a.refused.WithLabelValues(r)
		}
		a.ended = prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshd_xds_streams_ended_total",
			Help: "Open xDS and access-log streams meshd closed because their credential became invalid, by reason (revoked, expired, revocation_list_unreadable).",
		}, []string{"reason"})
		every := a.RefusalLogEvery
		if every <= 0 {
			every = 10 * time.Second
		}
		a.refusals = ratelog.New(a.Logger.Handler(), every)
		a.accessLogLog = ratelog.New(a.Logger.With("stream", "access log").Handler(), time.Minute)
		a.secretsDenied = prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshd_sds_secret_requests_denied_total",
			Help: "SDS secret names a proxy asked for that its credential does not grant (another identity's secret); nothing is returned for them.",
		}, []string{"node"})
	})
}

// credential is what a stream proved about itself.
type credential struct {
	kind    string            // "token" or "certificate"
	service mesh.ServiceKey   // token: the service it names
	id      mesh.Identity     // certificate: the SPIFFE ID it carries
	claims  sds.TokenClaims   // token only
	leaf    *x509.Certificate // certificate only
	peer    string            // remote address, for logs
	// key names the credential's grant (session.go); tokenID is the token
	// it is or was issued through (revocation ends it), "" for a
	// certificate the operator issued; notAfter is when it expires.
	key      string
	tokenID  string
	notAfter time.Time
}

func (c *credential) String() string {
	if c.kind == "token" {
		return "token " + c.claims.String()
	}
	return "certificate " + c.id.SPIFFEID() + " (serial " + c.leaf.SerialNumber.Text(16) + ")"
}

// origin is what a certificate signed for this credential records.
func (c *credential) origin() sds.CertOrigin { return sds.CertOrigin{TokenID: c.tokenID} }

// refuse counts a refusal under reason and returns its gRPC status.
func (a *Authenticator) refuse(reason string, code codes.Code, format string, args ...any) error {
	a.refused.WithLabelValues(reason).Inc()
	return status.Errorf(code, format, args...)
}

// authenticate finds and checks the stream's credential.
func (a *Authenticator) authenticate(ctx context.Context, log *slog.Logger) (*credential, error) {
	c := &credential{}
	p, _ := peer.FromContext(ctx)
	if p != nil && p.Addr != nil {
		c.peer = p.Addr.String()
	}
	// Only the token's values, not a copy of all the stream's metadata.
	if vals := metadata.ValueFromIncomingContext(ctx, TokenMetadataKey); len(vals) > 0 {
		tok, ok := strings.CutPrefix(vals[0], "Bearer ")
		if !ok {
			return nil, a.refuse("bad_token", codes.Unauthenticated, "xDS: the %q metadata must be \"Bearer <token>\"", TokenMetadataKey)
		}
		claims, err := a.Tokens.Verify(strings.TrimSpace(tok))
		if err != nil {
			reason := "bad_token"
			switch {
			case errors.Is(err, sds.ErrTokenExpired):
				reason = "expired_token"
			case errors.Is(err, sds.ErrTokenRevoked):
				reason = "revoked_token"
			}
			log.Warn("xDS stream refused: bad bootstrap token", "peer", c.peer, "reason", reason, "err", err)
			return nil, a.refuse(reason, codes.Unauthenticated, "xDS: bootstrap token refused: %v", err)
		}
		c.kind, c.service, c.claims = "token", claims.ServiceKey(), claims
		c.key, c.tokenID, c.notAfter = "token "+claims.ID, claims.ID, claims.Expires
		return c, nil
	}
	if p != nil {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.VerifiedChains) > 0 && len(ti.State.VerifiedChains[0]) > 0 {
			leaf := ti.State.VerifiedChains[0][0]
			if len(leaf.URIs) != 1 {
				return nil, a.refuse("bad_certificate", codes.Unauthenticated, "xDS: client certificate must carry exactly one SPIFFE URI SAN")
			}
			id, err := mesh.ParseSPIFFEID(leaf.URIs[0].String())
			if err != nil || id.TrustDomain != a.TrustDomain {
				return nil, a.refuse("bad_certificate", codes.Unauthenticated, "xDS: client certificate %s is not a workload identity of trust domain %q", leaf.URIs[0], a.TrustDomain)
			}
			c.kind, c.id, c.leaf = "certificate", id, leaf
			if err := a.checkCertOrigin(c, log); err != nil {
				return nil, err
			}
			return c, nil
		}
	}
	if log == a.accessLogLog {
		log.Warn("xDS stream refused: no credential", "peer", c.peer,
			"hint", "a sidecar whose bootstrap predates meshd's telemetry sends no token on access-log streams: regenerate it with meshctl bootstrap, or run meshd --telemetry=false")
	} else {
		log.Warn("xDS stream refused: no credential", "peer", c.peer)
	}
	return nil, a.refuse("no_credential", codes.Unauthenticated,
		"xDS: no credential: send a bootstrap token (meshctl token create, then meshctl bootstrap --token-file) or a client certificate from the mesh CA")
}

// checkCertOrigin accepts a client certificate as a credential only if it
// was issued as one (sds.CertOrigin: by a CSR, or by the operator) and the
// token its chain started from is not revoked. The workload leaves meshd
// serves over SDS are not credentials: whoever held a token for the
// service received them, and would otherwise keep access after the
// token's revocation (issue 13).
func (a *Authenticator) checkCertOrigin(c *credential, log *slog.Logger) error {
	o, ok, err := sds.CertOriginOf(c.leaf)
	switch {
	case err != nil:
		return a.refuse("bad_certificate", codes.Unauthenticated, "xDS: client certificate %s: %v", c, err)
	case !ok:
		log.Warn("xDS stream refused: a workload certificate is not a credential", "credential", c.String(), "peer", c.peer)
		return a.refuse("not_a_credential", codes.Unauthenticated,
			"xDS: client %s is a workload certificate (served over SDS, or issued before meshd marked credentials), not a credential for meshd: authenticate with a bootstrap token, or with a certificate from mesh-agent or meshctl certs issue", c)
	}
	c.key, c.tokenID, c.notAfter = "certificate "+c.leaf.SerialNumber.Text(16), o.TokenID, c.leaf.NotAfter
	if o.TokenID == "" {
		return nil
	}
	revoked, err := a.Tokens.IsRevoked(o.TokenID)
	if err != nil {
		return a.refuse("bad_token", codes.Unavailable, "xDS: token revocation list: %v", err)
	}
	if revoked {
		log.Warn("xDS stream refused: the certificate's bootstrap token has been revoked", "credential", c.String(), "token", o.TokenID, "peer", c.peer)
		return a.refuse("revoked_token", codes.Unauthenticated,
			"xDS: client %s was issued through bootstrap token %s, which has been revoked: give the workload a new token (meshctl token create)", c, o.TokenID)
	}
	return nil
}

// Caller is what a unary call's credential proved: the node's catalog
// service and identity it grants, the credential (for logs), and what a
// certificate signed for it records (sds.CertOrigin).
type Caller struct {
	Service    mesh.ServiceKey
	Identity   mesh.Identity
	Credential string
	Origin     sds.CertOrigin
}

// AuthorizeCall authenticates a unary call (the CA service) and checks that
// its credential grants nodeID's identity. A credential is required even
// with Insecure: the CA service is a signing oracle otherwise.
func (a *Authenticator) AuthorizeCall(ctx context.Context, nodeID string) (Caller, error) {
	a.init()
	cred, err := a.authenticate(ctx, a.refusals)
	if err != nil {
		return Caller{}, err
	}
	id, err := a.authorize(cred, nodeID, a.refusals)
	if err != nil {
		return Caller{}, err
	}
	a.authenticated(ctx)
	svc, _, _ := a.Lookup(nodeID)
	return Caller{Service: svc, Identity: id, Credential: cred.String(), Origin: cred.origin()}, nil
}

// authenticated tells OnAuthenticated about the connection of ctx.
func (a *Authenticator) authenticated(ctx context.Context) {
	if a.OnAuthenticated == nil {
		return
	}
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		a.OnAuthenticated(p.Addr)
	}
}

// CountRefusal counts a refusal decided elsewhere (the CA service's bad
// CSRs) under reason.
func (a *Authenticator) CountRefusal(reason string) {
	a.init()
	a.refused.WithLabelValues(reason).Inc()
}

// LogRefusal logs a refusal decided elsewhere, at most once per
// RefusalLogEvery per message.
func (a *Authenticator) LogRefusal(msg string, args ...any) {
	a.init()
	a.refusals.Warn(msg, args...)
}

// authorize checks that the credential grants the node's catalog identity.
func (a *Authenticator) authorize(c *credential, nodeID string, log *slog.Logger) (mesh.Identity, error) {
	svc, id, ok := a.Lookup(nodeID)
	if !ok {
		log.Warn("xDS stream refused: node not in the catalog", "node", nodeID, "credential", c.String(), "peer", c.peer)
		return id, a.refuse("unknown_node", codes.PermissionDenied,
			"xDS: node %q is not in the catalog, so its identity cannot be checked: add the proxy to the catalog first", nodeID)
	}
	granted := false
	switch c.kind {
	case "token":
		granted = c.service == svc
	case "certificate":
		granted = c.id == id
	}
	if !granted {
		log.Warn("xDS stream refused: credential is for another identity",
			"node", nodeID, "node_service", svc.String(), "node_identity", id.SPIFFEID(), "credential", c.String(), "peer", c.peer)
		return id, a.refuse("identity_mismatch", codes.PermissionDenied,
			"xDS: %s does not grant node %q (service %s, identity %s): use a credential issued for that service",
			c, nodeID, svc, id.SPIFFEID())
	}
	return id, nil
}

// StreamInterceptor authenticates every xDS stream before go-control-plane
// sees it: the first request must name a node the credential grants.
func (a *Authenticator) StreamInterceptor() grpc.StreamServerInterceptor {
	a.init()
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if !strings.HasPrefix(info.FullMethod, "/envoy.service.") {
			return handler(srv, ss) // not xDS (e.g. the CA service checks its own)
		}
		if a.Insecure {
			a.Logger.Warn("INSECURE: serving an xDS stream without authentication (--insecure-xds); never use this outside development",
				"method", info.FullMethod, "peer", peerAddr(ss.Context()))
			a.authenticated(ss.Context())
			return handler(srv, ss)
		}
		log := a.refusals
		if info.FullMethod == accessLogMethod {
			log = a.accessLogLog
		}
		cred, err := a.authenticate(ss.Context(), log)
		if err != nil {
			return err
		}
		// Read the first request here, so a refusal is the stream's status
		// rather than a silently closed stream: go-control-plane ends a
		// stream whose Recv fails without reporting why.
		var first any = &discoveryv3.DiscoveryRequest{}
		switch {
		case info.FullMethod == accessLogMethod:
			first = &alsv3.StreamAccessLogsMessage{}
		case strings.Contains(info.FullMethod, "Delta"):
			first = &discoveryv3.DeltaDiscoveryRequest{}
		}
		if err := ss.RecvMsg(first); err != nil {
			return err
		}
		node := nodeIDOf(first)
		if node == "" {
			return a.refuse("no_node", codes.InvalidArgument, "xDS: the first request must carry the node (id and metadata)")
		}
		if _, err := a.authorize(cred, node, log); err != nil {
			return err
		}
		sess, err := a.acquire(cred, node)
		if err != nil {
			return err
		}
		defer a.release(sess)
		a.authenticated(ss.Context())
		// The session rides the stream's context (a value, not a
		// cancellable child: that would cost every stream a Done channel
		// and an entry in its parent); the stream loops take it from
		// there and end the stream when it ends (session.go).
		as := &authStream{ServerStream: ss, a: a, cred: cred, node: node, sess: sess,
			ctx: context.WithValue(ss.Context(), sessionKey{}, sess)}
		as.filter(first)
		as.pending = first
		if info.FullMethod == accessLogMethod {
			as.readAhead()
			defer close(as.stop)
		}
		err = handler(srv, as)
		if v := as.violation(); v != nil {
			return v
		}
		return err
	}
}

// UnaryInterceptor guards the unary Fetch* xDS methods the same way.
func (a *Authenticator) UnaryInterceptor() grpc.UnaryServerInterceptor {
	a.init()
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if !strings.HasPrefix(info.FullMethod, "/envoy.service.") {
			return handler(ctx, req)
		}
		if a.Insecure {
			a.Logger.Warn("INSECURE: serving an xDS fetch without authentication (--insecure-xds)", "method", info.FullMethod, "peer", peerAddr(ctx))
			a.authenticated(ctx)
			return handler(ctx, req)
		}
		cred, err := a.authenticate(ctx, a.refusals)
		if err != nil {
			return nil, err
		}
		node := nodeIDOf(req)
		if node == "" {
			return nil, a.refuse("no_node", codes.InvalidArgument, "xDS: the request must carry the node")
		}
		if _, err := a.authorize(cred, node, a.refusals); err != nil {
			return nil, err
		}
		a.authenticated(ctx)
		as := &authStream{a: a, cred: cred, node: node}
		as.filter(req)
		return handler(ctx, req)
	}
}

func peerAddr(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return ""
}

func nodeIDOf(m any) string {
	switch r := m.(type) {
	case *discoveryv3.DiscoveryRequest:
		return r.GetNode().GetId()
	case *discoveryv3.DeltaDiscoveryRequest:
		return r.GetNode().GetId()
	case *alsv3.StreamAccessLogsMessage:
		// Only a stream's first message identifies the node; the later
		// ones carry none and so cannot claim another.
		return r.GetIdentifier().GetNode().GetId()
	}
	return ""
}

// authStream replays the request the interceptor read, then checks every
// later request: the node may not change and secret subscriptions are cut
// down to what the credential grants.
type authStream struct {
	grpc.ServerStream
	a       *Authenticator
	cred    *credential
	node    string
	pending any
	// sess is the stream's hold on its credential; ctx carries it to the
	// stream loops (SessionFrom).
	sess *Session
	ctx  context.Context

	// reads, on an access-log stream, carries what a reader goroutine
	// (readAhead) receives from the client, so that RecvMsg can also wait
	// for the session to end: an access-log handler (telemetry.Collector)
	// does nothing but read, so without this a revoked or expired
	// credential would end an idle access-log stream only when the sidecar
	// next flushed. xDS stream loops have readers of their own and select
	// on the session themselves. stop ends the reader once the handler has
	// returned.
	reads chan received
	stop  chan struct{}

	mu  sync.Mutex
	bad error
}

// received is one message (or the error) the reader goroutine got.
type received struct {
	m   *alsv3.StreamAccessLogsMessage
	err error
}

// readAhead starts the goroutine that receives an access-log stream's
// messages for RecvMsg, one at a time: it receives the next message only
// once RecvMsg has taken the last, so at most one waits in memory. It ends
// at the stream's first receive error (the client closing, or the stream
// ending once the handler has returned) or when stop is closed.
func (s *authStream) readAhead() {
	s.reads, s.stop = make(chan received), make(chan struct{})
	go func() {
		for {
			m := &alsv3.StreamAccessLogsMessage{}
			err := s.ServerStream.RecvMsg(m)
			select {
			case s.reads <- received{m, err}:
			case <-s.stop:
				return
			}
			if err != nil {
				return
			}
		}
	}()
}

// recv receives the stream's next message into m: from the reader
// goroutine on an access-log stream, ending the stream with the session's
// error as soon as the credential ends; from the stream itself otherwise.
func (s *authStream) recv(m any) error {
	if s.reads == nil {
		return s.ServerStream.RecvMsg(m)
	}
	select {
	case r := <-s.reads:
		if r.err != nil {
			return r.err
		}
		dst, ok := m.(*alsv3.StreamAccessLogsMessage)
		if !ok {
			return status.Errorf(codes.Internal, "xDS: unexpected message type %T", m)
		}
		return replay(dst, r.m)
	case <-s.sess.Done():
		return s.fail(s.sess.Err())
	}
}

// fail records err as the status the stream ends with (the handler may
// return another error, or none) and returns it.
func (s *authStream) fail(err error) error {
	s.mu.Lock()
	s.bad = err
	s.mu.Unlock()
	return err
}

// Context is the stream's context with its Session.
func (s *authStream) Context() context.Context { return s.ctx }

func (s *authStream) violation() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.bad
}

func (s *authStream) RecvMsg(m any) error {
	if p := s.pending; p != nil {
		s.pending = nil
		switch dst := m.(type) {
		case *discoveryv3.DiscoveryRequest:
			return replay(dst, p)
		case *discoveryv3.DeltaDiscoveryRequest:
			return replay(dst, p)
		case *alsv3.StreamAccessLogsMessage:
			return replay(dst, p)
		default:
			return status.Errorf(codes.Internal, "xDS: unexpected message type %T", m)
		}
	}
	if err := s.recv(m); err != nil {
		return err
	}
	if id := nodeIDOf(m); id != "" && id != s.node {
		err := s.a.refuse("node_changed", codes.PermissionDenied, "xDS: stream authenticated as node %q cannot switch to node %q", s.node, id)
		s.a.refusals.Warn("xDS stream ended: node changed mid-stream", "node", s.node, "new_node", id, "credential", s.cred.String())
		return s.fail(err)
	}
	// A stream whose credential ended takes nothing more (the stream
	// loops end it themselves, recv an idle access-log stream; this
	// catches a message that arrived as the credential ended).
	if err := s.sess.Err(); err != nil {
		return s.fail(err)
	}
	s.filter(m)
	return nil
}

// replay moves the request the interceptor read (p) into dst, which must be
// of its type.
func replay[T interface {
	*discoveryv3.DiscoveryRequest | *discoveryv3.DeltaDiscoveryRequest | *alsv3.StreamAccessLogsMessage
	proto.Message
}](dst T, p any) error {
	src, ok := p.(T)
	if !ok {
		return status.Error(codes.Internal, "xDS: request type mismatch")
	}
	proto.Reset(dst)
	moveInto(dst, src)
	return nil
}

// moveInto hands src's fields to dst (of the same type) without copying
// them: the replayed first request is never used again, so a deep copy
// (proto.Merge) of its node and metadata would only be garbage, for every
// stream. Unknown fields go along.
func moveInto(dst, src proto.Message) {
	d, s := dst.ProtoReflect(), src.ProtoReflect()
	s.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		d.Set(fd, v)
		return true
	})
	d.SetUnknown(s.GetUnknown())
}

// filter removes secret names the credential does not grant from a request,
// logging and counting each attempt. The snapshot holds only the node's own
// secrets anyway; this makes an attempt visible and keeps it from ever
// reaching the cache.
func (s *authStream) filter(m any) {
	var names *[]string
	switch r := m.(type) {
	case *discoveryv3.DiscoveryRequest:
		if r.GetTypeUrl() != resourcev3.SecretType {
			return
		}
		names = &r.ResourceNames
	case *discoveryv3.DeltaDiscoveryRequest:
		if r.GetTypeUrl() != resourcev3.SecretType {
			return
		}
		names = &r.ResourceNamesSubscribe
	default:
		return
	}
	if len(*names) == 0 {
		return
	}
	kept := (*names)[:0:0]
	var denied []string
	for _, n := range *names {
		// Every proxy's identity secret has the same name; its snapshot
		// holds its own identity under it, and no other. A gateway's
		// certificate secrets name files on its host and hold no key.
		if n == xds.TrustBundleSecretName || n == xds.IdentitySecretName || n == deniedSecretName || strings.HasPrefix(n, xds.GatewayTLSSecretPrefix) {
			kept = append(kept, n)
		} else {
			denied = append(denied, n)
		}
	}
	if len(denied) == 0 {
		return
	}
	s.a.secretsDenied.WithLabelValues(s.node).Add(float64(len(denied)))
	s.a.refusals.Warn("SDS request for secrets the proxy's credential does not grant; nothing is returned for them",
		"node", s.node, "credential", s.cred.String(), "denied", denied)
	if len(kept) == 0 {
		kept = []string{deniedSecretName}
	}
	*names = kept
}

// String for logs.
func (s *authStream) String() string { return fmt.Sprintf("authStream{node=%s}", s.node) }
