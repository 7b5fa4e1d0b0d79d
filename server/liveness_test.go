package server

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshd/meshd/internal/metrics"
	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/sds"
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
	var logs lockedBuf
	log := slog.New(slog.NewTextHandler(&logs, nil))
	cache := NewCache()
	pub := snapshot.New(cache, sec, snapshot.Options{Translate: xds.Options{TrustDomain: "cluster.local"}, Logger: log})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go pub.Run(ctx)
	const bound = 300 * time.Millisecond
	tr := NewTracker(log, metrics.New(), nil)
	h := (&Admin{Publisher: pub, Tracker: tr, Metrics: metrics.New(), Logger: log, Liveness: &Liveness{Bound: bound, Logger: log,
		Checks: map[string]Stalled{"publisher": pub.Stalled, "xds": StreamsStalled(cache, tr)}}}).Handler()
	if code, body := healthz(t, h); code != http.StatusOK {
		t.Fatalf("idle meshd: /healthz %d %s", code, body)
	}
	start := time.Now()
	pub.Update(snapshot.Update{Catalog: cat}) // the render blocks on the CA
	for {
		code, body := healthz(t, h)
		if code == http.StatusServiceUnavailable {
			if !strings.Contains(body, "publisher") || !strings.Contains(body, "busy") {
				t.Errorf("/healthz says %q, want the publisher named", body)
			}
			break
		}
		if time.Since(start) > bound+5*time.Second {
			t.Fatalf("/healthz still %d %q %s after the publisher wedged (bound %s)", code, body, time.Since(start), bound)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if took := time.Since(start); took < bound {
		t.Errorf("/healthz failed after %s, before the bound %s", took, bound)
	}
	if !strings.Contains(logs.String(), "liveness check failed") {
		t.Error("the failure was not logged")
	}
	sec.free()
	waitFor(t, func() bool { code, _ := healthz(t, h); return code == http.StatusOK })
}

// The stream machinery's check fails while its locks are held for longer
// than the bound, and recovers when they are free.
func TestHealthzFailsWhenStreamLocksAreHeld(t *testing.T) {
	cache, tr := NewCache(), NewTracker(slog.New(slog.DiscardHandler), metrics.New(), nil)
	check := StreamsStalled(cache, tr)
	const bound = 100 * time.Millisecond
	if stalled, _ := check(time.Now(), bound); stalled {
		t.Fatal("stalled with nothing held")
	}
	waitFor(t, func() bool { s, _ := check(time.Now(), bound); return !s })
	cache.mu.Lock()
	check(time.Now(), bound) // starts a probe that waits for the lock
	waitFor(t, func() bool { s, what := check(time.Now(), bound); return s && strings.Contains(what, "locked") })
	cache.mu.Unlock()
	waitFor(t, func() bool { s, _ := check(time.Now(), bound); return !s })
}

// POST /migrations/force: needs ?proxy=, answers 404 for a proxy with no
// migration in progress, and completes one that waits.
func TestForceMigrationEndpoint(t *testing.T) {
	log := slog.New(slog.NewTextHandler(&bytes.Buffer{}, nil))
	ca, err := sds.LoadOrCreate(sds.Options{DataDir: t.TempDir(), TrustDomain: "cluster.local", Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	_, _, pub, m, tr := publishQuickstart(t, ca, log)
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
	waitFor(t, func() bool {
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
