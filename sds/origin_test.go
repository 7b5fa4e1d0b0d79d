package sds

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"strings"
	"testing"
)

// TestCertOrigin: the credential mark of each kind of certificate reads back
// as what it was issued through; a workload leaf (SDS) has none; a mark
// meshd does not write is an error, not a credential.
func TestCertOrigin(t *testing.T) {
	for _, det := range []bool{false, true} {
		ca := newTestCA(t, func(o *Options) { o.DeterministicLeaves = det })
		sdsLeaf, err := ca.Leaf(testID, []string{"cart"})
		if err != nil {
			t.Fatal(err)
		}
		if _, ok, err := CertOriginOf(parseCert(t, sdsLeaf.CertPEM)); ok || err != nil {
			t.Errorf("deterministic=%v: an SDS leaf is a credential (%v, %v)", det, ok, err)
		}
		cred, err := ca.IssueCredential(testID, []string{"cart"})
		if err != nil {
			t.Fatal(err)
		}
		if o, ok, err := CertOriginOf(parseCert(t, cred.CertPEM)); !ok || err != nil || o.TokenID != "" {
			t.Errorf("deterministic=%v: operator credential reads as %+v %v %v", det, o, ok, err)
		}
		// Never the SDS leaf's key, which every holder of a token for the
		// identity receives (deterministic mode derives keys).
		if string(cred.KeyPEM) == string(sdsLeaf.KeyPEM) {
			t.Errorf("deterministic=%v: the credential has the SDS leaf's key", det)
		}
	}
	for ou, want := range map[string]string{
		"meshd-credential token abc": "abc",
		"meshd-credential operator":  "",
	} {
		o, ok, err := CertOriginOf(&x509.Certificate{Subject: pkix.Name{OrganizationalUnit: []string{"other", ou}}})
		if !ok || err != nil || o.TokenID != want {
			t.Errorf("%q: %+v %v %v", ou, o, ok, err)
		}
	}
	for _, ous := range [][]string{
		{"meshd-credential"}, {"meshd-credential token "}, {"meshd-credential admin"},
		{"meshd-credential operator", "meshd-credential token abc"},
	} {
		if _, ok, err := CertOriginOf(&x509.Certificate{Subject: pkix.Name{OrganizationalUnit: ous}}); ok || err == nil || !strings.Contains(err.Error(), "credential mark") {
			t.Errorf("%q: ok=%v err=%v, want a refusal", ous, ok, err)
		}
	}
}
