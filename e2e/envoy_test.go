package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"

	"github.com/meshd/meshd/internal/envoytest"
)

// sidecarPorts are one sidecar's ports on 127.0.0.1.
type sidecarPorts struct{ public, app, admin uint32 }

type envoyMesh struct {
	web, api, api2, greeter, db     sidecarPorts
	webToAPI, webToGreeter, webToDB uint32
	apiEndpoints                    []uint32
	withAPI2                        bool
}

func (e *envoyMesh) catalog() string {
	var b strings.Builder
	b.WriteString("services:\n")
	fmt.Fprintf(&b, "  - name: web\n    protocol: http\n    endpoints: [{address: 127.0.0.1, port: %d}]\n", e.web.public)
	b.WriteString("  - name: api\n    protocol: http\n    endpoints:\n")
	for _, p := range e.apiEndpoints {
		fmt.Fprintf(&b, "      - {address: 127.0.0.1, port: %d, locality: {region: local, zone: a}}\n", p)
	}
	fmt.Fprintf(&b, "  - name: greeter\n    protocol: grpc\n    endpoints: [{address: 127.0.0.1, port: %d}]\n", e.greeter.public)
	fmt.Fprintf(&b, "  - name: db\n    protocol: tcp\n    endpoints: [{address: 127.0.0.1, port: %d}]\n", e.db.public)
	b.WriteString("proxies:\n")
	fmt.Fprintf(&b, "  - {service: web, address: 127.0.0.1, publicPort: %d, appPort: %d, upstreams: [{service: api, localPort: %d}, {service: greeter, localPort: %d}, {service: db, localPort: %d}]}\n",
		e.web.public, e.web.app, e.webToAPI, e.webToGreeter, e.webToDB)
	fmt.Fprintf(&b, "  - {service: api, address: 127.0.0.1, publicPort: %d, appPort: %d}\n", e.api.public, e.api.app)
	if e.withAPI2 {
		fmt.Fprintf(&b, "  - {id: api-2, service: api, address: 127.0.0.1, publicPort: %d, appPort: %d}\n", e.api2.public, e.api2.app)
	}
	fmt.Fprintf(&b, "  - {service: greeter, address: 127.0.0.1, publicPort: %d, appPort: %d}\n", e.greeter.public, e.greeter.app)
	fmt.Fprintf(&b, "  - {service: db, address: 127.0.0.1, publicPort: %d, appPort: %d}\n", e.db.public, e.db.app)
	return b.String()
}

func ports(t testing.TB) sidecarPorts {
	return sidecarPorts{envoytest.FreePort(t), envoytest.FreePort(t), envoytest.FreePort(t)}
}

// startHTTPApp runs a tiny app that reports who it is and the caller
// identity its sidecar vouched for (x-forwarded-client-cert).
func startHTTPApp(t testing.TB, name string, port uint32) {
	t.Helper()
	lis, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(map[string]string{"app": name, "path": r.URL.Path, "xfcc": r.Header.Get("X-Forwarded-Client-Cert")})
	})}
	go srv.Serve(lis)
	t.Cleanup(func() { srv.Close() })
}

type grpcApp struct {
	testgrpc.UnimplementedTestServiceServer
}

func (grpcApp) UnaryCall(ctx context.Context, _ *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	return &testgrpc.SimpleResponse{Payload: &testgrpc.Payload{Body: []byte("greeter|" + strings.Join(md.Get("x-forwarded-client-cert"), ","))}}, nil
}

// startGRPCApp runs the greeter application (grpcApp) behind a sidecar.
func startGRPCApp(t testing.TB, port uint32) {
	t.Helper()
	gs := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(gs, grpcApp{})
	lis, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
}

// startTCPEcho runs a tcp app that echoes what it first reads, prefixed
// with "db:", and closes the connection.
func startTCPEcho(t testing.TB, port uint32) {
	serveTCP(t, port, func(c net.Conn) {
		buf := make([]byte, 1024)
		n, _ := c.Read(buf)
		c.Write(append([]byte("db:"), buf[:n]...))
	})
}

// serveTCP runs handle for every connection to 127.0.0.1:port (closing the
// connection when handle returns) until the test ends.
func serveTCP(t testing.TB, port uint32, handle func(net.Conn)) {
	t.Helper()
	lis, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
}

