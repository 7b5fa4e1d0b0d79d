package sds

import (
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
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/meshd/meshd/mesh"
)

// Leaf is an issued identity certificate and its key. Leaves returned by
// Authority.Leaf are shared by every caller and must be treated as read-only.
type Leaf struct {
	Identity mesh.Identity
	DNSNames []string      // DNS SANs, as requested (after de-duplication)
	CertPEM  []byte        // leaf only (no intermediates yet; root is the issuer)
	KeyPEM   PrivateKeyPEM // PKCS#8 PEM "PRIVATE KEY"
	Serial   *big.Int

	NotBefore, NotAfter time.Time
	// RenewAt = NotBefore + RenewFraction*(NotAfter-NotBefore): the moment
	// Authority.Leaf stops handing this leaf out.
	RenewAt time.Time
}

// LogValue renders a leaf in logs as what operators need to trace it (whose
// it is, which serial, when it expires), never the key.
func (l Leaf) LogValue() slog.Value {
	serial := ""
	if l.Serial != nil {
		serial = l.Serial.Text(16)
	}
	return slog.GroupValue(
		slog.String("spiffe_id", l.Identity.SPIFFEID()),
		slog.String("serial", serial),
		slog.Time("not_after", l.NotAfter),
		slog.Time("renew_at", l.RenewAt),
	)
}

// issueRequest describes one certificate to mint; IssueLeaf and the xDS server
// certificate differ only in these fields.
type issueRequest struct {
	uri  string
	cn   string
	dns  []string
	ips  []net.IP
	ekus []x509.ExtKeyUsage
}

