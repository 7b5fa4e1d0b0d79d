// Package connlimit bounds what clients that have not authenticated may
// hold of meshd: connections (and so file descriptors, goroutines and
// buffers) on the xDS port.
//
// A connection is pending from accept until the xDS authenticator marks it
// (Authenticated: a stream or a CA call on it proved a credential). Pending
// connections are closed after PendingTimeout, so idle TCP connections,
// stalled TLS handshakes and HTTP/2 connections that never open an
// authenticated stream go away on their own (issue 13: 1,500 idle HTTP/2
// connections were kept for ever, ~20,000 idle TCP connections exhausted
// meshd's file descriptors).
//
// At most Max connections are open, at most MaxPending of them pending.
// A connection arriving when either limit is reached evicts the oldest
// pending one; only when none is pending (every connection authenticated)
// is the newcomer refused. So a flood of connections that never
// authenticate cannot keep a proxy out: it only recycles its own slots,
// and an authenticated connection is never closed for a newcomer. Max is
// set below meshd's file-descriptor limit, so the admin API, the catalog
// files and Consul keep theirs.
package connlimit

import (
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshd/meshd/internal/ratelog"
)

// Options configure a Listener.
type Options struct {
	// Max bounds the open connections (> 0).
	Max int
	// MaxPending bounds the connections not yet authenticated (0: Max).
	MaxPending int
	// PendingTimeout closes a connection that has not authenticated this
	// long after it was accepted (0: never).
	PendingTimeout time.Duration
	Logger         *slog.Logger
	// What names the listener in logs and metrics ("xds").
	What string
}

// Listener is a net.Listener whose connections are bounded as the package
// describes.
type Listener struct {
	net.Listener
	o   Options
	log *slog.Logger

	mu       sync.Mutex
	open     int
	npending int
	pending  list // oldest first
	byAddr   map[string]*conn

	conns   *prometheus.GaugeVec
	refused *prometheus.CounterVec
}

// list is an intrusive doubly linked list of pending connections.
type list struct{ head, tail *conn }

func (l *list) push(c *conn) {
	c.prev, c.next = l.tail, nil
	if l.tail != nil {
		l.tail.next = c
	} else {
		l.head = c
	}
	l.tail = c
}

func (l *list) remove(c *conn) {
	if c.prev != nil {
		c.prev.next = c.next
	} else {
		l.head = c.next
	}
	if c.next != nil {
		c.next.prev = c.prev
	} else {
		l.tail = c.prev
	}
	c.prev, c.next = nil, nil
}

// conn is an accepted connection.
type conn struct {
	net.Conn
	l          *Listener
	key        string
	prev, next *conn // in l.pending while pending (l.mu)
	pending    bool  // l.mu
	closed     bool  // l.mu
	timer      *time.Timer
}

// New wraps inner.
func New(inner net.Listener, o Options) *Listener {
	if o.MaxPending <= 0 || o.MaxPending > o.Max {
		o.MaxPending = o.Max
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	l := &Listener{Listener: inner, o: o, byAddr: map[string]*conn{},
		log: ratelog.New(o.Logger.Handler(), 10*time.Second),
		conns: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name:        "meshd_connections",
			Help:        "Open connections, by listener and state: pending (not yet authenticated) or authenticated.",
			ConstLabels: prometheus.Labels{"listener": o.What},
		}, []string{"state"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name:        "meshd_connections_closed_total",
			Help:        "Connections meshd closed to keep its limits, by listener and reason: limit (refused at accept: every open connection is authenticated), evicted (the oldest pending one, for a newcomer), auth_timeout (no authenticated stream or call within the pending timeout).",
			ConstLabels: prometheus.Labels{"listener": o.What},
		}, []string{"reason"}),
	}
	l.conns.WithLabelValues(statePending)
	l.conns.WithLabelValues(stateAuthenticated)
	return l
}

// RegisterMetrics adds the listener's gauge and counter to reg.
func (l *Listener) RegisterMetrics(reg prometheus.Registerer) {
	reg.MustRegister(l.conns, l.refused)
}

