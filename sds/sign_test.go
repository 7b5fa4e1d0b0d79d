package sds

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// expectedLeaf is what a leaf must look like, written down from the
// identity rules (docs/identity.md) rather than from the issuer's code.
type expectedLeaf struct {
	cn, org   string
	ou        string // the credential mark (origin.go); "" for none
	uri       string
	dns       []string
	ips       []net.IP
	ekus      []x509.ExtKeyUsage
	notBefore time.Time
	notAfter  time.Time
	pub       *ecdsa.PublicKey // nil: a fresh key the leaf carries
}

var (
	oidKeyUsage       = asn1.ObjectIdentifier{2, 5, 29, 15}
	oidExtKeyUsage    = asn1.ObjectIdentifier{2, 5, 29, 37}
	oidBasicConstr    = asn1.ObjectIdentifier{2, 5, 29, 19}
	oidAuthorityKeyID = asn1.ObjectIdentifier{2, 5, 29, 35}
	oidSubjectAltName = asn1.ObjectIdentifier{2, 5, 29, 17}
)

// checkAgainstExpectation compares an issued leaf with want field by field,
// then verifies it as a peer does (x509 chain verification from the root,
// once per usage).
func checkAgainstExpectation(t *testing.T, g *generation, l *Leaf, want expectedLeaf, now time.Time) {
	t.Helper()
	c, inters := parseChain(t, l.CertPEM)
	if !bytes.HasSuffix(l.CertPEM, g.interPEM) || bytes.Count(l.CertPEM, []byte("BEGIN CERTIFICATE")) != 2 {
		t.Error("chain is not leaf + signing intermediate")
	}
	if c.Version != 3 || c.SignatureAlgorithm != x509.ECDSAWithSHA256 || c.PublicKeyAlgorithm != x509.ECDSA {
		t.Errorf("version %d, signature %v, key %v", c.Version, c.SignatureAlgorithm, c.PublicKeyAlgorithm)
	}
	names := 2
	if want.ou != "" {
		names = 3
		if !slices.Equal(c.Subject.OrganizationalUnit, []string{want.ou}) {
			t.Errorf("OU %q, want %q", c.Subject.OrganizationalUnit, want.ou)
		}
	}
	if c.Subject.CommonName != want.cn || !slices.Equal(c.Subject.Organization, []string{want.org}) ||
		len(c.Subject.Names) != names {
		t.Errorf("subject %v, want CN=%s O=%s OU=%q only", c.Subject, want.cn, want.org, want.ou)
	}
	if !bytes.Equal(c.RawIssuer, g.inter.RawSubject) || !bytes.Equal(c.AuthorityKeyId, g.inter.SubjectKeyId) {
		t.Error("issuer or authority key id is not the signing intermediate's")
	}
	if len(c.URIs) != 1 || c.URIs[0].String() != want.uri {
		t.Errorf("URI SANs %v, want [%s]", c.URIs, want.uri)
	}
	if !slices.Equal(c.DNSNames, want.dns) || len(c.EmailAddresses) != 0 ||
		!slices.EqualFunc(c.IPAddresses, want.ips, func(a, b net.IP) bool { return a.Equal(b) }) {
		t.Errorf("SANs DNS %v IP %v, want %v %v", c.DNSNames, c.IPAddresses, want.dns, want.ips)
	}
	if c.KeyUsage != x509.KeyUsageDigitalSignature || !slices.Equal(c.ExtKeyUsage, want.ekus) || len(c.UnknownExtKeyUsage) != 0 {
		t.Errorf("usages %v %v, want digitalSignature %v", c.KeyUsage, c.ExtKeyUsage, want.ekus)
	}
	if c.IsCA || !c.BasicConstraintsValid || c.MaxPathLen > 0 {
		t.Error("not an end-entity certificate")
	}
	if !c.NotBefore.Equal(want.notBefore) || !c.NotAfter.Equal(want.notAfter) ||
		!l.NotBefore.Equal(want.notBefore) || !l.NotAfter.Equal(want.notAfter) {
		t.Errorf("validity %s..%s (leaf %s..%s), want %s..%s", c.NotBefore, c.NotAfter, l.NotBefore, l.NotAfter, want.notBefore, want.notAfter)
	}
	if c.NotAfter.After(g.inter.NotAfter) {
		t.Error("leaf outlives its issuer")
	}
	if c.SerialNumber.Sign() <= 0 || c.SerialNumber.BitLen() > 128 || c.SerialNumber.Cmp(l.Serial) != 0 {
		t.Errorf("serial %v (leaf %v): want a positive number of at most 128 bits", c.SerialNumber, l.Serial)
	}
	// Exactly these extensions, in this order, with these criticalities.
	wantExt := []struct {
		id       asn1.ObjectIdentifier
		critical bool
	}{{oidKeyUsage, true}, {oidExtKeyUsage, false}, {oidBasicConstr, true}, {oidAuthorityKeyID, false}, {oidSubjectAltName, false}}
	if len(c.Extensions) != len(wantExt) {
		t.Fatalf("%d extensions, want %d", len(c.Extensions), len(wantExt))
	}
	for i, e := range c.Extensions {
		if !e.Id.Equal(wantExt[i].id) || e.Critical != wantExt[i].critical {
			t.Errorf("extension %d: %v critical=%v, want %v critical=%v", i, e.Id, e.Critical, wantExt[i].id, wantExt[i].critical)
		}
	}
	if want.pub != nil {
		if !want.pub.Equal(c.PublicKey) || len(l.KeyPEM) != 0 {
			t.Error("a CSR leaf is not for the requester's key, or carries a key")
		}
	} else {
		block, _ := pem.Decode(l.KeyPEM)
		if block == nil || block.Type != "PRIVATE KEY" {
			t.Fatal("key is not a PKCS #8 PEM block")
		}
		k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		ek, ok := k.(*ecdsa.PrivateKey)
		if err != nil || !ok || ek.Curve != elliptic.P256() || !ek.PublicKey.Equal(c.PublicKey) {
			t.Errorf("key: %v, %T; want the P-256 key of the certificate", err, k)
		}
	}
	roots := x509.NewCertPool()
	roots.AddCert(g.root)
	for _, eku := range want.ekus {
		if _, err := c.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inters, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{eku}}); err != nil {
			t.Errorf("does not verify for %v: %v", eku, err)
		}
	}
	if _, err := c.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inters, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning}}); err == nil {
		t.Error("verifies for code signing: usages too broad")
	}
}

