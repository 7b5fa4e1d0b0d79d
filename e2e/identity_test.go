package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/xds"

	"github.com/meshd/meshd/internal/envoytest"
	"github.com/meshd/meshd/sds"
	meshxds "github.com/meshd/meshd/xds"
)

// flagValue returns the value after flag in args ("" if absent).
func flagValue(args []string, flag string) string {
	for i, a := range args {
		if a == flag && i+1 < len(args) {
			return args[i+1]
		}
		if v, ok := strings.CutPrefix(a, flag+"="); ok {
			return v
		}
	}
	return ""
}

// withToken adds --token-file to an Envoy `meshctl bootstrap`, with a token
// for the bootstrap's service created by the real meshctl, so tests written
// before authentication keep passing through the same CLI users run.
func (m *meshd) withToken(args []string) []string {
	if len(args) == 0 || args[0] != "bootstrap" || slices.Contains(args, "--token-file") || flagValue(args, "--flavor") == "grpc" {
		return args
	}
	svc, ns := flagValue(args, "--service"), flagValue(args, "--namespace")
	if ns == "" {
		ns = "default"
	}
	path := filepath.Join(m.dir, fmt.Sprintf("%s.%s.token", svc, ns))
	m.runMeshctl("token", "create", "--service", svc, "--namespace", ns, "--ttl", "1h", "--data-dir", m.dataDir, "-o", path)
	return append(slices.Clone(args), "--token-file", path)
}

// withAdminToken points a meshctl command that asks this meshd's admin API
// at its admin token (this meshd's data directory is not meshctl's
// default), unless the test gives its own.
func (m *meshd) withAdminToken(args []string) []string {
	if !slices.Contains(args, "--admin-address") || slices.Contains(args, "--admin-token-file") {
		return args
	}
	return append(slices.Clone(args), "--admin-token-file", m.adminTokenFile())
}

// runMeshctl runs meshctl as given (with the admin token, withAdminToken)
// and fails the test on error.
func (m *meshd) runMeshctl(args ...string) string {
	m.t.Helper()
	out, errOut, err := m.tryMeshctl(args...)
	if err != nil {
		m.t.Fatalf("meshctl %s: %v\n%s", strings.Join(args, " "), err, errOut)
	}
	return out
}

func (m *meshd) tryMeshctl(args ...string) (string, string, error) {
	cmd := exec.Command(filepath.Join(binDir, "meshctl"), m.withAdminToken(args)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return out.String(), errb.String(), err
}

// identityMesh is two sidecars, web → api, for the identity tests.
type identityMesh struct {
	web, api sidecarPorts
	webToAPI uint32
}

func newIdentityMesh(t *testing.T) *identityMesh {
	return &identityMesh{web: ports(t), api: ports(t), webToAPI: envoytest.FreePort(t)}
}

func (e *identityMesh) catalog() string {
	return fmt.Sprintf(`services:
  - name: web
    protocol: http
    endpoints: [{address: 127.0.0.1, port: %d}]
  - name: api
    protocol: http
    endpoints: [{address: 127.0.0.1, port: %d}]
proxies:
  - {service: web, address: 127.0.0.1, publicPort: %d, appPort: %d, upstreams: [{service: api, localPort: %d}]}
  - {service: api, address: 127.0.0.1, publicPort: %d, appPort: %d}
`, e.web.public, e.api.public, e.web.public, e.web.app, e.webToAPI, e.api.public, e.api.app)
}

var (
	webSPIFFE = "spiffe://cluster.local/ns/default/sa/web"
	apiSPIFFE = "spiffe://cluster.local/ns/default/sa/api"
)

// xdsClient dials meshd's xDS port over TLS (verifying meshd with the
// bundle file) or in plaintext.
func xdsClient(t *testing.T, m *meshd, plaintext bool) *grpc.ClientConn {
	t.Helper()
	creds := insecure.NewCredentials()
	if !plaintext {
		pool := x509.NewCertPool()
		b, err := os.ReadFile(m.rootCAFile())
		if err != nil {
			t.Fatal(err)
		}
		pool.AppendCertsFromPEM(b)
		creds = credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "localhost"})
	}
	cc, err := grpc.NewClient(m.xdsAddr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// adsFirst opens an ADS stream with token (may be empty) as node and returns
// the first response to a request for typ/names, or the stream's error.
func adsFirst(cc *grpc.ClientConn, token, node, typ string, names ...string) (*discoveryv3.DiscoveryResponse, error) {
	// The stream ends with this call: left open, streams pile up against
	// meshd's 64 concurrent streams per connection and later calls stall.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	}
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
	if err != nil {
		return nil, err
	}
	// Send returns io.EOF if the server has already ended the stream (a
	// refused credential); the status comes from Recv.
	if err := stream.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: node}, TypeUrl: typ, ResourceNames: names}); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return stream.Recv()
}

func (m *meshd) token(t *testing.T, svc string, ttl string) (path, token string) {
	t.Helper()
	path = filepath.Join(m.dir, fmt.Sprintf("%s-%d.token", svc, time.Now().UnixNano()))
	m.runMeshctl("token", "create", "--service", svc, "--ttl", ttl, "--data-dir", m.dataDir, "-o", path)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return path, strings.TrimSpace(string(b))
}

