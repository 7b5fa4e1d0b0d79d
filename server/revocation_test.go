package server

import (
	"context"
	"log/slog"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	accesslogdatav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/internal/testwait"
	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/sds"
	"github.com/meshd/meshd/server/caclient"
	"github.com/meshd/meshd/telemetry"
	"github.com/meshd/meshd/xds"
)

// revocationBound is what the tests allow between a revocation and the end
// of the streams it ends: the watcher sees the list's rename at once and
// sweeps every recheckEvery anyway; the rest is margin for a loaded
// machine (the bound the docs state is the sweep interval, 1 s).
const revocationBound = 5 * time.Second

// sotwStream opens an ADS stream as node, subscribes to typ (names) and
// ACKs the first response, leaving an idle stream.
func openIdleADS(t *testing.T, cc *grpc.ClientConn, ctx context.Context, node, typ string, names ...string) discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient {
	t.Helper()
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: node}, TypeUrl: typ, ResourceNames: names}); err != nil {
		t.Fatal(err)
	}
	resp, err := st.Recv()
	if err != nil {
		t.Fatalf("%s: first response: %v", node, err)
	}
	if err := st.Send(&discoveryv3.DiscoveryRequest{TypeUrl: typ, ResourceNames: names, VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()}); err != nil {
		t.Fatal(err)
	}
	return st
}

// endsWith waits for recv to fail and checks its status; it returns how
// long that took from since, and fails if anything was received first.
func endsWith(t *testing.T, what string, since time.Time, recv func() (any, error), code codes.Code, msg string) time.Duration {
	t.Helper()
	got, err := recv()
	took := time.Since(since)
	if err == nil {
		t.Errorf("%s: received %T after the revocation", what, got)
		return took
	}
	wantCode(t, what, err, code, msg)
	if took > revocationBound {
		t.Errorf("%s: ended %s after the revocation, want within %s", what, took, revocationBound)
	}
	return took
}

func (f *authFixture) revoke(t *testing.T, tok string) {
	t.Helper()
	claims, err := f.tokens.Parse(tok)
	if err != nil {
		t.Fatal(err)
	}
	// What meshctl token revoke does: rewrite the list in the data dir.
	if err := f.tokens.Revoke(claims); err != nil {
		t.Fatal(err)
	}
}

// agentCert has a CSR for web signed through cc's credential (tok, or the
// connection's certificate when tok is empty), as mesh-agent does.
func (f *authFixture) agentCert(t *testing.T, cc *grpc.ClientConn, tok string) (*sds.Leaf, error) {
	t.Helper()
	csr, key := csrFor(t, webID, "web")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := caclient.Sign(ctx, cc, tok, &caclient.SignRequest{NodeID: "web.default", CSR: string(csr)})
	if err != nil {
		return nil, err
	}
	return &sds.Leaf{CertPEM: []byte(resp.CertChain), KeyPEM: mustKeyPEM(t, key)}, nil
}

// TestRevocationEndsAccess (issue 13): after a token is revoked, meshd
// itself closes its idle streams (SotW and delta, no request from the
// client needed) and those of the certificates a node agent obtained
// through it, first by CSR and then by renewal; those certificates are then
// refused for xDS and for CSR signing. Another token of the same service
// keeps its stream.
func TestRevocationEndsAccess(t *testing.T) {
	recheckEvery = 200 * time.Millisecond
	t.Cleanup(func() { recheckEvery = 0 })
	f := startAuthServer(t, false)
	tok, other := f.token(t, "web", time.Hour), f.token(t, "web", time.Hour)
	cc := f.dial(t, nil)

	// A node agent's chain: a certificate through the token, renewed with
	// itself (no token).
	first, err := f.agentCert(t, cc, tok)
	if err != nil {
		t.Fatal(err)
	}
	renewed, err := f.agentCert(t, f.dial(t, first), "")
	if err != nil {
		t.Fatalf("renewal with the agent's certificate: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sotw := openIdleADS(t, cc, withTokenCtx(ctx, tok), "web.default", resourcev3.SecretType, xds.IdentitySecretName)
	byCert := openIdleADS(t, f.dial(t, renewed), ctx, "web.default", resourcev3.ClusterType)
	kept := openIdleADS(t, cc, withTokenCtx(ctx, other), "web.default", resourcev3.ClusterType)
	delta, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(withTokenCtx(ctx, tok))
	if err != nil {
		t.Fatal(err)
	}
	if err := delta.Send(&discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "web.default"}, TypeUrl: resourcev3.ClusterType}); err != nil {
		t.Fatal(err)
	}
	if _, err := delta.Recv(); err != nil {
		t.Fatal(err)
	}
	if creds, streams := f.auth.Grants(); creds != 3 || streams != 4 {
		t.Fatalf("grants: %d credentials, %d streams; want 3 and 4", creds, streams)
	}

	start := time.Now()
	f.revoke(t, tok)
	var worst time.Duration
	for name, recv := range map[string]func() (any, error){
		"idle SotW stream of the token":      func() (any, error) { return sotw.Recv() },
		"idle delta stream of the token":     func() (any, error) { return delta.Recv() },
		"stream of the agent's renewed cert": func() (any, error) { return byCert.Recv() },
	} {
		worst = max(worst, endsWith(t, name, start, recv, codes.Unauthenticated, "revoked"))
	}
	t.Logf("revoked token's streams ended within %s of the revocation", worst)

	// The certificates of the chain no longer authenticate, for xDS or CSRs.
	for name, leaf := range map[string]*sds.Leaf{"first agent certificate": first, "renewed agent certificate": renewed} {
		c := f.dial(t, leaf)
		_, err := firstResponse(c, withToken(""), "web.default", resourcev3.ClusterType)
		wantCode(t, name+" for xDS", err, codes.Unauthenticated, "has been revoked")
		_, err = f.agentCert(t, c, "")
		wantCode(t, name+" for a CSR", err, codes.Unauthenticated, "has been revoked")
	}
	_, err = f.agentCert(t, cc, tok)
	wantCode(t, "the revoked token for a CSR", err, codes.Unauthenticated, "revoked")

	// The other token's stream is still served: a change reaches it.
	f.auth.Sweep(time.Now())
	f.ca.Forget(nil)
	f.pub.Republish()
	if _, err := f.pub.Publish(); err != nil {
		t.Fatal(err)
	}
	if creds, streams := f.auth.Grants(); creds != 1 || streams != 1 {
		t.Errorf("after the revocation: %d credentials, %d streams hold grants; want the other token's 1", creds, streams)
	}
	if n := f.counter(t, "meshd_xds_streams_ended_total", "revoked"); n != 3 {
		t.Errorf("meshd_xds_streams_ended_total{reason=revoked} = %v, want 3", n)
	}
	cancel()
	if _, err := kept.Recv(); status.Code(err) != codes.Canceled {
		t.Errorf("the other token's stream: %v, want open until the test cancelled it", err)
	}
}

