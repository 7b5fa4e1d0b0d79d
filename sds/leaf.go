package sds

import (
	"context"
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
	DNSNames []string // DNS SANs, as requested (after de-duplication)
	// CertPEM is the chain a peer needs: the leaf, then the intermediate
	// that signed it (never the root, which peers take from the bundle).
	CertPEM []byte
	KeyPEM  PrivateKeyPEM // PKCS#8 PEM "PRIVATE KEY"
	Serial  *big.Int

	NotBefore, NotAfter time.Time
	// RenewAt = NotBefore + RenewFraction*(NotAfter-NotBefore): the moment
	// Authority.Leaf stops handing this leaf out.
	RenewAt time.Time

	// gen is the CA generation that signed the leaf; a leaf from another
	// generation than the signing one is reissued at once (rotation).
	gen string
}

// Generation names the CA generation (root + intermediate) that signed l.
func (l *Leaf) Generation() string { return l.gen }

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
	uri string
	cn  string
	// ou is the subject's organizational unit: the credential marker of a
	// certificate that may authenticate to meshd (CertOrigin), empty for
	// the workload leaves meshd serves over SDS.
	ou   string
	dns  []string
	ips  []net.IP
	ekus []x509.ExtKeyUsage
	// pub, when set, is the subject's own public key (a CSR from the node
	// agent): no key is generated and the Leaf has no KeyPEM.
	pub *ecdsa.PublicKey
}

// issued is what issue returns: the Leaf plus the parsed forms the TLS server
// needs, so it does not have to re-parse PEM.
type issued struct {
	leaf  *Leaf
	cert  *x509.Certificate
	chain [][]byte // DER: leaf, intermediate
	key   *ecdsa.PrivateKey
}

// IssueLeaf always mints a fresh key and certificate for id, with dnsNames as
// DNS SANs (the first one, typically the service name, also becomes the CN).
// It is signed by the signing generation's intermediate, and verified against
// that chain for both server and client authentication before it is returned, so a bad template fails here rather
// than in a proxy's handshake.
//
// The leaf is a workload identity for the data plane (what Leaf caches and
// meshd serves over SDS): it does not authenticate to meshd. IssueCredential
// mints one that does.
func (a *Authority) IssueLeaf(id mesh.Identity, dnsNames []string) (*Leaf, error) {
	return a.issueLeaf(id, dnsNames, "")
}

// IssueCredential is IssueLeaf for a certificate that also authenticates
// to meshd as id (xDS, CSR renewals): one an operator issues by hand
// (meshctl certs issue), marked as such (CertOrigin).
func (a *Authority) IssueCredential(id mesh.Identity, dnsNames []string) (*Leaf, error) {
	return a.issueLeaf(id, dnsNames, CertOrigin{}.ou())
}