// startSidecar generates the bootstrap with the real meshctl, validates it
// with envoy --mode validate and runs Envoy on it.
func startSidecar(t testing.TB, m *meshd, service, nodeID string, admin uint32, extra ...string) *envoytest.Envoy {
	t.Helper()
	args := append([]string{"bootstrap", "--service", service, "--xds-address", m.xdsAddr,
		"--admin-port", fmt.Sprint(admin), "--data-dir", m.dataDir}, extra...)
	if nodeID != "" {
		args = append(args, "--node-id", nodeID)
	}
	path := filepath.Join(m.dir, fmt.Sprintf("envoy-%s-%d.yaml", service, admin))
	if err := os.WriteFile(path, []byte(m.meshctl(args...)), 0o644); err != nil {
		t.Fatal(err)
	}
	envoytest.Validate(t, path)
	e := envoytest.Start(t, path, admin)
	e.WaitReady(t, 30*time.Second)
	return e
}

func httpGet(url string) (int, map[string]string, error) {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var body map[string]string
	_ = json.Unmarshal(b, &body)
	if body == nil {
		body = map[string]string{"raw": string(b)}
	}
	return resp.StatusCode, body, nil
}

// assertEnvoyAccepted reads Envoy's own /config_dump: no resource in an
// error state (a NACK) and no listener still warming.
func assertEnvoyAccepted(t *testing.T, name string, e *envoytest.Envoy, wantListeners int) {
	t.Helper()
	eventually(t, 15*time.Second, func() error {
		dump := e.AdminGET(t, "/config_dump?include_eds")
		if strings.Contains(dump, "error_state") {
			return fmt.Errorf("%s: config_dump shows a rejected resource:\n%s", name, excerpt(dump, "error_state"))
		}
		if strings.Contains(dump, "warming_state") {
			return fmt.Errorf("%s: a listener is still warming", name)
		}
		if n := strings.Count(dump, "\"active_state\""); n != wantListeners {
			return fmt.Errorf("%s: %d active listeners, want %d", name, n, wantListeners)
		}
		return nil
	})
}

func excerpt(s, near string) string {
	i := strings.Index(s, near)
	return s[max(0, i-300):min(len(s), i+500)]
}

