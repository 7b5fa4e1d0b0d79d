package admin

import (
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"
)

// Stalled reports whether a component has had work pending without progress
// for longer than bound, and what; it must never block.
type Stalled func(now time.Time, bound time.Duration) (stalled bool, what string)

// Liveness is what /healthz checks: a meshd whose publisher or stream
// machinery has made no progress for Bound while work was pending is
// wedged, and /healthz fails so that a supervisor restarts it. Readiness
// (/readyz) is separate: it only says whether a catalog was published.
type Liveness struct {
	Bound  time.Duration
	Checks map[string]Stalled // by component name, for the message
	Logger *slog.Logger

	mu      sync.Mutex
	failing string // the last failure logged, to log each once
}

// check runs every check; the first stalled one is the answer.
func (l *Liveness) check(now time.Time) (ok bool, why string) {
	for name, c := range l.Checks {
		if stalled, what := c(now, l.Bound); stalled {
			return false, fmt.Sprintf("%s: %s (liveness bound %s)", name, what, l.Bound)
		}
	}
	return true, ""
}

func (l *Liveness) handler(w http.ResponseWriter, _ *http.Request) {
	ok, why := true, ""
	if l != nil {
		ok, why = l.check(time.Now())
		l.mu.Lock()
		if why != l.failing && l.Logger != nil {
			if ok {
				l.Logger.Info("liveness restored")
			} else {
				l.Logger.Error("liveness check failed: meshd has stopped making progress; /healthz answers 503 so that a supervisor restarts it", "why", why)
			}
		}
		l.failing = why
		l.mu.Unlock()
	}
	if !ok {
		http.Error(w, "unhealthy: "+why, http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, "ok")
}