// TestIssuedLeafMatchesExpectation: for every request shape meshd issues
// (workload leaves through IssueLeaf, node agent CSRs, meshd's own server
// certificate), in random and deterministic mode, the leaf is exactly the
// independently written expectation and verifies as a peer verifies it.
// (The shapes are those TestLegacyDifferential compared with the hand-written
// signer this issuer replaced, in the commit that introduced it.)
func TestIssuedLeafMatchesExpectation(t *testing.T) {
	long := strings.Repeat("a", 60) + "." + strings.Repeat("b", 60) + "." + strings.Repeat("c", 60) + "." + strings.Repeat("d", 60) + ".shop"
	var many []string
	for i := range 20 {
		many = append(many, fmt.Sprintf("svc%d.shop", i))
	}
	agentKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	both := []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	cases := []struct {
		name    string
		opts    func(*Options)
		advance time.Duration
		dns     []string
		// server issues meshd's own certificate; csr signs agentKey;
		// credential issues an operator's client certificate.
		server, csr, credential bool
		// want fills in what differs from a 24h sidecar leaf at now.
		want func(e *expectedLeaf, now time.Time, g *generation)
	}{
		{name: "sidecar", dns: []string{"cart", "cart.shop", "cart.shop.svc.cluster.local"}},
		{name: "no DNS names", want: func(e *expectedLeaf, _ time.Time, _ *generation) { e.cn = "cart" }},
		{name: "wildcard and underscore", dns: []string{"*.cart.shop", "_grpc.cart.shop"}},
		{name: "duplicates dropped", dns: []string{"b", "a", "b"}, want: func(e *expectedLeaf, _ time.Time, _ *generation) { e.dns = []string{"b", "a"} }},
		{name: "253-character name", dns: []string{long}},
		{name: "20 names", dns: many},
		{name: "unicode organization", opts: func(o *Options) { o.Organization = "Ünïcode & co" }, dns: []string{"cart"},
			want: func(e *expectedLeaf, _ time.Time, _ *generation) { e.org = "Ünïcode & co" }},
		{name: "1h lifetime", opts: func(o *Options) { o.LeafTTL = time.Hour }, dns: []string{"cart"},
			want: func(e *expectedLeaf, now time.Time, _ *generation) { e.notAfter = now.Add(time.Hour) }},
		{name: "10s lifetime backdated by a tenth", opts: func(o *Options) { o.LeafTTL = 10 * time.Second }, dns: []string{"cart"},
			want: func(e *expectedLeaf, now time.Time, _ *generation) {
				e.notBefore, e.notAfter = now.Add(-time.Second), now.Add(10*time.Second)
			}},
		{name: "sub-second clock", advance: 999 * time.Millisecond, dns: []string{"cart"},
			want: func(e *expectedLeaf, now time.Time, _ *generation) {
				// Certificates hold whole seconds: the times are truncated.
				e.notBefore, e.notAfter = now.Add(-time.Minute).Truncate(time.Second), now.Add(24*time.Hour).Truncate(time.Second)
			}},
		{name: "capped at the intermediate", opts: func(o *Options) { o.IntermediateTTL = 48 * time.Hour }, advance: 36 * time.Hour, dns: []string{"cart"},
			want: func(e *expectedLeaf, _ time.Time, g *generation) { e.notAfter = g.inter.NotAfter }},
		{name: "expiring after 2049", opts: func(o *Options) {
			c := newFakeClock(time.Date(2049, 12, 31, 12, 0, 0, 0, time.UTC))
			o.Clock, o.LeafTTL = c.Now, 48*time.Hour
		}, dns: []string{"cart"}, want: func(e *expectedLeaf, now time.Time, _ *generation) { e.notAfter = now.Add(48 * time.Hour) }},
		{name: "node agent CSR", csr: true, dns: []string{"cart", "cart.shop"},
			want: func(e *expectedLeaf, _ time.Time, _ *generation) {
				e.pub, e.ou = &agentKey.PublicKey, "meshd-credential token 5eed"
			}},
		{name: "operator credential", credential: true, dns: []string{"cart"},
			want: func(e *expectedLeaf, _ time.Time, _ *generation) { e.ou = "meshd-credential operator" }},
		{name: "meshd server certificate", server: true, want: func(e *expectedLeaf, _ time.Time, _ *generation) {
			e.cn, e.uri = "meshd.example", "spiffe://cluster.local/ns/meshd-system/sa/meshd"
			e.dns = []string{"meshd.example", "localhost"}
			e.ips = []net.IP{net.ParseIP("10.1.2.3").To4(), net.ParseIP("::1"), net.ParseIP("127.0.0.1").To4()}
			e.ekus = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		}},
	}
	for _, tc := range cases {
		for _, det := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/deterministic=%v", tc.name, det), func(t *testing.T) {
				mods := []func(*Options){func(o *Options) { o.DeterministicLeaves = det }}
				if tc.opts != nil {
					mods = append(mods, tc.opts)
				}
				ca := newTestCA(t, mods...)
				ca.clock.Advance(tc.advance)
				now := ca.opts.Clock()
				g := ca.signing()
				start := now
				if det && !tc.csr && !tc.credential {
					start, _ = ca.epoch(now)
				}
				cn := "cart"
				if len(tc.dns) > 0 {
					cn = tc.dns[0]
				}
				want := expectedLeaf{cn: cn, org: "meshd", uri: testID.SPIFFEID(), dns: tc.dns, ekus: both,
					notBefore: start.Add(-time.Minute), notAfter: start.Add(24 * time.Hour)}
				if tc.want != nil {
					tc.want(&want, start, g)
				}
				var l *Leaf
				var err error
				switch {
				case tc.server:
					var iss *issued
					iss, err = ca.issue(g, now, issueRequest{uri: want.uri, cn: "meshd.example", dns: want.dns,
						ips: []net.IP{net.ParseIP("10.1.2.3"), net.ParseIP("::1"), net.ParseIP("127.0.0.1")}, ekus: want.ekus})
					if err == nil {
						l = iss.leaf
					}
				case tc.csr:
					l, err = ca.SignCSR(makeCSR(t, agentKey, nil), testID, tc.dns, CertOrigin{TokenID: "5eed"})
				case tc.credential:
					l, err = ca.IssueCredential(testID, tc.dns)
				default:
					l, err = ca.IssueLeaf(testID, tc.dns)
				}
				if err != nil {
					t.Fatal(err)
				}
				checkAgainstExpectation(t, g, l, want, now)
			})
		}
	}
}

