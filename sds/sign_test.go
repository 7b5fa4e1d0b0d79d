package sds

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"testing"
	"time"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// TestBuildTBSMatchesCreateCertificate: for every template shape meshd
// issues (and a few edge cases), the fast path's whole certificate is
// byte-identical to x509.CreateCertificate's, both signing deterministically.
func TestBuildTBSMatchesCreateCertificate(t *testing.T) {
	ca := newTestCA(t)
	g := ca.signing()
	if g.fast == nil {
		t.Fatal("meshd's own P-256 chain did not get the fast signer")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	spiffe, _ := url.Parse("spiffe://cluster.local/ns/shop/sa/cart")
	base := func() *x509.Certificate {
		return &x509.Certificate{
			SerialNumber:          new(big.Int).SetBytes(bytes.Repeat([]byte{0x7f, 0xaa}, 8)),
			Subject:               pkix.Name{Organization: []string{"meshd"}, CommonName: "cart"},
			NotBefore:             t0.Add(-5 * time.Minute),
			NotAfter:              t0.Add(24 * time.Hour),
			URIs:                  []*url.URL{spiffe},
			DNSNames:              []string{"cart", "cart.shop", "cart.shop.svc.cluster.local"},
			ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
			KeyUsage:              x509.KeyUsageDigitalSignature,
			BasicConstraintsValid: true,
		}
	}
	cases := map[string]func(*x509.Certificate){
		"sidecar leaf": func(*x509.Certificate) {},
		"no DNS names": func(c *x509.Certificate) { c.DNSNames = nil },
		"server with IPs": func(c *x509.Certificate) {
			c.IPAddresses = []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")}
			c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
			c.URIs = nil
		},
		"non-printable CN and O": func(c *x509.Certificate) {
			c.Subject = pkix.Name{Organization: []string{"Ünïcode & co"}, CommonName: "a*b"}
		},
		"empty organization":      func(c *x509.Certificate) { c.Subject.Organization = nil },
		"small serial":            func(c *x509.Certificate) { c.SerialNumber = big.NewInt(1) },
		"serial with top bit set": func(c *x509.Certificate) { c.SerialNumber = new(big.Int).SetBytes(bytes.Repeat([]byte{0xff}, 16)) },
		"two-byte key usage":      func(c *x509.Certificate) { c.KeyUsage = x509.KeyUsageDigitalSignature | x509.KeyUsageDecipherOnly },
		"validity past 2049":      func(c *x509.Certificate) { c.NotAfter = time.Date(2051, 1, 2, 3, 4, 5, 0, time.UTC) },
		"sub-second times":        func(c *x509.Certificate) { c.NotBefore = c.NotBefore.Add(999 * time.Millisecond) },
	}
	for name, mod := range cases {
		t.Run(name, func(t *testing.T) {
			tmpl := base()
			mod(tmpl)
			want, err := x509.CreateCertificate(nil, tmpl, g.inter, &key.PublicKey, g.interKey)
			if err != nil {
				t.Fatalf("CreateCertificate: %v", err)
			}
			got, err := g.fast.sign(nil, tmpl, &key.PublicKey)
			if err != nil {
				t.Fatalf("fast sign: %v", err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("fast path certificate differs from CreateCertificate's\n got %x\nwant %x", got, want)
			}
		})
	}
}

// TestFastLeavesVerifyWithGo: leaves from the fast path pass Go's own chain
// verification for both usages, and checkLeaf rejects leaves that differ
// from the request or do not chain.
func TestFastLeavesVerifyWithGo(t *testing.T) {
	ca := newTestCA(t)
	g := ca.signing()
	for i := 0; i < 20; i++ {
		l, err := ca.IssueLeaf(testID, []string{"cart", "cart.shop"})
		if err != nil {
			t.Fatal(err)
		}
		cert := parseCert(t, l.CertPEM)
		for _, eku := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
			if _, err := cert.Verify(x509.VerifyOptions{Roots: g.roots, Intermediates: g.inters, CurrentTime: t0, KeyUsages: []x509.ExtKeyUsage{eku}}); err != nil {
				t.Fatalf("leaf %d does not verify for %v: %v", i, eku, err)
			}
		}
	}

	// checkLeaf against a certificate that is not what was asked for.
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	spiffe, _ := url.Parse("spiffe://cluster.local/ns/shop/sa/cart")
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(42), Subject: pkix.Name{CommonName: "cart"},
		NotBefore: t0.Add(-time.Minute), NotAfter: t0.Add(time.Hour), URIs: []*url.URL{spiffe},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		KeyUsage:    x509.KeyUsageDigitalSignature, BasicConstraintsValid: true,
	}
	der, err := g.fast.sign(nil, tmpl, &key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	if err := checkLeaf(cert, tmpl, &key.PublicKey, g, t0); err != nil {
		t.Fatalf("checkLeaf rejects a good leaf: %v", err)
	}
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	bad := map[string]func() error{
		"other public key": func() error { return checkLeaf(cert, tmpl, &other.PublicKey, g, t0) },
		"expired":          func() error { return checkLeaf(cert, tmpl, &key.PublicKey, g, t0.Add(2*time.Hour)) },
		"not yet valid":    func() error { return checkLeaf(cert, tmpl, &key.PublicKey, g, t0.Add(-2*time.Minute)) },
		"other DNS names": func() error {
			t2 := *tmpl
			t2.DNSNames = []string{"evil"}
			return checkLeaf(cert, &t2, &key.PublicKey, g, t0)
		},
		"other serial": func() error {
			t2 := *tmpl
			t2.SerialNumber = big.NewInt(43)
			return checkLeaf(cert, &t2, &key.PublicKey, g, t0)
		},
		"other issuer": func() error {
			ca2 := newTestCA(t)
			return checkLeaf(cert, tmpl, &key.PublicKey, ca2.signing(), t0)
		},
	}
	for name, f := range bad {
		if f() == nil {
			t.Errorf("checkLeaf accepted a leaf with %s", name)
		}
	}
}

// TestFastVerifyRejectsBadSignatures: the d-based verification agrees with
// crypto/ecdsa on good signatures and rejects every tampered one.
func TestFastVerifyRejectsBadSignatures(t *testing.T) {
	ca := newTestCA(t)
	s := ca.signing().fast
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	for i := 0; i < 50; i++ {
		digest := sha256.Sum256([]byte{byte(i)})
		sig, err := s.key.Sign(rand.Reader, digest[:], crypto.SHA256)
		if err != nil {
			t.Fatal(err)
		}
		if !ecdsa.VerifyASN1(&s.key.PublicKey, digest[:], sig) {
			t.Fatal("crypto/ecdsa rejects its own signature")
		}
		if err := s.verify(digest[:], sig); err != nil {
			t.Fatalf("good signature %d rejected: %v", i, err)
		}
		r, sv, err := parseECDSASignature(sig)
		if err != nil {
			t.Fatal(err)
		}
		otherDigest := sha256.Sum256([]byte{byte(i), 1})
		otherSig, _ := other.Sign(rand.Reader, digest[:], crypto.SHA256)
		tampered := map[string][]byte{
			"r+1":          encodeSig(new(big.Int).Add(r, big.NewInt(1)), sv),
			"s+1":          encodeSig(r, new(big.Int).Add(sv, big.NewInt(1))),
			"n-s":          encodeSig(r, new(big.Int).Sub(p256Order, sv)), // malleated: ECDSA accepts (r, -s) too, so both must agree
			"r=0":          encodeSig(big.NewInt(0), sv),
			"s=n":          encodeSig(r, p256Order),
			"other key":    otherSig,
			"trailing":     append(append([]byte{}, sig...), 0),
			"truncated":    sig[:len(sig)-1],
			"other digest": nil,
		}
		for name, bad := range tampered {
			d := digest[:]
			if name == "other digest" {
				bad, d = sig, otherDigest[:]
			}
			goErr := ecdsa.VerifyASN1(&s.key.PublicKey, d, bad)
			ourErr := s.verify(d, bad) == nil
			if ourErr != goErr {
				t.Errorf("%s: fast verify says valid=%v, crypto/ecdsa says %v", name, ourErr, goErr)
			}
			if name != "n-s" && ourErr {
				t.Errorf("%s: tampered signature accepted", name)
			}
		}
	}
}

func encodeSig(r, s *big.Int) []byte {
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1BigInt(r)
		b.AddASN1BigInt(s)
	})
	return b.BytesOrPanic()
}

