package sds

import (
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/meshd/meshd/internal/atomicfile"
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
		if err := atomicfile.Write(filepath.Join(dir, f.name), f.data, f.perm); err != nil {
			return fmt.Errorf("write certificate files for %s: %w", leaf.Identity.SPIFFEID(), err)
		}
	}
	return nil
}
