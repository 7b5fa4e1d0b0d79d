// Package ratelog limits how often a message is logged: a refusal an
// attacker (or a misconfigured client in a retry loop) can provoke at will
// is written at most once per period, with the count of the ones left out.
package ratelog

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// limitedHandler passes at most one record per message per period to its
// handler and counts the rest; the next record that passes carries the
// count as "suppressed" (issue 13: 10 s of unauthenticated stream attempts
// wrote 24 MB of warnings). The refusal counters (meshd_xds_auth_refused_total,
// meshd_xds_connections_refused_total, meshd_admin_requests_refused_total)
// carry the full count. Derived handlers (With) share the periods.
type limitedHandler struct {
	slog.Handler
	every time.Duration
	st    *limitState
}

type limitState struct {
	mu sync.Mutex
	// By message: the log messages are a handful of constant strings.
	last       map[string]time.Time
	suppressed map[string]int
}

// New returns a logger that writes at most one record per message every
// period through h and counts the others.
func New(h slog.Handler, every time.Duration) *slog.Logger {
	return slog.New(&limitedHandler{Handler: h, every: every,
		st: &limitState{last: map[string]time.Time{}, suppressed: map[string]int{}}})
}

func (h *limitedHandler) Handle(ctx context.Context, r slog.Record) error {
	h.st.mu.Lock()
	last, seen := h.st.last[r.Message]
	if seen && r.Time.Sub(last) < h.every {
		h.st.suppressed[r.Message]++
		h.st.mu.Unlock()
		return nil
	}
	h.st.last[r.Message] = r.Time
	n := h.st.suppressed[r.Message]
	delete(h.st.suppressed, r.Message)
	h.st.mu.Unlock()
	if n > 0 {
		r = r.Clone()
		r.AddAttrs(slog.Int("suppressed", n), slog.Duration("suppressed_over", h.every))
	}
	return h.Handler.Handle(ctx, r)
}

func (h *limitedHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &limitedHandler{Handler: h.Handler.WithAttrs(as), every: h.every, st: h.st}
}

func (h *limitedHandler) WithGroup(name string) slog.Handler {
	return &limitedHandler{Handler: h.Handler.WithGroup(name), every: h.every, st: h.st}
}
