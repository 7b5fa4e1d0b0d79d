package sds

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"slices"
	"time"
)

// Leaf signing and the checks every issued leaf passes.
//
// Leaves are built and signed by x509.CreateCertificate and checked with the
// standard library only (issue 12: no hand-written DER, no signature
// arithmetic on the CA key). CreateCertificate itself checks that the signer
// matches the intermediate certificate and that the signature it made
// verifies. The result is then parsed back and checked as a peer would:
//
//   - its signature verifies against the intermediate certificate
//     (x509.Certificate.CheckSignatureFrom), the intermediate's against the
//     root having been verified once per generation (newGeneration);
//   - checkLeaf: issuer name and key identifier are the intermediate's, leaf,
//     intermediate and root are valid at the time of issue, the leaf does
//     not outlive its issuer, it is an end entity with exactly the requested
//     key usage, extended key usages, serial, public key, subject and SANs.
//
// A chain that constrains what it may sign (name constraints, extended key
// usages on a CA, unknown critical extensions — only operator-supplied CAs)
// is additionally verified with x509.Certificate.Verify once per requested
// usage, so Go, not meshd, decides whether the constraints allow the leaf.
//
// Replica-consistent leaves (Options.DeterministicLeaves) pass a nil rand:
// CreateCertificate hands it to the signer, and crypto/ecdsa signs with a
// nil reader deterministically (RFC 6979; RSA PKCS #1 v1.5 and Ed25519 are
// deterministic anyway). A deterministic io.Reader would not do: since
// Go 1.26 crypto/ecdsa ignores the reader it is given and always uses the
// system's randomness.

// chainConstrained reports whether a CA certificate restricts the leaves
// under it in ways checkLeaf does not evaluate.
func chainConstrained(certs ...*x509.Certificate) bool {
	for _, c := range certs {
		if hasNameConstraints(c) || !permitsLeafUsages(c) || len(c.UnhandledCriticalExtensions) > 0 {
			return true
		}
	}
	return false
}

func hasNameConstraints(c *x509.Certificate) bool {
	return len(c.PermittedDNSDomains) > 0 || len(c.ExcludedDNSDomains) > 0 ||
		len(c.PermittedIPRanges) > 0 || len(c.ExcludedIPRanges) > 0 ||
		len(c.PermittedEmailAddresses) > 0 || len(c.ExcludedEmailAddresses) > 0 ||
		len(c.PermittedURIDomains) > 0 || len(c.ExcludedURIDomains) > 0
}

// permitsLeafUsages reports whether a CA certificate leaves server and client
// authentication open to the leaves under it, as chain verification checks:
// no EKU extension, or one that lists both or "any".
func permitsLeafUsages(c *x509.Certificate) bool {
	if len(c.ExtKeyUsage) == 0 && len(c.UnknownExtKeyUsage) == 0 {
		return true
	}
	var server, client bool
	for _, u := range c.ExtKeyUsage {
		switch u {
		case x509.ExtKeyUsageAny:
			return true
		case x509.ExtKeyUsageServerAuth:
			server = true
		case x509.ExtKeyUsageClientAuth:
			client = true
		}
	}
	return server && client
}