// TestCheckIssuedRejects: the checks on a freshly signed leaf refuse one
// that is not what was asked for, does not chain, or is badly signed.
func TestCheckIssuedRejects(t *testing.T) {
	ca := newTestCA(t)
	g := ca.signing()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	spiffe, _ := url.Parse("spiffe://cluster.local/ns/shop/sa/cart")
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(42), Subject: pkix.Name{CommonName: "cart"},
		NotBefore: t0.Add(-time.Minute), NotAfter: t0.Add(time.Hour), URIs: []*url.URL{spiffe}, DNSNames: []string{"cart"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		KeyUsage:    x509.KeyUsageDigitalSignature, BasicConstraintsValid: true,
	}
	_, cert, err := g.signLeaf(rand.Reader, tmpl, &key.PublicKey, t0)
	if err != nil {
		t.Fatalf("a good leaf is refused: %v", err)
	}
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	with := func(mod func(*x509.Certificate)) *x509.Certificate {
		c := *tmpl
		mod(&c)
		return &c
	}
	tampered, _ := x509.ParseCertificate(cert.Raw)
	tampered.Signature = bytes.Clone(tampered.Signature)
	tampered.Signature[len(tampered.Signature)-1] ^= 1
	ca2 := newTestCA(t)
	bad := map[string]func() error{
		"other public key": func() error { return g.checkIssued(cert, tmpl, &other.PublicKey, t0) },
		"expired":          func() error { return g.checkIssued(cert, tmpl, &key.PublicKey, t0.Add(2*time.Hour)) },
		"not yet valid":    func() error { return g.checkIssued(cert, tmpl, &key.PublicKey, t0.Add(-2*time.Minute)) },
		"other DNS names": func() error {
			return g.checkIssued(cert, with(func(c *x509.Certificate) { c.DNSNames = []string{"evil"} }), &key.PublicKey, t0)
		},
		"other serial": func() error {
			return g.checkIssued(cert, with(func(c *x509.Certificate) { c.SerialNumber = big.NewInt(43) }), &key.PublicKey, t0)
		},
		"other usages": func() error {
			return g.checkIssued(cert, with(func(c *x509.Certificate) { c.ExtKeyUsage = c.ExtKeyUsage[:1] }), &key.PublicKey, t0)
		},
		"other subject": func() error {
			return g.checkIssued(cert, with(func(c *x509.Certificate) { c.Subject.CommonName = "web" }), &key.PublicKey, t0)
		},
		"other validity": func() error {
			return g.checkIssued(cert, with(func(c *x509.Certificate) { c.NotAfter = c.NotAfter.Add(time.Second) }), &key.PublicKey, t0)
		},
		"another CA's intermediate": func() error { return ca2.signing().checkIssued(cert, tmpl, &key.PublicKey, t0) },
		"tampered signature":        func() error { return g.checkIssued(tampered, tmpl, &key.PublicKey, t0) },
	}
	for name, f := range bad {
		if f() == nil {
			t.Errorf("accepted a leaf with %s", name)
		}
	}
	// Past the intermediate's expiry nothing is signed.
	if _, _, err := g.signLeaf(rand.Reader, with(func(c *x509.Certificate) { c.NotAfter = g.inter.NotAfter.Add(time.Hour) }), &key.PublicKey, t0); err == nil {
		t.Error("signed a leaf that outlives its intermediate")
	}
}

