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
	"log/slog"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	"github.com/meshd/meshd/mesh"
)

// File names inside Options.DataDir/ca.
const (
	caDirName    = "ca"
	rootCertFile = "root-cert.pem"
	rootKeyFile  = "root-key.pem"
)

const (
	defaultOrganization  = "meshd"
	defaultLeafTTL       = 24 * time.Hour
	defaultRenewFraction = 0.5

	// rootValidityYears is long because rotating the root means re-trusting
	// every workload; meshd has no root rotation yet.
	rootValidityYears = 10

	// clockSkew backdates NotBefore so that a peer whose clock is slightly
	// behind ours does not reject a certificate we have just minted.
	clockSkew = time.Minute

	// rootExpiryWarning is how early LoadOrCreate starts warning that the
	// root is about to expire and leaves are being shortened to fit it.
	rootExpiryWarning = 30 * 24 * time.Hour
)

// Options configures an Authority.
type Options struct {
	DataDir       string           // CA files live in DataDir/ca
	TrustDomain   string           // e.g. "cluster.local"
	Organization  string           // leaf Subject O; default "meshd"
	LeafTTL       time.Duration    // default 24h
	RenewFraction float64          // reissue when this fraction of life has passed; default 0.5
	Clock         func() time.Time // default time.Now; tests inject
	Logger        *slog.Logger     // default slog.Default()
	// NoCreate makes a missing CA an error instead of creating one: tools
	// other than meshd (meshctl) must never mint a second, unrelated root.
	NoCreate bool
}

// withDefaults validates o and fills in defaults.
func (o Options) withDefaults() (Options, error) {
	if o.DataDir == "" {
		return o, errors.New("CA options: DataDir is empty: set the directory where meshd keeps its state")
	}
	if err := mesh.ValidTrustDomain(o.TrustDomain); err != nil {
		return o, fmt.Errorf("CA options: %w", err)
	}
	if o.Organization == "" {
		o.Organization = defaultOrganization
	}
	switch {
	case o.LeafTTL == 0:
		o.LeafTTL = defaultLeafTTL
	case o.LeafTTL < 0:
		return o, fmt.Errorf("CA options: LeafTTL %s is negative: use a positive duration such as 24h", o.LeafTTL)
	}
	switch {
	case o.RenewFraction == 0:
		o.RenewFraction = defaultRenewFraction
	case !(o.RenewFraction > 0 && o.RenewFraction < 1):
		return o, fmt.Errorf("CA options: RenewFraction %v is out of range: use a value between 0 and 1 (exclusive), e.g. 0.5", o.RenewFraction)
	}
	if o.Clock == nil {
		o.Clock = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o, nil
}

// Authority is meshd's certificate authority: a root loaded from (or created
// in) DataDir/ca, and a cache of the leaves issued from it. It is safe for
// concurrent use.
//
// The root's private key lives only in unexported pointer fields, which fmt
// prints as addresses, and Authority's String/GoString/LogValue show just the
// trust domain and fingerprint.
type Authority struct {
	opts        Options
	log         *slog.Logger
	root        *x509.Certificate
	rootKey     crypto.Signer
	rootPEM     []byte
	pool        *x509.CertPool
	fingerprint string

	mu       sync.Mutex
	leaves   map[string]*Leaf   // by SPIFFE ID
	inflight map[string]*flight // issuances in progress, by SPIFFE ID
}

// LoadOrCreate loads DataDir/ca/root-cert.pem and root-key.pem, or on first
// start creates them. A loaded root is checked (key matches certificate, it is
// a CA, it is currently valid, it belongs to the trust domain) so that a
// broken or swapped root fails at startup rather than at the first handshake.
func LoadOrCreate(opts Options) (*Authority, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	a := &Authority{
		opts:     opts,
		log:      opts.Logger,
		leaves:   make(map[string]*Leaf),
		inflight: make(map[string]*flight),
	}

	dir := a.caDir()
	certPath := filepath.Join(dir, rootCertFile)
	keyPath := filepath.Join(dir, rootKeyFile)
	certExists, err := exists(certPath)
	if err != nil {
		return nil, err
	}
	keyExists, err := exists(keyPath)
	if err != nil {
		return nil, err
	}

	created := false
	switch {
	case certExists && keyExists:
		if err := a.loadRoot(certPath, keyPath); err != nil {
			return nil, err
		}
	case !certExists && !keyExists && opts.NoCreate:
		return nil, fmt.Errorf("no CA in %s: start meshd once with this data directory to create it, or point --data-dir at meshd's", dir)
	case !certExists && !keyExists:
		if err := a.createRoot(dir, certPath, keyPath); err != nil {
			return nil, err
		}
		created = true
	case certExists:
		return nil, fmt.Errorf("root CA: %s exists but %s is missing: restore the key from backup, or move %s away to create a new root (every workload will then need new certificates)", certPath, keyPath, dir)
	default:
		// The key is written before the certificate, so this is most
		// likely an interrupted first start.
		return nil, fmt.Errorf("root CA: %s exists but %s is missing (an interrupted first start?): restore the certificate from backup, or move %s away to create a new root", keyPath, certPath, dir)
	}

	a.pool = x509.NewCertPool()
	a.pool.AddCert(a.root)
	sum := sha256.Sum256(a.root.Raw)
	a.fingerprint = hex.EncodeToString(sum[:])

	msg := "loaded root CA"
	if created {
		msg = "created root CA"
	}
	a.log.Info(msg,
		"dir", dir,
		"trust_domain", opts.TrustDomain,
		"sha256_fingerprint", a.fingerprint,
		"not_after", a.root.NotAfter.UTC())
	if left := a.root.NotAfter.Sub(opts.Clock()); left < rootExpiryWarning {
		a.log.Warn("root CA expires soon; leaf certificates are shortened to end with it",
			"not_after", a.root.NotAfter.UTC(), "remaining", left.Round(time.Minute))
	}
	return a, nil
}

func exists(path string) (bool, error) {
	_, err := os.Stat(path)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	default:
		return false, fmt.Errorf("root CA: check %s: %w", path, err)
	}
}