// TestFastSignerOnlyForCoveredChains: a chain with name constraints keeps
// Go's full verification path.
func TestFastSignerOnlyForCoveredChains(t *testing.T) {
	ca := newTestCA(t)
	g := *ca.signing()
	inter := *g.inter
	inter.PermittedDNSDomains = []string{"shop"}
	g.inter = &inter
	if s, err := newLeafSigner(&g); err != nil || s != nil {
		t.Fatalf("name-constrained intermediate got a fast signer (%v, %v)", s, err)
	}
	inter2 := *ca.signing().inter
	inter2.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	g.inter = &inter2
	if s, err := newLeafSigner(&g); err != nil || s != nil {
		t.Fatalf("EKU-restricted intermediate got a fast signer (%v, %v)", s, err)
	}
	// A key that does not match the certificate is an error, not a fallback.
	g = *ca.signing()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	g.interKey = k
	if _, err := newLeafSigner(&g); err == nil {
		t.Fatal("mismatched intermediate key accepted")
	}
}

// TestMarshalPKCS8Matches: the fast PKCS #8 encoder writes what Go's does,
// and Go parses it back to the same key.
func TestMarshalPKCS8Matches(t *testing.T) {
	for i := 0; i < 20; i++ {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		want, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		got, err := marshalPKCS8P256(key)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("PKCS #8 differs from Go's\n got %x\nwant %x", got, want)
		}
		back, err := x509.ParsePKCS8PrivateKey(got)
		if err != nil || !key.Equal(back) {
			t.Fatalf("PKCS #8 does not parse back to the key: %v", err)
		}
	}
}