func (m *meshd) metric(t *testing.T, name string) float64 {
	t.Helper()
	_, body := m.adminGET("/metrics")
	var sum float64
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, name+" ") || strings.HasPrefix(line, name+"{") {
			var v float64
			fmt.Sscanf(line[strings.LastIndexByte(line, ' ')+1:], "%g", &v)
			sum += v
		}
	}
	return sum
}

func wantStatus(t *testing.T, what string, err error, code codes.Code, msg string) {
	t.Helper()
	if status.Code(err) != code || !strings.Contains(status.Convert(err).Message(), msg) {
		t.Errorf("%s: got %v, want %s containing %q", what, err, code, msg)
	}
}

func TestXDSAuthentication(t *testing.T) {
	e := newIdentityMesh(t)
	m := startMeshd(t, e.catalog())
	cc := xdsClient(t, m, false)
	_, webTok := m.token(t, "web", "1h")

	t.Run("token for web gets web's config", func(t *testing.T) {
		resp, err := adsFirst(cc, webTok, "web.default", resourcev3.ListenerType)
		if err != nil || len(resp.GetResources()) == 0 {
			t.Fatalf("%v %v", resp, err)
		}
	})
	t.Run("token for web cannot get api's config or secrets", func(t *testing.T) {
		before := m.metric(t, `meshd_xds_auth_refused_total{reason="identity_mismatch"}`)
		_, err := adsFirst(cc, webTok, "api.default", resourcev3.ListenerType)
		wantStatus(t, "web token as api node", err, codes.PermissionDenied, `does not grant node "api.default"`)
		_, err = adsFirst(cc, webTok, "api.default", resourcev3.SecretType, apiSPIFFE)
		wantStatus(t, "web token for api's secret", err, codes.PermissionDenied, "does not grant")
		if got := m.metric(t, `meshd_xds_auth_refused_total{reason="identity_mismatch"}`); got != before+2 {
			t.Errorf("identity_mismatch refusals %v → %v, want +2", before, got)
		}
		// As itself, asking for a secret named after api's identity and
		// for the identity secret: nothing of api's comes back, and the
		// identity secret holds web's certificate.
		deniedBefore := m.metric(t, "meshd_sds_secret_requests_denied_total")
		resp, err := adsFirst(cc, webTok, "web.default", resourcev3.SecretType, apiSPIFFE, meshxds.IdentitySecretName)
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.GetResources()) != 1 {
			t.Errorf("web got %d secrets, want its identity only", len(resp.GetResources()))
		}
		for _, r := range resp.GetResources() {
			var s tlsv3.Secret
			if err := r.UnmarshalTo(&s); err != nil {
				t.Fatal(err)
			}
			if s.GetName() != meshxds.IdentitySecretName {
				t.Errorf("web got secret %s", s.GetName())
				continue
			}
			if ids := leafURIs(t, s.GetTlsCertificate().GetCertificateChain().GetInlineBytes()); len(ids) != 1 || ids[0] != webSPIFFE {
				t.Errorf("web's identity secret is for %v, want %s", ids, webSPIFFE)
			}
		}
		if got := m.metric(t, "meshd_sds_secret_requests_denied_total"); got != deniedBefore+1 {
			t.Errorf("denied secret requests %v → %v, want +1", deniedBefore, got)
		}
		m.waitLog(t, "credential is for another identity", "SDS request for secrets the proxy's credential does not grant")
	})
	t.Run("Envoy with another service's token gets nothing", func(t *testing.T) {
		apiTokFile, _ := m.token(t, "api", "1h")
		path := filepath.Join(m.dir, "web-with-api-token.yaml")
		boot := m.runMeshctl("bootstrap", "--service", "web", "--xds-address", m.xdsAddr, "--admin-port", fmt.Sprint(e.web.admin),
			"--data-dir", m.dataDir, "--token-file", apiTokFile)
		if err := os.WriteFile(path, []byte(boot), 0o600); err != nil {
			t.Fatal(err)
		}
		before := m.metric(t, `meshd_xds_auth_refused_total{reason="identity_mismatch"}`)
		env := envoytest.Start(t, path, e.web.admin)
		eventually(t, 15*time.Second, func() error {
			if got := m.metric(t, `meshd_xds_auth_refused_total{reason="identity_mismatch"}`); got <= before {
				return fmt.Errorf("no refusal counted yet")
			}
			return nil
		})
		dump := env.AdminGET(t, "/config_dump")
		if strings.Contains(dump, "dynamic_listeners") || strings.Contains(dump, "dynamic_active_secrets") || strings.Contains(dump, apiSPIFFE) {
			t.Error("Envoy with web's node and api's token received configuration")
		}
	})
	t.Run("expired, revoked and tampered tokens are refused", func(t *testing.T) {
		_, short := m.token(t, "web", "1s")
		// Served until meshd's clock passes the expiry, refused after.
		eventually(t, 15*time.Second, func() error {
			if _, err := adsFirst(cc, short, "web.default", resourcev3.ListenerType); err == nil {
				return errors.New("token not expired yet")
			}
			return nil
		})
		_, err := adsFirst(cc, short, "web.default", resourcev3.ListenerType)
		wantStatus(t, "expired", err, codes.Unauthenticated, "expired")

		revFile, rev := m.token(t, "web", "1h")
		if _, err := adsFirst(cc, rev, "web.default", resourcev3.ListenerType); err != nil {
			t.Fatalf("token before revocation: %v", err)
		}
		m.runMeshctl("token", "revoke", "--token-file", revFile, "--data-dir", m.dataDir)
		_, err = adsFirst(cc, rev, "web.default", resourcev3.ListenerType)
		wantStatus(t, "revoked", err, codes.Unauthenticated, "revoked")

		parts := strings.Split(webTok, ".")
		claims, _ := base64.RawURLEncoding.DecodeString(parts[1])
		forged := strings.Replace(string(claims), `"svc":"web"`, `"svc":"api"`, 1)
		tampered := parts[0] + "." + base64.RawURLEncoding.EncodeToString([]byte(forged)) + "." + parts[2]
		_, err = adsFirst(cc, tampered, "api.default", resourcev3.ListenerType)
		wantStatus(t, "tampered", err, codes.Unauthenticated, "signature")
		_, err = adsFirst(cc, "", "web.default", resourcev3.ListenerType)
		wantStatus(t, "no credential", err, codes.Unauthenticated, "no credential")
	})
	t.Run("plaintext is refused", func(t *testing.T) {
		if _, err := adsFirst(xdsClient(t, m, true), webTok, "web.default", resourcev3.ListenerType); err == nil {
			t.Fatal("plaintext xDS served without --insecure-xds")
		}
	})
	t.Run("--insecure-xds serves plaintext and warns", func(t *testing.T) {
		in := startMeshd(t, e.catalog(), "--insecure-xds")
		if _, err := adsFirst(xdsClient(t, in, true), "", "web.default", resourcev3.ListenerType); err != nil {
			t.Fatalf("plaintext under --insecure-xds: %v", err)
		}
		// A warning at start and one per stream.
		in.waitLog(t, "INSECURE: --insecure-xds", "INSECURE: serving an xDS stream without authentication")
	})
	m.stop()
	log, _ := os.ReadFile(m.logPath)
	assertNoKeyMaterial(t, "meshd log", log)
	if strings.Contains(string(log), strings.Split(webTok, ".")[2]) {
		t.Error("a token signature reached meshd's log")
	}
}

