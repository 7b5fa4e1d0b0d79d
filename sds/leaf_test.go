package sds

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshd/meshd/mesh"
)

func TestIssueLeafFields(t *testing.T) {
	ca := newTestCA(t)
	dns := []string{"cart", "cart.shop", "cart.shop.svc.cluster.local"}
	leaf, err := ca.IssueLeaf(testID, dns)
	if err != nil {
		t.Fatal(err)
	}
	c := parseCert(t, leaf.CertPEM)

	if len(c.URIs) != 1 || c.URIs[0].String() != "spiffe://cluster.local/ns/shop/sa/cart" {
		t.Errorf("URI SANs = %v, want exactly [spiffe://cluster.local/ns/shop/sa/cart]", c.URIs)
	}
	if !slices.Equal(c.DNSNames, dns) {
		t.Errorf("DNS SANs = %v, want %v", c.DNSNames, dns)
	}
	if len(c.IPAddresses) != 0 || len(c.EmailAddresses) != 0 {
		t.Errorf("unexpected SANs: IPs %v, emails %v", c.IPAddresses, c.EmailAddresses)
	}
	if c.Subject.CommonName != "cart" {
		t.Errorf("CN = %q, want the first DNS name %q", c.Subject.CommonName, "cart")
	}
	if !slices.Equal(c.Subject.Organization, []string{"meshd"}) {
		t.Errorf("O = %v, want [meshd]", c.Subject.Organization)
	}
	if !slices.Equal(c.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}) {
		t.Errorf("EKU = %v, want [ServerAuth ClientAuth]", c.ExtKeyUsage)
	}
	if c.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Errorf("KeyUsage = %b, want exactly DigitalSignature", c.KeyUsage)
	}
	if c.IsCA || !c.BasicConstraintsValid {
		t.Errorf("IsCA = %v, BasicConstraintsValid = %v; want CA=false asserted", c.IsCA, c.BasicConstraintsValid)
	}
	pub, ok := c.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		t.Errorf("public key %T, want ECDSA P-256", c.PublicKey)
	}
	if want := t0.Add(-time.Minute); !c.NotBefore.Equal(want) || !leaf.NotBefore.Equal(want) {
		t.Errorf("NotBefore = %s (leaf %s), want %s", c.NotBefore, leaf.NotBefore, want)
	}
	if want := t0.Add(24 * time.Hour); !c.NotAfter.Equal(want) || !leaf.NotAfter.Equal(want) {
		t.Errorf("NotAfter = %s (leaf %s), want %s", c.NotAfter, leaf.NotAfter, want)
	}
	// Half of (24h + 1m backdating) after NotBefore.
	if want := t0.Add(-time.Minute).Add((24*time.Hour + time.Minute) / 2); !leaf.RenewAt.Equal(want) {
		t.Errorf("RenewAt = %s, want %s", leaf.RenewAt, want)
	}
	if c.SerialNumber.Cmp(leaf.Serial) != 0 {
		t.Errorf("Leaf.Serial %s != certificate serial %s", leaf.Serial, c.SerialNumber)
	}
	if leaf.Serial.Sign() <= 0 || leaf.Serial.BitLen() > 128 {
		t.Errorf("serial %s is not a positive 128-bit number", leaf.Serial)
	}
	if leaf.Identity != testID || !slices.Equal(leaf.DNSNames, dns) {
		t.Errorf("Leaf.Identity/DNSNames = %v/%v", leaf.Identity, leaf.DNSNames)
	}
	if !bytes.Equal(c.AuthorityKeyId, ca.IntermediateCert().SubjectKeyId) {
		t.Error("AuthorityKeyId does not point at the intermediate")
	}
	if err := c.CheckSignatureFrom(ca.IntermediateCert()); err != nil {
		t.Errorf("leaf not signed by the intermediate: %v", err)
	}
	// The chain is leaf + intermediate, never the root.
	if n := bytes.Count(leaf.CertPEM, []byte("BEGIN CERTIFICATE")); n != 2 {
		t.Errorf("CertPEM holds %d certificates, want leaf + intermediate", n)
	}
	if !bytes.HasSuffix(leaf.CertPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.IntermediateCert().Raw})) {
		t.Error("CertPEM does not end with the signing intermediate")
	}
	if bytes.Contains(leaf.CertPEM, ca.RootCertPEM()) {
		t.Error("CertPEM carries the root; peers must take it from the bundle")
	}
	if leaf.Generation() == "" {
		t.Error("leaf does not record its generation")
	}
	for _, eku := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if err := verifyLeaf(t, leaf.CertPEM, ca.RootPool(), t0, eku); err != nil {
			t.Errorf("chain does not verify for %v: %v", eku, err)
		}
	}
	if err := verifyLeaf(t, leaf.CertPEM, ca.RootPool(), t0, x509.ExtKeyUsageCodeSigning); err == nil {
		t.Error("leaf verifies for code signing; EKUs are too broad")
	}
	// Without the intermediate the leaf does not chain to the root.
	if _, err := c.Verify(x509.VerifyOptions{Roots: ca.RootPool(), CurrentTime: t0}); err == nil {
		t.Error("leaf verifies without its intermediate: it is signed by the root directly")
	}

	block, _ := pem.Decode(leaf.KeyPEM)
	if block == nil || block.Type != "PRIVATE KEY" {
		t.Fatalf("KeyPEM is not a PKCS#8 PRIVATE KEY block")
	}
	if _, err := x509.ParsePKCS8PrivateKey(block.Bytes); err != nil {
		t.Errorf("KeyPEM is not PKCS#8: %v", err)
	}
	if _, err := tls.X509KeyPair(leaf.CertPEM, leaf.KeyPEM); err != nil {
		t.Errorf("key does not match certificate: %v", err)
	}
}

