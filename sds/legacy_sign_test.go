// Temporary: the leaf signer meshd used before issue 12 (hand-written TBS
// DER, scalar-based verification), kept only for the differential test
// against the standard-library issuer. Deleted in the next commit.
package sds

import (
	"bytes"
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/big"
	"sync"
	"sync/atomic"

	"filippo.io/bigmod"
	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// Fast leaf signing.
//
// Issuing a leaf with x509.CreateCertificate and then x509.Certificate.Verify
// costs five ECDSA P-256 signature verifications (≈ 74 µs each here): one
// inside CreateCertificate, which checks the signature it has just made, and
// two per extended key usage inside Verify's chain building (the leaf's and
// the intermediate's signatures). That caps issuance near 1,700 leaves per
// second per core.
//
// The leafSigner keeps every check and makes each cheap:
//
//   - The TBS certificate is written directly (tbs.go), byte-identical to
//     what CreateCertificate writes for the same template (proven by
//     TestBuildTBSMatchesCreateCertificate), without encoding/asn1's
//     reflection.
//   - The TBS is signed with the intermediate key by crypto/ecdsa.
//   - The signature is verified with the signer's private scalar d instead of
//     its public point Q = d·G. ECDSA verification accepts (r, s) when
//     x((z·s⁻¹)·G + (r·s⁻¹)·Q) ≡ r (mod n); with Q = d·G that point is
//     ((z + r·d)·s⁻¹)·G, one fixed-base scalar multiplication (≈ 13 µs)
//     instead of a double-base one. The identity Q = d·G is proven once per
//     CA generation (newLeafSigner). The scalar (z + r·d)·s⁻¹ equals the
//     signature's secret nonce, so it is computed with constant-time modular
//     arithmetic (filippo.io/bigmod) and multiplied by crypto/ecdh, which is
//     built for secret scalars.
//   - The intermediate's own signature by the root, and the root's, are
//     verified once per generation (newGeneration); what Verify would
//     additionally check per leaf — issuer name and key identifier, validity
//     of every certificate in the chain at the time of issue, the leaf's
//     usages, SANs and basic constraints — is checked on the parsed leaf in
//     checkLeaf.
//
// A generation whose chain carries constraints this reasoning does not cover
// (name constraints, extended key usage restrictions on the CAs, a key other
// than P-256) gets no leafSigner and keeps the CreateCertificate + Verify
// path.

// p256Order is n, the order of P-256's base point.
var p256Order = elliptic.P256().Params().N

// leafSigner signs and verifies leaves for one CA generation whose
// intermediate key is ECDSA P-256.
type leafSigner struct {
	key *ecdsa.PrivateKey
	n   *bigmod.Modulus
	d   *bigmod.Nat // the private scalar, reduced mod n

	issuer         []byte   // the intermediate's subject, DER
	authorityKeyID []byte   // the intermediate's subject key identifier
	subjects       sync.Map // leaf subject DER by name (subjectDER)
	exts           sync.Map // leaf extensions DER by request shape (extensionsDER)
	cached         atomic.Int64
}

// newLeafSigner returns nil when g's chain is not one the fast path covers
// (see the comment at the top of this file); g is then served by the
// CreateCertificate + Verify path.
func newLeafSigner(g *generation) (*leafSigner, error) {
	key, ok := g.interKey.(*ecdsa.PrivateKey)
	if !ok || key.Curve != elliptic.P256() {
		return nil, nil
	}
	if g.constrained {
		return nil, nil
	}
	if g.inter.SignatureAlgorithm == x509.UnknownSignatureAlgorithm {
		return nil, nil
	}
	n, err := bigmod.NewModulus(p256Order.Bytes())
	if err != nil {
		return nil, fmt.Errorf("P-256 order: %w", err)
	}
	db, err := key.Bytes()
	if err != nil {
		return nil, fmt.Errorf("intermediate key: %w", err)
	}
	d, err := bigmod.NewNat().SetBytes(db, n)
	if err != nil {
		return nil, fmt.Errorf("intermediate key scalar: %w", err)
	}
	// The verification below relies on Q = d·G for the Q in the
	// intermediate certificate: prove it with an independent computation
	// rather than trust the key file's public half.
	priv, err := ecdh.P256().NewPrivateKey(db)
	if err != nil {
		return nil, fmt.Errorf("intermediate key scalar: %w", err)
	}
	certPub, ok := g.inter.PublicKey.(*ecdsa.PublicKey)
	if !ok {
		return nil, nil
	}
	want, err := certPub.Bytes()
	if err != nil {
		return nil, fmt.Errorf("intermediate public key: %w", err)
	}
	if !bytes.Equal(priv.PublicKey().Bytes(), want) {
		return nil, errors.New("intermediate key does not match the intermediate certificate (d·G ≠ Q): supply the matching pair")
	}
	ls := &leafSigner{key: key, n: n, d: d, issuer: g.inter.RawSubject}
	// CreateCertificate names the issuer's key unless issuer and subject
	// are the same name; a leaf never carries its intermediate's name.
	ls.authorityKeyID = g.inter.SubjectKeyId
	return ls, nil
}

// sign encodes the certificate for tmpl (see buildTBS), signs it with the
// intermediate key (deterministically, RFC 6979, when rand is nil, as
// CreateCertificate would) and verifies the signature. It returns the DER.
func (s *leafSigner) sign(rand io.Reader, tmpl *x509.Certificate, pub *ecdsa.PublicKey) ([]byte, error) {
	tbs, err := s.buildTBS(tmpl, pub)
	if err != nil {
		return nil, err
	}
	digest := sha256.Sum256(tbs)
	sig, err := s.key.Sign(rand, digest[:], crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	if err := s.verify(digest[:], sig); err != nil {
		return nil, fmt.Errorf("signature made by the intermediate key does not verify: %w", err)
	}
	b := cryptobyte.NewBuilder(make([]byte, 0, len(tbs)+len(ecdsaWithSHA256)+len(sig)+16))
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddBytes(tbs)
		b.AddBytes(ecdsaWithSHA256)
		b.AddASN1BitString(sig)
	})
	return b.Bytes()
}

