package sds

// Temporary differential test (issue 12): the standard-library issuer
// against the hand-written signer it replaces, on the same inputs. Deleted
// with the old signer in the next commit; TestIssuedLeafMatchesExpectation
// is the lasting check.

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"log/slog"
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

func (a *Authority) legacyIssue(g *generation, req issueRequest) (*issued, error) {
	fast, err := newLeafSigner(g)
	if err != nil {
		return nil, err
	}
	uri, err := url.Parse(req.uri)
	if err != nil {
		return nil, fmt.Errorf("parse URI SAN %q: %w", req.uri, err)
	}
	now := a.opts.Clock()
	// In deterministic mode the validity window starts at the epoch, not
	// now, so that every replica computes the same one.
	deterministic := a.opts.DeterministicLeaves && req.pub == nil
	start := now
	var epochEnd time.Time
	if deterministic {
		var e time.Duration
		start, e = a.epoch(now)
		epochEnd = start.Add(e)
	}
	// Backdate by clockSkew, but never by more than a tenth of the life, so
	// the very short lifetimes of tests and rotation drills still renew
	// after issuance rather than before it.
	notBefore := start.Add(-min(clockSkew, a.opts.LeafTTL/10))
	notAfter := start.Add(a.opts.LeafTTL)
	// A leaf cannot outlive its issuer: peers would reject the chain once
	// the intermediate (which never outlives the root) expires, so say so
	// honestly in NotAfter (and renew sooner).
	capped := false
	if notAfter.After(g.inter.NotAfter) {
		notAfter, capped = g.inter.NotAfter, true
	}
	if !notAfter.After(now) {
		return nil, fmt.Errorf("signing intermediate CA expired at %s: rotate it (meshctl ca rotate-intermediate) or supply a new one", g.inter.NotAfter.UTC().Format(time.RFC3339))
	}

	var key *ecdsa.PrivateKey
	var serial *big.Int
	pub := req.pub
	signRand := rand.Reader
	switch {
	case deterministic:
		if key, serial, err = deriveLeafKey(g, req.uri, req.dns, start); err != nil {
			return nil, err
		}
		pub = &key.PublicKey
		signRand = nil // RFC 6979: the same signature on every replica
	case pub == nil:
		if key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			return nil, fmt.Errorf("generate key: %w", err)
		}
		pub = &key.PublicKey
	}
	if serial == nil {
		if serial, err = randomSerial(); err != nil {
			return nil, err
		}
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			Organization: []string{a.opts.Organization},
			CommonName:   req.cn,
		},
		NotBefore:   notBefore,
		NotAfter:    notAfter,
		URIs:        []*url.URL{uri},
		DNSNames:    req.dns,
		IPAddresses: req.ips,
		ExtKeyUsage: req.ekus,
		// ECDSA keys only sign; KeyEncipherment is for RSA key transport.
		KeyUsage:              x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  false,
	}
	var der []byte
	var cert *x509.Certificate
	if fast != nil {
		if der, err = fast.sign(signRand, tmpl, pub); err != nil {
			return nil, fmt.Errorf("sign certificate: %w", err)
		}
		if cert, err = x509.ParseCertificate(der); err != nil {
			return nil, fmt.Errorf("parse freshly signed certificate: %w", err)
		}
		// The signature was verified in sign and the intermediate against the
		// root when the generation was loaded; the rest of what chain
		// verification checks is checked here.
		if err := checkLeaf(cert, tmpl, pub, g, now); err != nil {
			return nil, fmt.Errorf("verify freshly signed certificate against its chain: %w", err)
		}
	} else {
		if der, err = x509.CreateCertificate(signRand, tmpl, g.inter, pub, g.interKey); err != nil {
			return nil, fmt.Errorf("sign certificate: %w", err)
		}
		if cert, err = x509.ParseCertificate(der); err != nil {
			return nil, fmt.Errorf("parse freshly signed certificate: %w", err)
		}
		// VerifyOptions.KeyUsages accepts a chain valid for ANY listed usage, so
		// each usage is checked on its own to prove the leaf serves all of them.
		for _, eku := range req.ekus {
			if _, err := cert.Verify(x509.VerifyOptions{
				Roots:         g.roots,
				Intermediates: g.inters,
				CurrentTime:   now,
				KeyUsages:     []x509.ExtKeyUsage{eku},
			}); err != nil {
				return nil, fmt.Errorf("verify freshly signed certificate against its chain (usage %v): %w", eku, err)
			}
		}
	}
	var keyPEM PrivateKeyPEM
	if key != nil {
		keyDER, err := marshalPKCS8P256(key)
		if err != nil {
			return nil, fmt.Errorf("encode key: %w", err)
		}
		keyPEM = appendPEM(nil, "PRIVATE KEY", keyDER)
	}

	life := notAfter.Sub(notBefore)
	chainPEM := appendPEM(make([]byte, 0, len(der)*4/3+len(der)/48+64+len(g.interPEM)), "CERTIFICATE", der)
	chainPEM = append(chainPEM, g.interPEM...)
	leaf := &Leaf{
		DNSNames:  req.dns,
		CertPEM:   chainPEM,
		KeyPEM:    keyPEM,
		Serial:    serial,
		NotBefore: notBefore,
		NotAfter:  notAfter,
		RenewAt:   notBefore.Add(time.Duration(float64(life) * a.opts.RenewFraction)),
		gen:       g.id,
	}
	if deterministic {
		// Renew exactly at the next epoch, when every replica does.
		leaf.RenewAt = epochEnd
		if notAfter.Before(epochEnd) {
			leaf.RenewAt = notAfter
		}
	}
	a.mu.Lock()
	if notAfter.After(a.leafNotAfter[g.id]) {
		a.leafNotAfter[g.id] = notAfter
	}
	a.mu.Unlock()
	// Guarded: formatting the serial costs more than the check when debug
	// logging is off, at thousands of leaves per second in a rotation.
	if a.log.Enabled(context.Background(), slog.LevelDebug) {
		a.log.Debug("issued certificate",
			"uri", req.uri,
			"serial", serial.Text(16),
			"generation", g.id,
			"not_after", notAfter.UTC(),
			"capped_by_issuer", capped)
	}
	return &issued{leaf: leaf, cert: cert, chain: [][]byte{der, g.inter.Raw}, key: key}, nil
}

