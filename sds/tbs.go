package sds

import (
	"crypto/ecdsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/bits"
	"time"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// The DER of a leaf's TBS certificate, written directly with cryptobyte.
//
// x509.CreateCertificate builds the same bytes through encoding/asn1's
// reflection, which costs about a quarter of an issuance. buildTBS covers
// exactly the template fields issue sets (serial, subject O and CN,
// validity, URI/DNS/IP SANs, key usage, extended key usages, basic
// constraints of an end entity) and writes them in CreateCertificate's
// order and encodings; TestBuildTBSMatchesCreateCertificate proves the
// output byte-identical to Go's for the shapes meshd issues, and checkLeaf
// re-reads every field from the parsed certificate.

var (
	// ecdsaWithSHA256 is the AlgorithmIdentifier of ecdsa-with-SHA256
	// (1.2.840.10045.4.3.2), without parameters as RFC 5758 requires.
	ecdsaWithSHA256 = []byte{0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02}

	oidPublicKeyECDSA   = asn1.ObjectIdentifier{1, 2, 840, 10045, 2, 1}
	oidNamedCurveP256   = asn1.ObjectIdentifier{1, 2, 840, 10045, 3, 1, 7}
	oidExtKeyUsage      = asn1.ObjectIdentifier{2, 5, 29, 15}
	oidExtExtKeyUsage   = asn1.ObjectIdentifier{2, 5, 29, 37}
	oidExtBasicConstr   = asn1.ObjectIdentifier{2, 5, 29, 19}
	oidExtAuthorityKey  = asn1.ObjectIdentifier{2, 5, 29, 35}
	oidExtSubjectAltNam = asn1.ObjectIdentifier{2, 5, 29, 17}

	extKeyUsageOIDs = map[x509.ExtKeyUsage]asn1.ObjectIdentifier{
		x509.ExtKeyUsageServerAuth: {1, 3, 6, 1, 5, 5, 7, 3, 1},
		x509.ExtKeyUsageClientAuth: {1, 3, 6, 1, 5, 5, 7, 3, 2},
	}
)

// emptySubject is the DER of an empty Name (an empty SEQUENCE).
var emptySubject = []byte{0x30, 0x00}

// subjectDER returns the DER of the leaf subject {O, CN}, encoded by
// encoding/asn1 as CreateCertificate does, and cached per name because the
// same identities are reissued again and again.
func (s *leafSigner) subjectDER(name pkix.Name) ([]byte, error) {
	key := fmt.Sprintf("%q/%q", name.Organization, name.CommonName)
	if v, ok := s.subjects.Load(key); ok {
		return v.([]byte), nil
	}
	der, err := asn1.Marshal(name.ToRDNSequence())
	if err != nil {
		return nil, fmt.Errorf("encode subject: %w", err)
	}
	s.subjects.Store(key, der)
	return der, nil
}

// buildTBS returns the DER of the TBS certificate CreateCertificate would
// build for tmpl, issued by the signer's intermediate, for pub.
func (s *leafSigner) buildTBS(tmpl *x509.Certificate, pub *ecdsa.PublicKey) ([]byte, error) {
	if tmpl.IsCA || !tmpl.BasicConstraintsValid || tmpl.SerialNumber == nil || tmpl.SerialNumber.Sign() < 0 {
		return nil, errors.New("internal error: leaf template is not an end-entity template with a positive serial")
	}
	if len(tmpl.EmailAddresses) > 0 || len(tmpl.UnknownExtKeyUsage) > 0 || len(tmpl.ExtraExtensions) > 0 ||
		len(tmpl.SubjectKeyId) > 0 || len(tmpl.RawSubject) > 0 || len(tmpl.OCSPServer) > 0 ||
		len(tmpl.IssuingCertificateURL) > 0 || len(tmpl.CRLDistributionPoints) > 0 || len(tmpl.Policies) > 0 ||
		len(tmpl.PolicyIdentifiers) > 0 {
		return nil, errors.New("internal error: leaf template uses fields the fast encoder does not write")
	}
	point, err := pub.Bytes()
	if err != nil {
		return nil, fmt.Errorf("encode public key: %w", err)
	}
	subject, err := s.subjectDER(tmpl.Subject)
	if err != nil {
		return nil, err
	}
	for _, n := range tmpl.DNSNames {
		if !isIA5(n) {
			return nil, fmt.Errorf("DNS name %q is not ASCII", n)
		}
	}
	uris := make([]string, len(tmpl.URIs))
	for i, u := range tmpl.URIs {
		if uris[i] = u.String(); !isIA5(uris[i]) {
			return nil, fmt.Errorf("URI %q is not ASCII", uris[i])
		}
	}
	ekus := make([]asn1.ObjectIdentifier, len(tmpl.ExtKeyUsage))
	for i, u := range tmpl.ExtKeyUsage {
		oid, ok := extKeyUsageOIDs[u]
		if !ok {
			return nil, fmt.Errorf("internal error: extended key usage %v not supported by the fast encoder", u)
		}
		ekus[i] = oid
	}
	hasSAN := len(tmpl.DNSNames)+len(tmpl.IPAddresses)+len(uris) > 0

	// One buffer for the whole TBS (about 600 bytes) rather than regrowth.
	b := cryptobyte.NewBuilder(make([]byte, 0, 1024))
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
			b.AddASN1Int64(2) // v3
		})
		b.AddASN1BigInt(tmpl.SerialNumber)
		b.AddBytes(ecdsaWithSHA256)
		b.AddBytes(s.issuer)
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			addTime(b, tmpl.NotBefore)
			addTime(b, tmpl.NotAfter)
		})
		b.AddBytes(subject)
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				b.AddASN1ObjectIdentifier(oidPublicKeyECDSA)
				b.AddASN1ObjectIdentifier(oidNamedCurveP256)
			})
			b.AddASN1BitString(point)
		})
		b.AddASN1(cbasn1.Tag(3).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				// CreateCertificate's order: key usage, extended key usage,
				// basic constraints, (subject key id), authority key id, SANs.
				if tmpl.KeyUsage != 0 {
					addExtension(b, oidExtKeyUsage, true, func(b *cryptobyte.Builder) { addKeyUsage(b, tmpl.KeyUsage) })
				}
				if len(ekus) > 0 {
					addExtension(b, oidExtExtKeyUsage, false, func(b *cryptobyte.Builder) {
						b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
							for _, oid := range ekus {
								b.AddASN1ObjectIdentifier(oid)
							}
						})
					})
				}
				addExtension(b, oidExtBasicConstr, true, func(b *cryptobyte.Builder) {
					b.AddASN1(cbasn1.SEQUENCE, func(*cryptobyte.Builder) {}) // CA:FALSE, no path length
				})
				if len(s.authorityKeyID) > 0 {
					addExtension(b, oidExtAuthorityKey, false, func(b *cryptobyte.Builder) {
						b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
							b.AddASN1(cbasn1.Tag(0).ContextSpecific(), func(b *cryptobyte.Builder) { b.AddBytes(s.authorityKeyID) })
						})
					})
				}
				if hasSAN {
					// RFC 5280 4.2.1.6: critical when the subject is empty.
					critical := string(subject) == string(emptySubject)
					addExtension(b, oidExtSubjectAltNam, critical, func(b *cryptobyte.Builder) {
						b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
							for _, n := range tmpl.DNSNames {
								b.AddASN1(cbasn1.Tag(2).ContextSpecific(), func(b *cryptobyte.Builder) { b.AddBytes([]byte(n)) })
							}
							for _, ip := range tmpl.IPAddresses {
								if ip4 := ip.To4(); ip4 != nil {
									ip = ip4
								}
								b.AddASN1(cbasn1.Tag(7).ContextSpecific(), func(b *cryptobyte.Builder) { b.AddBytes(ip) })
							}
							for _, u := range uris {
								b.AddASN1(cbasn1.Tag(6).ContextSpecific(), func(b *cryptobyte.Builder) { b.AddBytes([]byte(u)) })
							}
						})
					})
				}
			})
		})
	})
	return b.Bytes()
}