func (a *Authority) issueLeaf(id mesh.Identity, dnsNames []string, ou string) (*Leaf, error) {
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
	g, now := a.signingNow()
	iss, err := a.issue(g, now, issueRequest{
		uri:  id.SPIFFEID(),
		cn:   cn,
		ou:   ou,
		dns:  dns,
		ekus: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return nil, fmt.Errorf("issue certificate for %s: %w", id.SPIFFEID(), err)
	}
	iss.leaf.Identity = id
	return iss.leaf, nil
}

// issue mints, signs with g's intermediate and verifies one leaf certificate
// valid from now (read with g: signingNow, serverGen).
func (a *Authority) issue(g *generation, now time.Time, req issueRequest) (*issued, error) {
	uri, err := url.Parse(req.uri)
	if err != nil {
		return nil, fmt.Errorf("parse URI SAN %q: %w", req.uri, err)
	}
	// In deterministic mode the validity window starts at the epoch, not
	// now, so that every replica computes the same one.
	// Only workload leaves: a credential (ou) derived like them would share
	// its key with the SDS leaf of its identity, whose holders could then
	// present it to meshd.
	deterministic := a.opts.DeterministicLeaves && req.pub == nil && req.ou == ""
	start := now
	var epochEnd time.Time
	if deterministic {
		var e time.Duration
		start, e = a.epoch(now)
		epochEnd = start.Add(e)
	}
	// Backdate by clockSkew, but never by more than a tenth of the life, so
	// the very short lifetimes of tests and rotation drills still renew
	// after issuance rather than before it.
	// Certificates hold whole seconds; the Leaf's times (metrics, rotation
	// bounds) are the certificate's.
	notBefore := start.Add(-min(clockSkew, a.opts.LeafTTL/10)).Truncate(time.Second)
	notAfter := start.Add(a.opts.LeafTTL).Truncate(time.Second)
	// A leaf cannot outlive its issuer: peers would reject the chain once
	// the intermediate (which never outlives the root) expires, so say so
	// honestly in NotAfter (and renew sooner).
	capped := false
	if notAfter.After(g.inter.NotAfter) {
		notAfter, capped = g.inter.NotAfter, true
	}
	if !notAfter.After(now) {
		return nil, fmt.Errorf("signing intermediate CA expired at %s: rotate it (meshctl ca rotate-intermediate) or supply a new one", g.inter.NotAfter.UTC().Format(time.RFC3339))
	}

	var key *ecdsa.PrivateKey
	var serial *big.Int
	pub := req.pub
	signRand := rand.Reader
	switch {
	case deterministic:
		if key, serial, err = deriveLeafKey(g, req.uri, req.dns, start); err != nil {
			return nil, err
		}
		pub = &key.PublicKey
		signRand = nil // RFC 6979: the same signature on every replica
	case pub == nil:
		if key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			return nil, fmt.Errorf("generate key: %w", err)
		}
		pub = &key.PublicKey
	}
	if serial == nil {
		if serial, err = randomSerial(); err != nil {
			return nil, err
		}
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			Organization:       []string{a.opts.Organization},
			OrganizationalUnit: ouList(req.ou),
			CommonName:         req.cn,
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
	der, cert, err := g.signLeaf(signRand, tmpl, pub, now)
	if err != nil {
		return nil, err
	}
	var keyPEM PrivateKeyPEM
	if key != nil {
		keyDER, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return nil, fmt.Errorf("encode key: %w", err)
		}
		keyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	}

	life := notAfter.Sub(notBefore)
	chainPEM := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), g.interPEM...)
	leaf := &Leaf{
		DNSNames:  req.dns,
		CertPEM:   chainPEM,
		KeyPEM:    keyPEM,
		Serial:    serial,
		NotBefore: notBefore,
		NotAfter:  notAfter,
		RenewAt:   notBefore.Add(time.Duration(float64(life) * a.opts.RenewFraction)),
		gen:       g.id,
	}
	if deterministic {
		// Renew exactly at the next epoch, when every replica does.
		leaf.RenewAt = epochEnd
		if notAfter.Before(epochEnd) {
			leaf.RenewAt = notAfter
		}
	}
	a.mu.Lock()
	if notAfter.After(a.leafNotAfter[g.id]) {
		a.leafNotAfter[g.id] = notAfter
	}
	a.mu.Unlock()
	// Guarded: formatting the serial costs more than the check when debug
	// logging is off, at thousands of leaves per second in a rotation.
	if a.log.Enabled(context.Background(), slog.LevelDebug) {
		a.log.Debug("issued certificate",
			"uri", req.uri,
			"serial", serial.Text(16),
			"generation", g.id,
			"not_after", notAfter.UTC(),
			"capped_by_issuer", capped)
	}
	return &issued{leaf: leaf, cert: cert, chain: [][]byte{der, g.inter.Raw}, key: key}, nil
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
	if l := a.leaves[key]; l != nil && a.opts.Clock().Before(l.RenewAt) && slices.Equal(l.DNSNames, dns) && l.gen == a.state.Signing {
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

// Identity is Leaf as PEM certificate chain and key: what the publisher
// puts in a proxy's SDS secret (the Authority is the publisher's Secrets).
func (a *Authority) Identity(id mesh.Identity, dnsNames []string) (certPEM, keyPEM []byte, err error) {
	l, err := a.Leaf(id, dnsNames)
	if err != nil {
		return nil, nil, err
	}
	return l.CertPEM, l.KeyPEM, nil
}

// NextRenewal returns the earliest RenewAt among cached leaves, or the zero
// time if none is cached; a leaf signed by a generation that no longer signs
// (a rotation switched) is due now. The control plane arms one timer on it
// and then refreshes whatever Leaf reissues, rather than a timer per proxy.
func (a *Authority) NextRenewal() time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	var next time.Time
	for _, l := range a.leaves {
		at := l.RenewAt
		if l.gen != a.state.Signing {
			at = a.opts.Clock()
		}
		if next.IsZero() || at.Before(next) {
			next = at
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
