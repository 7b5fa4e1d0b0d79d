package sds

import (
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Names WriteFiles uses inside its directory; a proxyless gRPC bootstrap's
// file_watcher certificate provider points at them.
const (
	CertFileName   = "cert.pem"
	KeyFileName    = "key.pem"
	BundleFileName = "ca.pem"
)

// WriteFiles writes leaf's certificate (cert.pem, 0644), its key (key.pem,
// 0600) and the trust bundle (ca.pem, 0644) into dir, creating dir (0700) if
// needed. Each file is written atomically (temp file in dir, then rename), so
// a gRPC file_watcher polling the directory never reads a half-written file.
//
// The bundle is written first so that, during a root rotation, peers' new
// certificates are trusted before ours changes; then key, then certificate.
// Between the key and the certificate renames a watcher may briefly see a
// mismatched pair; gRPC's file_watcher rejects such a pair and keeps its
// previous one until the next poll.
func WriteFiles(dir string, leaf *Leaf, bundlePEM []byte) error {
	if leaf == nil || len(leaf.CertPEM) == 0 || len(leaf.KeyPEM) == 0 {
		return errors.New("write certificate files: leaf has no certificate or key: pass a leaf from Authority.Leaf or IssueLeaf")
	}
	if len(bundlePEM) == 0 {
		return errors.New("write certificate files: trust bundle is empty: pass Authority.RootCertPEM()")
	}
	// Refuse to publish a pair that would fail every handshake.
	if _, err := tls.X509KeyPair(leaf.CertPEM, leaf.KeyPEM); err != nil {
		return fmt.Errorf("write certificate files for %s: certificate and key do not form a valid pair: %w", leaf.Identity.SPIFFEID(), err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("write certificate files: create %s: %w (check the directory is writable)", dir, err)
	}
	for _, f := range []struct {
		name string
		data []byte
		perm os.FileMode
	}{
		{BundleFileName, bundlePEM, 0o644},
		{KeyFileName, leaf.KeyPEM, 0o600},
		{CertFileName, leaf.CertPEM, 0o644},
	} {
		if err := writeFileAtomic(filepath.Join(dir, f.name), f.data, f.perm); err != nil {
			return fmt.Errorf("write certificate files for %s: %w", leaf.Identity.SPIFFEID(), err)
		}
	}
	return nil
}

// writeFileAtomic writes data to path via a temp file in the same directory
// (rename is atomic only within one file system) that is chmod-ed, written
// and fsynced before the rename, so readers see the old file or the complete
// new one, with the final permissions from the first byte.
func writeFileAtomic(path string, data []byte, perm os.FileMode) (err error) {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: create temp file: %w (check the directory is writable)", path, err)
	}
	tmpName := tmp.Name()
	defer func() {
		if err != nil {
			_ = tmp.Close()
			_ = os.Remove(tmpName)
		}
	}()
	// Explicit chmod: CreateTemp uses 0600 and the umask must not decide a
	// key file's mode.
	if err := tmp.Chmod(perm); err != nil {
		return fmt.Errorf("write %s: chmod temp file: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("write %s: sync: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: close: %w", path, err)
	}
	if err := os.Rename(tmpName, path); err != nil {
		return fmt.Errorf("write %s: rename into place: %w", path, err)
	}
	// Persist the rename itself, so a crash cannot leave the old file (or
	// none) after we reported success. Best effort: not every platform
	// can fsync a directory.
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}