// envoyCert is what Envoy's /certs says about the certificate it presents
// for spiffeID, and the trusted CAs next to it.
type envoyCert struct {
	serial    string   // normalized hex
	caSerials []string // normalized hex of the validation context's CAs
}

func normSerial(s string) string {
	s = strings.TrimLeft(strings.ToLower(strings.ReplaceAll(s, ":", "")), "0")
	if s == "" {
		return "0"
	}
	return s
}

func envoyCertFor(t *testing.T, e *envoytest.Envoy, spiffeID string) (envoyCert, error) {
	t.Helper()
	return parseEnvoyCert(e.AdminGET(t, "/certs"), spiffeID)
}

// parseEnvoyCert finds the certificate for spiffeID in Envoy's /certs
// answer.
func parseEnvoyCert(certsJSON, spiffeID string) (envoyCert, error) {
	var doc struct {
		Certificates []struct {
			CACert []struct {
				Serial string `json:"serial_number"`
			} `json:"ca_cert"`
			CertChain []struct {
				Serial string `json:"serial_number"`
				SANs   []struct {
					URI string `json:"uri"`
				} `json:"subject_alt_names"`
			} `json:"cert_chain"`
		} `json:"certificates"`
	}
	if err := json.Unmarshal([]byte(certsJSON), &doc); err != nil {
		return envoyCert{}, err
	}
	for _, c := range doc.Certificates {
		if len(c.CertChain) == 0 || len(c.CACert) == 0 {
			continue
		}
		for _, san := range c.CertChain[0].SANs {
			if san.URI == spiffeID {
				ec := envoyCert{serial: normSerial(c.CertChain[0].Serial)}
				for _, ca := range c.CACert {
					ec.caSerials = append(ec.caSerials, normSerial(ca.Serial))
				}
				return ec, nil
			}
		}
	}
	return envoyCert{}, fmt.Errorf("Envoy presents no certificate for %s yet", spiffeID)
}

func (m *meshd) caStatus(t *testing.T) sds.Status {
	t.Helper()
	code, body := m.adminGET("/ca/status")
	if code != 200 {
		t.Fatalf("/ca/status: %d %s", code, body)
	}
	var st sds.Status
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatal(err)
	}
	return st
}

func leafSerial(st sds.Status, spiffeID string) (serial, gen string) {
	for _, l := range st.Leaves {
		if l.SPIFFEID == spiffeID {
			return normSerial(l.Serial), l.Generation
		}
	}
	return "", ""
}

// freshHandshake opens a new mTLS connection to a sidecar's public port with
// a certificate meshctl issues now, verifying the sidecar against the current
// bundle, and returns the serial the sidecar presented.
func freshHandshake(t *testing.T, m *meshd, port uint32, serverName string) (string, error) {
	t.Helper()
	dir := filepath.Join(m.dir, fmt.Sprintf("client-%d", time.Now().UnixNano()))
	m.runMeshctl("certs", "issue", "--service", "web", "--data-dir", m.dataDir, "--out", dir)
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"))
	if err != nil {
		return "", err
	}
	pool := x509.NewCertPool()
	b, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		return "", err
	}
	pool.AppendCertsFromPEM(b)
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 3 * time.Second}, "tcp", fmt.Sprintf("127.0.0.1:%d", port),
		&tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, ServerName: serverName})
	if err != nil {
		return "", err
	}
	defer c.Close()
	return normSerial(c.ConnectionState().PeerCertificates[0].SerialNumber.Text(16)), nil
}

