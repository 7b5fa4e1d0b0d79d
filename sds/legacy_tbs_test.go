package sds

import (
	"crypto/ecdsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"errors"
	"fmt"
	"math/bits"
	"slices"
	"strings"
	"sync"
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
	s.remember(&s.subjects, key, der)
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
	exts, err := s.extensionsDER(tmpl, string(subject) == string(emptySubject))
	if err != nil {
		return nil, err
	}

	// One buffer for the whole TBS (about 600 bytes) rather than regrowth;
	// the fixed parts are appended as bytes, which also spares cryptobyte a
	// child builder per element.
	b := cryptobyte.NewBuilder(make([]byte, 0, 1024))
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddBytes(tbsVersion3)
		b.AddASN1BigInt(tmpl.SerialNumber)
		b.AddBytes(ecdsaWithSHA256)
		b.AddBytes(s.issuer)
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			addTime(b, tmpl.NotBefore)
			addTime(b, tmpl.NotAfter)
		})
		b.AddBytes(subject)
		b.AddBytes(p256SPKIPrefix)
		b.AddBytes(point)
		b.AddASN1(cbasn1.Tag(3).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
			b.AddBytes(exts)
		})
	})
	return b.Bytes()
}

var (
	// tbsVersion3 is [0] EXPLICIT INTEGER 2.
	tbsVersion3 = []byte{0xa0, 0x03, 0x02, 0x01, 0x02}
	// p256SPKIPrefix is a P-256 SubjectPublicKeyInfo up to its 65-byte
	// uncompressed point: SEQUENCE { SEQUENCE { ecPublicKey, prime256v1 },
	// BIT STRING (0 unused bits) }.
	p256SPKIPrefix = func() []byte {
		var b cryptobyte.Builder
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				b.AddASN1ObjectIdentifier(oidPublicKeyECDSA)
				b.AddASN1ObjectIdentifier(oidNamedCurveP256)
			})
			b.AddASN1BitString(make([]byte, 65))
		})
		der := b.BytesOrPanic()
		return der[:len(der)-65]
	}()
)

// extensionsDER returns the SEQUENCE of a leaf's extensions. It depends only
// on the key usages and names of the request (the authority key identifier
// is the signer's), so it is built once per identity and cached.
func (s *leafSigner) extensionsDER(tmpl *x509.Certificate, subjectEmpty bool) ([]byte, error) {
	var key strings.Builder
	fmt.Fprintf(&key, "%d|%v|%v|", tmpl.KeyUsage, tmpl.ExtKeyUsage, subjectEmpty)
	for _, n := range tmpl.DNSNames {
		key.WriteString(n)
		key.WriteByte(0)
	}
	key.WriteByte('|')
	for _, ip := range tmpl.IPAddresses {
		key.Write(ip)
		key.WriteByte(0)
	}
	key.WriteByte('|')
	uris := make([]string, len(tmpl.URIs))
	for i, u := range tmpl.URIs {
		uris[i] = u.String()
		key.WriteString(uris[i])
		key.WriteByte(0)
	}
	if v, ok := s.exts.Load(key.String()); ok {
		return v.([]byte), nil
	}
	for _, n := range tmpl.DNSNames {
		if !isIA5(n) {
			return nil, fmt.Errorf("DNS name %q is not ASCII", n)
		}
	}
	for _, u := range uris {
		if !isIA5(u) {
			return nil, fmt.Errorf("URI %q is not ASCII", u)
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
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		// CreateCertificate's order: key usage, extended key usage, basic
		// constraints, (subject key id), authority key id, SANs.
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
			addExtension(b, oidExtSubjectAltNam, subjectEmpty, func(b *cryptobyte.Builder) {
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
	der, err := b.Bytes()
	if err != nil {
		return nil, fmt.Errorf("encode extensions: %w", err)
	}
	s.remember(&s.exts, key.String(), der)
	return der, nil
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

// maxCached bounds each of the signer's caches: a mesh has far fewer
// identities, but a long-lived generation should not grow without limit
// as services come and go.
var maxCached int64 = 1 << 16

// remember stores v under k in m, emptying m first once it holds maxCached
// entries (the next issuances rebuild what they need).
func (s *leafSigner) remember(m *sync.Map, k string, v []byte) {
	if s.cached.Add(1) > maxCached {
		s.subjects.Clear()
		s.exts.Clear()
		s.cached.Store(1)
	}
	m.Store(k, v)
}

// appendPEM appends the PEM block of type typ holding der to dst, as
// pem.Encode writes it (64 base64 characters a line), in one allocation.
func appendPEM(dst []byte, typ string, der []byte) []byte {
	const lineLen = 64
	n := base64.StdEncoding.EncodedLen(len(der))
	dst = slices.Grow(dst, len(typ)*2+len("-----BEGIN -----\n-----END -----\n")+n+n/lineLen+1)
	dst = append(dst, "-----BEGIN "...)
	dst = append(dst, typ...)
	dst = append(dst, "-----\n"...)
	for len(der) > 0 {
		chunk := der[:min(len(der), lineLen/4*3)]
		der = der[len(chunk):]
		dst = base64.StdEncoding.AppendEncode(dst, chunk)
		dst = append(dst, '\n')
	}
	dst = append(dst, "-----END "...)
	dst = append(dst, typ...)
	dst = append(dst, "-----\n"...)
	return dst
}
