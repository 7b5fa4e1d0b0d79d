package sds

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/meshd/meshd/mesh"
)

// t0 is a whole second so that certificate times (second precision) compare
// exactly with clock arithmetic.
var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock(t time.Time) *fakeClock { return &fakeClock{now: t} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// syncBuffer lets the TLS tests log from handshake goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type testCA struct {
	*Authority
	clock *fakeClock
	logs  *syncBuffer
	opts  Options
}

func testOptions(dir string, clock *fakeClock, logs *syncBuffer) Options {
	return Options{
		DataDir:     dir,
		TrustDomain: "cluster.local",
		Clock:       clock.Now,
		Logger:      slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
}

// newTestCA creates a CA in a fresh temp dir with a fake clock at t0.
func newTestCA(t testing.TB, mod ...func(*Options)) *testCA {
	t.Helper()
	clock := newFakeClock(t0)
	logs := &syncBuffer{}
	opts := testOptions(t.TempDir(), clock, logs)
	for _, m := range mod {
		m(&opts)
	}
	a, err := LoadOrCreate(opts)
	if err != nil {
		t.Fatalf("LoadOrCreate: %v", err)
	}
	return &testCA{Authority: a, clock: clock, logs: logs, opts: opts}
}

var testID = mesh.Identity{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "cart"}

// parseCert parses a leaf's PEM: the leaf, optionally followed by exactly
// one intermediate (a CA), which is what Leaf.CertPEM carries.
func parseCert(t testing.TB, certPEM []byte) *x509.Certificate {
	t.Helper()
	c, _ := parseChain(t, certPEM)
	return c
}

// parseChain returns the leaf and a pool holding the intermediate after it
// (empty if there is none).
func parseChain(t testing.TB, certPEM []byte) (*x509.Certificate, *x509.CertPool) {
	t.Helper()
	block, rest := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		t.Fatalf("not a CERTIFICATE PEM: %q", certPEM)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatalf("parse certificate: %v", err)
	}
	pool := x509.NewCertPool()
	if len(bytes.TrimSpace(rest)) != 0 {
		ib, rest2 := pem.Decode(rest)
		if ib == nil || ib.Type != "CERTIFICATE" || len(bytes.TrimSpace(rest2)) != 0 {
			t.Fatalf("after the leaf: want exactly one intermediate CERTIFICATE, got %q", rest)
		}
		ic, err := x509.ParseCertificate(ib.Bytes)
		if err != nil {
			t.Fatalf("parse intermediate: %v", err)
		}
		if !ic.IsCA {
			t.Fatalf("second certificate of the chain is not a CA")
		}
		pool.AddCert(ic)
	}
	return c, pool
}

// verifyLeaf verifies a leaf PEM chain against roots at now for one usage.
func verifyLeaf(t testing.TB, certPEM []byte, roots *x509.CertPool, now time.Time, eku x509.ExtKeyUsage) error {
	t.Helper()
	c, inters := parseChain(t, certPEM)
	_, err := c.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inters, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{eku}})
	return err
}

type pemBlock = pem.Block

func decodePEM(b []byte) (*pem.Block, []byte) { return pem.Decode(b) }
