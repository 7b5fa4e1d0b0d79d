package sds

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func fileMode(t *testing.T, path string) os.FileMode {
	t.Helper()
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return info.Mode().Perm()
}

func TestLoadOrCreateCreatesRoot(t *testing.T) {
	ca := newTestCA(t)
	dir := filepath.Join(ca.opts.DataDir, "ca")

	for path, want := range map[string]os.FileMode{
		dir:                              0o700,
		filepath.Join(dir, rootKeyFile):  0o600,
		filepath.Join(dir, rootCertFile): 0o644,
	} {
		if got := fileMode(t, path); got != want {
			t.Errorf("mode of %s = %04o, want %04o", path, got, want)
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 2 {
		t.Errorf("ca dir holds %d entries, want exactly the cert and key (temp files left behind?): %v", len(entries), entries)
	}

	onDisk, err := os.ReadFile(filepath.Join(dir, rootCertFile))
	if err != nil {
		t.Fatal(err)
	}
	if string(onDisk) != string(ca.RootCertPEM()) {
		t.Error("RootCertPEM differs from root-cert.pem")
	}
	root := parseCert(t, onDisk)
	if !root.IsCA || !root.BasicConstraintsValid {
		t.Error("root is not a CA")
	}
	if root.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
		t.Errorf("root KeyUsage = %v, want CertSign|CRLSign", root.KeyUsage)
	}
	if got, want := root.Subject.CommonName, "meshd root CA cluster.local"; got != want {
		t.Errorf("root CN = %q, want %q", got, want)
	}
	if got := root.Subject.Organization; len(got) != 1 || got[0] != "meshd" {
		t.Errorf("root O = %v, want [meshd]", got)
	}
	if len(root.URIs) != 1 || root.URIs[0].String() != "spiffe://cluster.local" {
		t.Errorf("root URI SANs = %v, want [spiffe://cluster.local]", root.URIs)
	}
	if want := t0.AddDate(10, 0, 0); !root.NotAfter.Equal(want) {
		t.Errorf("root NotAfter = %s, want %s", root.NotAfter, want)
	}
	pub, ok := root.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		t.Errorf("root key is %T, want ECDSA P-256", root.PublicKey)
	}
	if err := root.CheckSignatureFrom(root); err != nil {
		t.Errorf("root is not self-signed: %v", err)
	}
	if ca.TrustDomain() != "cluster.local" {
		t.Errorf("TrustDomain() = %q", ca.TrustDomain())
	}

	logs := ca.logs.String()
	if !strings.Contains(logs, "created root CA") || !strings.Contains(logs, ca.Fingerprint()) {
		t.Errorf("creation log lacks message or fingerprint %s:\n%s", ca.Fingerprint(), logs)
	}
	if len(ca.Fingerprint()) != 64 {
		t.Errorf("fingerprint %q is not a hex SHA-256", ca.Fingerprint())
	}
	assertNoKeyMaterial(t, "logs", logs, mustRead(t, filepath.Join(dir, rootKeyFile)))
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestLoadOrCreateLoadsSameRoot(t *testing.T) {
	first := newTestCA(t)
	logs := &syncBuffer{}
	second, err := LoadOrCreate(testOptions(first.opts.DataDir, first.clock, logs))
	if err != nil {
		t.Fatalf("second LoadOrCreate: %v", err)
	}
	if second.Fingerprint() != first.Fingerprint() {
		t.Errorf("fingerprint changed across restarts: %s -> %s", first.Fingerprint(), second.Fingerprint())
	}
	if string(second.RootCertPEM()) != string(first.RootCertPEM()) {
		t.Error("root certificate changed across restarts")
	}
	if !strings.Contains(logs.String(), "loaded root CA") || !strings.Contains(logs.String(), first.Fingerprint()) {
		t.Errorf("load log lacks message or fingerprint:\n%s", logs)
	}
	// The loaded key must be the one that signed the root: leaves from the
	// second instance verify against the first's pool.
	leaf, err := second.IssueLeaf(testID, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := parseCert(t, leaf.CertPEM).Verify(x509.VerifyOptions{
		Roots: first.RootPool(), CurrentTime: t0, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		t.Errorf("leaf from reloaded CA does not verify against the original root: %v", err)
	}
}

func TestLoadOrCreateAcceptsSEC1Key(t *testing.T) {
	first := newTestCA(t)
	keyPath := filepath.Join(first.opts.DataDir, "ca", rootKeyFile)
	key, err := parseKeyPEM(mustRead(t, keyPath))
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalECPrivateKey(key.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	second, err := LoadOrCreate(testOptions(first.opts.DataDir, first.clock, &syncBuffer{}))
	if err != nil {
		t.Fatalf("load with SEC 1 key: %v", err)
	}
	if second.Fingerprint() != first.Fingerprint() {
		t.Error("different root after converting the key to SEC 1")
	}
}

func TestLoadOrCreateRefusesReadableKey(t *testing.T) {
	for _, mode := range []os.FileMode{0o644, 0o640, 0o604} {
		ca := newTestCA(t)
		keyPath := filepath.Join(ca.opts.DataDir, "ca", rootKeyFile)
		if err := os.Chmod(keyPath, mode); err != nil {
			t.Fatal(err)
		}
		_, err := LoadOrCreate(ca.opts)
		if err == nil {
			t.Fatalf("key mode %04o: LoadOrCreate succeeded, want refusal", mode)
		}
		if msg := err.Error(); !strings.Contains(msg, "chmod 600 "+keyPath) {
			t.Errorf("key mode %04o: error does not tell to chmod 600 the key: %v", mode, err)
		}
	}
}

func TestLoadOrCreateCorruptFiles(t *testing.T) {
	tests := []struct {
		name    string
		file    string
		content string
	}{
		{"garbage cert", rootCertFile, "this is not a certificate\n"},
		{"wrong PEM type", rootCertFile, string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: []byte{1, 2, 3}}))},
		{"bad DER", rootCertFile, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1, 2, 3}}))},
		{"garbage key", rootKeyFile, "not a key"},
		// A well-formed PEM with a bad body: the error must name the
		// file but never echo the body.
		{"bad key DER", rootKeyFile, string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte("SECRETSECRETSECRETSECRET")}))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ca := newTestCA(t)
			path := filepath.Join(ca.opts.DataDir, "ca", tt.file)
			mode := fileMode(t, path)
			if err := os.WriteFile(path, []byte(tt.content), mode); err != nil {
				t.Fatal(err)
			}
			_, err := LoadOrCreate(ca.opts)
			if err == nil {
				t.Fatal("LoadOrCreate succeeded on a corrupt file")
			}
			if !strings.Contains(err.Error(), path) {
				t.Errorf("error does not name %s: %v", path, err)
			}
			if strings.Contains(err.Error(), "U0VDUkVU") || strings.Contains(err.Error(), "SECRET") {
				t.Errorf("error echoes key material: %v", err)
			}
		})
	}
}