func TestEnvoySidecars(t *testing.T) {
	envoytest.Binary(t)
	e := &envoyMesh{
		web: ports(t), api: ports(t), api2: ports(t), greeter: ports(t), db: ports(t),
		webToAPI: envoytest.FreePort(t), webToGreeter: envoytest.FreePort(t), webToDB: envoytest.FreePort(t),
	}
	e.apiEndpoints = []uint32{e.api.public}
	m := startMeshd(t, e.catalog())

	startHTTPApp(t, "web", e.web.app)
	startHTTPApp(t, "api", e.api.app)
	startTCPEcho(t, e.db.app)
	startGRPCApp(t, e.greeter.app)

	web := startSidecar(t, m, "web", "", e.web.admin)
	api := startSidecar(t, m, "api", "", e.api.admin)
	greeter := startSidecar(t, m, "greeter", "", e.greeter.admin)
	// db runs delta xDS: meshd serves both protocols to real Envoys.
	db := startSidecar(t, m, "db", "", e.db.admin, "--delta")
	outer := t

	t.Run("http through both sidecars over mTLS", func(t *testing.T) {
		var body map[string]string
		eventually(t, 15*time.Second, func() error {
			code, b, err := httpGet(fmt.Sprintf("http://127.0.0.1:%d/hello", e.webToAPI))
			if err != nil {
				return err
			}
			if code != 200 {
				return fmt.Errorf("status %d: %v", code, b)
			}
			body = b
			return nil
		})
		if body["app"] != "api" || body["path"] != "/hello" {
			t.Fatalf("reached %v, want the api app", body)
		}
		if !strings.Contains(body["xfcc"], "URI=spiffe://cluster.local/ns/default/sa/web") {
			t.Fatalf("api's sidecar did not vouch for web's identity: xfcc %q", body["xfcc"])
		}
		// The api sidecar counted it under the mTLS stat prefix.
		if n, ok := api.Stat(t, "http.inbound_mtls.api.default.downstream_rq_completed"); !ok || n < 1 {
			t.Fatalf("api sidecar mTLS request counter = %d (present %v)", n, ok)
		}
		if n, ok := api.Stat(t, "listener.127.0.0.1_"+fmt.Sprint(e.api.public)+".ssl.handshake"); !ok || n < 1 {
			t.Fatalf("api sidecar recorded %d TLS handshakes on its public port", n)
		}
	})

	t.Run("plaintext and certificate-less TLS to an inbound port are refused", func(t *testing.T) {
		if code, b, err := httpGet(fmt.Sprintf("http://127.0.0.1:%d/hello", e.api.public)); err == nil {
			t.Fatalf("plaintext request to api's public port got %d %v", code, b)
		}
		roots := x509.NewCertPool()
		pem, err := os.ReadFile(m.rootCAFile())
		if err != nil {
			t.Fatal(err)
		}
		roots.AppendCertsFromPEM(pem)
		c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: "api.default.svc.cluster.local"}}}
		if resp, err := c.Get(fmt.Sprintf("https://127.0.0.1:%d/hello", e.api.public)); err == nil {
			resp.Body.Close()
			t.Fatalf("TLS request without a client certificate got %d", resp.StatusCode)
		}
	})

	t.Run("grpc through both sidecars", func(t *testing.T) {
		cc, err := grpc.NewClient(fmt.Sprintf("127.0.0.1:%d", e.webToGreeter), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		var got string
		eventually(t, 15*time.Second, func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			resp, err := testgrpc.NewTestServiceClient(cc).UnaryCall(ctx, &testgrpc.SimpleRequest{})
			if err != nil {
				return err
			}
			got = string(resp.GetPayload().GetBody())
			return nil
		})
		if !strings.HasPrefix(got, "greeter|") || !strings.Contains(got, "URI=spiffe://cluster.local/ns/default/sa/web") {
			t.Fatalf("gRPC answer %q: want the greeter app with web's identity", got)
		}
	})

	t.Run("tcp through both sidecars", func(t *testing.T) {
		eventually(t, 15*time.Second, func() error {
			c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", e.webToDB), 3*time.Second)
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(3 * time.Second))
			if _, err := c.Write([]byte("ping")); err != nil {
				return err
			}
			b, err := io.ReadAll(c)
			if err != nil {
				return err
			}
			if string(b) != "db:ping" {
				return fmt.Errorf("echo %q", b)
			}
			return nil
		})
		if n, ok := db.Stat(t, "tcp.inbound_mtls.db.default.downstream_cx_total"); !ok || n < 1 {
			t.Fatalf("db sidecar tcp mTLS connections = %d (present %v)", n, ok)
		}
	})

	t.Run("every resource ACKed", func(t *testing.T) {
		assertEnvoyAccepted(t, "web", web, 4)
		assertEnvoyAccepted(t, "api", api, 1)
		assertEnvoyAccepted(t, "greeter", greeter, 1)
		assertEnvoyAccepted(t, "db", db, 1)
		m.assertAllACKed("web.default", "api.default", "greeter.default", "db.default")
	})

	t.Run("endpoint added without restarts", func(t *testing.T) {
		startHTTPApp(outer, "api-2", e.api2.app)
		e.withAPI2 = true
		e.apiEndpoints = append(e.apiEndpoints, e.api2.public)
		m.writeCatalog(e.catalog())
		startSidecar(outer, m, "api", "api-2", e.api2.admin)
		eventually(t, 15*time.Second, func() error {
			clusters := web.AdminGET(t, "/clusters")
			if n := strings.Count(clusters, "outbound|api.default::127.0.0.1:"); n == 0 || !strings.Contains(clusters, fmt.Sprintf("outbound|api.default::127.0.0.1:%d::health_flags::healthy", e.api2.public)) {
				return fmt.Errorf("web's Envoy does not have the new api endpoint yet")
			}
			return nil
		})
		seen := map[string]bool{}
		eventually(t, 15*time.Second, func() error {
			code, b, err := httpGet(fmt.Sprintf("http://127.0.0.1:%d/", e.webToAPI))
			if err != nil || code != 200 {
				return fmt.Errorf("%d %v %v", code, b, err)
			}
			seen[b["app"]] = true
			if !seen["api"] || !seen["api-2"] {
				return fmt.Errorf("reached %v so far", seen)
			}
			return nil
		})
		assertEnvoyAccepted(t, "web", web, 4)
		m.assertAllACKed("web.default", "api.default", "api-2")
	})
}
