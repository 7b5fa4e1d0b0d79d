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
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"time"
)

// File names inside a generation directory (DataDir/ca/gen-<id>/).
const (
	genRootCertFile  = "root-cert.pem"
	genRootKeyFile   = "root-key.pem"
	genInterCertFile = "intermediate-cert.pem"
	genInterKeyFile  = "intermediate-key.pem"
	// genExternalFile marks a generation the operator supplied, so that a
	// restart without the flags still refuses to replace the operator's PKI
	// with a root of meshd's own.
	genExternalFile = "operator-supplied"
	externalMarker  = "supplied with --ca-root-cert/--ca-intermediate-cert/--ca-intermediate-key\n"
)

// generation is one signing hierarchy: a root and the intermediate that
// signs leaves under it. Root rotation creates a new generation with a new
// root; intermediate rotation creates one that shares the root.
//
// Keys live only in unexported fields; nothing here formats them.
type generation struct {
	id       string // "gen-" + 16 hex of the intermediate's SHA-256
	root     *x509.Certificate
	rootKey  crypto.Signer // nil when the operator keeps the root key offline
	inter    *x509.Certificate
	interKey crypto.Signer
	rootPEM  []byte
	interPEM []byte
	rootFP   string // hex SHA-256 of the root DER
	interFP  string
	roots    *x509.CertPool
	inters   *x509.CertPool
	external bool // supplied by the operator; meshd cannot rotate it itself
	// constrained: the chain restricts what it may sign (name constraints,
	// EKUs on a CA), so every leaf also passes x509's full chain
	// verification (sign.go).
	constrained bool
}

func fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}

func certPEM(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

// newGeneration fills the derived fields and checks that inter is a CA
// signed by root and that both are valid now for trust domain td.
func newGeneration(root *x509.Certificate, rootKey crypto.Signer, inter *x509.Certificate, interKey crypto.Signer, td string, now time.Time) (*generation, error) {
	if err := checkCA(root, "root", td, now); err != nil {
		return nil, err
	}
	if err := checkCA(inter, "intermediate", td, now); err != nil {
		return nil, err
	}
	if err := root.CheckSignatureFrom(root); err != nil {
		return nil, fmt.Errorf("root certificate is not self-signed: %w (supply the top of the chain as the root)", err)
	}
	if err := inter.CheckSignatureFrom(root); err != nil {
		return nil, fmt.Errorf("intermediate certificate is not signed by the root: %w (supply the root that issued it)", err)
	}
	if !keyMatches(interKey, inter) {
		return nil, errors.New("intermediate key does not match the intermediate certificate: supply the matching pair")
	}
	if rootKey != nil && !keyMatches(rootKey, root) {
		return nil, errors.New("root key does not match the root certificate: restore the matching pair")
	}
	g := &generation{
		root: root, rootKey: rootKey, inter: inter, interKey: interKey,
		rootPEM: certPEM(root), interPEM: certPEM(inter),
		rootFP: fingerprint(root), interFP: fingerprint(inter),
		roots: x509.NewCertPool(), inters: x509.NewCertPool(),
	}
	g.id = "gen-" + g.interFP[:16]
	g.roots.AddCert(root)
	g.inters.AddCert(inter)
	// Prove the pair chains before anything is signed with it.
	if _, err := inter.Verify(x509.VerifyOptions{Roots: g.roots, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, fmt.Errorf("intermediate does not verify against the root: %w", err)
	}
	g.constrained = chainConstrained(inter, root)
	return g, nil
}

func keyMatches(k crypto.Signer, c *x509.Certificate) bool {
	pub, ok := k.Public().(interface{ Equal(crypto.PublicKey) bool })
	return ok && pub.Equal(c.PublicKey)
}

// checkCA refuses a certificate that cannot act as a CA for td now, so a
// broken or swapped CA fails at startup rather than at the first handshake.
func checkCA(c *x509.Certificate, what, td string, now time.Time) error {
	if !c.IsCA || !c.BasicConstraintsValid || c.KeyUsage&x509.KeyUsageCertSign == 0 {
		return fmt.Errorf("%s certificate is not a CA certificate (needs basicConstraints CA:TRUE and keyUsage keyCertSign)", what)
	}
	if now.After(c.NotAfter) {
		return fmt.Errorf("%s certificate expired at %s", what, c.NotAfter.UTC().Format(time.RFC3339))
	}
	if now.Before(c.NotBefore) {
		return fmt.Errorf("%s certificate is not valid until %s: check this machine's clock", what, c.NotBefore.UTC().Format(time.RFC3339))
	}
	// A CA minted for another trust domain would sign leaves that peers
	// configured for that domain accept, silently merging two meshes.
	for _, u := range c.URIs {
		if u.Scheme == "spiffe" && u.Host != td {
			return fmt.Errorf("%s certificate belongs to trust domain %q, not %q", what, u.Host, td)
		}
	}
	return nil
}

// caTemplate is the common shape of meshd's root and intermediate.
func caTemplate(cn, org, td string, notBefore, notAfter time.Time, maxPathLen int) (*x509.Certificate, error) {
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	return &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{org}, CommonName: cn},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLen:            maxPathLen,
		MaxPathLenZero:        maxPathLen == 0,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		URIs:                  []*url.URL{{Scheme: "spiffe", Host: td}},
	}, nil
}

