package server

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/internal/metrics"
	"github.com/meshd/meshd/internal/testwait"
	"github.com/meshd/meshd/server/tracker"
)

// The stream machinery's check fails while its locks are held for longer
// than the bound, and recovers when they are free.
func TestHealthzFailsWhenStreamLocksAreHeld(t *testing.T) {
	cache, tr := NewCache(), tracker.NewTracker(slog.New(slog.DiscardHandler), metrics.New(), nil)
	check := StreamsStalled(cache, tr)
	const bound = 100 * time.Millisecond
	if stalled, _ := check(time.Now(), bound); stalled {
		t.Fatal("stalled with nothing held")
	}
	testwait.For(t, testwait.Timeout, "the check to pass with nothing held", func() bool { s, _ := check(time.Now(), bound); return !s })
	cache.mu.Lock()
	check(time.Now(), bound) // starts a probe that waits for the lock
	testwait.For(t, testwait.Timeout, "the check to fail on the held lock", func() bool { s, what := check(time.Now(), bound); return s && strings.Contains(what, "locked") })
	cache.mu.Unlock()
	testwait.For(t, testwait.Timeout, "the check to recover once the lock is free", func() bool { s, _ := check(time.Now(), bound); return !s })
}
