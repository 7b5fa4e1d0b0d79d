package sds

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/x509"
	"fmt"
	"math/big"
	"strconv"
	"strings"
	"time"
)

// Replica-consistent leaves (Options.DeterministicLeaves).
//
// Several meshd replicas that share one intermediate (operator-supplied CA
// files) would each mint their own certificate for an identity, so a proxy
// moving from one replica to another would be sent a different certificate
// it does not need, and the replicas' Secret versions would differ. In this
// mode every input of a leaf is derived from what the replicas share: the
// validity window is aligned to fixed epochs of RenewFraction × LeafTTL, the
// key and serial are derived (HKDF-SHA256) from the intermediate's private
// key, the identity, its DNS names and the epoch, and the signature is
// RFC 6979 deterministic. Replicas whose clocks agree on the epoch produce
// byte-identical certificates. Deriving leaf keys from the intermediate key
// gives its holder nothing new: it can already sign any certificate.

// epoch returns the start of the issuance epoch containing now and its
// length.
func (a *Authority) epoch(now time.Time) (time.Time, time.Duration) {
	e := time.Duration(float64(a.opts.LeafTTL) * a.opts.RenewFraction)
	if e < time.Second {
		e = time.Second
	}
	return now.Truncate(e), e
}

// deriveLeafKey derives the leaf's P-256 key and serial from the signing
// intermediate's key.
func deriveLeafKey(g *generation, uri string, dns []string, epochStart time.Time) (*ecdsa.PrivateKey, *big.Int, error) {
	secret, err := x509.MarshalPKCS8PrivateKey(g.interKey)
	if err != nil {
		return nil, nil, fmt.Errorf("deterministic leaf: the intermediate key cannot be encoded: %w", err)
	}
	info := uri + "\x00" + strings.Join(dns, ",") + "\x00" + strconv.FormatInt(epochStart.Unix(), 10)
	for counter := 0; counter < 16; counter++ {
		b, err := hkdf.Key(sha256.New, secret, []byte("meshd leaf key v1"), info+"\x00"+strconv.Itoa(counter), 32)
		if err != nil {
			return nil, nil, err
		}
		key, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), b)
		if err != nil {
			continue // scalar out of range (probability ~2^-32): next counter
		}
		sb, err := hkdf.Key(sha256.New, secret, []byte("meshd leaf serial v1"), info, 16)
		if err != nil {
			return nil, nil, err
		}
		sb[0] &= 0x7f // positive, as RFC 5280 requires
		serial := new(big.Int).SetBytes(sb)
		if serial.Sign() == 0 {
			serial.SetInt64(1)
		}
		return key, serial, nil
	}
	return nil, nil, fmt.Errorf("deterministic leaf: no valid key derived")
}