// createRoot mints a new self-signed root and writes it to disk.
func (a *Authority) createRoot(dir, certPath, keyPath string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("root CA: create directory %s: %w (check that DataDir is writable)", dir, err)
	}
	// MkdirAll is subject to the umask and leaves existing directories
	// alone; the directory holds the root key, so make it private.
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("root CA: chmod 700 %s: %w", dir, err)
	}

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("root CA: generate key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return err
	}
	td := a.opts.TrustDomain
	now := a.opts.Clock()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			Organization: []string{a.opts.Organization},
			CommonName:   "meshd root CA " + td,
		},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.AddDate(rootValidityYears, 0, 0),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		URIs:                  []*url.URL{{Scheme: "spiffe", Host: td}},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return fmt.Errorf("root CA: sign root certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return fmt.Errorf("root CA: parse freshly signed root certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("root CA: encode key: %w", err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})

	// Key first: if we die in between, the next start finds a key without
	// a certificate and says so, rather than a certificate whose key is
	// lost forever.
	if err := writeFileAtomic(keyPath, keyPEM, 0o600); err != nil {
		return fmt.Errorf("root CA: %w", err)
	}
	if err := writeFileAtomic(certPath, certPEM, 0o644); err != nil {
		return fmt.Errorf("root CA: %w", err)
	}
	a.root, a.rootKey, a.rootPEM = cert, key, certPEM
	return nil
}

// loadRoot reads and checks an existing root.
func (a *Authority) loadRoot(certPath, keyPath string) error {
	// Refuse a world- or group-readable key before reading it: the key
	// signs every identity in the mesh.
	if runtime.GOOS != "windows" {
		info, err := os.Stat(keyPath)
		if err != nil {
			return fmt.Errorf("root CA: stat %s: %w", keyPath, err)
		}
		if perm := info.Mode().Perm(); perm&0o077 != 0 {
			return fmt.Errorf("root CA: key file %s has mode %04o and is readable by group or others: run `chmod 600 %s` and restart (consider the key compromised if others had access)", keyPath, perm, keyPath)
		}
	}

	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return fmt.Errorf("root CA: read %s: %w", certPath, err)
	}
	cert, err := parseCertPEM(certPEM)
	if err != nil {
		return fmt.Errorf("root CA: certificate file %s: %w: restore it from backup, or move %s away to create a new root", certPath, err, filepath.Dir(certPath))
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return fmt.Errorf("root CA: read %s: %w", keyPath, err)
	}
	key, err := parseKeyPEM(keyPEM)
	if err != nil {
		return fmt.Errorf("root CA: key file %s: %w: restore it from backup", keyPath, err)
	}

	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(cert.PublicKey) {
		return fmt.Errorf("root CA: key in %s does not match the certificate in %s: restore the matching pair from backup", keyPath, certPath)
	}
	if !cert.IsCA || !cert.BasicConstraintsValid || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return fmt.Errorf("root CA: certificate in %s is not a CA certificate (needs basicConstraints CA:TRUE and keyUsage keyCertSign): point DataDir at a CA, or move %s away to create a new root", certPath, filepath.Dir(certPath))
	}
	now := a.opts.Clock()
	if now.After(cert.NotAfter) {
		return fmt.Errorf("root CA: certificate in %s expired at %s: move %s away to create a new root (every workload will then need new certificates)", certPath, cert.NotAfter.UTC().Format(time.RFC3339), filepath.Dir(certPath))
	}
	if now.Before(cert.NotBefore) {
		return fmt.Errorf("root CA: certificate in %s is not valid until %s: check this machine's clock", certPath, cert.NotBefore.UTC().Format(time.RFC3339))
	}
	// A root minted for another trust domain would sign leaves that peers
	// configured for that domain accept, silently merging two meshes.
	for _, u := range cert.URIs {
		if u.Scheme == "spiffe" && u.Host != a.opts.TrustDomain {
			return fmt.Errorf("root CA: certificate in %s belongs to trust domain %q, not %q: set the trust domain back to %q, or move %s away to create a new root", certPath, u.Host, a.opts.TrustDomain, u.Host, filepath.Dir(certPath))
		}
	}

	// Keep a canonical single-certificate PEM rather than the file's bytes,
	// which may carry comments or extra blocks.
	a.root, a.rootKey = cert, key
	a.rootPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
	return nil
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
		// Only a single root is supported; silently ignoring the rest
		// would hide a misplaced bundle or chain.
		return nil, errors.New("more than one PEM block: the file must hold exactly the root certificate")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse certificate: %w", err)
	}
	return cert, nil
}

