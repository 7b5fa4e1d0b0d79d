package sds

import (
	"crypto/tls"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWriteFiles(t *testing.T) {
	ca := newTestCA(t)
	leaf, err := ca.IssueLeaf(testID, []string{"cart"})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "certs", "cart")
	if err := WriteFiles(dir, leaf, ca.RootCertPEM()); err != nil {
		t.Fatal(err)
	}
	check := func(l *Leaf) {
		t.Helper()
		for name, want := range map[string]struct {
			data []byte
			mode os.FileMode
		}{
			CertFileName:   {l.CertPEM, 0o644},
			KeyFileName:    {l.KeyPEM, 0o600},
			BundleFileName: {ca.RootCertPEM(), 0o644},
		} {
			path := filepath.Join(dir, name)
			if got := string(mustRead(t, path)); got != string(want.data) {
				t.Errorf("%s has the wrong content", name)
			}
			if got := fileMode(t, path); got != want.mode {
				t.Errorf("%s mode = %04o, want %04o", name, got, want.mode)
			}
		}
		if _, err := tls.LoadX509KeyPair(filepath.Join(dir, CertFileName), filepath.Join(dir, KeyFileName)); err != nil {
			t.Errorf("written cert and key do not pair: %v", err)
		}
		entries, _ := os.ReadDir(dir)
		if len(entries) != 3 {
			t.Errorf("dir holds %d entries, want 3 (temp files left behind?)", len(entries))
		}
	}
	check(leaf)

	// Rotation: a key file loosened by hand is replaced with a 0600 one.
	if err := os.Chmod(filepath.Join(dir, KeyFileName), 0o644); err != nil {
		t.Fatal(err)
	}
	next, err := ca.IssueLeaf(testID, []string{"cart"})
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteFiles(dir, next, ca.RootCertPEM()); err != nil {
		t.Fatal(err)
	}
	check(next)
}

func TestWriteFilesRefusesBadInput(t *testing.T) {
	ca := newTestCA(t)
	a, err := ca.IssueLeaf(testID, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := ca.IssueLeaf(testID, nil)
	if err != nil {
		t.Fatal(err)
	}
	mismatched := *a
	mismatched.KeyPEM = b.KeyPEM
	tests := []struct {
		name   string
		leaf   *Leaf
		bundle []byte
		want   string
	}{
		{"nil leaf", nil, ca.RootCertPEM(), "no certificate"},
		{"empty bundle", a, nil, "bundle is empty"},
		{"mismatched pair", &mismatched, ca.RootCertPEM(), "valid pair"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "out")
			err := WriteFiles(dir, tt.leaf, tt.bundle)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("want error containing %q, got %v", tt.want, err)
			}
			assertNoKeyMaterial(t, "error", err.Error(), b.KeyPEM)
			if _, statErr := os.Stat(dir); statErr == nil {
				t.Error("refused write still created the directory")
			}
		})
	}
}