// constrainedCA writes an operator CA whose intermediate may name only
// hosts under "shop" and returns the root, intermediate and key files.
func constrainedCA(t *testing.T, now time.Time) (root, inter, key string) {
	t.Helper()
	rk, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ik, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	td, _ := url.Parse("spiffe://cluster.local")
	rt := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "operator root"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(400 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, URIs: []*url.URL{td}}
	rd, err := x509.CreateCertificate(rand.Reader, rt, rt, &rk.PublicKey, rk)
	if err != nil {
		t.Fatal(err)
	}
	rc, _ := x509.ParseCertificate(rd)
	it := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "operator intermediate"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(300 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, URIs: []*url.URL{td}, PermittedDNSDomains: []string{"shop"}}
	id, err := x509.CreateCertificate(rand.Reader, it, rc, &ik.PublicKey, rk)
	if err != nil {
		t.Fatal(err)
	}
	kd, _ := x509.MarshalPKCS8PrivateKey(ik)
	dir := t.TempDir()
	root, inter, key = filepath.Join(dir, "root.pem"), filepath.Join(dir, "inter.pem"), filepath.Join(dir, "inter-key.pem")
	for p, b := range map[string][]byte{
		root:  pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: rd}),
		inter: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: id}),
		key:   pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd}),
	} {
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return root, inter, key
}

