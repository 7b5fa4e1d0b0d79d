package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"net/url"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/sds"
	"github.com/meshd/meshd/server/caclient"
)

func csrFor(t *testing.T, id mesh.Identity, dns ...string) ([]byte, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(id.SPIFFEID())
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}, DNSNames: dns}, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), key
}

func TestCAServiceSignsOnlyTheCredentialsIdentity(t *testing.T) {
	f := startAuthServer(t, false)
	cc := f.dial(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	webTok := f.token(t, "web", time.Hour)

	csr, key := csrFor(t, webID, "web", "web.default")
	resp, err := caclient.Sign(ctx, cc, webTok, &caclient.SignRequest{NodeID: "web.default", CSR: string(csr)})
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode([]byte(resp.CertChain))
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if !key.PublicKey.Equal(cert.PublicKey) || resp.SPIFFEID != webID.SPIFFEID() || resp.Bundle != string(f.ca.RootCertPEM()) {
		t.Errorf("response: %s, key match %v", resp.SPIFFEID, key.PublicKey.Equal(cert.PublicKey))
	}

	// Renewal with the certificate just obtained, no token.
	leaf := &sds.Leaf{CertPEM: []byte(resp.CertChain), KeyPEM: mustKeyPEM(t, key)}
	csr2, _ := csrFor(t, webID, "web")
	if _, err := caclient.Sign(ctx, f.dial(t, leaf), "", &caclient.SignRequest{NodeID: "web.default", CSR: string(csr2)}); err != nil {
		t.Errorf("renewal with the current certificate: %v", err)
	}

	// A CSR for api's identity with web's token, or web's token claiming
	// api's node, or no credential: refused.
	apiCSR, _ := csrFor(t, apiID, "api")
	_, err = caclient.Sign(ctx, cc, webTok, &caclient.SignRequest{NodeID: "web.default", CSR: string(apiCSR)})
	wantCode(t, "CSR for api with web's token", err, codes.PermissionDenied, "grants only")
	_, err = caclient.Sign(ctx, cc, webTok, &caclient.SignRequest{NodeID: "api.default", CSR: string(apiCSR)})
	wantCode(t, "web's token as api's node", err, codes.PermissionDenied, "does not grant")
	_, err = caclient.Sign(ctx, cc, "", &caclient.SignRequest{NodeID: "web.default", CSR: string(csr)})
	wantCode(t, "no credential", err, codes.Unauthenticated, "no credential")
	badDNS, _ := csrFor(t, webID, "api")
	_, err = caclient.Sign(ctx, cc, webTok, &caclient.SignRequest{NodeID: "web.default", CSR: string(badDNS)})
	wantCode(t, "foreign DNS name", err, codes.PermissionDenied, "DNS name")
	if b, err := caclient.Bundle(ctx, cc, webTok, "web.default"); err != nil || b != string(f.ca.RootCertPEM()) {
		t.Errorf("Bundle: %v", err)
	}
	// The agent's fetch counts for the root rotation gate.
	if ok, _ := f.tracker.BundleAcked(f.ca.Fingerprint()); !ok {
		t.Error("the agent's bundle does not contain the current root, says the gate")
	}
	if ok, pending := f.tracker.BundleAcked(strings.Repeat("0", 64)); ok || len(pending) != 1 || pending[0] != "web.default (mesh-agent)" {
		t.Errorf("gate with an agent lacking the root: %v %v", ok, pending)
	}
	_, err = caclient.Bundle(ctx, cc, webTok, "api.default")
	wantCode(t, "bundle as api", err, codes.PermissionDenied, "does not grant")
	if !strings.Contains(f.logs.String(), "CSR refused") {
		t.Error("CSR refusal not logged")
	}
}

func mustKeyPEM(t *testing.T, k *ecdsa.PrivateKey) sds.PrivateKeyPEM {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}
