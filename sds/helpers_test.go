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

func parseCert(t testing.TB, certPEM []byte) *x509.Certificate {
	t.Helper()
	block, rest := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		t.Fatalf("not a CERTIFICATE PEM: %q", certPEM)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		t.Fatalf("trailing data after certificate PEM: %q", rest)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatalf("parse certificate: %v", err)
	}
	return c
}
