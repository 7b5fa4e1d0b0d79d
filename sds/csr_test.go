package sds

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"net"
	"net/url"
	"strings"
	"testing"
)

func makeCSR(t *testing.T, key crypto.Signer, mod func(*x509.CertificateRequest)) []byte {
	t.Helper()
	u, _ := url.Parse(testID.SPIFFEID())
	tmpl := &x509.CertificateRequest{Subject: pkix.Name{CommonName: "cart"}, URIs: []*url.URL{u}, DNSNames: []string{"cart", "cart.shop"}}
	if mod != nil {
		mod(tmpl)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

func TestSignCSR(t *testing.T) {
	ca := newTestCA(t)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	allowed := []string{"cart", "cart.shop", "cart.shop.svc.cluster.local"}
	leaf, err := ca.SignCSR(makeCSR(t, key, nil), testID, allowed, CertOrigin{TokenID: "0a1b2c"})
	if err != nil {
		t.Fatal(err)
	}
	if len(leaf.KeyPEM) != 0 {
		t.Error("a CSR-signed leaf carries a key")
	}
	c := parseCert(t, leaf.CertPEM)
	if !key.PublicKey.Equal(c.PublicKey) {
		t.Error("certificate is not for the CSR's key")
	}
	if c.URIs[0].String() != testID.SPIFFEID() || c.IsCA || c.KeyUsage != x509.KeyUsageDigitalSignature || len(c.ExtKeyUsage) != 2 {
		t.Errorf("fields: URIs %v CA %v KU %v EKU %v", c.URIs, c.IsCA, c.KeyUsage, c.ExtKeyUsage)
	}
	if err := verifyLeaf(t, leaf.CertPEM, ca.RootPool(), t0, x509.ExtKeyUsageClientAuth); err != nil {
		t.Error(err)
	}
	// The token the caller authenticated with is recorded in the
	// certificate, so a renewal with it can be tied back to the token.
	if o, ok, err := CertOriginOf(c); !ok || err != nil || o.TokenID != "0a1b2c" {
		t.Errorf("origin %+v %v %v, want token 0a1b2c", o, ok, err)
	}

	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	other := testID
	other.ServiceAccount = "payments"
	for name, tc := range map[string]struct {
		csr  []byte
		id   any
		want string
	}{
		"other identity": {makeCSR(t, key, func(r *x509.CertificateRequest) {
			u, _ := url.Parse(other.SPIFFEID())
			r.URIs = []*url.URL{u}
		}), nil, "grants only"},
		"two URIs": {makeCSR(t, key, func(r *x509.CertificateRequest) {
			u, _ := url.Parse(other.SPIFFEID())
			r.URIs = append(r.URIs, u)
		}), nil, "grants only"},
		"foreign DNS": {makeCSR(t, key, func(r *x509.CertificateRequest) { r.DNSNames = []string{"payments"} }), nil, "DNS name"},
		"IP SAN":      {makeCSR(t, key, func(r *x509.CertificateRequest) { r.IPAddresses = []net.IP{net.IPv4(1, 2, 3, 4)} }), nil, "IP"},
		"CA request": {makeCSR(t, key, func(r *x509.CertificateRequest) {
			bc, _ := asn1.Marshal(struct{ IsCA bool }{true})
			r.ExtraExtensions = []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Value: bc}}
		}), nil, "extension"},
		"ed25519 key": {makeCSR(t, edKey, nil), nil, "P-256"},
		"P-384 key":   {makeCSR(t, p384, nil), nil, "P-256"},
		"not PEM":     {[]byte("hello"), nil, "PEM"},
		"huge":        {[]byte(strings.Repeat("A", maxCSRBytes+1)), nil, "at most"},
	} {
		if _, err := ca.SignCSR(tc.csr, testID, allowed, CertOrigin{}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error containing %q", name, err, tc.want)
		}
	}
	// A tampered CSR (signature no longer matches).
	good := makeCSR(t, key, nil)
	block, _ := pem.Decode(good)
	block.Bytes[len(block.Bytes)/2] ^= 0xff
	if _, err := ca.SignCSR(pem.EncodeToMemory(block), testID, allowed, CertOrigin{}); err == nil {
		t.Error("tampered CSR signed")
	}
}
