package server

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/internal/testwait"
	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/sds"
	"github.com/meshd/meshd/server/auth"
	"github.com/meshd/meshd/server/caclient"
	"github.com/meshd/meshd/server/caservice"
	"github.com/meshd/meshd/server/tracker"
	"github.com/meshd/meshd/snapshot"
	"github.com/meshd/meshd/xds"
)

type lockedBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

type authFixture struct {
	// als receives, for every access-log message the server's test access
	// log service gets, the node its stream identified as.
	als     chan string
	pub     *snapshot.Publisher
	addr    string
	dataDir string
	ca      *sds.Authority
	tokens  *sds.TokenAuthority
	tracker *tracker.Tracker
	auth    *auth.Authenticator
	logs    *lockedBuf
	reg     *prometheus.Registry
	// clock is the token authority's clock (expiry and issue times).
	clock *skewClock
}

// skewClock is real time plus a skew a test moves forward: a token expires
// without the test sleeping past its lifetime.
type skewClock struct{ skew atomic.Int64 }

func (c *skewClock) Now() time.Time          { return time.Now().Add(time.Duration(c.skew.Load())) }
func (c *skewClock) Advance(d time.Duration) { c.skew.Add(int64(d)) }

// recheckEvery is the sweep interval of the next startAuthServer's
// revocation watcher (zero: the default); noWatcher starts none (tests of
// what the stream loops check on their own).
var (
	recheckEvery time.Duration
	noWatcher    bool
	// maxStreams is the next startAuthServer's MaxStreamsPerNode.
	maxStreams int
	// alsServer is the next startAuthServer's access log service (nil:
	// testALS, which feeds authFixture.als).
	alsServer alsv3.AccessLogServiceServer
)

