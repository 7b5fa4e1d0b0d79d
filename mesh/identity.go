package mesh

import (
	"fmt"
	"strings"
)

// Identity is a workload identity, rendered as a SPIFFE ID
// spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>.
type Identity struct {
	TrustDomain    string
	Namespace      string
	ServiceAccount string
}

// SPIFFEID renders the identity's SPIFFE URI.
func (id Identity) SPIFFEID() string {
	return "spiffe://" + id.TrustDomain + "/ns/" + id.Namespace + "/sa/" + id.ServiceAccount
}

// String is the SPIFFE ID.
func (id Identity) String() string { return id.SPIFFEID() }

// ParseSPIFFEID is the inverse of Identity.SPIFFEID.
func ParseSPIFFEID(s string) (Identity, error) {
	rest, ok := strings.CutPrefix(s, "spiffe://")
	if !ok {
		return Identity{}, fmt.Errorf("%q is not a SPIFFE ID: want spiffe://<trust-domain>/ns/<ns>/sa/<sa>", s)
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 5 || parts[1] != "ns" || parts[3] != "sa" || parts[0] == "" || parts[2] == "" || parts[4] == "" {
		return Identity{}, fmt.Errorf("%q is not a mesh SPIFFE ID: want spiffe://<trust-domain>/ns/<ns>/sa/<sa>", s)
	}
	return Identity{TrustDomain: parts[0], Namespace: parts[2], ServiceAccount: parts[4]}, nil
}

// IdentityOf returns the identity a service's instances run as.
func IdentityOf(trustDomain string, s *Service) Identity {
	return Identity{TrustDomain: trustDomain, Namespace: s.Namespace, ServiceAccount: s.ServiceAccount}
}

// ValidTrustDomain checks a trust domain as SPIFFE defines it (lowercase
// letters, digits, '.', '-' and '_').
func ValidTrustDomain(td string) error {
	if td == "" {
		return fmt.Errorf("trust domain is empty")
	}
	for _, r := range td {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_') {
			return fmt.Errorf("trust domain %q: character %q not allowed (use lowercase letters, digits, '.', '-', '_')", td, r)
		}
	}
	return nil
}

// DefaultTrustDomain is the trust domain meshd and meshctl use unless told
// otherwise (Istio's default, so principals written for Istio carry over).
const DefaultTrustDomain = "cluster.local"

// ControlPlaneIdentity is the identity meshd's own xDS server certificate
// carries. Proxies pin it, so a workload certificate from the same CA cannot
// impersonate the control plane.
func ControlPlaneIdentity(trustDomain string) Identity {
	return Identity{TrustDomain: trustDomain, Namespace: "meshd-system", ServiceAccount: "meshd"}
}