func withTokenCtx(ctx context.Context, tok string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, caclient.TokenMetadataKey, "Bearer "+tok)
}

// TestNoSecretAfterRevocation: a stream loop checks the revocation list
// before pushing a secret, so even before any sweep (no watcher here) a
// revoked token's stream is never sent the identity's next private key: it
// ends instead.
func TestNoSecretAfterRevocation(t *testing.T) {
	noWatcher = true
	t.Cleanup(func() { noWatcher = false })
	f := startAuthServer(t, false)
	tok := f.token(t, "web", time.Hour)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st := openIdleADS(t, f.dial(t, nil), withTokenCtx(ctx, tok), "web.default", resourcev3.SecretType, xds.IdentitySecretName)
	start := time.Now()
	f.revoke(t, tok)
	// A new leaf for web: its secret changes, and the stream wakes to push it.
	f.ca.Forget(nil)
	f.pub.Republish()
	if _, err := f.pub.Publish(); err != nil {
		t.Fatal(err)
	}
	endsWith(t, "secret stream after revocation", start, func() (any, error) { return st.Recv() }, codes.Unauthenticated, "revoked")
}

// TestSDSLeafIsNotACredential (issue 13): the leaf and key meshd serves a
// token's holder over SDS do not authenticate to meshd, for xDS or CSRs;
// otherwise revoking the token would leave its holder that way in.
func TestSDSLeafIsNotACredential(t *testing.T) {
	f := startAuthServer(t, false)
	resp, err := firstResponse(f.dial(t, nil), withToken(f.token(t, "web", time.Hour)), "web.default", resourcev3.SecretType, xds.IdentitySecretName)
	if err != nil {
		t.Fatal(err)
	}
	leaf := leafFromSecret(t, resp)
	cc := f.dial(t, leaf)
	_, err = firstResponse(cc, withToken(""), "web.default", resourcev3.ClusterType)
	wantCode(t, "SDS leaf for xDS", err, codes.Unauthenticated, "not a credential")
	_, err = f.agentCert(t, cc, "")
	wantCode(t, "SDS leaf for a CSR", err, codes.Unauthenticated, "not a credential")
	if n := f.counter(t, "meshd_xds_auth_refused_total", "not_a_credential"); n != 2 {
		t.Errorf("not_a_credential refusals = %v, want 2", n)
	}
}