// counter reads a counter of the fixture's registry by its one label value.
func (f *authFixture) counter(t *testing.T, name, label string) float64 {
	t.Helper()
	mfs, err := f.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetValue() == label {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

var webID = mesh.Identity{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "web"}
var apiID = mesh.Identity{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "api"}

// startAuthServer runs the real xDS server with authentication on the
// quickstart catalog; insecure runs it as --insecure-xds does.
func startAuthServer(t *testing.T, insecureXDS bool) *authFixture {
	t.Helper()
	logs := &lockedBuf{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	dir := t.TempDir()
	ca, err := sds.LoadOrCreate(sds.Options{DataDir: dir, TrustDomain: "cluster.local", Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	clock := &skewClock{}
	tokens, err := sds.LoadOrCreateTokens(dir, "cluster.local", false, clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	cat, cache, pub, m, tr := publishQuickstart(t, ca, log)
	au := &auth.Authenticator{RecheckEvery: recheckEvery, MaxStreamsPerNode: maxStreams,
		Tokens: tokens, TrustDomain: "cluster.local", Logger: log, Insecure: insecureXDS,
		Lookup: func(node string) (mesh.ServiceKey, mesh.Identity, bool) {
			px := cat.Proxy(node)
			if px == nil {
				return mesh.ServiceKey{}, mesh.Identity{}, false
			}
			return px.ServiceKey(), mesh.IdentityOf("cluster.local", cat.Service(px.ServiceKey())), true
		},
	}
	au.RegisterMetrics(m.Registry)
	als := &testALS{nodes: make(chan string, 16)}
	o := Options{Logger: log, Tracker: tr, Auth: au, Register: []func(*grpc.Server){func(gs *grpc.Server) {
		caservice.Register(gs, au, ca, func(k mesh.ServiceKey) []string { return xds.DNSNames(k, "cluster.local") }, tr)
		if alsServer != nil {
			alsv3.RegisterAccessLogServiceServer(gs, alsServer)
		} else {
			alsv3.RegisterAccessLogServiceServer(gs, als)
		}
	}}}
	if !insecureXDS {
		if o.TLS, err = ca.ServerTLSConfig(nil); err != nil {
			t.Fatal(err)
		}
	}
	xs, err := NewXDS(cache, o)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go xs.Serve(lis)
	t.Cleanup(func() { xs.Stop(2 * time.Second) })
	if !noWatcher {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { au.Run(ctx); close(done) }()
		t.Cleanup(func() { cancel(); <-done })
	}
	return &authFixture{pub: pub, als: als.nodes, addr: lis.Addr().String(), dataDir: dir, ca: ca, tokens: tokens, tracker: tr, auth: au, logs: logs, reg: m.Registry, clock: clock}
}

// dial connects over TLS, presenting clientCert when given.
func (f *authFixture) dial(t *testing.T, clientCert *sds.Leaf) *grpc.ClientConn {
	t.Helper()
	cfg := &tls.Config{RootCAs: f.ca.RootPool(), ServerName: "localhost"}
	if clientCert != nil {
		c, err := tls.X509KeyPair(clientCert.CertPEM, clientCert.KeyPEM)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{c}
	}
	cc, err := grpc.NewClient(f.addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func (f *authFixture) token(t *testing.T, svc string, ttl time.Duration) string {
	t.Helper()
	tok, _, err := f.tokens.Create("default", svc, ttl)
	if err != nil {
		t.Fatal(err)
	}
	return string(tok)
}

func withToken(tok string) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	_ = cancel // the stream ends with the test; the timeout bounds it
	if tok == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, caclient.TokenMetadataKey, "Bearer "+tok)
}

// firstResponse opens an ADS stream as node, asks for typ (names) and
// returns the first response or the stream's error.
func firstResponse(cc *grpc.ClientConn, ctx context.Context, node, typ string, names ...string) (*discoveryv3.DiscoveryResponse, error) {
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
	if err != nil {
		return nil, err
	}
	// A stream the server has already ended (authentication refused it
	// before reading) fails Send with io.EOF; the refusal's status is what
	// Recv returns, as gRPC documents.
	if err := stream.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: node}, TypeUrl: typ, ResourceNames: names}); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return stream.Recv()
}

func wantCode(t *testing.T, what string, err error, code codes.Code, msg string) {
	t.Helper()
	if status.Code(err) != code || !strings.Contains(status.Convert(err).Message(), msg) {
		t.Errorf("%s: got %v, want %s containing %q", what, err, code, msg)
	}
}

func TestAuthTokenGrantsOnlyItsOwnService(t *testing.T) {
	f := startAuthServer(t, false)
	cc := f.dial(t, nil)
	webTok := f.token(t, "web", time.Hour)

	resp, err := firstResponse(cc, withToken(webTok), "web.default", resourcev3.ClusterType)
	if err != nil || len(resp.GetResources()) == 0 {
		t.Fatalf("web's token for web's node: %v %v", resp, err)
	}

	// Claiming api's node with web's token: refused, nothing returned.
	_, err = firstResponse(cc, withToken(webTok), "api.default", resourcev3.ClusterType)
	wantCode(t, "web token as api", err, codes.PermissionDenied, `does not grant node "api.default"`)
	_, err = firstResponse(cc, withToken(webTok), "nobody", resourcev3.ClusterType)
	wantCode(t, "unknown node", err, codes.PermissionDenied, "not in the catalog")
	if n := f.counter(t, "meshd_xds_auth_refused_total", "identity_mismatch"); n != 1 {
		t.Errorf("identity_mismatch refusals = %v, want 1", n)
	}
	if !strings.Contains(f.logs.String(), "credential is for another identity") {
		t.Errorf("refusal not logged:\n%s", f.logs)
	}

	// web asks for a secret named after api's identity alongside the
	// identity secret: it gets only the identity secret, holding its own
	// certificate (every proxy's identity secret has the same name).
	apiName := apiID.SPIFFEID()
	resp, err = firstResponse(cc, withToken(webTok), "web.default", resourcev3.SecretType, apiName, xds.IdentitySecretName)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range resp.GetResources() {
		var s tlsv3.Secret
		if err := r.UnmarshalTo(&s); err != nil {
			t.Fatal(err)
		}
		if s.GetName() != xds.IdentitySecretName {
			t.Errorf("web received secret %q", s.GetName())
			continue
		}
		block, _ := pem.Decode(s.GetTlsCertificate().GetCertificateChain().GetInlineBytes())
		if block == nil {
			t.Fatalf("identity secret without a certificate")
		}
		leaf, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		if len(leaf.URIs) != 1 || leaf.URIs[0].String() != webID.SPIFFEID() {
			t.Errorf("web's identity secret holds %v, want %s", leaf.URIs, webID.SPIFFEID())
		}
	}
	if len(resp.GetResources()) != 1 {
		t.Errorf("web received %d secrets, want only its own", len(resp.GetResources()))
	}
	if n := f.counter(t, "meshd_sds_secret_requests_denied_total", "web.default"); n != 1 {
		t.Errorf("denied secret requests = %v, want 1", n)
	}
	if !strings.Contains(f.logs.String(), apiName) {
		t.Errorf("denied secret name not logged:\n%s", f.logs)
	}

	// Only someone else's secret: nothing at all (not a wildcard).
	ctx, cancel := context.WithTimeout(withToken(webTok), time.Second)
	defer cancel()
	resp, err = firstResponse(cc, ctx, "web.default", resourcev3.SecretType, apiName)
	if err == nil && len(resp.GetResources()) > 0 {
		t.Errorf("request for api's secret alone returned %d resources", len(resp.GetResources()))
	}

	// The unary fetch is guarded too.
	_, err = secretservice.NewSecretDiscoveryServiceClient(cc).FetchSecrets(withToken(webTok),
		&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "api.default"}, TypeUrl: resourcev3.SecretType, ResourceNames: []string{xds.IdentitySecretName}})
	wantCode(t, "unary fetch as api", err, codes.PermissionDenied, "does not grant")
}

func TestAuthRefusesBadTokens(t *testing.T) {
	f := startAuthServer(t, false)
	cc := f.dial(t, nil)
	_, err := firstResponse(cc, withToken(""), "web.default", resourcev3.ClusterType)
	wantCode(t, "no credential", err, codes.Unauthenticated, "meshctl token create")

	good := f.token(t, "web", time.Hour)
	parts := strings.Split(good, ".")
	tampered := parts[0] + "." + parts[1][:len(parts[1])-2] + "x" + parts[1][len(parts[1])-1:] + "." + parts[2]
	_, err = firstResponse(cc, withToken(tampered), "web.default", resourcev3.ClusterType)
	wantCode(t, "tampered", err, codes.Unauthenticated, "token refused")

	short := f.token(t, "web", time.Second)
	f.clock.Advance(time.Second) // expired at exactly its end (TokenClaims.expired)
	_, err = firstResponse(cc, withToken(short), "web.default", resourcev3.ClusterType)
	wantCode(t, "expired", err, codes.Unauthenticated, "expired")

	claims, err := f.tokens.Parse(good)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.tokens.Revoke(claims); err != nil {
		t.Fatal(err)
	}
	_, err = firstResponse(cc, withToken(good), "web.default", resourcev3.ClusterType)
	wantCode(t, "revoked", err, codes.Unauthenticated, "revoked")
	for reason, want := range map[string]float64{"no_credential": 1, "bad_token": 1, "expired_token": 1, "revoked_token": 1} {
		if n := f.counter(t, "meshd_xds_auth_refused_total", reason); n != want {
			t.Errorf("refusals[%s] = %v, want %v", reason, n, want)
		}
	}
	if strings.Contains(f.logs.String(), parts[2]) {
		t.Error("a token signature reached the logs")
	}
}

func TestAuthClientCertificate(t *testing.T) {
	f := startAuthServer(t, false)
	leaf, err := f.ca.IssueCredential(webID, []string{"web"})
	if err != nil {
		t.Fatal(err)
	}
	cc := f.dial(t, leaf)
	if resp, err := firstResponse(cc, withToken(""), "web.default", resourcev3.ClusterType); err != nil || len(resp.GetResources()) == 0 {
		t.Fatalf("web's certificate for web's node: %v", err)
	}
	_, err = firstResponse(cc, withToken(""), "api.default", resourcev3.ClusterType)
	wantCode(t, "web cert as api", err, codes.PermissionDenied, "does not grant")

	// A certificate from another CA is refused at the handshake.
	other, err := sds.LoadOrCreate(sds.Options{DataDir: t.TempDir(), TrustDomain: "cluster.local", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := other.IssueCredential(webID, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = firstResponse(f.dial(t, foreign), withToken(""), "web.default", resourcev3.ClusterType)
	if err == nil {
		t.Error("a certificate from another CA was accepted")
	}
}

func TestAuthNodeCannotChangeMidStream(t *testing.T) {
	f := startAuthServer(t, false)
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(f.dial(t, nil)).StreamAggregatedResources(withToken(f.token(t, "web", time.Hour)))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "web.default"}, TypeUrl: resourcev3.ClusterType}); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "api.default"}, TypeUrl: resourcev3.ListenerType}); err != nil {
		t.Fatal(err)
	}
	for {
		_, err = stream.Recv()
		if err != nil {
			break
		}
	}
	wantCode(t, "node switch", err, codes.PermissionDenied, "cannot switch")
}