// issued is what issue returns: the Leaf plus the parsed forms the TLS server
// needs, so it does not have to re-parse PEM.
type issued struct {
	leaf *Leaf
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// IssueLeaf always mints a fresh key and certificate for id, with dnsNames as
// DNS SANs (the first one, typically the service name, also becomes the CN).
// The certificate is verified against the root for both server and client
// authentication before it is returned, so a bad template fails here rather
// than in a proxy's handshake.
func (a *Authority) IssueLeaf(id mesh.Identity, dnsNames []string) (*Leaf, error) {
	if err := a.checkTrustDomain(id); err != nil {
		return nil, err
	}
	dns, err := normalizeDNSNames(dnsNames)
	if err != nil {
		return nil, fmt.Errorf("issue certificate for %s: %w", id.SPIFFEID(), err)
	}
	cn := id.ServiceAccount
	if len(dns) > 0 {
		cn = dns[0]
	}
	iss, err := a.issue(issueRequest{
		uri:  id.SPIFFEID(),
		cn:   cn,
		dns:  dns,
		ekus: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return nil, fmt.Errorf("issue certificate for %s: %w", id.SPIFFEID(), err)
	}
	iss.leaf.Identity = id
	return iss.leaf, nil
}

// issue mints, signs and verifies one leaf certificate.
func (a *Authority) issue(req issueRequest) (*issued, error) {
	uri, err := url.Parse(req.uri)
	if err != nil {
		return nil, fmt.Errorf("parse URI SAN %q: %w", req.uri, err)
	}
	now := a.opts.Clock()
	notBefore := now.Add(-clockSkew)
	notAfter := now.Add(a.opts.LeafTTL)
	// A leaf cannot outlive its issuer: peers would reject the chain once
	// the root expires, so say so honestly in NotAfter (and renew sooner).
	if notAfter.After(a.root.NotAfter) {
		notAfter = a.root.NotAfter
	}
	if !notAfter.After(now) {
		return nil, fmt.Errorf("root CA expired at %s: move %s away and restart meshd to create a new root", a.root.NotAfter.UTC().Format(time.RFC3339), a.caDir())
	}

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
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
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.root, key.Public(), a.rootKey)
	if err != nil {
		return nil, fmt.Errorf("sign certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse freshly signed certificate: %w", err)
	}
	// VerifyOptions.KeyUsages accepts a chain valid for ANY listed usage, so
	// each usage is checked on its own to prove the leaf serves all of them.
	for _, eku := range req.ekus {
		if _, err := cert.Verify(x509.VerifyOptions{
			Roots:       a.pool,
			CurrentTime: now,
			KeyUsages:   []x509.ExtKeyUsage{eku},
		}); err != nil {
			return nil, fmt.Errorf("verify freshly signed certificate against the root (usage %v): %w", eku, err)
		}
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode key: %w", err)
	}

	life := notAfter.Sub(notBefore)
	leaf := &Leaf{
		DNSNames:  req.dns,
		CertPEM:   pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:    pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		Serial:    serial,
		NotBefore: notBefore,
		NotAfter:  notAfter,
		RenewAt:   notBefore.Add(time.Duration(float64(life) * a.opts.RenewFraction)),
	}
	a.log.Debug("issued certificate",
		"uri", req.uri,
		"serial", serial.Text(16),
		"not_after", notAfter.UTC(),
		"capped_by_root", notAfter.Equal(a.root.NotAfter))
	return &issued{leaf: leaf, cert: cert, key: key}, nil
}

func (a *Authority) caDir() string { return filepath.Join(a.opts.DataDir, caDirName) }

// normalizeDNSNames copies names, drops duplicates (keeping first-seen order,
// since the first name becomes the CN) and rejects strings that are not DNS
// names, which peers would otherwise reject with a far less helpful message.
func normalizeDNSNames(names []string) ([]string, error) {
	out := make([]string, 0, len(names))
	for _, n := range names {
		if err := checkDNSName(n); err != nil {
			return nil, err
		}
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out, nil
}

func checkDNSName(n string) error {
	if n == "" || len(n) > 253 {
		return fmt.Errorf("DNS name %q must be 1 to 253 characters", n)
	}
	for _, r := range n {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune(".-_*", r)) {
			return fmt.Errorf("DNS name %q: character %q not allowed (use letters, digits, '.', '-', '_', or a leading '*.')", n, r)
		}
	}
	return nil
}

// flight is one issuance in progress, so that concurrent Leaf calls for the
// same identity wait for it instead of minting competing certificates.
type flight struct {
	dns  []string
	done chan struct{}
	leaf *Leaf
	err  error
}

// Leaf returns the cached leaf for id, issuing a new one if none is cached,
// if the clock has reached its RenewAt, or if dnsNames differ from the cached
// leaf's (order matters: the first name is the CN). Returning the same leaf
// until RenewAt keeps SDS pushes, and proxy churn, to one per renewal.
func (a *Authority) Leaf(id mesh.Identity, dnsNames []string) (*Leaf, error) {
	if err := a.checkTrustDomain(id); err != nil {
		return nil, err
	}
	dns, err := normalizeDNSNames(dnsNames)
	if err != nil {
		return nil, fmt.Errorf("certificate for %s: %w", id.SPIFFEID(), err)
	}
	key := id.SPIFFEID()

	a.mu.Lock()
	if l := a.leaves[key]; l != nil && a.opts.Clock().Before(l.RenewAt) && slices.Equal(l.DNSNames, dns) {
		a.mu.Unlock()
		return l, nil
	}
	if f := a.inflight[key]; f != nil && slices.Equal(f.dns, dns) {
		a.mu.Unlock()
		<-f.done
		return f.leaf, f.err
	}
	f := &flight{dns: dns, done: make(chan struct{})}
	a.inflight[key] = f
	a.mu.Unlock()

	// Sign outside the lock: issuance costs a key generation, a signature
	// and a verification, and other identities should not queue behind it.
	f.leaf, f.err = a.IssueLeaf(id, dns)

	a.mu.Lock()
	// Store only if this flight is still the current one: Forget may have
	// dropped the identity meanwhile, or a call with other DNS names may
	// have superseded it.
	if a.inflight[key] == f {
		delete(a.inflight, key)
		if f.err == nil {
			a.leaves[key] = f.leaf
		}
	}
	a.mu.Unlock()
	close(f.done)
	return f.leaf, f.err
}

// NextRenewal returns the earliest RenewAt among cached leaves, or the zero
// time if none is cached. The control plane arms one timer on it and then
// refreshes whatever Leaf reissues, rather than a timer per proxy.
func (a *Authority) NextRenewal() time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	var next time.Time
	for _, l := range a.leaves {
		if next.IsZero() || l.RenewAt.Before(next) {
			next = l.RenewAt
		}
	}
	return next
}

// Forget drops cached leaves (and abandons in-flight issuances) whose SPIFFE
// ID is not in keep, so identities that left the catalog neither hold memory
// nor pull NextRenewal forward.
func (a *Authority) Forget(keep map[string]bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	dropped := 0
	for k := range a.leaves {
		if !keep[k] {
			delete(a.leaves, k)
			dropped++
		}
	}
	for k := range a.inflight {
		if !keep[k] {
			delete(a.inflight, k)
		}
	}
	if dropped > 0 {
		a.log.Debug("forgot cached certificates", "dropped", dropped, "kept", len(a.leaves))
	}
}