// Counts returns the open and the pending connections.
func (l *Listener) Counts() (open, pending int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.open, l.npending
}

// Accept returns the next connection within the limits.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		nc, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		c, evict, evictedState := l.admit(nc)
		if evict != nil {
			l.gauge(evictedState, -1)
			l.drop(evict, "evicted", "closed the oldest unauthenticated connection for a new one: the connection limit is reached")
		}
		if c != nil {
			l.gauge(statePending, +1)
		}
		if c == nil {
			_ = nc.Close()
			l.refused.WithLabelValues("limit").Inc()
			l.log.Warn("connection refused: every connection is authenticated and the limit is reached; raise --max-connections",
				"listener", l.o.What, "remote", nc.RemoteAddr().String(), "limit", l.o.Max)
			continue
		}
		return c, nil
	}
}

// Connection states, as the gauge labels them.
const (
	statePending       = "pending"
	stateAuthenticated = "authenticated"
)

// gauge moves the connection gauge; called without l.mu (metrics are
// another package).
func (l *Listener) gauge(state string, delta float64) {
	if state != "" {
		l.conns.WithLabelValues(state).Add(delta)
	}
}

// admit takes nc in, evicting the oldest pending connection if a limit is
// reached (evict, in the state it was counted in); it returns a nil c if
// nothing can be evicted.
func (l *Listener) admit(nc net.Conn) (c *conn, evict *conn, evictedState string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.open >= l.o.Max || l.npending >= l.o.MaxPending {
		evict = l.pending.head
		if evict == nil {
			return nil, nil, ""
		}
		evictedState = l.releaseLocked(evict) // its slot is the newcomer's now
	}
	c = &conn{Conn: nc, l: l, key: nc.RemoteAddr().String(), pending: true}
	l.open++
	l.npending++
	l.pending.push(c)
	l.byAddr[c.key] = c
	if l.o.PendingTimeout > 0 {
		c.timer = time.AfterFunc(l.o.PendingTimeout, func() {
			if l.stillPending(c) {
				l.drop(c, "auth_timeout", "closed a connection that authenticated nothing within the pending timeout")
			}
		})
	}
	return c, evict, evictedState
}

func (l *Listener) stillPending(c *conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return c.pending && !c.closed
}

// drop closes a connection meshd gave up on.
func (l *Listener) drop(c *conn, reason, msg string) {
	_ = c.Close()
	l.refused.WithLabelValues(reason).Inc()
	l.log.Warn(msg, "listener", l.o.What, "remote", c.key, "reason", reason)
}

// releaseLocked takes c out of the counts (once) and returns the state it
// was counted in ("" if it was already out), for the caller to update the
// gauge once it has unlocked.
func (l *Listener) releaseLocked(c *conn) string {
	if c.closed {
		return ""
	}
	c.closed = true
	l.open--
	if l.byAddr[c.key] == c {
		delete(l.byAddr, c.key)
	}
	if c.timer != nil {
		c.timer.Stop()
	}
	if c.pending {
		c.pending = false
		l.npending--
		l.pending.remove(c)
		return statePending
	}
	return stateAuthenticated
}

// Authenticated marks the connection from remote as authenticated: it no
// longer times out, and is never evicted.
func (l *Listener) Authenticated(remote net.Addr) {
	if remote == nil {
		return
	}
	key := remote.String()
	l.mu.Lock()
	c := l.byAddr[key]
	if c == nil || !c.pending || c.closed {
		l.mu.Unlock()
		return
	}
	c.pending = false
	l.npending--
	l.pending.remove(c)
	if c.timer != nil {
		c.timer.Stop()
	}
	l.mu.Unlock()
	l.gauge(statePending, -1)
	l.gauge(stateAuthenticated, +1)
}

// Close closes the connection and frees its slot.
func (c *conn) Close() error {
	c.l.mu.Lock()
	state := c.l.releaseLocked(c)
	c.l.mu.Unlock()
	c.l.gauge(state, -1)
	return c.Conn.Close()
}