// signCA signs tmpl with parent/parentKey (self-signed when parent is nil)
// and returns the parsed certificate and its fresh key.
func signCA(tmpl, parent *x509.Certificate, parentKey crypto.Signer) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate key: %w", err)
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), parentKey)
	if err != nil {
		return nil, nil, fmt.Errorf("sign %q: %w", tmpl.Subject.CommonName, err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("parse freshly signed %q: %w", tmpl.Subject.CommonName, err)
	}
	return c, key, nil
}

// mintRoot creates a new self-signed root valid from now.
func (a *Authority) mintRoot(now time.Time) (*x509.Certificate, crypto.Signer, error) {
	tmpl, err := caTemplate("meshd root CA "+a.opts.TrustDomain, a.opts.Organization, a.opts.TrustDomain,
		now.Add(-clockSkew), now.AddDate(rootValidityYears, 0, 0), 1)
	if err != nil {
		return nil, nil, err
	}
	c, k, err := signCA(tmpl, nil, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("root CA: %w", err)
	}
	return c, k, nil
}

// mintIntermediate creates an intermediate under root, valid for
// IntermediateTTL and never past the root (SPIRE's credtemplate caps the
// same way: a CA cannot outlive its issuer).
func (a *Authority) mintIntermediate(root *x509.Certificate, rootKey crypto.Signer, now time.Time) (*x509.Certificate, crypto.Signer, error) {
	notAfter := now.Add(a.opts.IntermediateTTL)
	if notAfter.After(root.NotAfter) {
		notAfter = root.NotAfter
	}
	tmpl, err := caTemplate("meshd intermediate CA "+a.opts.TrustDomain, a.opts.Organization, a.opts.TrustDomain,
		now.Add(-clockSkew), notAfter, 0)
	if err != nil {
		return nil, nil, err
	}
	c, k, err := signCA(tmpl, root, rootKey)
	if err != nil {
		return nil, nil, fmt.Errorf("intermediate CA: %w", err)
	}
	return c, k, nil
}

// createGeneration mints a new root (when root is nil) and an intermediate,
// and writes them to disk.
func (a *Authority) createGeneration(root *x509.Certificate, rootKey crypto.Signer) (*generation, error) {
	now := a.opts.Clock()
	if root == nil {
		var err error
		if root, rootKey, err = a.mintRoot(now); err != nil {
			return nil, err
		}
	}
	if rootKey == nil {
		return nil, errors.New("the root key is not available (kept offline): sign a new intermediate with it and start meshd with --ca-intermediate-cert/--ca-intermediate-key")
	}
	inter, interKey, err := a.mintIntermediate(root, rootKey, now)
	if err != nil {
		return nil, err
	}
	g, err := newGeneration(root, rootKey, inter, interKey, a.opts.TrustDomain, now)
	if err != nil {
		return nil, fmt.Errorf("freshly minted CA: %w", err)
	}
	if err := a.saveGeneration(g); err != nil {
		return nil, err
	}
	return g, nil
}

func (a *Authority) genDir(id string) string { return filepath.Join(a.caDir(), id) }

// saveGeneration writes a generation's files into a new gen-<id> directory,
// each durably, before any state names the generation: a crash part way
// leaves a directory nothing names, which the next start removes.
func (a *Authority) saveGeneration(g *generation) error {
	dir := a.genDir(g.id)
	if err := mkdirDurable(dir); err != nil {
		return err
	}
	type file struct {
		name string
		data []byte
		perm os.FileMode
	}
	var files []file
	if g.rootKey != nil {
		b, err := keyPEM(g.rootKey)
		if err != nil {
			return fmt.Errorf("CA: encode root key: %w", err)
		}
		files = append(files, file{genRootKeyFile, b, 0o600})
	}
	ib, err := keyPEM(g.interKey)
	if err != nil {
		return fmt.Errorf("CA: encode intermediate key: %w", err)
	}
	files = append(files, file{genInterKeyFile, ib, 0o600},
		file{genRootCertFile, g.rootPEM, 0o644}, file{genInterCertFile, g.interPEM, 0o644})
	if g.external {
		files = append(files, file{genExternalFile, []byte(externalMarker), 0o644})
	}
	for _, f := range files {
		if err := writeDurable(filepath.Join(dir, f.name), f.data, f.perm); err != nil {
			return err
		}
	}
	return nil
}