// TestExpiredTokenEndsStream: a token that expires while its stream is
// open and idle ends the stream at expiry (the sweep), not at the client's
// next request.
func TestExpiredTokenEndsStream(t *testing.T) {
	recheckEvery = 100 * time.Millisecond
	t.Cleanup(func() { recheckEvery = 0 })
	f := startAuthServer(t, false)
	tok, c, err := f.tokens.Create("default", "web", 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st := openIdleADS(t, f.dial(t, nil), withTokenCtx(ctx, string(tok)), "web.default", resourcev3.ClusterType)
	_, err = st.Recv()
	wantCode(t, "stream of an expired token", err, codes.Unauthenticated, "expired")
	if late := time.Since(c.Expires); late > revocationBound {
		t.Errorf("stream ended %s after the token expired", late)
	}
}

// leafFromSecret returns the identity certificate and key of an SDS
// response.
func leafFromSecret(t *testing.T, resp *discoveryv3.DiscoveryResponse) *sds.Leaf {
	t.Helper()
	for _, r := range resp.GetResources() {
		var sec tlsv3.Secret
		if err := r.UnmarshalTo(&sec); err != nil {
			t.Fatal(err)
		}
		tc := sec.GetTlsCertificate()
		if tc == nil {
			continue
		}
		return &sds.Leaf{CertPEM: tc.GetCertificateChain().GetInlineBytes(), KeyPEM: tc.GetPrivateKey().GetInlineBytes()}
	}
	t.Fatal("no identity certificate in the response")
	return nil
}

// TestRevocationEndsAccessLogStream: a sidecar's access-log stream to the
// telemetry collector is closed by meshd when its token is revoked, like
// its xDS streams, while idle: the collector only reads, and nothing
// waits for the sidecar's next flush.
func TestRevocationEndsAccessLogStream(t *testing.T) {
	recheckEvery = 200 * time.Millisecond
	hub := &telemetry.Hub{}
	alsServer = &telemetry.Collector{Store: telemetry.NewStore(telemetry.Options{}), Hub: hub, LogName: xds.TelemetryLogName,
		Logger: slog.New(slog.DiscardHandler),
		Resolve: func(node string) (telemetry.Target, bool) {
			return telemetry.Target{Service: mesh.ServiceKey{Namespace: "default", Name: "web"}}, node == "web.default"
		}}
	t.Cleanup(func() { recheckEvery, alsServer = 0, nil })
	f := startAuthServer(t, false)
	tok, other := f.token(t, "web", time.Hour), f.token(t, "web", time.Hour)
	cc := f.dial(t, nil)
	tap := hub.Subscribe(telemetry.Filter{})
	defer tap.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	open := func(tok, path string) alsv3.AccessLogService_StreamAccessLogsClient {
		t.Helper()
		st, err := alsv3.NewAccessLogServiceClient(cc).StreamAccessLogs(withTokenCtx(ctx, tok))
		if err != nil {
			t.Fatal(err)
		}
		m := alsFirst("web.default")
		m.Identifier.LogName = xds.TelemetryLogName
		m.LogEntries = &alsv3.StreamAccessLogsMessage_HttpLogs{HttpLogs: &alsv3.StreamAccessLogsMessage_HTTPAccessLogEntries{
			LogEntry: []*accesslogdatav3.HTTPAccessLogEntry{{Request: &accesslogdatav3.HTTPRequestProperties{Path: path}}}}}
		if err := st.Send(m); err != nil {
			t.Fatal(err)
		}
		// Recorded: the collector holds the stream, idle from now on.
		if ev := testwait.Recv(t, tap.Events(), testwait.Timeout, "the access-log entry of "+path); ev.Path != path {
			t.Fatalf("event %+v, want the entry of %s", ev, path)
		}
		return st
	}
	revoked, kept := open(tok, "/revoked"), open(other, "/kept")
	if creds, streams := f.auth.Grants(); creds != 2 || streams != 2 {
		t.Fatalf("grants: %d credentials, %d streams; want 2 and 2", creds, streams)
	}

	start := time.Now()
	f.revoke(t, tok)
	took := endsWith(t, "idle access-log stream of the revoked token", start, func() (any, error) {
		// No CloseSend: the sidecar stays silent. Received aside, so that
		// a stream left open fails the test rather than hanging it.
		resp, ended := &alsv3.StreamAccessLogsResponse{}, make(chan error, 1)
		go func() { ended <- revoked.RecvMsg(resp) }()
		err := testwait.Recv(t, ended, revocationBound+testwait.Timeout, "end of the revoked token's idle access-log stream")
		return resp, err
	}, codes.Unauthenticated, "revoked")
	t.Logf("the access-log stream ended %s after the revocation", took)
	testwait.For(t, testwait.Timeout, "the ended stream to release its grant", func() bool {
		creds, streams := f.auth.Grants()
		return creds == 1 && streams == 1
	})
	if n := f.counter(t, "meshd_xds_streams_ended_total", "revoked"); n != 1 {
		t.Errorf("meshd_xds_streams_ended_total{reason=revoked} = %v, want 1", n)
	}
	// The other token's stream still reports.
	m := &alsv3.StreamAccessLogsMessage{LogEntries: &alsv3.StreamAccessLogsMessage_HttpLogs{HttpLogs: &alsv3.StreamAccessLogsMessage_HTTPAccessLogEntries{
		LogEntry: []*accesslogdatav3.HTTPAccessLogEntry{{Request: &accesslogdatav3.HTTPRequestProperties{Path: "/still"}}}}}}
	if err := kept.Send(m); err != nil {
		t.Fatal(err)
	}
	if ev := testwait.Recv(t, tap.Events(), testwait.Timeout, "the other token's next entry"); ev.Path != "/still" {
		t.Errorf("event %+v, want /still", ev)
	}
	if _, err := kept.CloseAndRecv(); err != nil {
		t.Errorf("the other token's stream: %v", err)
	}
}
