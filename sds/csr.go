package sds

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"

	"github.com/meshd/meshd/mesh"
)

// maxCSRBytes bounds what SignCSR parses from a remote caller.
const maxCSRBytes = 16 << 10

// SignCSR signs a certificate signing request from the node agent, whose key
// never leaves the workload. The caller has already established that the
// requester may hold id (its token or current certificate grants it); SignCSR
// checks the request itself and refuses anything but exactly what meshd
// would issue on its own:
//   - a valid self-signature (proof the requester holds the key),
//   - an ECDSA P-256 key,
//   - exactly one URI SAN, equal to id's SPIFFE ID,
//   - DNS SANs only from allowedDNS, no IP or e-mail SANs,
//   - no extensions beyond the SANs (meshd decides key usage, EKU and
//     basic constraints itself, so a CSR cannot ask for a CA).
//
// The certificate records origin, the credential the caller authenticated
// with (CertOrigin): renewals with it inherit it, so revoking the bootstrap
// token a chain of renewals started from ends the whole chain.
//
// The returned leaf carries the chain (leaf + intermediate) and no key.
func (a *Authority) SignCSR(csrPEM []byte, id mesh.Identity, allowedDNS []string, origin CertOrigin) (*Leaf, error) {
	if err := a.checkTrustDomain(id); err != nil {
		return nil, err
	}
	if len(csrPEM) > maxCSRBytes {
		return nil, fmt.Errorf("CSR is %d bytes; at most %d are accepted", len(csrPEM), maxCSRBytes)
	}
	block, _ := pem.Decode(csrPEM)
	if block == nil || block.Type != "CERTIFICATE REQUEST" {
		return nil, errors.New("CSR: want one PEM CERTIFICATE REQUEST block")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("CSR: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("CSR signature does not verify: %w", err)
	}
	pub, ok := csr.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		return nil, fmt.Errorf("CSR key is %T: only ECDSA P-256 keys are accepted", csr.PublicKey)
	}
	want := id.SPIFFEID()
	if len(csr.URIs) != 1 || csr.URIs[0].String() != want {
		return nil, fmt.Errorf("CSR asks for URI SANs %v, but the credential grants only %s", csr.URIs, want)
	}
	if len(csr.IPAddresses) > 0 || len(csr.EmailAddresses) > 0 {
		return nil, errors.New("CSR asks for IP or e-mail SANs: workload certificates carry only the SPIFFE ID and the service's DNS names")
	}
	for _, d := range csr.DNSNames {
		if !slices.Contains(allowedDNS, d) {
			return nil, fmt.Errorf("CSR asks for DNS name %q; the service's names are %v", d, allowedDNS)
		}
	}
	sanOID := []int{2, 5, 29, 17}
	for _, ext := range csr.Extensions {
		if !ext.Id.Equal(sanOID) {
			return nil, fmt.Errorf("CSR carries extension %v: only subjectAltName is accepted (meshd sets key usage and constraints itself)", ext.Id)
		}
	}
	dns, err := normalizeDNSNames(csr.DNSNames)
	if err != nil {
		return nil, fmt.Errorf("CSR: %w", err)
	}
	cn := id.ServiceAccount
	if len(dns) > 0 {
		cn = dns[0]
	}
	g, now := a.signingNow()
	iss, err := a.issue(g, now, issueRequest{
		uri:  want,
		cn:   cn,
		ou:   origin.ou(),
		dns:  dns,
		ekus: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		pub:  pub,
	})
	if err != nil {
		return nil, fmt.Errorf("sign CSR for %s: %w", want, err)
	}
	iss.leaf.Identity = id
	a.log.Info("signed a node agent's CSR", "leaf", iss.leaf)
	return iss.leaf, nil
}
