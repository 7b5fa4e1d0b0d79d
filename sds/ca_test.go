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

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// genPath is a file of the signing generation.
func genPath(ca *testCA, name string) string {
	return filepath.Join(ca.opts.DataDir, "ca", ca.signing().id, name)
}

func TestLoadOrCreateCreatesHierarchy(t *testing.T) {
	ca := newTestCA(t)
	dir := filepath.Join(ca.opts.DataDir, "ca")
	gdir := filepath.Join(dir, ca.signing().id)

	for path, want := range map[string]os.FileMode{
		dir:                                   0o700,
		gdir:                                  0o700,
		filepath.Join(gdir, genRootKeyFile):   0o600,
		filepath.Join(gdir, genInterKeyFile):  0o600,
		filepath.Join(gdir, genRootCertFile):  0o644,
		filepath.Join(gdir, genInterCertFile): 0o644,
		filepath.Join(dir, rootCertFile):      0o644,
		filepath.Join(dir, stateFile):         0o600,
	} {
		if got := fileMode(t, path); got != want {
			t.Errorf("mode of %s = %04o, want %04o", path, got, want)
		}
	}
	for d, want := range map[string]int{dir: 3, gdir: 4} {
		entries, err := os.ReadDir(d)
		if err != nil {
			t.Fatal(err)
		}
		if len(entries) != want {
			t.Errorf("%s holds %d entries, want %d (temp files left behind?): %v", d, len(entries), want, entries)
		}
	}

	// The bundle file is what bootstraps point at: exactly the root.
	onDisk := mustRead(t, filepath.Join(dir, rootCertFile))
	if string(onDisk) != string(ca.RootCertPEM()) {
		t.Error("RootCertPEM differs from root-cert.pem")
	}
	root := parseCert(t, onDisk)
	if string(onDisk) != string(mustRead(t, filepath.Join(gdir, genRootCertFile))) {
		t.Error("bundle is not the generation's root")
	}
	if !root.IsCA || !root.BasicConstraintsValid || root.MaxPathLen != 1 {
		t.Errorf("root: IsCA %v, MaxPathLen %d; want a CA with path length 1", root.IsCA, root.MaxPathLen)
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
	if want := t0.Add(-time.Minute); !root.NotBefore.Equal(want) {
		t.Errorf("root NotBefore = %s, want %s", root.NotBefore, want)
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

	inter := parseCert(t, mustRead(t, filepath.Join(gdir, genInterCertFile)))
	if !inter.Equal(ca.IntermediateCert()) {
		t.Error("IntermediateCert differs from the file")
	}
	if !inter.IsCA || !inter.BasicConstraintsValid || inter.MaxPathLen != 0 || !inter.MaxPathLenZero {
		t.Errorf("intermediate: IsCA %v, MaxPathLen %d zero %v; want a CA that signs only leaves", inter.IsCA, inter.MaxPathLen, inter.MaxPathLenZero)
	}
	if inter.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
		t.Errorf("intermediate KeyUsage = %v", inter.KeyUsage)
	}
	if got, want := inter.Subject.CommonName, "meshd intermediate CA cluster.local"; got != want {
		t.Errorf("intermediate CN = %q, want %q", got, want)
	}
	if len(inter.URIs) != 1 || inter.URIs[0].String() != "spiffe://cluster.local" {
		t.Errorf("intermediate URI SANs = %v", inter.URIs)
	}
	if !inter.NotBefore.Equal(t0.Add(-time.Minute)) || !inter.NotAfter.Equal(t0.Add(365*24*time.Hour)) {
		t.Errorf("intermediate validity %s..%s, want t0-1m..t0+365d", inter.NotBefore, inter.NotAfter)
	}
	if err := inter.CheckSignatureFrom(root); err != nil {
		t.Errorf("intermediate not signed by the root: %v", err)
	}
	if ca.TrustDomain() != "cluster.local" {
		t.Errorf("TrustDomain() = %q", ca.TrustDomain())
	}

	logs := ca.logs.String()
	if !strings.Contains(logs, "created CA") || !strings.Contains(logs, ca.Fingerprint()) {
		t.Errorf("creation log lacks message or fingerprint %s:\n%s", ca.Fingerprint(), logs)
	}
	if len(ca.Fingerprint()) != 64 {
		t.Errorf("fingerprint %q is not a hex SHA-256", ca.Fingerprint())
	}
	assertNoKeyMaterial(t, "logs", logs, mustRead(t, filepath.Join(gdir, genRootKeyFile)))
	assertNoKeyMaterial(t, "logs", logs, mustRead(t, filepath.Join(gdir, genInterKeyFile)))
}

func TestIntermediateCappedAtRoot(t *testing.T) {
	ca := newTestCA(t, func(o *Options) { o.IntermediateTTL = 20 * 365 * 24 * time.Hour })
	if !ca.IntermediateCert().NotAfter.Equal(ca.RootCert().NotAfter) {
		t.Errorf("intermediate NotAfter %s, want capped at the root's %s", ca.IntermediateCert().NotAfter, ca.RootCert().NotAfter)
	}
}

func TestLoadOrCreateLoadsSameCA(t *testing.T) {
	first := newTestCA(t)
	logs := &syncBuffer{}
	second, err := LoadOrCreate(testOptions(first.opts.DataDir, first.clock, logs))
	if err != nil {
		t.Fatalf("second LoadOrCreate: %v", err)
	}
	if second.Fingerprint() != first.Fingerprint() || !second.IntermediateCert().Equal(first.IntermediateCert()) {
		t.Error("root or intermediate changed across restarts")
	}
	if string(second.RootCertPEM()) != string(first.RootCertPEM()) {
		t.Error("bundle changed across restarts")
	}
	if !strings.Contains(logs.String(), "loaded CA") || !strings.Contains(logs.String(), first.Fingerprint()) {
		t.Errorf("load log lacks message or fingerprint:\n%s", logs)
	}
	// The loaded key must be the one that signed the intermediate.
	leaf, err := second.IssueLeaf(testID, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := verifyLeaf(t, leaf.CertPEM, first.RootPool(), t0, x509.ExtKeyUsageServerAuth); err != nil {
		t.Errorf("leaf from reloaded CA does not verify against the original root: %v", err)
	}
}

func TestLoadOrCreateNoCreate(t *testing.T) {
	dir := t.TempDir()
	opts := testOptions(dir, newFakeClock(t0), &syncBuffer{})
	opts.NoCreate = true
	if _, err := LoadOrCreate(opts); err == nil || !strings.Contains(err.Error(), "start meshd once") {
		t.Fatalf("want a no-CA error, got %v", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("NoCreate wrote %v", entries)
	}
	ca := newTestCA(t)
	opts = ca.opts
	opts.NoCreate = true
	ro, err := LoadOrCreate(opts)
	if err != nil {
		t.Fatal(err)
	}
	if ro.Fingerprint() != ca.Fingerprint() {
		t.Error("read-only open sees another CA")
	}
	if err := ro.RotateRoot(); err == nil {
		t.Error("a read-only CA rotated")
	}
}

func TestLoadOrCreateMigratesLegacyRoot(t *testing.T) {
	// meshd before intermediates: ca/root-cert.pem + ca/root-key.pem (SEC 1
	// as openssl writes it).
	donor := newTestCA(t)
	dir := filepath.Join(t.TempDir(), "ca")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalECPrivateKey(donor.signing().rootKey.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, legacyRootKeyFile), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, rootCertFile), donor.signing().rootPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	opts := testOptions(filepath.Dir(dir), donor.clock, &syncBuffer{})
	ca, err := LoadOrCreate(opts)
	if err != nil {
		t.Fatal(err)
	}
	if ca.Fingerprint() != donor.Fingerprint() {
		t.Error("the legacy root was not adopted")
	}
	if _, err := os.Stat(filepath.Join(dir, legacyRootKeyFile)); err == nil {
		t.Error("the legacy key was left next to the bundle")
	}
	if ca.IntermediateCert().Equal(donor.IntermediateCert()) {
		t.Error("no new intermediate was minted")
	}
}

func TestLoadOrCreateRefusesReadableKey(t *testing.T) {
	for _, mode := range []os.FileMode{0o644, 0o640, 0o604} {
		ca := newTestCA(t)
		keyPath := genPath(ca, genInterKeyFile)
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
		{"garbage root", genRootCertFile, "this is not a certificate\n"},
		{"wrong PEM type", genInterCertFile, string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: []byte{1, 2, 3}}))},
		{"bad DER", genInterCertFile, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1, 2, 3}}))},
		{"garbage key", genInterKeyFile, "not a key"},
		// A well-formed PEM with a bad body: the error must name the
		// file but never echo the body.
		{"bad key DER", genRootKeyFile, string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte("SECRETSECRETSECRETSECRET")}))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ca := newTestCA(t)
			path := genPath(ca, tt.file)
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
	t.Run("state", func(t *testing.T) {
		ca := newTestCA(t)
		path := filepath.Join(ca.opts.DataDir, "ca", stateFile)
		if err := os.WriteFile(path, []byte("{"), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadOrCreate(ca.opts); err == nil || !strings.Contains(err.Error(), path) {
			t.Fatalf("want an error naming %s, got %v", path, err)
		}
	})
}

