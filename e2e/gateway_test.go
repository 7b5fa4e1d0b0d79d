package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"

	"github.com/meshd/meshd/internal/testwait"
)

// gatewayCatalog: an ingress gateway at 10.79.0.5 with HTTPS on 8443
// (certificate from files), plain HTTP on 8080 and HTTPS on 9443
// (certificate from an SDS server on its host), all routing to api; web
// is a mesh client of api.
const gatewayCatalog = `services:
  - {name: ingress, namespace: edge}
  - {name: web}
  - name: api
    protocol: http
    endpoints: [{address: 10.79.0.11, port: 15006, labels: {app: api}}]
proxies:
  - id: ingress-1
    service: ingress
    namespace: edge
    flavor: gateway
    address: 10.79.0.5
    listeners:
      - port: 8443
        tls: {certificateFile: %[1]s/tls.crt, keyFile: %[1]s/tls.key}
        routes: [{host: shop.example.test, pathPrefix: /api/, service: api, namespace: default}]
      - port: 8080
        routes: [{service: api, namespace: default}]
      - port: 9443
        tls: {sdsSecret: shop-sds, sdsSocket: %[2]s}
        routes: [{service: api, namespace: default}]
  - {service: api, address: 10.79.0.11, publicPort: 15006, appPort: 8080}
  - {service: web, address: 10.79.0.12, upstreams: [{service: api, localPort: 9001}]}
`

const apiFromIngressOnly = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: api-from-ingress, namespace: default}
spec:
  selector: {matchLabels: {app: api}}
  action: ALLOW
  rules:
  - from:
    - source: {principals: [cluster.local/ns/edge/sa/ingress]}
