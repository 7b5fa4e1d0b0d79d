package sds

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/meshd/meshd/mesh"
)

// ServerIdentity is the identity meshd's xDS server presents: proxies that
// pin the control plane's SPIFFE ID pin this one.
func (a *Authority) ServerIdentity() mesh.Identity {
	return mesh.ControlPlaneIdentity(a.opts.TrustDomain)
}

// ServerTLSConfig returns a *tls.Config for meshd's own xDS gRPC server. Its
// certificate is issued by this CA for hosts (each an IP or a DNS name;
// "localhost" and 127.0.0.1 are always added so local proxies and health
// checks work without configuration), with URI SAN
// spiffe://<td>/ns/meshd-system/sa/meshd and EKU ServerAuth only.
//
// The certificate is served through GetCertificate and reissued on the first
// handshake after RenewFraction of its life, or once the generation that
// signs it changes (root rotation), so a long-running server never needs a
// restart or a timer to rotate it. It is signed by the oldest trusted
// generation: proxies bootstrapped before a root rotation verify meshd with
// the root file they started with. The first certificate is issued here so
// that configuration errors surface at startup.
//
// Client certificates are requested but optional (VerifyClientCertIfGiven,
// against the current bundle): the xDS server authenticates a proxy by its
// mesh certificate or by a bootstrap token (server/auth.go).
func (a *Authority) ServerTLSConfig(hosts []string) (*tls.Config, error) {
	dns, ips, err := splitHosts(hosts)
	if err != nil {
		return nil, fmt.Errorf("xDS server TLS: %w", err)
	}
	s := &serverCert{
		a: a,
		req: issueRequest{
			uri:  a.ServerIdentity().SPIFFEID(),
			cn:   dns[0],
			dns:  dns,
			ips:  ips,
			ekus: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		},
	}
	s.mu.Lock()
	err = s.renewLocked()
	s.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("xDS server TLS: %w", err)
	}
	base := &tls.Config{
		MinVersion:     tls.VersionTLS12,
		NextProtos:     []string{"h2"},
		GetCertificate: s.get,
		ClientAuth:     tls.VerifyClientCertIfGiven,
		// No session resumption: a resumed session carries the server
		// certificate of the session's first full handshake (and the
		// client certificate verified then), not the current ones. Envoy
		// resumes when it reconnects (after --xds-max-connection-age,
		// every 30 minutes by default) and re-verifies that old
		// certificate: once it has expired, every reconnect fails with
		// "certificate has expired" and the proxy never gets its
		// configuration again (found by meshd-soak with a 3-minute
		// --leaf-ttl). A full handshake per connection costs a signature
		// per proxy per reconnect.
		SessionTicketsDisabled: true,
		// The CA's clock, so tests that fake time see consistent ticket
		// and client-certificate validity checks.
		Time: a.opts.Clock,
	}
	// GetConfigForClient hands every handshake the current bundle, so client
	// certificates from a new root verify as soon as the root is trusted.
	base.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		c := base.Clone()
		c.GetConfigForClient = nil
		c.ClientCAs = a.RootPool()
		return c, nil
	}
	return base, nil
}

// splitHosts sorts host strings into DNS and IP SANs, adding the loopback
// names. User-given DNS names come first so the CN names the public host.
func splitHosts(hosts []string) ([]string, []net.IP, error) {
	var dns []string
	ips := []net.IP{net.IPv4(127, 0, 0, 1)}
	for _, h := range append(trimmed(hosts), "localhost") {
		if ip := net.ParseIP(strings.Trim(h, "[]")); ip != nil {
			if !containsIP(ips, ip) {
				ips = append(ips, ip)
			}
			continue
		}
		if strings.Contains(h, ":") {
			return nil, nil, fmt.Errorf("host %q looks like host:port: list hosts without ports", h)
		}
		if err := checkDNSName(h); err != nil {
			return nil, nil, err
		}
		if !containsFold(dns, h) {
			dns = append(dns, h)
		}
	}
	return dns, ips, nil
}

func containsIP(ips []net.IP, ip net.IP) bool {
	for _, x := range ips {
		if x.Equal(ip) {
			return true
		}
	}
	return false
}

func containsFold(ss []string, s string) bool {
	for _, x := range ss {
		if strings.EqualFold(x, s) {
			return true
		}
	}
	return false
}

// serverCert is the rotating certificate behind one ServerTLSConfig.
type serverCert struct {
	a   *Authority
	req issueRequest

	mu       sync.Mutex
	gen      string // generation that signed cert
	cert     *tls.Certificate
	renewAt  time.Time
	notAfter time.Time
}

// get is tls.Config.GetCertificate.
func (s *serverCert) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	g, now := s.a.serverGen()
	if now.Before(s.renewAt) && s.gen == g.id {
		return s.cert, nil
	}
	if err := s.renewLocked(); err != nil {
		// Keep serving the current certificate while it is valid: a
		// failed renewal should not take the control plane down early.
		if now.Before(s.notAfter) {
			s.a.log.Error("renew xDS server certificate failed; serving the current one until it expires",
				"err", err, "not_after", s.notAfter.UTC())
			return s.cert, nil
		}
		return nil, fmt.Errorf("xDS server certificate expired and renewal failed: %w", err)
	}
	return s.cert, nil
}

func (s *serverCert) renewLocked() error {
	g, now := s.a.serverGen()
	iss, err := s.a.issue(g, now, s.req)
	if err != nil {
		return fmt.Errorf("issue server certificate: %w", err)
	}
	s.gen = g.id
	s.cert = &tls.Certificate{
		Certificate: iss.chain,
		PrivateKey:  iss.key,
		Leaf:        iss.cert,
	}
	s.renewAt, s.notAfter = iss.leaf.RenewAt, iss.leaf.NotAfter
	s.a.log.Info("issued xDS server certificate",
		"spiffe_id", s.req.uri,
		"dns_names", s.req.dns,
		"ips", s.req.ips,
		"serial", iss.leaf.Serial.Text(16),
		"not_after", iss.leaf.NotAfter.UTC(),
		"renew_at", iss.leaf.RenewAt.UTC())
	return nil
}

// trimmed drops blanks and surrounding spaces, which host lists from flags
// and config files often carry.
func trimmed(ss []string) []string {
	out := make([]string, 0, len(ss))
	for _, s := range ss {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}