// TestCertificateRotationUnderLoad: requests run continuously through two
// real Envoy sidecars (web → api, mTLS) while meshd rotates the leaves twice
// (short lifetimes) and then the root; not one request may fail, Envoy's
// /certs must show each new certificate, and a fresh handshake must get it.
func TestCertificateRotationUnderLoad(t *testing.T) {
	envoytest.Binary(t)
	e := newIdentityMesh(t)
	m := startMeshd(t, e.catalog(), "--leaf-ttl", "16s")
	startHTTPApp(t, "web", e.web.app)
	startHTTPApp(t, "api", e.api.app)
	startSidecar(t, m, "web", "", e.web.admin)
	api := startSidecar(t, m, "api", "", e.api.admin)
	url := fmt.Sprintf("http://127.0.0.1:%d/", e.webToAPI)
	eventually(t, 15*time.Second, func() error {
		code, b, err := httpGet(url)
		if err != nil || code != 200 || b["app"] != "api" {
			return fmt.Errorf("%d %v %v", code, b, err)
		}
		return nil
	})

	// The load: a new client connection per request, every 20 ms.
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	f := startFlow(20*time.Millisecond, func() error {
		resp, err := client.Get(url)
		if err != nil {
			return err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	})
	defer f.stop(t, 1)

	// apiCertIs waits until api's Envoy presents a certificate other than
	// prev and meshd's CA agrees it is the current one; a fresh handshake
	// must then be served that certificate.
	apiCertIs := func(prev string) envoyCert {
		t.Helper()
		var ec envoyCert
		eventually(t, 40*time.Second, func() error {
			var err error
			if ec, err = envoyCertFor(t, api, apiSPIFFE); err != nil {
				return err
			}
			if ec.serial == prev {
				return fmt.Errorf("api still presents %s", prev)
			}
			if s, _ := leafSerial(m.caStatus(t), apiSPIFFE); s != ec.serial {
				return fmt.Errorf("Envoy presents %s, meshd's current leaf is %s", ec.serial, s)
			}
			return nil
		})
		eventually(t, 10*time.Second, func() error {
			got, err := freshHandshake(t, m, e.api.public, "api.default.svc.cluster.local")
			if err != nil {
				return err
			}
			if got != ec.serial {
				return fmt.Errorf("fresh handshake got %s, /certs shows %s", got, ec.serial)
			}
			return nil
		})
		return ec
	}

	first, err := envoyCertFor(t, api, apiSPIFFE)
	if err != nil {
		t.Fatal(err)
	}
	second := apiCertIs(first.serial)
	t.Logf("leaf rotation 1: %s → %s", first.serial, second.serial)
	third := apiCertIs(second.serial)
	t.Logf("leaf rotation 2: %s → %s", second.serial, third.serial)

	// Root rotation.
	before := m.caStatus(t)
	oldRoot := normSerial(before.SigningRoot.Serial)
	out := m.runMeshctl("ca", "rotate-root", "--admin-address", m.adminAddr)
	if !strings.Contains(out, "root rotation started") {
		t.Fatalf("meshctl ca rotate-root: %s", out)
	}
	// Wait for the switch, not for a phase: the rotation ends (retiring)
	// about a second after it, once every cached leaf is reissued.
	var newRoot string
	eventually(t, 30*time.Second, func() error {
		st := m.caStatus(t)
		if newRoot = normSerial(st.SigningRoot.Serial); newRoot == oldRoot {
			return fmt.Errorf("phase %s, still signing under the old root", st.Phase)
		}
		return nil
	})
	if newRoot == oldRoot {
		t.Fatal("signing root unchanged after the switch")
	}
	// Both sidecars ACKed the two-root bundle before the switch.
	if ec, _ := envoyCertFor(t, api, apiSPIFFE); len(ec.caSerials) != 2 {
		t.Errorf("api's Envoy trusts %v during the rotation, want old and new root", ec.caSerials)
	}
	fourth := apiCertIs(third.serial)
	if _, gen := leafSerial(m.caStatus(t), apiSPIFFE); gen != m.caStatus(t).Signing.Generation {
		t.Errorf("api's leaf is from %s, not the new generation", gen)
	}
	t.Logf("root rotation: api leaf %s → %s under root %s", third.serial, fourth.serial, newRoot)
	eventually(t, 60*time.Second, func() error {
		st := m.caStatus(t)
		if st.Phase != sds.PhaseIdle || len(st.TrustedRoots) != 1 {
			return fmt.Errorf("phase %s with %d trusted roots", st.Phase, len(st.TrustedRoots))
		}
		return nil
	})
	eventually(t, 15*time.Second, func() error {
		ec, err := envoyCertFor(t, api, apiSPIFFE)
		if err != nil {
			return err
		}
		if len(ec.caSerials) != 1 || ec.caSerials[0] != newRoot {
			return fmt.Errorf("api's Envoy trusts %v, want only the new root %s", ec.caSerials, newRoot)
		}
		return nil
	})
	status := m.runMeshctl("ca", "status", "--admin-address", m.adminAddr)
	if !strings.Contains(status, "rotation:      none") || !strings.Contains(status, apiSPIFFE) {
		t.Errorf("meshctl ca status after the rotation:\n%s", status)
	}
	// Traffic still flows after the old root is gone.
	f.waitMore(t, 20)
}

// agentEnvoyConfig is a static Envoy whose only listener terminates mTLS
// with the certificate and bundle it gets over SDS from mesh-agent's socket.
func agentEnvoyConfig(admin, port uint32, socket string) string {
	sds := fmt.Sprintf(`{resource_api_version: V3, api_config_source: {api_type: GRPC, transport_api_version: V3, grpc_services: [{envoy_grpc: {cluster_name: %s}}]}}`, "meshd_agent_sds")
	return fmt.Sprintf(`node: {id: api.default, cluster: api}
admin: {address: {socket_address: {address: 127.0.0.1, port_value: %d}}}
static_resources:
  clusters:
  - name: meshd_agent_sds
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
    load_assignment:
      cluster_name: meshd_agent_sds
      endpoints: [{lb_endpoints: [{endpoint: {address: {pipe: {path: %q}}}}]}]
  listeners:
  - name: inbound
    address: {socket_address: {address: 127.0.0.1, port_value: %d}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_certificate_sds_secret_configs: [{name: %q, sds_config: %s}]
            validation_context_sds_secret_config: {name: ROOTCA, sds_config: %s}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: agent
          http_filters: [{name: envoy.filters.http.router, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}]
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{match: {prefix: /}, direct_response: {status: 200, body: {inline_string: agent-ok}}}]
`, admin, socket, port, meshxds.IdentitySecretName, sds, sds)
}

// mtlsGet makes one request over a new mTLS connection with a client
// certificate meshctl issues from the current CA.
type mtlsClient struct {
	client *http.Client
}

func newMTLSClient(t *testing.T, m *meshd) *mtlsClient {
	t.Helper()
	dir := filepath.Join(m.dir, fmt.Sprintf("client-%d", time.Now().UnixNano()))
	m.runMeshctl("certs", "issue", "--service", "web", "--data-dir", m.dataDir, "--out", dir)
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	b, _ := os.ReadFile(filepath.Join(dir, "ca.pem"))
	pool.AppendCertsFromPEM(b)
	return &mtlsClient{client: &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		TLSClientConfig:   &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, ServerName: "api.default.svc.cluster.local"},
	}}}
}