func TestPlaintextRefusedUnlessInsecure(t *testing.T) {
	f := startAuthServer(t, false)
	cc, err := grpc.NewClient(f.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(withToken(f.token(t, "web", time.Hour)), 3*time.Second)
	defer cancel()
	if _, err := firstResponse(cc, ctx, "web.default", resourcev3.ClusterType); err == nil {
		t.Fatal("plaintext xDS served by a TLS server")
	}

	in := startAuthServer(t, true)
	cc2, err := grpc.NewClient(in.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc2.Close()
	if resp, err := firstResponse(cc2, withToken(""), "web.default", resourcev3.ClusterType); err != nil || len(resp.GetResources()) == 0 {
		t.Fatalf("--insecure-xds refused plaintext: %v", err)
	}
	if !strings.Contains(in.logs.String(), "INSECURE") {
		t.Error("an unauthenticated stream was not warned about")
	}
}

func TestBundleAckedFollowsSDSACKs(t *testing.T) {
	f := startAuthServer(t, false)
	ctx := withToken(f.token(t, "web", time.Hour))
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(f.dial(t, nil)).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	node := &corev3.Node{Id: "web.default"}
	names := []string{xds.TrustBundleSecretName, xds.IdentitySecretName}
	if err := stream.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resourcev3.SecretType, ResourceNames: names}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	fp := f.ca.Fingerprint()
	if ok, pending := f.tracker.BundleAcked(fp); ok || len(pending) != 1 || pending[0] != "web.default" {
		t.Fatalf("before the ACK: %v %v, want web.default pending", ok, pending)
	}
	if err := stream.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resourcev3.SecretType, ResourceNames: names,
		VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()}); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, testwait.Timeout, "the trust bundle's ACK to count", func() bool { ok, _ := f.tracker.BundleAcked(fp); return ok })
	if ok, _ := f.tracker.BundleAcked(strings.Repeat("0", 64)); ok {
		t.Error("a root the proxy never received counts as ACKed")
	}
}

