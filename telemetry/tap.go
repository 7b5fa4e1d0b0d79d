package telemetry

import (
	"strings"
	"sync"
	"sync/atomic"
)

// Filter selects the events a tap subscriber sees; empty fields match
// everything.
type Filter struct {
	// Destination is a service (name.namespace, or a name in any
	// namespace).
	Destination string
	// Source is a caller's SPIFFE ID, or a prefix of one ending in "/"
	// (spiffe://cluster.local/ns/shop/), or an IP address for plaintext
	// callers.
	Source string
	// PathPrefix and Method apply to HTTP requests (tcp connections do
	// not match a filter that sets them).
	PathPrefix string
	Method     string
	// DeniedOnly shows only what a policy denied.
	DeniedOnly bool
}

// Match reports whether e passes the filter.
func (f *Filter) Match(e *Event) bool {
	if f.Destination != "" && e.Destination != f.Destination && !strings.HasPrefix(e.Destination, f.Destination+".") {
		return false
	}
	if f.Source != "" {
		ok := e.Source == f.Source || e.SourceAddress == f.Source ||
			(strings.HasSuffix(f.Source, "/") && strings.HasPrefix(e.Source, f.Source))
		if !ok {
			return false
		}
	}
	if (f.PathPrefix != "" || f.Method != "") && e.Protocol != ProtocolHTTP {
		return false
	}
	if f.PathPrefix != "" && !strings.HasPrefix(e.Path, f.PathPrefix) {
		return false
	}
	if f.Method != "" && !strings.EqualFold(e.Method, f.Method) {
		return false
	}
	return !f.DeniedOnly || e.Denied
}

// Hub hands live events to tap subscribers. Publishing never blocks: a
// subscriber that does not keep up loses events, and is told how many.
type Hub struct {
	n  atomic.Int32 // subscribers, so publishing without any costs one load
	mu sync.Mutex
	// subs is replaced, never changed, so Publish iterates a snapshot.
	subs    []*Subscription
	dropped atomic.Uint64
}

// Subscription is one tap.
type Subscription struct {
	filter Filter
	ch     chan Event
	hub    *Hub
	lost   atomic.Uint64
	once   sync.Once
}

// TapBuffer is how many events a subscriber may fall behind by.
const TapBuffer = 1024

// Subscribe starts a tap; Close ends it.
func (h *Hub) Subscribe(f Filter) *Subscription {
	s := &Subscription{filter: f, ch: make(chan Event, TapBuffer), hub: h}
	h.mu.Lock()
	h.subs = append(append([]*Subscription(nil), h.subs...), s)
	h.n.Store(int32(len(h.subs)))
	h.mu.Unlock()
	return s
}

// Events delivers the subscriber's events.
func (s *Subscription) Events() <-chan Event { return s.ch }

// Lost returns and resets the number of events dropped since the last call
// because the subscriber fell behind.
func (s *Subscription) Lost() uint64 { return s.lost.Swap(0) }

// Close ends the subscription.
func (s *Subscription) Close() {
	s.once.Do(func() {
		h := s.hub
		h.mu.Lock()
		subs := make([]*Subscription, 0, len(h.subs))
		for _, x := range h.subs {
			if x != s {
				subs = append(subs, x)
			}
		}
		h.subs = subs
		h.n.Store(int32(len(subs)))
		h.mu.Unlock()
	})
}

// Subscribers is the number of open taps.
func (h *Hub) Subscribers() int { return int(h.n.Load()) }

// Dropped is the number of events dropped for slow subscribers.
func (h *Hub) Dropped() uint64 { return h.dropped.Load() }

// Publish offers events to every matching subscriber.
func (h *Hub) Publish(evs []Event) {
	if h.n.Load() == 0 {
		return
	}
	h.mu.Lock()
	subs := h.subs
	h.mu.Unlock()
	for _, s := range subs {
		for i := range evs {
			if !s.filter.Match(&evs[i]) {
				continue
			}
			select {
			case s.ch <- evs[i]:
			default:
				s.lost.Add(1)
				h.dropped.Add(1)
			}
		}
	}
}