func TestIssueLeafWithoutDNSNames(t *testing.T) {
	ca := newTestCA(t, func(o *Options) { o.Organization = "acme"; o.LeafTTL = time.Hour })
	leaf, err := ca.IssueLeaf(testID, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := parseCert(t, leaf.CertPEM)
	if c.Subject.CommonName != "cart" || len(c.DNSNames) != 0 {
		t.Errorf("CN = %q, DNS = %v; want the service account and no DNS SANs", c.Subject.CommonName, c.DNSNames)
	}
	if !slices.Equal(c.Subject.Organization, []string{"acme"}) {
		t.Errorf("O = %v, want [acme]", c.Subject.Organization)
	}
	if !c.NotAfter.Equal(t0.Add(time.Hour)) {
		t.Errorf("NotAfter = %s, want now + LeafTTL (1h)", c.NotAfter)
	}
}

func TestIssueLeafDeduplicatesDNSNames(t *testing.T) {
	ca := newTestCA(t)
	leaf, err := ca.IssueLeaf(testID, []string{"b", "a", "b"})
	if err != nil {
		t.Fatal(err)
	}
	if got := parseCert(t, leaf.CertPEM).DNSNames; !slices.Equal(got, []string{"b", "a"}) {
		t.Errorf("DNS SANs = %v, want [b a]", got)
	}
}

func TestIssueLeafIsFreshEveryTime(t *testing.T) {
	ca := newTestCA(t)
	a, err := ca.IssueLeaf(testID, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := ca.IssueLeaf(testID, nil)
	if err != nil {
		t.Fatal(err)
	}
	if a.Serial.Cmp(b.Serial) == 0 || bytes.Equal(a.KeyPEM, b.KeyPEM) {
		t.Error("two IssueLeaf calls returned the same serial or key")
	}
}

func TestIssueLeafCappedAtIssuerExpiry(t *testing.T) {
	ca := newTestCA(t)
	rootEnd := ca.IntermediateCert().NotAfter
	if want := t0.Add(365 * 24 * time.Hour); !rootEnd.Equal(want) {
		t.Fatalf("intermediate NotAfter = %s, want %s", rootEnd, want)
	}
	now := rootEnd.Add(-time.Hour)
	ca.clock.Set(now)
	leaf, err := ca.IssueLeaf(testID, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := parseCert(t, leaf.CertPEM)
	if !c.NotAfter.Equal(rootEnd) || !leaf.NotAfter.Equal(rootEnd) {
		t.Errorf("NotAfter = %s, want capped at the intermediate's expiry %s", c.NotAfter, rootEnd)
	}
	if want := now.Add(-time.Minute).Add(61 * time.Minute / 2); !leaf.RenewAt.Equal(want) {
		t.Errorf("RenewAt = %s, want half of the capped life %s", leaf.RenewAt, want)
	}
	if err := verifyLeaf(t, leaf.CertPEM, ca.RootPool(), now, x509.ExtKeyUsageServerAuth); err != nil {
		t.Errorf("capped leaf does not verify: %v", err)
	}

	ca.clock.Set(rootEnd.Add(time.Second))
	if _, err := ca.IssueLeaf(testID, nil); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("issuing after root expiry: want an expiry error, got %v", err)
	}
}

func TestIssueLeafRejectsBadInput(t *testing.T) {
	ca := newTestCA(t)
	tests := []struct {
		name string
		id   mesh.Identity
		dns  []string
		want string
	}{
		{"other trust domain", mesh.Identity{TrustDomain: "evil.local", Namespace: "shop", ServiceAccount: "cart"}, nil, `"evil.local"`},
		{"empty namespace", mesh.Identity{TrustDomain: "cluster.local", ServiceAccount: "cart"}, nil, "malformed"},
		{"slash in service account", mesh.Identity{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "cart/sa/admin"}, nil, "malformed"},
		{"space in DNS name", testID, []string{"cart shop"}, "not allowed"},
		{"empty DNS name", testID, []string{""}, "DNS name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := ca.IssueLeaf(tt.id, tt.dns); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("IssueLeaf: want error containing %q, got %v", tt.want, err)
			}
			if _, err := ca.Leaf(tt.id, tt.dns); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Leaf: want error containing %q, got %v", tt.want, err)
			}
		})
	}
	if !ca.NextRenewal().IsZero() {
		t.Error("a refused identity ended up in the cache")
	}
}