// TestRootRotationSkipsProxiesWithoutBundle: a proxy that no longer
// subscribes to the trust bundle (an Envoy whose configuration references
// no validation context, such as a server-only sidecar under DISABLE, drops
// its SDS subscriptions) does not hold a root rotation in its propagating
// phase; once it subscribes again it is waited for until it ACKs the new
// bundle. A SotW and a delta stream, on the real server, tracker and CA.
func TestRootRotationSkipsProxiesWithoutBundle(t *testing.T) {
	f := startAuthServer(t, false)
	names := []string{xds.TrustBundleSecretName, xds.IdentitySecretName}
	ads := discoveryv3.NewAggregatedDiscoveryServiceClient(f.dial(t, nil))
	// Streams that last the whole test (withToken's end after 10 s: a
	// proxy that disconnects is not waited for either).
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	as := func(svc string) context.Context {
		return metadata.AppendToOutgoingContext(ctx, caclient.TokenMetadataKey, "Bearer "+f.token(t, svc, time.Hour))
	}

	sotw, err := ads.StreamAggregatedResources(as("web"))
	if err != nil {
		t.Fatal(err)
	}
	web := &corev3.Node{Id: "web.default"}
	sotwRequest := func(names []string, answered *discoveryv3.DiscoveryResponse) {
		t.Helper()
		if err := sotw.Send(&discoveryv3.DiscoveryRequest{Node: web, TypeUrl: resourcev3.SecretType, ResourceNames: names,
			VersionInfo: answered.GetVersionInfo(), ResponseNonce: answered.GetNonce()}); err != nil {
			t.Fatal(err)
		}
	}
	sotwRequest(names, nil)
	resp, err := sotw.Recv()
	if err != nil {
		t.Fatal(err)
	}
	sotwRequest(names, resp) // ACK

	delta, err := ads.DeltaAggregatedResources(as("api"))
	if err != nil {
		t.Fatal(err)
	}
	api := &corev3.Node{Id: "api.default"}
	if err := delta.Send(&discoveryv3.DeltaDiscoveryRequest{Node: api, TypeUrl: resourcev3.SecretType, ResourceNamesSubscribe: names}); err != nil {
		t.Fatal(err)
	}
	dresp, err := delta.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if err := delta.Send(&discoveryv3.DeltaDiscoveryRequest{Node: api, TypeUrl: resourcev3.SecretType, ResponseNonce: dresp.GetNonce()}); err != nil {
		t.Fatal(err)
	}
	old := f.ca.Fingerprint()
	testwait.For(t, testwait.Timeout, "both proxies' bundle ACKs to count", func() bool { ok, _ := f.tracker.BundleAcked(old); return ok })

	// Both drop every secret, as Envoy does when its last TLS context goes.
	sotwRequest(nil, resp)
	if err := delta.Send(&discoveryv3.DeltaDiscoveryRequest{Node: api, TypeUrl: resourcev3.SecretType, ResourceNamesUnsubscribe: names}); err != nil {
		t.Fatal(err)
	}
	if err := f.ca.RotateRoot(); err != nil {
		t.Fatal(err)
	}
	st := f.ca.Status(f.tracker)
	if st.Rotation == nil || st.Rotation.Phase != sds.PhasePropagating {
		t.Fatalf("after RotateRoot: %+v, want phase %s", st.Rotation, sds.PhasePropagating)
	}
	// The new root: the one trusted that is not the old.
	var fresh string
	for _, r := range st.TrustedRoots {
		if r.SHA256 != old {
			fresh = r.SHA256
		}
	}
	if fresh == "" {
		t.Fatalf("no new root among %+v", st.TrustedRoots)
	}
	testwait.For(t, testwait.Timeout, "the rotation to leave "+sds.PhasePropagating+" (neither proxy subscribes to the bundle)", func() bool {
		if _, err := f.ca.Advance(f.tracker); err != nil {
			t.Fatal(err)
		}
		st := f.ca.Status(f.tracker)
		return st.Rotation == nil || st.Rotation.Phase != sds.PhasePropagating
	})

	// Subscribing again makes web.default count, until it ACKs the bundle
	// with the new root.
	f.pub.Republish()
	if _, err := f.pub.Publish(); err != nil {
		t.Fatal(err)
	}
	sotwRequest(names, resp)
	resp, err = sotw.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if ok, pending := f.tracker.BundleAcked(fresh); ok || !slices.Equal(pending, []string{"web.default"}) {
		t.Fatalf("resubscribed, before its ACK: %v %v, want web.default pending", ok, pending)
	}
	sotwRequest(names, resp)
	testwait.For(t, testwait.Timeout, "the new bundle's ACK to count", func() bool { ok, _ := f.tracker.BundleAcked(fresh); return ok })
}