func keyPEM(k crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// loadGeneration reads gen-<id>; the root key is optional.
func (a *Authority) loadGeneration(id string) (*generation, error) {
	dir := a.genDir(id)
	root, err := readCertFile(filepath.Join(dir, genRootCertFile))
	if err != nil {
		return nil, err
	}
	inter, err := readCertFile(filepath.Join(dir, genInterCertFile))
	if err != nil {
		return nil, err
	}
	interKey, err := readKeyFile(filepath.Join(dir, genInterKeyFile))
	if err != nil {
		return nil, err
	}
	var rootKey crypto.Signer
	rkPath := filepath.Join(dir, genRootKeyFile)
	if ok, err := exists(rkPath); err != nil {
		return nil, err
	} else if ok {
		if rootKey, err = readKeyFile(rkPath); err != nil {
			return nil, err
		}
	}
	g, err := newGeneration(root, rootKey, inter, interKey, a.opts.TrustDomain, a.opts.Clock())
	if err != nil {
		return nil, fmt.Errorf("CA in %s: %w", dir, err)
	}
	if g.id != id {
		return nil, fmt.Errorf("CA in %s holds an intermediate with id %s: the directory was modified by hand; restore it from backup", dir, g.id)
	}
	if g.external, err = exists(filepath.Join(dir, genExternalFile)); err != nil {
		return nil, err
	}
	return g, nil
}

// loadExternal reads an operator-supplied root certificate and intermediate
// certificate and key. The root key is never asked for: it may stay offline.
func (a *Authority) loadExternal() (*generation, error) {
	o := a.opts
	root, err := readCertFile(o.RootCertFile)
	if err != nil {
		return nil, err
	}
	inter, err := readCertFile(o.IntermediateCertFile)
	if err != nil {
		return nil, err
	}
	key, err := readKeyFile(o.IntermediateKeyFile)
	if err != nil {
		return nil, err
	}
	g, err := newGeneration(root, nil, inter, key, o.TrustDomain, o.Clock())
	if err != nil {
		return nil, fmt.Errorf("operator-supplied CA (%s, %s, %s): %w", o.RootCertFile, o.IntermediateCertFile, o.IntermediateKeyFile, err)
	}
	g.external = true
	return g, nil
}

func readCertFile(path string) (*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("CA: read %s: %w", path, err)
	}
	c, err := parseCertPEM(b)
	if err != nil {
		return nil, fmt.Errorf("CA: certificate file %s: %w: restore it from backup", path, err)
	}
	return c, nil
}

// readKeyFile refuses a key readable by group or others before reading it:
// a CA key signs identities for the whole mesh.
func readKeyFile(path string) (crypto.Signer, error) {
	if runtime.GOOS != "windows" {
		info, err := os.Stat(path)
		if err != nil {
			return nil, fmt.Errorf("CA: stat %s: %w", path, err)
		}
		if perm := info.Mode().Perm(); perm&0o077 != 0 {
			return nil, fmt.Errorf("CA: key file %s has mode %04o and is readable by group or others: run `chmod 600 %s` and restart (consider the key compromised if others had access)", path, perm, path)
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("CA: read %s: %w", path, err)
	}
	k, err := parseKeyPEM(b)
	if err != nil {
		return nil, fmt.Errorf("CA: key file %s: %w: restore it from backup", path, err)
	}
	return k, nil
}

func parseCertPEM(data []byte) (*x509.Certificate, error) {
	block, rest := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM data found")
	}
	if block.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("PEM block is %q, want CERTIFICATE", block.Type)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		// Silently ignoring the rest would hide a misplaced bundle or chain.
		return nil, errors.New("more than one PEM block: the file must hold exactly one certificate")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse certificate: %w", err)
	}
	return cert, nil
}

func exists(path string) (bool, error) {
	_, err := os.Stat(path)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	default:
		return false, fmt.Errorf("CA: check %s: %w", path, err)
	}
}