// TestMeshAgent: mesh-agent generates api's key locally, gets it signed by
// meshd with a bootstrap token (then renews with its certificate), serves it
// to a real Envoy over SDS on a Unix socket and writes files for gRPC.
// Requests keep flowing with fresh handshakes through two renewals and a
// root rotation; /certs shows each new certificate.
func TestMeshAgent(t *testing.T) {
	envoytest.Binary(t)
	e := newIdentityMesh(t)
	m := startMeshd(t, e.catalog(), "--leaf-ttl", "16s")
	tokFile, _ := m.token(t, "api", "1h")
	socket := filepath.Join(m.dir, "api-sds.sock")
	certDir := filepath.Join(m.dir, "agent-certs")
	agentLog := &logWatcher{}
	agent := exec.Command(filepath.Join(binDir, "mesh-agent"), "--service", "api", "--token-file", tokFile,
		"--xds-address", m.xdsAddr, "--ca-file", m.rootCAFile(), "--sds-socket", socket, "--cert-dir", certDir,
		"--bundle-refresh", "1s", "--log-level", "debug")
	agent.Stdout, agent.Stderr = agentLog, agentLog
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	agentDone := make(chan struct{})
	go func() { agent.Wait(); close(agentDone) }()
	t.Cleanup(func() {
		agent.Process.Signal(syscall.SIGTERM)
		select {
		case <-agentDone:
		case <-time.After(5 * time.Second):
			agent.Process.Kill()
			<-agentDone
		}
		if t.Failed() {
			t.Logf("mesh-agent log:\n%s", agentLog)
		}
	})
	eventually(t, 15*time.Second, func() error {
		if _, err := os.Stat(socket); err != nil {
			return err
		}
		_, err := os.Stat(filepath.Join(certDir, "cert.pem"))
		return err
	})
	if m := fileMode(t, socket); m != 0o600 {
		t.Errorf("SDS socket mode %04o, want 0600", m)
	}
	if m := fileMode(t, filepath.Join(certDir, "key.pem")); m != 0o600 {
		t.Errorf("key.pem mode %04o, want 0600", m)
	}

	port, admin := envoytest.FreePort(t), envoytest.FreePort(t)
	cfgPath := filepath.Join(m.dir, "agent-envoy.yaml")
	if err := os.WriteFile(cfgPath, []byte(agentEnvoyConfig(admin, port, socket)), 0o644); err != nil {
		t.Fatal(err)
	}
	envoytest.Validate(t, cfgPath)
	env := envoytest.Start(t, cfgPath, admin)
	env.WaitReady(t, 30*time.Second)

	url := fmt.Sprintf("https://127.0.0.1:%d/", port)
	var clientMu sync.Mutex
	client := newMTLSClient(t, m)
	eventually(t, 15*time.Second, func() error {
		resp, err := client.client.Get(url)
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	})
	f := startFlow(20*time.Millisecond, func() error {
		clientMu.Lock()
		c := client.client
		clientMu.Unlock()
		resp, err := c.Get(url)
		if err != nil {
			return err
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != "agent-ok" {
			return fmt.Errorf("status %d %q", resp.StatusCode, b)
		}
		return nil
	})
	defer f.stop(t, 1)

	fileSerial := func() string {
		b, err := os.ReadFile(filepath.Join(certDir, "cert.pem"))
		if err != nil {
			return ""
		}
		blk, _ := pem.Decode(b)
		if blk == nil {
			return ""
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return ""
		}
		return normSerial(c.SerialNumber.Text(16))
	}
	nextCert := func(prev string) string {
		t.Helper()
		var ec envoyCert
		eventually(t, 40*time.Second, func() error {
			var err error
			if ec, err = envoyCertFor(t, env, apiSPIFFE); err != nil {
				return err
			}
			if ec.serial == prev {
				return fmt.Errorf("Envoy still presents %s", prev)
			}
			if fs := fileSerial(); fs != ec.serial {
				return fmt.Errorf("cert.pem has %s, Envoy %s", fs, ec.serial)
			}
			return nil
		})
		return ec.serial
	}
	first, err := envoyCertFor(t, env, apiSPIFFE)
	if err != nil {
		t.Fatal(err)
	}
	s2 := nextCert(first.serial)
	s3 := nextCert(s2)
	t.Logf("agent renewals: %s → %s → %s", first.serial, s2, s3)
	if !strings.Contains(agentLog.String(), "identity certificate issued") {
		t.Error("agent log lacks issuance")
	}

	// Root rotation: the gate waits for the agent to fetch the new bundle.
	// Wait for the switch (the signing root changes), not for a phase.
	oldRoot := normSerial(m.caStatus(t).SigningRoot.Serial)
	m.runMeshctl("ca", "rotate-root", "--admin-address", m.adminAddr)
	eventually(t, 30*time.Second, func() error {
		if st := m.caStatus(t); normSerial(st.SigningRoot.Serial) == oldRoot {
			return fmt.Errorf("phase %s, still signing under the old root", st.Phase)
		}
		return nil
	})
	// Clients now get certificates from the new root.
	clientMu.Lock()
	client = newMTLSClient(t, m)
	clientMu.Unlock()
	s4 := nextCert(s3)
	newRoot := normSerial(m.caStatus(t).SigningRoot.Serial)
	eventually(t, 60*time.Second, func() error {
		if st := m.caStatus(t); st.Phase != sds.PhaseIdle {
			return fmt.Errorf("phase %s", st.Phase)
		}
		ec, err := envoyCertFor(t, env, apiSPIFFE)
		if err != nil {
			return err
		}
		if len(ec.caSerials) != 1 || ec.caSerials[0] != newRoot {
			return fmt.Errorf("Envoy trusts %v, want only %s", ec.caSerials, newRoot)
		}
		return nil
	})
	t.Logf("root rotation: agent leaf %s → %s under root %s", s3, s4, newRoot)
	f.waitMore(t, 20) // requests still succeed after the old root is gone

	// The key never left the agent: meshd's log has no key, and the key
	// file's public key is the certificate's.
	if _, err := tls.LoadX509KeyPair(filepath.Join(certDir, "cert.pem"), filepath.Join(certDir, "key.pem")); err != nil {
		t.Errorf("agent files do not form a pair: %v", err)
	}
	log, _ := os.ReadFile(m.logPath)
	assertNoKeyMaterial(t, "meshd log", log)
	assertNoKeyMaterial(t, "mesh-agent log", []byte(agentLog.String()))
	if !strings.Contains(string(log), "signed a node agent's CSR") {
		t.Error("meshd did not sign through the CSR path")
	}
}

func fileMode(t *testing.T, p string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

// startAgent runs mesh-agent for a service's node, writing files to a new
// directory, which it returns once the first certificate is there.
func startAgent(t *testing.T, m *meshd, service, nodeID string, extra ...string) (certDir string, log *logWatcher) {
	t.Helper()
	tokFile, _ := m.token(t, service, "1h")
	certDir = filepath.Join(m.dir, "agent-"+nodeID)
	log = &logWatcher{}
	args := append([]string{"--service", service, "--node-id", nodeID, "--token-file", tokFile,
		"--xds-address", m.xdsAddr, "--ca-file", m.rootCAFile(), "--cert-dir", certDir, "--bundle-refresh", "1s"}, extra...)
	cmd := exec.Command(filepath.Join(binDir, "mesh-agent"), args...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("mesh-agent %s log:\n%s", nodeID, log)
		}
	})
	eventually(t, 15*time.Second, func() error {
		_, err := os.Stat(filepath.Join(certDir, "cert.pem"))
		return err
	})
	return certDir, log
}