// testALS is an access log service that reports the node of each message's
// stream (the collector, package telemetry, trusts the same).
type testALS struct {
	alsv3.UnimplementedAccessLogServiceServer
	nodes chan string
}

func (a *testALS) StreamAccessLogs(s alsv3.AccessLogService_StreamAccessLogsServer) error {
	node := ""
	for {
		m, err := s.Recv()
		if err != nil {
			return err
		}
		if node == "" {
			node = m.GetIdentifier().GetNode().GetId()
		}
		a.nodes <- node
	}
}

// alsStream opens an access-log stream and sends msgs; it returns the
// stream's status once the server ends it, or nil if the server took every
// message (the stream is then closed).
func alsStream(cc *grpc.ClientConn, ctx context.Context, msgs ...*alsv3.StreamAccessLogsMessage) error {
	st, err := alsv3.NewAccessLogServiceClient(cc).StreamAccessLogs(ctx)
	if err != nil {
		return err
	}
	for _, m := range msgs {
		if err := st.Send(m); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
	}
	_, err = st.CloseAndRecv()
	return err
}

func alsFirst(node string) *alsv3.StreamAccessLogsMessage {
	return &alsv3.StreamAccessLogsMessage{Identifier: &alsv3.StreamAccessLogsMessage_Identifier{Node: &corev3.Node{Id: node}, LogName: "meshd.inbound"}}
}