func TestLeafCache(t *testing.T) {
	ca := newTestCA(t)
	if !ca.NextRenewal().IsZero() {
		t.Fatal("NextRenewal of an empty cache is not zero")
	}
	first, err := ca.Leaf(testID, []string{"cart"})
	if err != nil {
		t.Fatal(err)
	}
	if !ca.NextRenewal().Equal(first.RenewAt) {
		t.Errorf("NextRenewal = %s, want %s", ca.NextRenewal(), first.RenewAt)
	}

	ca.clock.Set(first.RenewAt.Add(-time.Second))
	again, err := ca.Leaf(testID, []string{"cart"})
	if err != nil {
		t.Fatal(err)
	}
	if again != first {
		t.Error("Leaf reissued before RenewAt")
	}

	ca.clock.Set(first.RenewAt)
	renewed, err := ca.Leaf(testID, []string{"cart"})
	if err != nil {
		t.Fatal(err)
	}
	if renewed.Serial.Cmp(first.Serial) == 0 {
		t.Error("Leaf did not reissue at RenewAt")
	}
	if !renewed.NotBefore.Equal(first.RenewAt.Add(-time.Minute)) {
		t.Errorf("renewed NotBefore = %s, want the renewal time minus 1m", renewed.NotBefore)
	}
	if !ca.NextRenewal().Equal(renewed.RenewAt) {
		t.Errorf("NextRenewal = %s, want the renewed leaf's %s", ca.NextRenewal(), renewed.RenewAt)
	}

	// Different DNS names force a reissue even before RenewAt.
	changed, err := ca.Leaf(testID, []string{"cart", "cart.shop"})
	if err != nil {
		t.Fatal(err)
	}
	if changed == renewed || !slices.Equal(parseCert(t, changed.CertPEM).DNSNames, []string{"cart", "cart.shop"}) {
		t.Error("Leaf did not reissue when DNS names changed")
	}
}