// verify checks an ASN.1 ECDSA signature of digest by s.key: x(u·G) ≡ r
// (mod n) with u = (z + r·d)·s⁻¹, which is standard verification with
// Q = d·G substituted (see the top of this file).
func (s *leafSigner) verify(digest, sig []byte) error {
	r, sv, err := parseECDSASignature(sig)
	if err != nil {
		return err
	}
	// r and s are public: range checks and the inverse may be variable-time.
	if r.Sign() <= 0 || sv.Sign() <= 0 || r.Cmp(p256Order) >= 0 || sv.Cmp(p256Order) >= 0 {
		return errors.New("signature value out of range")
	}
	w := new(big.Int).ModInverse(sv, p256Order)
	if w == nil {
		return errors.New("signature s not invertible")
	}
	size := (p256Order.BitLen() + 7) / 8
	rN, err := bigmod.NewNat().SetBytes(r.FillBytes(make([]byte, size)), s.n)
	if err != nil {
		return err
	}
	wN, err := bigmod.NewNat().SetBytes(w.FillBytes(make([]byte, size)), s.n)
	if err != nil {
		return err
	}
	// z: the digest as an integer, reduced mod n (SHA-256 and P-256's
	// order have the same bit length, so no truncation applies).
	if len(digest) != size {
		return fmt.Errorf("digest of %d bytes, want %d", len(digest), size)
	}
	u, err := bigmod.NewNat().SetOverflowingBytes(digest, s.n)
	if err != nil {
		return err
	}
	// u = (z + r·d)·w mod n, in constant time: u is the signing nonce.
	rN.Mul(s.d, s.n) // r·d
	u.Add(rN, s.n).Mul(wN, s.n)
	if u.IsZero() == 1 {
		return errors.New("signature yields the point at infinity")
	}
	p, err := ecdh.P256().NewPrivateKey(u.Bytes(s.n))
	if err != nil {
		return fmt.Errorf("u·G: %w", err)
	}
	point := p.PublicKey().Bytes() // 0x04 || X || Y
	x := new(big.Int).SetBytes(point[1 : 1+size])
	x.Mod(x, p256Order)
	if x.Cmp(r) != 0 {
		return errors.New("signature does not match")
	}
	return nil
}

func parseECDSASignature(sig []byte) (r, s *big.Int, err error) {
	r, s = new(big.Int), new(big.Int)
	in := cryptobyte.String(sig)
	var inner cryptobyte.String
	if !in.ReadASN1(&inner, cbasn1.SEQUENCE) || !in.Empty() ||
		!inner.ReadASN1Integer(r) || !inner.ReadASN1Integer(s) || !inner.Empty() {
		return nil, nil, errors.New("malformed ECDSA signature")
	}
	return r, s, nil
}