// TestAuthAccessLogStreams: the access log service on the xDS port takes
// the xDS credentials; a sidecar reports only as a node its credential
// grants, and cannot switch node mid-stream.
func TestAuthAccessLogStreams(t *testing.T) {
	f := startAuthServer(t, false)
	cc := f.dial(t, nil)
	webTok := f.token(t, "web", time.Hour)

	// As itself: the message reaches the service. (The test service never
	// answers, so the stream ends with the test's deadline: only the
	// message matters.)
	ctx, cancel := context.WithTimeout(withToken(webTok), 200*time.Millisecond)
	defer cancel()
	go alsStream(cc, ctx, alsFirst("web.default"), &alsv3.StreamAccessLogsMessage{})
	for range 2 {
		if node := <-f.als; node != "web.default" {
			t.Fatalf("the access log service got a message of %q", node)
		}
	}

	err := alsStream(cc, withToken(webTok), alsFirst("api.default"))
	wantCode(t, "web's token as api", err, codes.PermissionDenied, `does not grant node "api.default"`)

	// A later message naming another node ends the stream.
	err = alsStream(cc, withToken(webTok), alsFirst("web.default"), alsFirst("api.default"))
	wantCode(t, "switching node", err, codes.PermissionDenied, "cannot switch to node")
	if node := <-f.als; node != "web.default" {
		t.Fatalf("first message of the switching stream: %q", node)
	}

	// No credential: refused every time, logged once a minute (a sidecar
	// retries at every flush).
	for range 3 {
		err = alsStream(cc, withToken(""), alsFirst("web.default"))
		wantCode(t, "no credential", err, codes.Unauthenticated, "no credential")
	}
	if n := strings.Count(f.logs.String(), "xDS stream refused: no credential"); n != 1 {
		t.Errorf("%d log lines for 3 refused access-log streams, want 1:\n%s", n, f.logs)
	}
	if !strings.Contains(f.logs.String(), "regenerate it with meshctl bootstrap") {
		t.Errorf("the refusal does not say what to do:\n%s", f.logs)
	}
	select {
	case node := <-f.als:
		t.Errorf("a refused stream's message reached the service (node %q)", node)
	default:
	}
}