// TestAppendPEMMatches: the PEM writer used for leaves writes exactly what
// encoding/pem does, for every length around the line and base64 block
// boundaries.
func TestAppendPEMMatches(t *testing.T) {
	for n := 0; n < 200; n++ {
		der := make([]byte, n)
		rand.Read(der)
		want := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
		if got := appendPEM(nil, "CERTIFICATE", der); !bytes.Equal(got, want) {
			t.Fatalf("%d bytes: got\n%s\nwant\n%s", n, got, want)
		}
		prefix := []byte("x")
		if got := appendPEM(prefix, "PRIVATE KEY", der); !bytes.Equal(got[1:], pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})) || got[0] != 'x' {
			t.Fatalf("%d bytes appended after a prefix differ", n)
		}
	}
}

// TestSignerCachesBounded: the per-identity encodings are dropped, not
// grown without end, and leaves stay right across the reset.
func TestSignerCachesBounded(t *testing.T) {
	old := maxCached
	maxCached = 4
	t.Cleanup(func() { maxCached = old })
	ca := newTestCA(t)
	g := ca.signing()
	for i := range 10 {
		id := testID
		id.ServiceAccount = fmt.Sprintf("svc-%d", i)
		l, err := ca.IssueLeaf(id, []string{id.ServiceAccount})
		if err != nil {
			t.Fatal(err)
		}
		cert := parseCert(t, l.CertPEM)
		if _, err := cert.Verify(x509.VerifyOptions{Roots: g.roots, Intermediates: g.inters, CurrentTime: t0}); err != nil || cert.DNSNames[0] != id.ServiceAccount {
			t.Fatalf("leaf %d after cache resets: %v %v", i, err, cert.DNSNames)
		}
	}
	if n := g.fast.cached.Load(); n > maxCached {
		t.Fatalf("signer caches hold %d entries, bound %d", n, maxCached)
	}
}