type diffShape struct {
	name string
	opts func(*Options)
	// advance moves the clock after the CA is created.
	advance time.Duration
	req     func(ca *testCA) issueRequest
	// external: a name-constrained operator CA (permitted DNS "shop").
	external bool
	wantErr  bool
}

func sidecarReq(dns ...string) func(*testCA) issueRequest {
	return func(*testCA) issueRequest {
		return issueRequest{uri: "spiffe://cluster.local/ns/shop/sa/cart", cn: append(dns, "cart")[0], dns: dns,
			ekus: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	}
}

// constrainedCA writes an operator CA whose intermediate may name only
// hosts under "shop" and returns the three files.
func constrainedCA(t *testing.T, now time.Time) (string, string, string) {
	t.Helper()
	rk, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ik, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	td, _ := url.Parse("spiffe://cluster.local")
	rt := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "op root"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * 400 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, URIs: []*url.URL{td}}
	rd, err := x509.CreateCertificate(rand.Reader, rt, rt, &rk.PublicKey, rk)
	if err != nil {
		t.Fatal(err)
	}
	root, _ := x509.ParseCertificate(rd)
	it := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "op inter"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * 300 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, URIs: []*url.URL{td},
		PermittedDNSDomains: []string{"shop"}}
	id, err := x509.CreateCertificate(rand.Reader, it, root, &ik.PublicKey, rk)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	kd, _ := x509.MarshalPKCS8PrivateKey(ik)
	files := []string{filepath.Join(dir, "r.pem"), filepath.Join(dir, "i.pem"), filepath.Join(dir, "k.pem")}
	for i, b := range [][]byte{
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: rd}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: id}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd}),
	} {
		if err := os.WriteFile(files[i], b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return files[0], files[1], files[2]
}

func TestLegacyDifferential(t *testing.T) {
	long := strings.Repeat("a", 60) + "." + strings.Repeat("b", 60) + "." + strings.Repeat("c", 60) + "." + strings.Repeat("d", 60) + ".shop"
	many := []string{}
	for i := range 20 {
		many = append(many, fmt.Sprintf("svc%d.shop", i))
	}
	agentKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	shapes := []diffShape{
		{name: "sidecar", req: sidecarReq("cart", "cart.shop", "cart.shop.svc.cluster.local")},
		{name: "no DNS", req: sidecarReq()},
		{name: "one DNS", req: sidecarReq("cart")},
		{name: "wildcard", req: sidecarReq("*.cart.shop", "cart")},
		{name: "underscore", req: sidecarReq("_grpc.cart.shop")},
		{name: "253-char name", req: sidecarReq(long)},
		{name: "20 names", req: sidecarReq(many...)},
		{name: "unicode organization", opts: func(o *Options) { o.Organization = "Ünïcode & co" }, req: sidecarReq("cart")},
		{name: "ttl 1h", opts: func(o *Options) { o.LeafTTL = time.Hour }, req: sidecarReq("cart")},
		{name: "ttl 10s", opts: func(o *Options) { o.LeafTTL = 10 * time.Second }, req: sidecarReq("cart")},
		{name: "ttl 90s renew 0.75", opts: func(o *Options) { o.LeafTTL = 90 * time.Second; o.RenewFraction = 0.75 }, req: sidecarReq("cart")},
		{name: "sub-second clock", advance: 999 * time.Millisecond, req: sidecarReq("cart")},
		{name: "capped at intermediate", opts: func(o *Options) { o.IntermediateTTL = 48 * time.Hour }, advance: 36 * time.Hour, req: sidecarReq("cart")},
		{name: "intermediate expired", opts: func(o *Options) { o.IntermediateTTL = 48 * time.Hour }, advance: 49 * time.Hour, req: sidecarReq("cart"), wantErr: true},
		{name: "past 2049", opts: func(o *Options) {
			c := newFakeClock(time.Date(2049, 12, 31, 12, 0, 0, 0, time.UTC))
			o.Clock = c.Now
			o.LeafTTL = 48 * time.Hour
		}, req: sidecarReq("cart")},
		{name: "server certificate", req: func(ca *testCA) issueRequest {
			return issueRequest{uri: ca.ServerIdentity().SPIFFEID(), cn: "meshd.example", dns: []string{"meshd.example", "localhost"},
				ips: []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1"), net.ParseIP("10.1.2.3")}, ekus: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
		}},
		{name: "agent CSR key", req: func(*testCA) issueRequest {
			r := sidecarReq("cart", "cart.shop")(nil)
			r.pub = &agentKey.PublicKey
			return r
		}},
		{name: "constrained operator CA, allowed", external: true, req: sidecarReq("cart.shop")},
		{name: "constrained operator CA, refused", external: true, req: sidecarReq("cart"), wantErr: true},
	}
	var report strings.Builder
	compared := 0
	for _, sh := range shapes {
		for _, det := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/deterministic=%v", sh.name, det), func(t *testing.T) {
				mods := []func(*Options){func(o *Options) {
					o.DeterministicLeaves = det
					o.Logger = slog.New(slog.DiscardHandler)
				}}
				if sh.opts != nil {
					mods = append(mods, sh.opts)
				}
				if sh.external {
					r, i, k := constrainedCA(t, t0)
					mods = append(mods, func(o *Options) { o.RootCertFile, o.IntermediateCertFile, o.IntermediateKeyFile = r, i, k })
				}
				ca := newTestCA(t, mods...)
				if ca.opts.Clock().Equal(t0) || sh.advance != 0 {
					ca.clock.Advance(sh.advance)
				}
				g := ca.signing()
				if g.constrained != sh.external {
					t.Fatalf("constrained = %v", g.constrained)
				}
				req := sh.req(ca)
				for i := range 5 {
					oldI, oldErr := ca.legacyIssue(g, req)
					newI, newErr := ca.issue(g, req)
					if (oldErr != nil) != (newErr != nil) || (newErr != nil) != sh.wantErr {
						t.Fatalf("errors differ: old %v, new %v (want error %v)", oldErr, newErr, sh.wantErr)
					}
					if newErr != nil {
						return
					}
					o, n := oldI.leaf, newI.leaf
					if !o.NotBefore.Equal(n.NotBefore) || !o.NotAfter.Equal(n.NotAfter) || !o.RenewAt.Equal(n.RenewAt) ||
						o.gen != n.gen || !slices.Equal(o.DNSNames, n.DNSNames) || len(o.KeyPEM) != len(n.KeyPEM) {
						t.Fatalf("leaf metadata differs:\nold %+v\nnew %+v", o, n)
					}
					if det && req.pub == nil {
						if !bytes.Equal(o.CertPEM, n.CertPEM) || !bytes.Equal(o.KeyPEM, n.KeyPEM) || o.Serial.Cmp(n.Serial) != 0 {
							t.Fatalf("deterministic leaves differ")
						}
					}
					oc, nc := oldI.cert, newI.cert
					if oc.Version != nc.Version || oc.SignatureAlgorithm != nc.SignatureAlgorithm || oc.PublicKeyAlgorithm != nc.PublicKeyAlgorithm ||
						!bytes.Equal(oc.RawIssuer, nc.RawIssuer) || !bytes.Equal(oc.RawSubject, nc.RawSubject) ||
						!oc.NotBefore.Equal(nc.NotBefore) || !oc.NotAfter.Equal(nc.NotAfter) || len(oc.Extensions) != len(nc.Extensions) {
						t.Fatalf("certificate fields differ")
					}
					for j := range oc.Extensions {
						if !oc.Extensions[j].Id.Equal(nc.Extensions[j].Id) || oc.Extensions[j].Critical != nc.Extensions[j].Critical ||
							!bytes.Equal(oc.Extensions[j].Value, nc.Extensions[j].Value) {
							t.Fatalf("extension %d differs: %v vs %v", j, oc.Extensions[j].Id, nc.Extensions[j].Id)
						}
					}
					// Byte level: the old encoder, given the new leaf's serial
					// and key, writes exactly the new leaf's TBS.
					if !g.constrained {
						ls, err := newLeafSigner(g)
						if err != nil || ls == nil {
							t.Fatalf("legacy signer: %v", err)
						}
						tmpl := &x509.Certificate{SerialNumber: nc.SerialNumber, Subject: pkix.Name{Organization: nc.Subject.Organization, CommonName: nc.Subject.CommonName},
							NotBefore: nc.NotBefore, NotAfter: nc.NotAfter, URIs: nc.URIs, DNSNames: nc.DNSNames, IPAddresses: nc.IPAddresses,
							ExtKeyUsage: nc.ExtKeyUsage, KeyUsage: nc.KeyUsage, BasicConstraintsValid: true}
						tbs, err := ls.buildTBS(tmpl, nc.PublicKey.(*ecdsa.PublicKey))
						if err != nil || !bytes.Equal(tbs, nc.RawTBSCertificate) {
							t.Fatalf("old encoder's TBS for the new leaf differs (%v)", err)
						}
					}
					for _, c := range []*x509.Certificate{oc, nc} {
						for _, eku := range req.ekus {
							if _, err := c.Verify(x509.VerifyOptions{Roots: g.roots, Intermediates: g.inters, CurrentTime: ca.opts.Clock(), KeyUsages: []x509.ExtKeyUsage{eku}}); err != nil {
								t.Fatalf("leaf does not verify for %v: %v", eku, err)
							}
						}
					}
					if i == 0 {
						fmt.Fprintf(&report, "%-40s det=%-5v identical-bytes=%v exts=%d\n", sh.name, det, det && req.pub == nil, len(nc.Extensions))
					}
					compared++
				}
			})
		}
	}
	_ = context.Background
	t.Logf("compared %d old/new leaf pairs\n%s", compared, report.String())
	if out := os.Getenv("SDS_DIFF_REPORT"); out != "" {
		_ = os.WriteFile(out, []byte(fmt.Sprintf("compared %d old/new leaf pairs\n%s", compared, report.String())), 0o644)
	}
}
