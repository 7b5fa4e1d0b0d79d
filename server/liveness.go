package server

import (
	"sync/atomic"
	"time"

	"github.com/meshd/meshd/server/tracker"
)

// lockProbe tells whether the stream machinery's shared locks can be
// taken: it takes them on a goroutine of its own, so the health check never
// blocks; a probe still waiting after the bound means some code holds one
// of them for good (a stream loop or the publisher wedged inside).
type lockProbe struct {
	started atomic.Int64 // Unix nanoseconds of the probe in flight (0: none)
	take    func()
}

func (p *lockProbe) stalled(now time.Time, bound time.Duration) (bool, string) {
	if s := p.started.Load(); s != 0 {
		if d := now.Sub(time.Unix(0, s)); d > bound {
			return true, "the xDS cache and stream tracker have been locked for " + d.Round(time.Second).String()
		}
		return false, ""
	}
	p.started.Store(now.UnixNano())
	go func() {
		p.take()
		p.started.Store(0)
	}()
	return false, ""
}

// StreamsStalled is the stream machinery's liveness check (admin.Stalled):
// the cache's stream registry and snapshots, and the tracker, must be
// lockable.
func StreamsStalled(c *Cache, t *tracker.Tracker) func(now time.Time, bound time.Duration) (bool, string) {
	p := &lockProbe{take: func() {
		c.mu.Lock()
		c.mu.Unlock()
		_, _ = c.GetSnapshot("") // go-control-plane's cache lock
		t.Probe()
	}}
	return p.stalled
}
