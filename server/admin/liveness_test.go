package admin

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"

	"github.com/meshd/meshd/discovery/file"
	"github.com/meshd/meshd/internal/inputfile"
	"github.com/meshd/meshd/internal/metrics"
	"github.com/meshd/meshd/internal/testwait"
	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/server/tracker"
	"github.com/meshd/meshd/snapshot"
	"github.com/meshd/meshd/xds"
)

// blockingSecrets blocks every certificate request until released: a
// publisher rendering with it is wedged.
type blockingSecrets struct {
	release chan struct{}
	once    sync.Once
}

func (b *blockingSecrets) Identity(mesh.Identity, []string) ([]byte, []byte, error) {
	<-b.release
	return nil, nil, context.Canceled
}
func (b *blockingSecrets) Bundle() []byte         { return nil }
func (b *blockingSecrets) NextRenewal() time.Time { return time.Time{} }
func (b *blockingSecrets) free()                  { b.once.Do(func() { close(b.release) }) }

func healthz(t *testing.T, h http.Handler) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
	return rec.Code, rec.Body.String()
}

// A publisher that stops making progress with work pending makes /healthz
// fail within the liveness bound, saying why (and logging it); once it
// moves again, /healthz recovers.
func TestHealthzFailsWhenThePublisherIsWedged(t *testing.T) {
	cat, err := mesh.NewCatalog([]mesh.Service{{Name: "api", Protocol: mesh.ProtocolHTTP}},
		[]mesh.Proxy{{Service: "api", Address: "127.0.0.1", PublicPort: 15001, AppPort: 8080}})
	if err != nil {
		t.Fatal(err)
	}
	sec := &blockingSecrets{release: make(chan struct{})}
	defer sec.free()
	var logs syncBuf
	log := slog.New(slog.NewTextHandler(&logs, nil))
	pub := snapshot.New(cachev3.NewSnapshotCache(false, cachev3.IDHash{}, nil), sec, snapshot.Options{Translate: xds.Options{TrustDomain: "cluster.local"}, Logger: log})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go pub.Run(ctx)
	const bound = 300 * time.Millisecond
	tr := tracker.NewTracker(log, metrics.New(), nil)
	h := (&Admin{Publisher: pub, Tracker: tr, Metrics: metrics.New(), Logger: log, Liveness: &Liveness{Bound: bound, Logger: log,
		Checks: map[string]Stalled{"publisher": pub.Stalled}}}).Handler()
	if code, body := healthz(t, h); code != http.StatusOK {
		t.Fatalf("idle meshd: /healthz %d %s", code, body)
	}
	start := time.Now()
	pub.Update(snapshot.Update{Catalog: cat}) // the render blocks on the CA
	var body string
	testwait.Until(t, bound+testwait.Timeout, func() error {
		var code int
		if code, body = healthz(t, h); code != http.StatusServiceUnavailable {
			return fmt.Errorf("/healthz still %d %q %s after the publisher wedged (bound %s)", code, body, time.Since(start), bound)
		}
		return nil
	})
	if !strings.Contains(body, "publisher") || !strings.Contains(body, "busy") {
		t.Errorf("/healthz says %q, want the publisher named", body)
	}
	if took := time.Since(start); took < bound {
		t.Errorf("/healthz failed after %s, before the bound %s", took, bound)
	}
	if !strings.Contains(logs.String(), "liveness check failed") {
		t.Error("the failure was not logged")
	}
	sec.free()
	testwait.For(t, testwait.Timeout, "/healthz recovers", func() bool { code, _ := healthz(t, h); return code == http.StatusOK })
}

// POST /migrations/force: needs ?proxy=, answers 404 for a proxy with no
// migration in progress, and completes one that waits.
func TestForceMigrationEndpoint(t *testing.T) {
	log := slog.New(slog.NewTextHandler(&bytes.Buffer{}, nil))
	pub, m, tr := publishQuickstart(t, log)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	h := (&Admin{Publisher: pub, Tracker: tr, Metrics: m, Logger: log}).Handler()
	post := func(q string) (int, string) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/migrations/force"+q, nil))
		return rec.Code, rec.Body.String()
	}
	if code, _ := post(""); code != http.StatusBadRequest {
		t.Errorf("without ?proxy=: %d", code)
	}
	// web is connected and never ACKs: api's STRICT → DISABLE waits on it.
	pub.StreamOpened("web.default")
	pub.Update(snapshot.Update{Policy: &mesh.PolicySet{RootNamespace: "meshd-system", DefaultMode: mesh.MTLSDisable}})
	go pub.Run(ctx)
	testwait.For(t, testwait.Timeout, "api migrating", func() bool {
		for _, tr := range pub.Transitions() {
			if tr.Proxy == "api.default" && len(tr.WaitingOn) > 0 {
				return true
			}
		}
		return false
	})
	if code, body := post("?proxy=nobody.default"); code != http.StatusNotFound {
		t.Errorf("a proxy with no migration: %d %s", code, body)
	}
	if code, body := post("?proxy=api.default"); code != http.StatusOK || !strings.Contains(body, `"forced": "api.default"`) {
		t.Fatalf("force: %d %s", code, body)
	}
	for _, tr := range pub.Transitions() {
		if tr.Proxy == "api.default" {
			t.Fatalf("still migrating after force: %+v", tr)
		}
	}
}

// syncBuf is a log buffer safe for the handler and the test.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// fakeSecrets issues placeholder certificates: these tests are about the
// admin API, not identities.
type fakeSecrets struct{}

func (fakeSecrets) Identity(id mesh.Identity, _ []string) ([]byte, []byte, error) {
	return []byte("cert " + id.SPIFFEID()), []byte("key"), nil
}
func (fakeSecrets) Bundle() []byte         { return []byte("roots") }
func (fakeSecrets) NextRenewal() time.Time { return time.Time{} }

// publishQuickstart publishes the quickstart catalog once.
func publishQuickstart(t *testing.T, log *slog.Logger) (*snapshot.Publisher, *metrics.Metrics, *tracker.Tracker) {
	t.Helper()
	cat, err := file.Load("../../examples/quickstart/catalog.yaml", inputfile.DefaultMaxSize)
	if err != nil {
		t.Fatal(err)
	}
	m := metrics.New()
	pub := snapshot.New(cachev3.NewSnapshotCache(false, cachev3.IDHash{}, nil), fakeSecrets{},
		snapshot.Options{Translate: xds.Options{TrustDomain: "cluster.local"}, Metrics: m, Logger: log})
	pub.Update(snapshot.Update{Catalog: cat})
	if _, err := pub.Publish(); err != nil {
		t.Fatal(err)
	}
	return pub, m, tracker.NewTracker(log, m, nil)
}