`

// TestIngressGateway (issue 17): an external client reaches a mesh
// service through the gateway over TLS, with the certificate from files
// (and again after the files are replaced) or from an SDS server on the
// gateway's host; the destination sees the gateway's identity, so a
// policy admitting only the gateway lets it in and keeps a mesh client
// out; a direct plaintext connection to the service's inbound port is
// refused under STRICT.
func TestIngressGateway(t *testing.T) {
	certDir := sharedDirUnder(t, "gateway-tls")
	sock := filepath.Join(sharedDirUnder(t, "gateway-sds"), "sds.sock")
	ca := newExternalCA(t)
	first := ca.issue(t, "shop.example.test")
	first.write(t, certDir)
	stopSDS := serveSDS(t, sock, "ingress-1", "shop-sds", ca.issue(t, "sds.example.test"))
	defer stopSDS()

	nm := startNetMesh(t, netip.MustParsePrefix("10.79.0.0/24"), fmt.Sprintf(gatewayCatalog, certDir, sock))
	nm.writePolicy(apiFromIngressOnly)
	gw := nm.nw.AddHost("gateway", netip.MustParseAddr("10.79.0.5"))
	api := nm.nw.AddHost("api", netip.MustParseAddr("10.79.0.11"))
	web := nm.nw.AddHost("web", netip.MustParseAddr("10.79.0.12"))
	outside := nm.nw.AddHost("outside", netip.MustParseAddr("10.79.0.50"))
	api.Start(t, "app", nil, nm.demo, "http", "--listen", "127.0.0.1:8080", "--name", "api")
	nm.sidecar(api, 0, "api", "default", "api.default")
	nm.sidecar(web, 0, "web", "default", "web.default")
	nm.sidecar(gw, 0, "ingress", "edge", "ingress-1", "--flavor", "gateway")

	// get sends one request from outside the mesh; serverName empty means
	// plaintext.
	get := func(url, host, serverName string) (code int, body string, serial *big.Int, err error) {
		tr := &http.Transport{Proxy: nil, DialContext: outside.DialContext, DisableKeepAlives: true}
		if serverName != "" {
			tr.TLSClientConfig = &tls.Config{RootCAs: ca.pool, ServerName: serverName}
		}
		req, err := http.NewRequest(http.MethodGet, url, nil)
		if err != nil {
			return 0, "", nil, err
		}
		req.Host = host
		resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Do(req)
		if err != nil {
			return 0, "", nil, err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.TLS != nil {
			serial = resp.TLS.PeerCertificates[0].SerialNumber
		}
		return resp.StatusCode, string(b), serial, nil
	}
	caller := func(body string) string {
		var r struct{ Service, Caller string }
		_ = json.Unmarshal([]byte(body), &r)
		return r.Service + " " + r.Caller
	}
	const viaGateway = "api spiffe://cluster.local/ns/edge/sa/ingress"

	t.Run("external client over TLS reaches the service as the gateway", func(t *testing.T) {
		var code int
		var body string
		var serial *big.Int
		testwait.Until(t, 30*time.Second, func() (err error) {
			code, body, serial, err = get("https://10.79.0.5:8443/api/orders", "shop.example.test", "shop.example.test")
			if err == nil && code != 200 {
				err = fmt.Errorf("status %d: %s", code, body)
			}
			return err
		})
		if caller(body) != viaGateway {
			t.Errorf("the service saw %q, want %q (%s)", caller(body), viaGateway, body)
		}
		if serial.Cmp(first.leaf.SerialNumber) != 0 {
			t.Errorf("the gateway presented serial %v, want the file's %v", serial, first.leaf.SerialNumber)
		}
		if code, _, _, err := get("https://10.79.0.5:8443/api/orders", "other.example.test", "shop.example.test"); err != nil || code != 404 {
			t.Errorf("a host the gateway has no route for: %d %v, want 404", code, err)
		}
		if code, _, _, err := get("https://10.79.0.5:8443/orders", "shop.example.test", "shop.example.test"); err != nil || code != 404 {
			t.Errorf("a path outside /api/: %d %v, want 404", code, err)
		}
	})

	t.Run("plaintext listener and the SDS certificate", func(t *testing.T) {
		code, body, _, err := get("http://10.79.0.5:8080/anything", "whatever", "")
		if err != nil || code != 200 || caller(body) != viaGateway {
			t.Errorf("plaintext listener: %d %v %s", code, err, body)
		}
		code, body, serial, err := get("https://10.79.0.5:9443/x", "sds.example.test", "sds.example.test")
		if err != nil || code != 200 || caller(body) != viaGateway {
			t.Errorf("listener with the SDS certificate: %d %v %s", code, err, body)
		} else if serial.Cmp(first.leaf.SerialNumber) == 0 {
			t.Error("the SDS listener presented the files' certificate")
		}
	})

	t.Run("the policy admits the gateway alone", func(t *testing.T) {
		out, err := nm.call(web, 0, "--http", "http://127.0.0.1:9001/")
		if err == nil || !strings.Contains(out, "-> 403") {
			t.Errorf("mesh client web, not admitted by the policy: %v\n%s", err, out)
		}
	})

	t.Run("direct plaintext to the service's inbound port is refused", func(t *testing.T) {
		if code, body, _, err := get("http://10.79.0.11:15006/api/orders", "api", ""); err == nil {
			t.Errorf("plaintext to the sidecar's inbound port: %d %s", code, body)
		}
		// And TLS without a mesh certificate.
		if code, body, _, err := get("https://10.79.0.11:15006/api/orders", "api", "api"); err == nil {
			t.Errorf("TLS without a client certificate to the inbound port: %d %s", code, body)
		}
	})

	t.Run("replaced certificate files are picked up", func(t *testing.T) {
		second := ca.issue(t, "shop.example.test")
		// As certbot or a mounted secret replaces them: new files renamed
		// into place.
		second.write(t, certDir)
		testwait.Until(t, 30*time.Second, func() error {
			code, _, serial, err := get("https://10.79.0.5:8443/api/orders", "shop.example.test", "shop.example.test")
			if err != nil || code != 200 {
				return fmt.Errorf("%d %v", code, err)
			}
			if serial.Cmp(second.leaf.SerialNumber) != 0 {
				return fmt.Errorf("still serial %v", serial)
			}
			return nil
		})
	})
}

// sharedDirUnder is a directory every uid can read, for files Envoy opens.
func sharedDirUnder(t *testing.T, name string) string {
	t.Helper()
	dir := filepath.Join(sharedDir(t), name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// externalCA is a CA outside the mesh, such as a public CA that clients
// trust, issuing the gateway's server certificates.
type externalCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
	n    int64
}

func newExternalCA(t *testing.T) *externalCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "e2e external CA"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &externalCA{cert: cert, key: key, pool: pool, n: 100}
}

type serverCert struct {
	leaf            *x509.Certificate
	certPEM, keyPEM []byte
}

func (ca *externalCA) issue(t *testing.T, host string) serverCert {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ca.n++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(ca.n), Subject: pkix.Name{CommonName: host}, DNSNames: []string{host},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return serverCert{leaf: leaf,
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})}
}

// write puts the pair in dir as tls.crt and tls.key, each written to a
// temporary file and renamed into place.
func (c serverCert) write(t *testing.T, dir string) {
	t.Helper()
	for name, b := range map[string][]byte{"tls.crt": c.certPEM, "tls.key": c.keyPEM} {
		tmp := filepath.Join(dir, "."+name+".tmp")
		if err := os.WriteFile(tmp, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
}

// serveSDS serves one secret to node over SDS on a Unix socket, as an SDS
// server on the gateway's host would (go-control-plane's server).
func serveSDS(t *testing.T, sock, node, name string, c serverCert) (stop func()) {
	t.Helper()
	cache := cachev3.NewSnapshotCache(false, cachev3.IDHash{}, nil)
	secret := &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
		CertificateChain: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: c.certPEM}},
		PrivateKey:       &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: c.keyPEM}},
	}}}
	snap, err := cachev3.NewSnapshot("1", map[resourcev3.Type][]types.Resource{resourcev3.SecretType: {secret}})
	if err != nil {
		t.Fatal(err)
	}
	if err := cache.SetSnapshot(context.Background(), node, snap); err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	gs := grpc.NewServer()
	secretservice.RegisterSecretDiscoveryServiceServer(gs, serverv3.NewServer(ctx, cache, nil))
	done := make(chan struct{})
	go func() { _ = gs.Serve(lis); close(done) }()
	return func() {
		cancel()
		gs.Stop()
		<-done
	}
}