func addExtension(b *cryptobyte.Builder, oid asn1.ObjectIdentifier, critical bool, value func(*cryptobyte.Builder)) {
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1ObjectIdentifier(oid)
		if critical {
			b.AddASN1Boolean(true)
		}
		b.AddASN1(cbasn1.OCTET_STRING, value)
	})
}

// addKeyUsage writes the key usage BIT STRING as Go does: bit 0 first in
// each byte, one or two bytes, trailing zero bits declared unused.
func addKeyUsage(b *cryptobyte.Builder, ku x509.KeyUsage) {
	a := []byte{bits.Reverse8(byte(ku)), bits.Reverse8(byte(ku >> 8))}
	if a[1] == 0 {
		a = a[:1]
	}
	last := a[len(a)-1]
	unused := byte(bits.TrailingZeros8(last))
	if last == 0 {
		unused = 0
	}
	b.AddASN1(cbasn1.BIT_STRING, func(b *cryptobyte.Builder) {
		b.AddUint8(unused)
		b.AddBytes(a)
	})
}

// addTime writes t as encoding/asn1 does: UTCTime for 1950–2049, else
// GeneralizedTime, in UTC, to the second.
func addTime(b *cryptobyte.Builder, t time.Time) {
	t = t.UTC()
	if y := t.Year(); y >= 1950 && y < 2050 {
		b.AddASN1(cbasn1.UTCTime, func(b *cryptobyte.Builder) { b.AddBytes([]byte(t.Format("060102150405Z"))) })
		return
	}
	b.AddASN1(cbasn1.GeneralizedTime, func(b *cryptobyte.Builder) { b.AddBytes([]byte(t.Format("20060102150405Z"))) })
}

func isIA5(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] > 127 {
			return false
		}
	}
	return true
}

// marshalPKCS8P256 encodes a P-256 private key as the PKCS #8 DER
// x509.MarshalPKCS8PrivateKey writes (TestMarshalPKCS8Matches proves the
// bytes equal), without its reflection: PrivateKeyInfo{0, {ecPublicKey,
// prime256v1}, ECPrivateKey{1, d, [1] public point}}.
func marshalPKCS8P256(key *ecdsa.PrivateKey) ([]byte, error) {
	d, err := key.Bytes()
	if err != nil {
		return nil, fmt.Errorf("encode key: %w", err)
	}
	point, err := key.PublicKey.Bytes()
	if err != nil {
		return nil, fmt.Errorf("encode key: %w", err)
	}
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1Int64(0)
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1ObjectIdentifier(oidPublicKeyECDSA)
			b.AddASN1ObjectIdentifier(oidNamedCurveP256)
		})
		b.AddASN1(cbasn1.OCTET_STRING, func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				b.AddASN1Int64(1)
				b.AddASN1OctetString(d)
				b.AddASN1(cbasn1.Tag(1).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
					b.AddASN1BitString(point)
				})
			})
		})
	})
	return b.Bytes()
}
