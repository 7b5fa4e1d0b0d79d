package e2e

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	xdscreds "google.golang.org/grpc/credentials/xds"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/xds"

	"github.com/meshd/meshd/internal/envoytest"
)

// greeterServer answers UnaryCall with its own name and the caller's
// verified SPIFFE ID, so the test sees which server answered and that mTLS
// authenticated the client.
type greeterServer struct {
	testgrpc.UnimplementedTestServiceServer
	name string
}

func (g *greeterServer) EmptyCall(context.Context, *testgrpc.Empty) (*testgrpc.Empty, error) {
	return &testgrpc.Empty{}, nil
}

func (g *greeterServer) UnaryCall(ctx context.Context, _ *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
	caller := "plaintext"
	if p, ok := peer.FromContext(ctx); ok {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.PeerCertificates) > 0 && len(ti.State.PeerCertificates[0].URIs) > 0 {
			caller = ti.State.PeerCertificates[0].URIs[0].String()
		}
	}
	return &testgrpc.SimpleResponse{Payload: &testgrpc.Payload{Body: []byte(g.name + "|" + caller)}}, nil
}

// startProxylessServer runs a gRPC-Go xDS server configured only by meshd.
func startProxylessServer(t *testing.T, m *meshd, nodeID string, port uint32) {
	t.Helper()
	serving := make(chan error, 8)
	srv, err := newProxylessServer(proxylessServerBootstrap(t, m, nodeID), nodeID, serving)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	timeout := time.After(20 * time.Second)
	for {
		select {
		case err := <-serving:
			if err == nil {
				return
			}
			t.Logf("%s: %v", nodeID, err)
		case <-timeout:
			t.Fatalf("%s never reached SERVING with meshd's listener", nodeID)
		}
	}
}

// proxylessServerBootstrap issues the greeter's certificates for nodeID and
// returns its gRPC xDS bootstrap.
func proxylessServerBootstrap(t testing.TB, m *meshd, nodeID string) string {
	t.Helper()
	certDir := filepath.Join(m.dir, "certs-"+nodeID)
	m.meshctl("certs", "issue", "--service", "greeter", "--data-dir", m.dataDir, "--out", certDir)
	return m.meshctl("bootstrap", "--flavor", "grpc", "--service", "greeter", "--node-id", nodeID,
		"--xds-address", m.xdsAddr, "--data-dir", m.dataDir, "--cert-dir", certDir)
}

// newProxylessServer is a greeter gRPC-Go xDS server on bootstrap that
// reports each serving mode change on serving (nil: SERVING).
func newProxylessServer(bootstrap, name string, serving chan<- error) (*xds.GRPCServer, error) {
	fallback, err := xdscreds.NewServerCredentials(xdscreds.ServerOptions{FallbackCreds: insecure.NewCredentials()})
	if err != nil {
		return nil, err
	}
	srv, err := xds.NewGRPCServer(
		grpc.Creds(fallback),
		xds.BootstrapContentsForTesting([]byte(bootstrap)),
		xds.ServingModeCallback(func(_ net.Addr, args xds.ServingModeChangeArgs) {
			if args.Mode == connectivity.ServingModeServing {
				serving <- nil
			} else {
				serving <- fmt.Errorf("not serving: %v", args.Err)
			}
		}),
	)
	if err != nil {
		return nil, err
	}
	testgrpc.RegisterTestServiceServer(srv, &greeterServer{name: name})
	return srv, nil
}

