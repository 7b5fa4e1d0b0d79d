package sds

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"slices"
	"strings"
	"testing"
	"time"
)

// handshake runs a TLS handshake over a loopback TCP connection between a
// server using cfg and a client trusting ca's root, with the client's clock
// tied to the CA's. (Loopback rather than net.Pipe: an unbuffered pipe
// deadlocks when the TLS 1.3 server writes session tickets while the client
// writes close_notify.)
func handshake(t *testing.T, ca *testCA, cfg *tls.Config, serverName string, maxVersion uint16) (tls.ConnectionState, error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer conn.Close()
		done <- tls.Server(conn, cfg).Handshake()
	}()

	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	client := tls.Client(raw, &tls.Config{
		RootCAs:    ca.RootPool(),
		ServerName: serverName,
		NextProtos: []string{"h2"},
		Time:       ca.clock.Now,
		MaxVersion: maxVersion,
	})
	err = client.Handshake()
	state := client.ConnectionState()
	_ = client.Close()
	serverErr := <-done
	if err == nil && serverErr != nil {
		t.Fatalf("client handshake succeeded but server failed: %v", serverErr)
	}
	return state, err
}

func TestServerTLSConfigHandshake(t *testing.T) {
	ca := newTestCA(t)
	cfg, err := ca.ServerTLSConfig([]string{"meshd.example.com", " 10.1.2.3 ", ""})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MinVersion != tls.VersionTLS12 || !slices.Equal(cfg.NextProtos, []string{"h2"}) || cfg.ClientAuth != tls.VerifyClientCertIfGiven {
		t.Errorf("config: MinVersion %x, NextProtos %v, ClientAuth %v", cfg.MinVersion, cfg.NextProtos, cfg.ClientAuth)
	}

	state, err := handshake(t, ca, cfg, "localhost", 0)
	if err != nil {
		t.Fatalf("handshake with ServerName localhost: %v", err)
	}
	if state.NegotiatedProtocol != "h2" {
		t.Errorf("ALPN = %q, want h2", state.NegotiatedProtocol)
	}
	cert := state.PeerCertificates[0]
	if len(state.PeerCertificates) != 2 || !state.PeerCertificates[1].Equal(ca.IntermediateCert()) {
		t.Errorf("server sent %d certificates, want the leaf and the intermediate", len(state.PeerCertificates))
	}
	var ips []string
	for _, ip := range cert.IPAddresses {
		ips = append(ips, ip.String())
	}
	for _, want := range []string{"127.0.0.1", "10.1.2.3"} {
		if !slices.Contains(ips, want) {
			t.Errorf("IP SANs %v lack %s", ips, want)
		}
	}
	for _, want := range []string{"localhost", "meshd.example.com"} {
		if !slices.Contains(cert.DNSNames, want) {
			t.Errorf("DNS SANs %v lack %s", cert.DNSNames, want)
		}
	}
	if len(cert.URIs) != 1 || cert.URIs[0].String() != "spiffe://cluster.local/ns/meshd-system/sa/meshd" {
		t.Errorf("URI SANs = %v", cert.URIs)
	}
	if !slices.Equal(cert.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}) {
		t.Errorf("EKU = %v, want [ServerAuth]", cert.ExtKeyUsage)
	}

	// The other SANs work too, and a name not in the certificate fails,
	// which shows the client really checks names against this cert.
	for _, name := range []string{"meshd.example.com", "127.0.0.1", "10.1.2.3"} {
		if _, err := handshake(t, ca, cfg, name, 0); err != nil {
			t.Errorf("handshake with ServerName %s: %v", name, err)
		}
	}
	if _, err := handshake(t, ca, cfg, "other.example.com", 0); err == nil {
		t.Error("handshake with a name not in the certificate succeeded")
	}
	// MinVersion is enforced.
	if _, err := handshake(t, ca, cfg, "localhost", tls.VersionTLS11); err == nil {
		t.Error("TLS 1.1 handshake succeeded")
	}
}

func TestServerTLSConfigRotates(t *testing.T) {
	ca := newTestCA(t)
	cfg, err := ca.ServerTLSConfig(nil)
	if err != nil {
		t.Fatal(err)
	}
	serial := func() string {
		t.Helper()
		state, err := handshake(t, ca, cfg, "localhost", 0)
		if err != nil {
			t.Fatalf("handshake: %v", err)
		}
		return state.PeerCertificates[0].SerialNumber.String()
	}
	first := serial()
	ca.clock.Advance(11 * time.Hour)
	if got := serial(); got != first {
		t.Errorf("certificate changed before half of its life: %s -> %s", first, got)
	}
	ca.clock.Advance(2 * time.Hour) // 13h of 24h: past 50%
	second := serial()
	if second == first {
		t.Error("certificate not reissued after half of its life")
	}
	if got := serial(); got != second {
		t.Errorf("certificate reissued again on the next handshake: %s -> %s", second, got)
	}
	if !strings.Contains(ca.logs.String(), "issued xDS server certificate") {
		t.Error("rotation not logged")
	}
	// The server certificate is not a workload leaf: it must not pull the
	// workload renewal timer.
	if !ca.NextRenewal().IsZero() {
		t.Errorf("NextRenewal = %s, want zero (server certificate renews itself)", ca.NextRenewal())
	}
}

func TestServerTLSConfigRejectsBadHosts(t *testing.T) {
	ca := newTestCA(t)
	for _, h := range []string{"meshd.example.com:443", "bad host"} {
		if _, err := ca.ServerTLSConfig([]string{h}); err == nil {
			t.Errorf("host %q accepted", h)
		}
	}
}

// TestServerTLSConfigNoResumption: a client that reconnects gets a full
// handshake and the current certificate, never a resumed session that
// carries the certificate of its first handshake (Envoy re-verifies that
// one on resumption and fails for good once it has expired).
func TestServerTLSConfigNoResumption(t *testing.T) {
	ca := newTestCA(t)
	cfg, err := ca.ServerTLSConfig(nil)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			// A byte after the handshake, so that the client also reads
			// the TLS 1.3 session tickets the server sends after it; then
			// wait for the client to close first.
			s := tls.Server(conn, cfg)
			if s.Handshake() == nil {
				if _, err := s.Write([]byte{1}); err == nil {
					_, _ = io.Copy(io.Discard, s)
				}
			}
			_ = s.Close()
		}
	}()
	for _, maxVersion := range []uint16{tls.VersionTLS13, tls.VersionTLS12} {
		cache := tls.NewLRUClientSessionCache(4)
		connect := func() tls.ConnectionState {
			t.Helper()
			c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: ca.RootPool(), ServerName: "localhost",
				NextProtos: []string{"h2"}, Time: ca.clock.Now, MaxVersion: maxVersion, ClientSessionCache: cache})
			if err != nil {
				t.Fatalf("TLS %x: %v", maxVersion, err)
			}
			defer c.Close()
			if _, err := c.Read(make([]byte, 1)); err != nil {
				t.Fatalf("TLS %x: read: %v", maxVersion, err)
			}
			return c.ConnectionState()
		}
		first := connect()
		ca.clock.Advance(13 * time.Hour) // past half of the 24h life: reissued
		second := connect()
		if second.DidResume {
			t.Errorf("TLS %x: the second connection resumed the first one's session", maxVersion)
		}
		if second.PeerCertificates[0].Equal(first.PeerCertificates[0]) {
			t.Errorf("TLS %x: the second connection got the first one's certificate after it was reissued", maxVersion)
		}
	}
}