func TestNextRenewalAndForget(t *testing.T) {
	ca := newTestCA(t)
	other := mesh.Identity{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "checkout"}
	early, err := ca.Leaf(testID, nil)
	if err != nil {
		t.Fatal(err)
	}
	ca.clock.Advance(time.Hour)
	late, err := ca.Leaf(other, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !late.RenewAt.After(early.RenewAt) {
		t.Fatalf("test setup: late.RenewAt %s not after early.RenewAt %s", late.RenewAt, early.RenewAt)
	}
	if got := ca.NextRenewal(); !got.Equal(early.RenewAt) {
		t.Errorf("NextRenewal = %s, want the earliest %s", got, early.RenewAt)
	}

	ca.Forget(map[string]bool{other.SPIFFEID(): true})
	if got := ca.NextRenewal(); !got.Equal(late.RenewAt) {
		t.Errorf("after forgetting %s: NextRenewal = %s, want %s", testID, got, late.RenewAt)
	}
	if kept, _ := ca.Leaf(other, nil); kept != late {
		t.Error("Forget dropped an identity listed in keep")
	}
	if again, _ := ca.Leaf(testID, nil); again == early {
		t.Error("Forget kept an identity not listed in keep")
	}

	ca.Forget(nil)
	if !ca.NextRenewal().IsZero() {
		t.Error("Forget(nil) left leaves cached")
	}
}

func TestLeafConcurrentCallsShareOneIssuance(t *testing.T) {
	ca := newTestCA(t)
	const n = 16
	leaves := make([]*Leaf, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			l, err := ca.Leaf(testID, nil)
			if err != nil {
				t.Error(err)
			}
			leaves[i] = l
		})
	}
	wg.Wait()
	for i, l := range leaves {
		if l != leaves[0] {
			t.Fatalf("call %d got a different leaf: concurrent callers minted competing certificates", i)
		}
	}
}

func TestRenewFraction(t *testing.T) {
	ca := newTestCA(t, func(o *Options) { o.RenewFraction = 0.75; o.LeafTTL = 4*time.Hour - time.Minute })
	leaf, err := ca.Leaf(testID, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Life is exactly 4h (3h59m TTL + 1m backdating); 75% is 3h.
	if want := t0.Add(-time.Minute).Add(3 * time.Hour); !leaf.RenewAt.Equal(want) {
		t.Errorf("RenewAt = %s, want %s", leaf.RenewAt, want)
	}
}

// BenchmarkIssueLeaf: one workload certificate (key, certificate, checks,
// PEM) on one core, with meshd's default (info) log level: through meshd's
// own chain (CreateCertificate, CheckSignatureFrom, checkLeaf), in
// deterministic mode (derived key, RFC 6979 signature), and through a chain
// with constraints, which adds x509's full Verify per usage (sign.go).
//
//	go test ./sds -run '^$' -bench IssueLeaf -cpu 1
func BenchmarkIssueLeaf(b *testing.B) {
	for _, bc := range []struct {
		name          string
		deterministic bool
		constrained   bool
	}{{"meshd-chain", false, false}, {"deterministic", true, false}, {"constrained-chain", false, true}} {
		b.Run(bc.name, func(b *testing.B) {
			ca := newTestCA(b, func(o *Options) {
				o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
				o.DeterministicLeaves = bc.deterministic
			})
			ca.signing().constrained = bc.constrained
			dns := []string{"cart", "cart.shop", "cart.shop.svc.cluster.local"}
			b.ReportAllocs()
			start := time.Now()
			for b.Loop() {
				if _, err := ca.IssueLeaf(testID, dns); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "leaves/s")
		})
	}
}