// parseKeyPEM accepts PKCS#8 (what meshd writes) and SEC 1 EC keys (what
// `openssl ecparam -genkey` writes), so an operator can bring a root. Errors
// never include the key bytes.
func parseKeyPEM(data []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM data found")
	}
	var (
		key any
		err error
	)
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("PEM block is %q, want PRIVATE KEY (PKCS#8) or EC PRIVATE KEY", block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("parse private key: %w", err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("private key of type %T cannot sign", key)
	}
	return signer, nil
}

// serialLimit is 2^128: serials are 128 random bits, well above the 64 bits
// CAs are required to use and within the 20 octets RFC 5280 allows.
var serialLimit = new(big.Int).Lsh(big.NewInt(1), 128)

func randomSerial() (*big.Int, error) {
	for {
		s, err := rand.Int(rand.Reader, serialLimit)
		if err != nil {
			return nil, fmt.Errorf("generate serial number: %w", err)
		}
		if s.Sign() > 0 { // RFC 5280 requires a positive serial
			return s, nil
		}
	}
}

// RootCertPEM returns the root certificate as PEM: the trust bundle proxies
// need. The caller gets its own copy.
func (a *Authority) RootCertPEM() []byte { return bytes.Clone(a.rootPEM) }

// RootPool returns a pool holding the root. It is a fresh clone so that a
// caller adding certificates cannot widen what the CA itself trusts.
func (a *Authority) RootPool() *x509.CertPool { return a.pool.Clone() }

// RootCert returns the parsed root certificate. Callers must not modify it.
func (a *Authority) RootCert() *x509.Certificate { return a.root }

// Fingerprint is the hex SHA-256 of the root certificate's DER, as logged at
// startup, so operators can compare roots across machines.
func (a *Authority) Fingerprint() string { return a.fingerprint }

// TrustDomain is the trust domain this CA issues for.
func (a *Authority) TrustDomain() string { return a.opts.TrustDomain }

// String identifies the CA without any key material.
func (a *Authority) String() string {
	return "sds.Authority{trust_domain=" + a.opts.TrustDomain + " root_sha256=" + a.fingerprint + "}"
}

// GoString keeps %#v from dumping the struct.
func (a *Authority) GoString() string { return a.String() }

// LogValue implements slog.LogValuer.
func (a *Authority) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("trust_domain", a.opts.TrustDomain),
		slog.String("root_sha256", a.fingerprint),
	)
}

// checkTrustDomain reports whether id may be issued by this CA.
func (a *Authority) checkTrustDomain(id mesh.Identity) error {
	if id.TrustDomain != a.opts.TrustDomain {
		return fmt.Errorf("identity %s is in trust domain %q but this CA issues for %q: fix the identity's trust domain (or run a CA for that domain)", id.SPIFFEID(), id.TrustDomain, a.opts.TrustDomain)
	}
	// Round-tripping rejects empty parts and '/' inside names, which would
	// otherwise produce a SPIFFE ID that parses as a different identity.
	back, err := mesh.ParseSPIFFEID(id.SPIFFEID())
	if err != nil || back != id {
		return fmt.Errorf("identity %q is malformed: namespace and service account must be non-empty and contain no '/'", id.SPIFFEID())
	}
	return nil
}
