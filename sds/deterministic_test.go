package sds

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/meshd/meshd/mesh"
)

// Two authorities sharing an operator-supplied intermediate (as two meshd
// replicas would) issue byte-identical leaves within an epoch, new ones in
// the next epoch, and the leaves are valid certificates with a matching key.
func TestDeterministicLeavesAcrossReplicas(t *testing.T) {
	clock := time.Date(2026, 11, 27, 10, 0, 7, 0, time.UTC)
	now := func() time.Time { return clock }
	src, err := LoadOrCreate(Options{DataDir: t.TempDir(), TrustDomain: "cluster.local", Clock: now})
	if err != nil {
		t.Fatal(err)
	}
	// Export the generation as operator-supplied CA files.
	gen := src.signing()
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(gen.interKey)
	if err != nil {
		t.Fatal(err)
	}
	rootFile := write("root.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: gen.root.Raw}))
	interFile := write("inter.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: gen.inter.Raw}))
	keyFile := write("inter-key.pem", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
	replica := func() *Authority {
		a, err := LoadOrCreate(Options{DataDir: t.TempDir(), TrustDomain: "cluster.local", Clock: now, DeterministicLeaves: true,
			RootCertFile: rootFile, IntermediateCertFile: interFile, IntermediateKeyFile: keyFile})
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	a, b := replica(), replica()
	id := mesh.Identity{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "api"}
	dns := []string{"api", "api.default"}
	la, err := a.Leaf(id, dns)
	if err != nil {
		t.Fatal(err)
	}
	clock = clock.Add(1 * time.Hour) // same 12 h epoch (00:00-12:00)
	lb, err := b.Leaf(id, dns)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(la.CertPEM, lb.CertPEM) || !bytes.Equal(la.KeyPEM, lb.KeyPEM) {
		t.Fatal("replicas issued different leaves for one identity in one epoch")
	}
	if _, err := tls.X509KeyPair(la.CertPEM, la.KeyPEM); err != nil {
		t.Fatalf("derived key does not match the certificate: %v", err)
	}
	if !la.RenewAt.Equal(time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)) {
		t.Errorf("RenewAt %s, want the next epoch 12:00", la.RenewAt)
	}
	// Another identity gets another key; the next epoch another leaf.
	other, err := a.Leaf(mesh.Identity{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "web"}, []string{"web"})
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(other.KeyPEM, la.KeyPEM) || other.Serial.Cmp(la.Serial) == 0 {
		t.Error("two identities share a key or serial")
	}
	clock = time.Date(2026, 11, 27, 12, 0, 1, 0, time.UTC)
	next, err := a.Leaf(id, dns)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(next.CertPEM, la.CertPEM) || bytes.Equal(next.KeyPEM, la.KeyPEM) {
		t.Error("the next epoch reused the leaf")
	}
	nextB, err := b.Leaf(id, dns)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(next.CertPEM, nextB.CertPEM) {
		t.Error("replicas disagree in the next epoch")
	}
	// Without the option, leaves are random as before.
	r1, _ := src.IssueLeaf(id, dns)
	r2, _ := src.IssueLeaf(id, dns)
	if bytes.Equal(r1.CertPEM, r2.CertPEM) {
		t.Error("non-deterministic mode issued identical leaves")
	}
}