// TestConstrainedChainVerifiedByX509: a chain with name constraints is
// verified by x509 in full, so a leaf outside the permitted names is
// refused at issue; meshd's own chain carries no constraints.
func TestConstrainedChainVerifiedByX509(t *testing.T) {
	if newTestCA(t).signing().constrained {
		t.Fatal("meshd's own chain counts as constrained")
	}
	r, i, k := constrainedCA(t, t0)
	ca := newTestCA(t, func(o *Options) { o.RootCertFile, o.IntermediateCertFile, o.IntermediateKeyFile = r, i, k })
	if !ca.signing().constrained {
		t.Fatal("a name-constrained operator chain is not marked constrained")
	}
	l, err := ca.IssueLeaf(testID, []string{"cart.shop"})
	if err != nil {
		t.Fatalf("a permitted name is refused: %v", err)
	}
	if err := verifyLeaf(t, l.CertPEM, ca.RootPool(), t0, x509.ExtKeyUsageServerAuth); err != nil {
		t.Fatal(err)
	}
	if _, err := ca.IssueLeaf(testID, []string{"cart.payments"}); err == nil || !strings.Contains(err.Error(), "verify") {
		t.Fatalf("a name outside the constraints: want a verification error, got %v", err)
	}
	inter := *ca.signing().inter
	inter.PermittedDNSDomains = nil
	inter.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	if !chainConstrained(&inter) {
		t.Error("an intermediate limited to server auth is not constrained")
	}
}

// TestDeterministicSigningNeedsNilRand documents why deterministic leaves
// pass a nil rand: with any reader, even a fixed one, Go's ECDSA signature
// differs each time; with nil it is RFC 6979 and identical.
func TestDeterministicSigningNeedsNilRand(t *testing.T) {
	ca := newTestCA(t)
	g := ca.signing()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "cart"},
		NotBefore: t0.Add(-time.Minute), NotAfter: t0.Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, BasicConstraintsValid: true}
	a, _, err := g.signLeaf(nil, tmpl, &key.PublicKey, t0)
	if err != nil {
		t.Fatal(err)
	}
	b, _, err := g.signLeaf(nil, tmpl, &key.PublicKey, t0)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Fatal("nil rand: two signatures of one template differ")
	}
	c, _, err := g.signLeaf(bytes.NewReader(make([]byte, 4096)), tmpl, &key.PublicKey, t0)
	if err != nil {
		t.Fatal(err)
	}
	d, _, err := g.signLeaf(bytes.NewReader(make([]byte, 4096)), tmpl, &key.PublicKey, t0)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(c, d) {
		t.Fatal("a fixed reader gave identical signatures: crypto/ecdsa now honours custom readers; revisit sign.go's comment")
	}
}