func TestLoadOrCreateRefusesMismatchedKey(t *testing.T) {
	a := newTestCA(t)
	b := newTestCA(t)
	if err := os.WriteFile(genPath(a, genInterKeyFile), mustRead(t, genPath(b, genInterKeyFile)), 0o600); err != nil {
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
	block, _ := pem.Decode(leaf.CertPEM)
	if err := os.WriteFile(genPath(ca, genInterCertFile), pem.EncodeToMemory(block), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(genPath(ca, genInterKeyFile), leaf.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = LoadOrCreate(ca.opts)
	if err == nil || !strings.Contains(err.Error(), "not a CA") {
		t.Fatalf("want a not-a-CA error, got %v", err)
	}
}

func TestLoadOrCreateRefusesExpiredIntermediate(t *testing.T) {
	ca := newTestCA(t)
	ca.clock.Set(t0.Add(365*24*time.Hour + time.Second))
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

func TestLoadOrCreateRefusesMissingGeneration(t *testing.T) {
	ca := newTestCA(t)
	path := genPath(ca, genInterCertFile)
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	_, err := LoadOrCreate(ca.opts)
	if err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("want an error naming %s, got %v", path, err)
	}
	if _, statErr := os.Stat(path); statErr == nil {
		t.Error("LoadOrCreate silently recreated the intermediate")
	}
}

// writeExternalCA writes a root certificate and an intermediate pair made by
// another CA instance (the operator's PKI) and returns their paths; the root
// key is not written.
func writeExternalCA(t *testing.T, src *testCA) (root, inter, key string) {
	t.Helper()
	dir := t.TempDir()
	root, inter, key = filepath.Join(dir, "root.pem"), filepath.Join(dir, "inter.pem"), filepath.Join(dir, "inter-key.pem")
	kb, err := keyPEM(src.signing().interKey)
	if err != nil {
		t.Fatal(err)
	}
	for p, b := range map[string][]byte{root: src.signing().rootPEM, inter: src.signing().interPEM} {
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(key, kb, 0o600); err != nil {
		t.Fatal(err)
	}
	return root, inter, key
}

func TestOperatorSuppliedCA(t *testing.T) {
	pki := newTestCA(t)
	root, inter, key := writeExternalCA(t, pki)
	ca := newTestCA(t, func(o *Options) {
		o.RootCertFile, o.IntermediateCertFile, o.IntermediateKeyFile = root, inter, key
	})
	if ca.Fingerprint() != pki.Fingerprint() || !ca.IntermediateCert().Equal(pki.IntermediateCert()) {
		t.Fatal("the supplied CA is not the one in use")
	}
	if ca.signing().rootKey != nil {
		t.Error("meshd holds a root key it was never given")
	}
	if _, err := os.Stat(genPath(ca, genRootKeyFile)); err == nil {
		t.Error("a root key file exists for an operator CA")
	}
	st := ca.Status(nil)
	if st.SigningRoot.RootKeyAvail == nil || *st.SigningRoot.RootKeyAvail {
		t.Error("status does not say the root key is offline")
	}
	leaf, err := ca.IssueLeaf(testID, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := verifyLeaf(t, leaf.CertPEM, pki.RootPool(), t0, x509.ExtKeyUsageClientAuth); err != nil {
		t.Errorf("leaf does not chain to the operator's root: %v", err)
	}
	if err := ca.RotateRoot(); err == nil || !strings.Contains(err.Error(), "--ca-root-cert") {
		t.Errorf("RotateRoot with an operator CA: want a pointer to the flags, got %v", err)
	}
	if err := ca.RotateIntermediate(); err == nil || !strings.Contains(err.Error(), "offline") {
		t.Errorf("RotateIntermediate without the root key: want an offline-key error, got %v", err)
	}
	// meshctl opens the same data directory without the flags.
	ro := ca.opts
	ro.RootCertFile, ro.IntermediateCertFile, ro.IntermediateKeyFile, ro.NoCreate = "", "", "", true
	if c, err := LoadOrCreate(ro); err != nil || !c.IntermediateCert().Equal(pki.IntermediateCert()) {
		t.Errorf("reopening without the flags: %v", err)
	}
	// meshd restarted without the flags still treats the CA as the
	// operator's: no root of its own replaces it.
	ro.NoCreate = false
	re, err := LoadOrCreate(ro)
	if err != nil {
		t.Fatal(err)
	}
	if err := re.RotateRoot(); err == nil {
		t.Error("after a restart without the flags, meshd replaced the operator's root")
	}
}

func TestOperatorSuppliedCAChangeStartsRotation(t *testing.T) {
	ca := newTestCA(t)
	other := newTestCA(t)
	root, inter, key := writeExternalCA(t, other)
	opts := ca.opts
	opts.RootCertFile, opts.IntermediateCertFile, opts.IntermediateKeyFile = root, inter, key
	next, err := LoadOrCreate(opts)
	if err != nil {
		t.Fatal(err)
	}
	st := next.Status(nil)
	if st.Rotation == nil || st.Rotation.Kind != "root" || st.Rotation.Phase != PhasePropagating || len(st.TrustedRoots) != 2 {
		t.Fatalf("supplying a new CA: status %+v, want a root rotation propagating both roots", st)
	}
}

func TestOperatorSuppliedCAValidation(t *testing.T) {
	a, b := newTestCA(t), newTestCA(t)
	rootA, _, _ := writeExternalCA(t, a)
	_, interB, keyB := writeExternalCA(t, b)
	opts := testOptions(t.TempDir(), newFakeClock(t0), &syncBuffer{})
	opts.RootCertFile, opts.IntermediateCertFile, opts.IntermediateKeyFile = rootA, interB, keyB
	if _, err := LoadOrCreate(opts); err == nil || !strings.Contains(err.Error(), "not signed by the root") {
		t.Errorf("intermediate from another root: got %v", err)
	}
	opts.IntermediateKeyFile = ""
	if _, err := LoadOrCreate(opts); err == nil || !strings.Contains(err.Error(), "together") {
		t.Errorf("two of three files: got %v", err)
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
		{"intermediate shorter than leaf", func(o *Options) { o.IntermediateTTL = time.Hour }, "IntermediateTTL"},
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
	if err := verifyLeaf(t, leaf.CertPEM, ca.RootPool(), t0, x509.ExtKeyUsageServerAuth); err == nil {
		t.Error("mutating a returned RootPool changed what the CA trusts")
	}
	pemCopy := ca.RootCertPEM()
	pemCopy[0] = 'X'
	if ca.RootCertPEM()[0] == 'X' {
		t.Error("mutating RootCertPEM's result changed the CA's copy")
	}
}