func TestLoadOrCreateRefusesMismatchedKey(t *testing.T) {
	a := newTestCA(t)
	b := newTestCA(t)
	keyB := mustRead(t, filepath.Join(b.opts.DataDir, "ca", rootKeyFile))
	if err := os.WriteFile(filepath.Join(a.opts.DataDir, "ca", rootKeyFile), keyB, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := LoadOrCreate(a.opts)
	if err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("want a key/cert mismatch error, got %v", err)
	}
}

func TestLoadOrCreateRefusesNonCA(t *testing.T) {
	ca := newTestCA(t)
	leaf, err := ca.IssueLeaf(testID, nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(ca.opts.DataDir, "ca")
	if err := os.WriteFile(filepath.Join(dir, rootCertFile), leaf.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, rootKeyFile), leaf.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = LoadOrCreate(ca.opts)
	if err == nil || !strings.Contains(err.Error(), "not a CA") {
		t.Fatalf("want a not-a-CA error, got %v", err)
	}
}

func TestLoadOrCreateRefusesExpiredRoot(t *testing.T) {
	ca := newTestCA(t)
	ca.clock.Set(t0.AddDate(10, 0, 0).Add(time.Second))
	_, err := LoadOrCreate(ca.opts)
	if err == nil || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("want an expiry error, got %v", err)
	}
}

func TestLoadOrCreateRefusesOtherTrustDomain(t *testing.T) {
	ca := newTestCA(t)
	opts := ca.opts
	opts.TrustDomain = "other.local"
	_, err := LoadOrCreate(opts)
	if err == nil || !strings.Contains(err.Error(), `"cluster.local"`) || !strings.Contains(err.Error(), `"other.local"`) {
		t.Fatalf("want a trust domain mismatch error naming both domains, got %v", err)
	}
}

func TestLoadOrCreateRefusesHalfPresentRoot(t *testing.T) {
	for _, missing := range []string{rootCertFile, rootKeyFile} {
		ca := newTestCA(t)
		path := filepath.Join(ca.opts.DataDir, "ca", missing)
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
		_, err := LoadOrCreate(ca.opts)
		if err == nil || !strings.Contains(err.Error(), path) {
			t.Errorf("%s missing: want an error naming it, got %v", missing, err)
		}
		// It must not have silently minted a replacement root.
		if _, statErr := os.Stat(path); statErr == nil {
			t.Errorf("%s missing: LoadOrCreate recreated it", missing)
		}
	}
}

func TestOptionsValidation(t *testing.T) {
	clock := newFakeClock(t0)
	tests := []struct {
		name string
		mod  func(*Options)
		want string
	}{
		{"no data dir", func(o *Options) { o.DataDir = "" }, "DataDir"},
		{"bad trust domain", func(o *Options) { o.TrustDomain = "Cluster.Local" }, "trust domain"},
		{"negative ttl", func(o *Options) { o.LeafTTL = -time.Hour }, "LeafTTL"},
		{"renew fraction 1", func(o *Options) { o.RenewFraction = 1 }, "RenewFraction"},
		{"renew fraction negative", func(o *Options) { o.RenewFraction = -0.5 }, "RenewFraction"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := testOptions(t.TempDir(), clock, &syncBuffer{})
			tt.mod(&opts)
			_, err := LoadOrCreate(opts)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("want an error mentioning %q, got %v", tt.want, err)
			}
		})
	}
}

func TestRootPoolIsACopy(t *testing.T) {
	ca := newTestCA(t)
	other := newTestCA(t)
	p := ca.RootPool()
	p.AddCert(other.RootCert())
	leaf, err := other.IssueLeaf(testID, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := parseCert(t, leaf.CertPEM).Verify(x509.VerifyOptions{Roots: ca.RootPool(), CurrentTime: t0}); err == nil {
		t.Error("mutating a returned RootPool changed what the CA trusts")
	}
	pemCopy := ca.RootCertPEM()
	pemCopy[0] = 'X'
	if ca.RootCertPEM()[0] == 'X' {
		t.Error("mutating RootCertPEM's result changed the CA's copy")
	}
}