func mustServerCreds(t *testing.T) credentials.TransportCredentials {
	// The fallback is used only if meshd's listener had no TLS; the test
	// proves it has by showing plaintext is refused.
	c, err := xdscreds.NewServerCredentials(xdscreds.ServerOptions{FallbackCreds: insecure.NewCredentials()})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func mustClientCreds(t *testing.T) credentials.TransportCredentials {
	c, err := xdscreds.NewClientCredentials(xdscreds.ClientOptions{FallbackCreds: insecure.NewCredentials()})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func newProxylessClient(t *testing.T, m *meshd, nodeID string) testgrpc.TestServiceClient {
	t.Helper()
	certDir := filepath.Join(m.dir, "certs-"+nodeID)
	m.meshctl("certs", "issue", "--service", "client", "--data-dir", m.dataDir, "--out", certDir)
	boot := m.meshctl("bootstrap", "--flavor", "grpc", "--service", "client", "--node-id", nodeID,
		"--xds-address", m.xdsAddr, "--data-dir", m.dataDir, "--cert-dir", certDir)
	res, err := xds.NewXDSResolverWithConfigForTesting([]byte(boot))
	if err != nil {
		t.Fatal(err)
	}
	creds, err := xdscreds.NewClientCredentials(xdscreds.ClientOptions{FallbackCreds: insecure.NewCredentials()})
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient("xds:///greeter.default", grpc.WithResolvers(res), grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return testgrpc.NewTestServiceClient(cc)
}

func greeterCatalog(endpoints []uint32, servers map[string]uint32) string {
	var b strings.Builder
	b.WriteString("services:\n  - name: greeter\n    protocol: grpc\n    endpoints:\n")
	for _, p := range endpoints {
		fmt.Fprintf(&b, "      - {address: 127.0.0.1, port: %d, locality: {region: r1, zone: z1}}\n", p)
	}
	b.WriteString("  - name: client\n    protocol: grpc\nproxies:\n")
	b.WriteString("  - {id: client-1, service: client, flavor: grpc, upstreams: [{service: greeter}]}\n")
	for _, id := range []string{"greeter-1", "greeter-2"} {
		if p, ok := servers[id]; ok {
			fmt.Fprintf(&b, "  - {id: %s, service: greeter, flavor: grpc, address: 127.0.0.1, publicPort: %d}\n", id, p)
		}
	}
	return b.String()
}

// call makes one RPC and returns "server|caller-spiffe-id" and the server's
// certificate SPIFFE ID as the client saw it.
func call(ctx context.Context, c testgrpc.TestServiceClient) (string, string, error) {
	var p peer.Peer
	resp, err := c.UnaryCall(ctx, &testgrpc.SimpleRequest{}, grpc.Peer(&p))
	if err != nil {
		return "", "", err
	}
	server := ""
	if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.PeerCertificates) > 0 && len(ti.State.PeerCertificates[0].URIs) > 0 {
		server = ti.State.PeerCertificates[0].URIs[0].String()
	}
	return string(resp.GetPayload().GetBody()), server, nil
}

func TestProxylessGRPC(t *testing.T) {
	p1, p2 := envoytest.FreePort(t), envoytest.FreePort(t)
	m := startMeshd(t, greeterCatalog([]uint32{p1}, map[string]uint32{"greeter-1": p1}))
	startProxylessServer(t, m, "greeter-1", p1)
	client := newProxylessClient(t, m, "client-1")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	outer := t // servers started in a subtest must outlive it

	t.Run("mTLS RPC with meshd's identities", func(t *testing.T) {
		got, server, err := call(ctx, client)
		if err != nil {
			t.Fatal(err)
		}
		if got != "greeter-1|spiffe://cluster.local/ns/default/sa/client" {
			t.Fatalf("server saw %q, want greeter-1 authenticating the client's SPIFFE ID", got)
		}
		if server != "spiffe://cluster.local/ns/default/sa/greeter" {
			t.Fatalf("client saw server identity %q", server)
		}
		m.assertAllACKed("client-1", "greeter-1")
	})

	t.Run("plaintext client refused", func(t *testing.T) {
		cc, err := grpc.NewClient(fmt.Sprintf("127.0.0.1:%d", p1), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		cctx, ccancel := context.WithTimeout(ctx, 3*time.Second)
		defer ccancel()
		if _, err := testgrpc.NewTestServiceClient(cc).UnaryCall(cctx, &testgrpc.SimpleRequest{}); err == nil {
			t.Fatal("plaintext RPC to a server meshd configured for mTLS succeeded")
		}
	})

	t.Run("endpoint added and removed without restarts", func(t *testing.T) {
		m.writeCatalog(greeterCatalog([]uint32{p1, p2}, map[string]uint32{"greeter-1": p1, "greeter-2": p2}))
		startProxylessServer(outer, m, "greeter-2", p2)
		eventually(t, 15*time.Second, func() error {
			got, _, err := call(ctx, client)
			if err != nil {
				return err
			}
			if !strings.HasPrefix(got, "greeter-2|") {
				return fmt.Errorf("answered by %s", got)
			}
			return nil
		})
		m.writeCatalog(greeterCatalog([]uint32{p2}, map[string]uint32{"greeter-1": p1, "greeter-2": p2}))
		eventually(t, 15*time.Second, func() error {
			for range 10 {
				got, _, err := call(ctx, client)
				if err != nil {
					return err
				}
				if !strings.HasPrefix(got, "greeter-2|") {
					return fmt.Errorf("still answered by %s", got)
				}
			}
			return nil
		})
	})

	t.Run("malformed edit keeps the last good configuration", func(t *testing.T) {
		before := m.status().Catalog.Rejected
		m.writeCatalog("services:\n  - name: greeter\n    protocl: grpc\n")
		eventually(t, 10*time.Second, func() error {
			s := m.status()
			if s.Catalog.Rejected <= before || !strings.Contains(s.Catalog.LastError, "protocl") || !strings.Contains(s.Catalog.LastError, "catalog.yaml") {
				return fmt.Errorf("rejection not visible: %+v", s.Catalog)
			}
			return nil
		})
		for range 20 {
			got, _, err := call(ctx, client)
			if err != nil {
				t.Fatalf("RPC failed after a malformed catalog edit: %v", err)
			}
			if !strings.HasPrefix(got, "greeter-2|") {
				t.Fatalf("unexpected server %s", got)
			}
		}
		// A valid edit afterwards is picked up again.
		m.writeCatalog(greeterCatalog([]uint32{p1, p2}, map[string]uint32{"greeter-1": p1, "greeter-2": p2}))
		eventually(t, 15*time.Second, func() error {
			got, _, err := call(ctx, client)
			if err != nil {
				return err
			}
			if !strings.HasPrefix(got, "greeter-1|") {
				return fmt.Errorf("answered by %s", got)
			}
			return nil
		})
		if s := m.status(); s.Catalog.LastError != "" {
			t.Fatalf("error still shown after a good edit: %q", s.Catalog.LastError)
		}
		m.assertAllACKed("client-1", "greeter-1", "greeter-2")
	})
}