func certFileSerial(dir string) string {
	b, err := os.ReadFile(filepath.Join(dir, "cert.pem"))
	if err != nil {
		return ""
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return ""
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return ""
	}
	return normSerial(c.SerialNumber.Text(16))
}

// TestProxylessGRPCWithAgentRotation: proxyless gRPC server and client get
// their identities from mesh-agents (files, gRPC file_watcher) and reach
// meshd with those certificates; RPCs run continuously through two leaf
// rotations and a root rotation without one failure, and a fresh handshake
// is served each new certificate.
func TestProxylessGRPCWithAgentRotation(t *testing.T) {
	p1 := envoytest.FreePort(t)
	m := startMeshd(t, greeterCatalog([]uint32{p1}, map[string]uint32{"greeter-1": p1}), "--leaf-ttl", "16s")
	serverDir, _ := startAgent(t, m, "greeter", "greeter-1")
	clientDir, _ := startAgent(t, m, "client", "client-1")

	grpcBoot := func(service, node, dir string) []byte {
		return []byte(m.runMeshctl("bootstrap", "--flavor", "grpc", "--service", service, "--node-id", node,
			"--xds-address", m.xdsAddr, "--data-dir", m.dataDir, "--cert-dir", dir, "--refresh-interval", "1s"))
	}
	serving := make(chan error, 8)
	srv, err := xds.NewGRPCServer(grpc.Creds(mustServerCreds(t)), xds.BootstrapContentsForTesting(grpcBoot("greeter", "greeter-1", serverDir)),
		xds.ServingModeCallback(func(_ net.Addr, args xds.ServingModeChangeArgs) {
			if args.Mode == connectivity.ServingModeServing {
				serving <- nil
			}
		}))
	if err != nil {
		t.Fatal(err)
	}
	testgrpc.RegisterTestServiceServer(srv, &greeterServer{name: "greeter-1"})
	lis, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p1))
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	select {
	case <-serving:
	case <-time.After(20 * time.Second):
		t.Fatal("greeter-1 never reached SERVING")
	}
	res, err := xds.NewXDSResolverWithConfigForTesting(grpcBoot("client", "client-1", clientDir))
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient("xds:///greeter.default", grpc.WithResolvers(res), grpc.WithTransportCredentials(mustClientCreds(t)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	client := testgrpc.NewTestServiceClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	eventually(t, 20*time.Second, func() error {
		got, _, err := call(ctx, client)
		if err != nil {
			return err
		}
		if got != "greeter-1|spiffe://cluster.local/ns/default/sa/client" {
			return fmt.Errorf("answer %q", got)
		}
		return nil
	})

	f := startFlow(20*time.Millisecond, func() error {
		rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
		defer rcancel()
		_, _, err := call(rctx, client)
		return err
	})
	defer f.stop(t, 1)

	// next waits for the server's agent to write a new certificate and for
	// the gRPC server to serve it on a fresh handshake.
	next := func(prev string) string {
		t.Helper()
		var cur string
		eventually(t, 40*time.Second, func() error {
			cur = certFileSerial(serverDir)
			if cur == "" || cur == prev {
				return fmt.Errorf("agent has not renewed %s yet", prev)
			}
			got, err := freshHandshake(t, m, p1, "greeter.default.svc.cluster.local")
			if err != nil {
				return err
			}
			if got != cur {
				return fmt.Errorf("gRPC server presents %s, cert.pem is %s", got, cur)
			}
			return nil
		})
		return cur
	}
	s1 := certFileSerial(serverDir)
	s2 := next(s1)
	s3 := next(s2)
	t.Logf("greeter leaf rotations via agent files: %s → %s → %s", s1, s2, s3)

	m.runMeshctl("ca", "rotate-root", "--admin-address", m.adminAddr)
	s4 := next(s3)
	eventually(t, 60*time.Second, func() error {
		if st := m.caStatus(t); st.Phase != sds.PhaseIdle {
			return fmt.Errorf("phase %s", st.Phase)
		}
		return nil
	})
	// After the old root is gone, both apps still talk, and to meshd too:
	// the client re-resolves through its xDS channel with its new cert.
	newRoot := m.caStatus(t).SigningRoot.SHA256
	for _, dir := range []string{serverDir, clientDir} {
		eventually(t, 15*time.Second, func() error {
			b, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
			if err != nil {
				return err
			}
			if n := strings.Count(string(b), "BEGIN CERTIFICATE"); n != 1 {
				return fmt.Errorf("%s/ca.pem holds %d roots", dir, n)
			}
			return nil
		})
	}
	t.Logf("root rotation: greeter leaf %s → %s, new root %s", s3, s4, short(newRoot))
	f.waitMore(t, 20) // RPCs still succeed after the old root is gone
}

func short(s string) string {
	if len(s) > 16 {
		return s[:16]
	}
	return s
}

// TestSecondMeshdRefusesDataDir: a second meshd started on a running
// meshd's data directory exits at once and names the holder's pid; the
// first keeps serving (issue 13: two CAs on one directory would rotate,
// retire and clean up each other's generations).
func TestSecondMeshdRefusesDataDir(t *testing.T) {
	m := startMeshd(t, greeterCatalog([]uint32{envoytest.FreePort(t)}, nil))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	second := exec.CommandContext(ctx, filepath.Join(binDir, "meshd"), "--catalog", m.catalogPath, "--data-dir", m.dataDir,
		"--xds-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0")
	out, err := second.CombinedOutput()
	if err == nil || ctx.Err() != nil {
		t.Fatalf("second meshd on the same data directory did not exit with an error (%v, context %v):\n%s", err, ctx.Err(), out)
	}
	want := fmt.Sprintf("held by process %d", m.cmd.Process.Pid)
	if !strings.Contains(string(out), want) || !strings.Contains(string(out), sds.LockFileName) {
		t.Fatalf("second meshd's error does not say %q and name the lock file:\n%s", want, out)
	}
	t.Logf("second meshd: %s", bytes.TrimSpace(out))
	if st := m.caStatus(t); st.Phase != sds.PhaseIdle {
		t.Errorf("first meshd after the refused start: phase %s", st.Phase)
	}
}

// TestRotationAbortAndNextRotation, through the real meshd and meshctl: a
// finished root rotation leaves its old root retiring without blocking the
// next rotation; a rotation held by a proxy that has not ACKed the new
// bundle is aborted; the state survives a restart of meshd (issue 13).
func TestRotationAbortAndNextRotation(t *testing.T) {
	e := newIdentityMesh(t)
	m := startMeshd(t, e.catalog(), "--leaf-ttl", "1h")
	addr := []string{"--admin-address", m.adminAddr}
	waitPhase := func(phase string, retiring int) sds.Status {
		t.Helper()
		var st sds.Status
		eventually(t, 30*time.Second, func() error {
			st = m.caStatus(t)
			if st.Phase != phase || len(st.Retiring) != retiring {
				return fmt.Errorf("phase %s with %d retiring, want %s with %d", st.Phase, len(st.Retiring), phase, retiring)
			}
			return nil
		})
		return st
	}
	firstRoot := m.caStatus(t).SigningRoot.SHA256
	m.runMeshctl(append([]string{"ca", "rotate-root"}, addr...)...)
	// No proxy is connected: the switch and the end of the rotation follow
	// at once; the old root stays trusted for its leaves (1 h).
	st := waitPhase(sds.PhaseRetiring, 1)
	if len(st.TrustedRoots) != 2 || st.Retiring[0].RootSHA256 != firstRoot || st.SigningRoot.SHA256 == firstRoot {
		t.Fatalf("after the root rotation: %+v", st)
	}
	// The next rotation is not blocked by the retiring root.
	out := m.runMeshctl(append([]string{"ca", "rotate-intermediate"}, addr...)...)
	if !strings.Contains(out, "intermediate rotation started") || !strings.Contains(out, "retiring:      root sha256 "+firstRoot[:16]) {
		t.Fatalf("rotate-intermediate while a root retires:\n%s", out)
	}
	st = waitPhase(sds.PhaseRetiring, 1)
	secondRoot := st.SigningRoot.SHA256

	// A proxy that takes the bundle and does not ACK holds a root rotation
	// in propagating; the operator aborts it.
	cc := xdsClient(t, m, false)
	_, webTok := m.token(t, "web", "1h")
	ctx, cancel := context.WithCancel(metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+webTok))
	defer cancel()
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "web.default"}, TypeUrl: resourcev3.SecretType, ResourceNames: []string{"ROOTCA"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	out = m.runMeshctl(append([]string{"ca", "rotate-root"}, addr...)...)
	thirdGen := ""
	eventually(t, 30*time.Second, func() error {
		st := m.caStatus(t)
		if st.Rotation == nil || st.Rotation.Phase != sds.PhasePropagating || !slices.Contains(st.Rotation.PendingProxies, "web.default") {
			return fmt.Errorf("rotation %+v, want propagating and waiting for web.default", st.Rotation)
		}
		thirdGen = st.Rotation.To
		return nil
	})
	out = m.runMeshctl(append([]string{"ca", "rotate-root", "--abort"}, addr...)...)
	if !strings.Contains(out, "root rotation aborted") || !strings.Contains(out, "rotation:      none") || !strings.Contains(out, "trust bundle:  2 root(s)") {
		t.Fatalf("rotate-root --abort:\n%s", out)
	}
	if _, err := os.Stat(filepath.Join(m.dataDir, "ca", thirdGen)); !os.IsNotExist(err) {
		t.Errorf("the aborted generation's directory (keys) is still there: %v", err)
	}
	if _, errOut, err := m.tryMeshctl(append([]string{"ca", "rotate-root", "--abort"}, addr...)...); err == nil || !strings.Contains(errOut, "no CA rotation is in progress") {
		t.Errorf("abort with nothing in progress: %v %s", err, errOut)
	}
	cancel()
	// meshd restarts into the same state.
	m.stop()
	m.start("--leaf-ttl", "1h")
	st = waitPhase(sds.PhaseRetiring, 1)
	if st.SigningRoot.SHA256 != secondRoot || len(st.TrustedRoots) != 2 || st.Retiring[0].RootSHA256 != firstRoot {
		t.Fatalf("after a restart: %+v", st)
	}
}

// leafURIs are the URI SANs of the first certificate in a PEM chain.
func leafURIs(t *testing.T, chainPEM []byte) []string {
	t.Helper()
	blk, _ := pem.Decode(chainPEM)
	if blk == nil {
		t.Fatal("no PEM certificate in the chain")
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, u := range c.URIs {
		out = append(out, u.String())
	}
	return out
}