// signLeaf signs tmpl for pub with g's intermediate (deterministically when
// rand is nil, see above), parses the result and checks it. It returns the
// DER and the parsed certificate.
func (g *generation) signLeaf(rand io.Reader, tmpl *x509.Certificate, pub crypto.PublicKey, now time.Time) ([]byte, *x509.Certificate, error) {
	der, err := x509.CreateCertificate(rand, tmpl, g.inter, pub, g.interKey)
	if err != nil {
		return nil, nil, fmt.Errorf("sign certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("parse freshly signed certificate: %w", err)
	}
	if err := g.checkIssued(cert, tmpl, pub, now); err != nil {
		return nil, nil, fmt.Errorf("verify freshly signed certificate against its chain: %w", err)
	}
	return der, cert, nil
}

// checkIssued verifies a parsed leaf against g's chain and the request.
func (g *generation) checkIssued(cert, tmpl *x509.Certificate, pub crypto.PublicKey, now time.Time) error {
	if g.constrained {
		// VerifyOptions.KeyUsages accepts a chain valid for ANY listed
		// usage, so each usage is checked on its own.
		for _, eku := range tmpl.ExtKeyUsage {
			if _, err := cert.Verify(x509.VerifyOptions{
				Roots:         g.roots,
				Intermediates: g.inters,
				CurrentTime:   now,
				KeyUsages:     []x509.ExtKeyUsage{eku},
			}); err != nil {
				return fmt.Errorf("usage %v: %w", eku, err)
			}
		}
	} else if err := cert.CheckSignatureFrom(g.inter); err != nil {
		return fmt.Errorf("signature: %w", err)
	}
	return checkLeaf(cert, tmpl, pub, g, now)
}

// checkLeaf checks a freshly signed leaf (whose signature by the
// intermediate has been verified) for everything chain verification would,
// given a chain already verified up to the root: it names the intermediate
// as issuer by subject and key identifier, every certificate of the chain is
// valid at now, it is an end-entity certificate for the requested usages,
// and it carries exactly the subject, key, serial, validity and names that
// were requested.
func checkLeaf(cert, tmpl *x509.Certificate, pub crypto.PublicKey, g *generation, now time.Time) error {
	if !bytes.Equal(cert.RawIssuer, g.inter.RawSubject) {
		return errors.New("issuer is not the intermediate's subject")
	}
	if len(g.inter.SubjectKeyId) > 0 && !bytes.Equal(cert.AuthorityKeyId, g.inter.SubjectKeyId) {
		return errors.New("authority key identifier is not the intermediate's key identifier")
	}
	for _, c := range []*x509.Certificate{cert, g.inter, g.root} {
		if now.Before(c.NotBefore) || now.After(c.NotAfter) {
			return fmt.Errorf("certificate %q is not valid at %s (valid %s to %s)", c.Subject.CommonName,
				now.UTC().Format(time.RFC3339), c.NotBefore.UTC().Format(time.RFC3339), c.NotAfter.UTC().Format(time.RFC3339))
		}
	}
	if cert.NotAfter.After(g.inter.NotAfter) {
		return errors.New("leaf outlives its issuer")
	}
	if !cert.NotBefore.Equal(tmpl.NotBefore.Truncate(time.Second)) || !cert.NotAfter.Equal(tmpl.NotAfter.Truncate(time.Second)) {
		return errors.New("validity differs from the request")
	}
	if cert.IsCA || !cert.BasicConstraintsValid {
		return errors.New("not an end-entity certificate")
	}
	if len(cert.UnhandledCriticalExtensions) > 0 {
		return fmt.Errorf("unhandled critical extensions %v", cert.UnhandledCriticalExtensions)
	}
	if cert.KeyUsage != tmpl.KeyUsage {
		return fmt.Errorf("key usage %v, want %v", cert.KeyUsage, tmpl.KeyUsage)
	}
	if !slices.Equal(cert.ExtKeyUsage, tmpl.ExtKeyUsage) || len(cert.UnknownExtKeyUsage) > 0 || len(cert.ExtKeyUsage) == 0 {
		return fmt.Errorf("extended key usages %v, want %v", cert.ExtKeyUsage, tmpl.ExtKeyUsage)
	}
	if cert.SerialNumber.Cmp(tmpl.SerialNumber) != 0 {
		return errors.New("serial differs from the request")
	}
	if !equalPublicKey(cert.PublicKey, pub) {
		return errors.New("public key differs from the request")
	}
	if cert.Subject.CommonName != tmpl.Subject.CommonName || !slices.Equal(cert.Subject.Organization, tmpl.Subject.Organization) ||
		!slices.Equal(cert.Subject.OrganizationalUnit, tmpl.Subject.OrganizationalUnit) {
		return errors.New("subject differs from the request")
	}
	if !slices.Equal(cert.DNSNames, tmpl.DNSNames) ||
		!slices.EqualFunc(cert.IPAddresses, tmpl.IPAddresses, func(a, b net.IP) bool { return a.Equal(b) }) ||
		!slices.EqualFunc(cert.URIs, tmpl.URIs, func(a, b *url.URL) bool { return a.String() == b.String() }) ||
		len(cert.EmailAddresses) > 0 {
		return errors.New("subject alternative names differ from the request")
	}
	return nil
}

func equalPublicKey(a, b crypto.PublicKey) bool {
	ak, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ak.Equal(b)
}
