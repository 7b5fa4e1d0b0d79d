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
//
// With MaxHandshakes, the listener also paces TLS handshakes
// (PaceHandshake): at most MaxHandshakes connections compute theirs at
// once, each holding a slot only while it has bytes to work on (not while
// it waits for its peer), handshakes already begun before new ones. A
// handshake's timeout then counts from its first slot, and the pending
// timeout from its end: a reconnect storm of thousands of proxies (a
// meshd restart) shares the CPU between a few handshakes that finish
// instead of all of them at once, each too slow to finish in time, closed,
// retried, never converging (issue 14: 1,462 of 10,000 proxies in 4.5
// min).
package connlimit

import (
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
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
	// long after it was accepted, or, with MaxHandshakes, after its
	// handshake ended (0: never).
	PendingTimeout time.Duration
	// MaxHandshakes bounds the handshakes computed at once (0: no bound,
	// and PaceHandshake only passes connections through). With it, every
	// connection's handshake must run through PaceHandshake.
	MaxHandshakes int
	// HandshakeTimeout is each paced handshake's deadline, from its first
	// slot (0: the caller's deadline stays).
	HandshakeTimeout time.Duration
	Logger           *slog.Logger
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
	// The pending connections by phase, each oldest first: fresh (no
	// handshake slot yet: nothing spent on them), shaking (handshake
	// begun), shaken (handshake over, not yet authenticated).
	fresh, shaking, shaken list
	byAddr                 map[string]*conn
	// Handshake slots: how many are held, and who waits for one, with
	// handshakes already begun served first.
	active               int
	nwaiting             int
	waitBegun, waitFresh list

	conns   *prometheus.GaugeVec
	refused *prometheus.CounterVec
}

// list is an intrusive doubly linked list of connections, through the
// links at picks (a connection is in one pending list and at most one
// wait queue).
type list struct {
	head, tail *conn
	at         func(*conn) *links
}

type links struct{ prev, next *conn }

func pendingLinks(c *conn) *links { return &c.pl }
func waitLinks(c *conn) *links    { return &c.wl }

func (l *list) push(c *conn) {
	cl := l.at(c)
	cl.prev, cl.next = l.tail, nil
	if l.tail != nil {
		l.at(l.tail).next = c
	} else {
		l.head = c
	}
	l.tail = c
}

func (l *list) remove(c *conn) {
	cl := l.at(c)
	if cl.prev != nil {
		l.at(cl.prev).next = cl.next
	} else {
		l.head = cl.next
	}
	if cl.next != nil {
		l.at(cl.next).prev = cl.prev
	} else {
		l.tail = cl.prev
	}
	cl.prev, cl.next = nil, nil
}

// pop removes and returns the head (nil if empty).
func (l *list) pop() *conn {
	c := l.head
	if c != nil {
		l.remove(c)
	}
	return c
}

// Handshake phases of a pending connection.
const (
	phaseFresh   = iota // no handshake slot yet
	phaseShaking        // handshake begun (it had a slot)
	phaseShaken         // handshake over
)

// conn is an accepted connection.
type conn struct {
	net.Conn
	l        *Listener
	key      string
	pl       links         // in the pending list of its phase while pending (l.mu)
	wl       links         // in a wait queue while waiting (l.mu)
	phase    int           // l.mu
	pending  bool          // l.mu
	closed   bool          // l.mu
	holds    bool          // holds a handshake slot (l.mu)
	waiting  bool          // in a wait queue (l.mu)
	wake     chan struct{} // closed when a slot is granted or the connection closed
	shakenAt time.Time     // its handshake ended (l.mu)
	timer    *time.Timer
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
		fresh: list{at: pendingLinks}, shaking: list{at: pendingLinks}, shaken: list{at: pendingLinks},
		waitBegun: list{at: waitLinks}, waitFresh: list{at: waitLinks},
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
	if l.o.MaxHandshakes <= 0 {
		return
	}
	for _, state := range []string{"active", "waiting"} {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "meshd_tls_handshakes",
			Help:        "TLS handshakes being computed (active, at most --max-concurrent-handshakes) and waiting for their turn, by listener.",
			ConstLabels: prometheus.Labels{"listener": l.o.What, "state": state},
		}, func() float64 {
			active, waiting := l.Handshakes()
			if state == "active" {
				return float64(active)
			}
			return float64(waiting)
		}))
	}
}

// Handshakes returns how many connections hold a handshake slot and how
// many wait for one.
func (l *Listener) Handshakes() (active, waiting int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.active, l.nwaiting
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

// admit takes nc in, evicting a pending connection if a limit is reached
// (evict, in the state it was counted in); it returns a nil c if nothing
// can be evicted.
//
// The one evicted is the oldest whose handshake ended more than
// shakenGrace ago without it authenticating (a proxy authenticates
// milliseconds after its handshake: these are idle HTTP/2 floods), else
// the oldest that has not begun its handshake (nothing was spent on it; a
// flood of idle connections is all of this kind), else the oldest
// handshaken one, and only else the oldest mid-handshake: closing those
// would throw away the CPU already spent and, in a reconnect storm, send
// their proxies to the back to spend it again. Each is bounded anyway, by
// its handshake timeout.
func (l *Listener) admit(nc net.Conn) (c *conn, evict *conn, evictedState string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.open >= l.o.Max || l.npending >= l.o.MaxPending {
		order := []*list{&l.fresh, &l.shaken, &l.shaking}
		if h := l.shaken.head; h != nil && time.Since(h.shakenAt) >= shakenGrace {
			order[0], order[1] = &l.shaken, &l.fresh
		}
		for _, ph := range order {
			if evict = ph.head; evict != nil {
				break
			}
		}
		if evict == nil {
			return nil, nil, ""
		}
		evictedState = l.releaseLocked(evict) // its slot is the newcomer's now
	}
	c = &conn{Conn: nc, l: l, key: nc.RemoteAddr().String(), pending: true}
	l.open++
	l.npending++
	l.fresh.push(c)
	l.byAddr[c.key] = c
	if l.o.MaxHandshakes <= 0 {
		l.armLocked(c)
	}
	return c, evict, evictedState
}

// armLocked starts c's pending timeout.
func (l *Listener) armLocked(c *conn) {
	if l.o.PendingTimeout <= 0 || c.timer != nil {
		return
	}
	c.timer = time.AfterFunc(l.o.PendingTimeout, func() {
		if l.stillPending(c) {
			l.drop(c, "auth_timeout", "closed a connection that authenticated nothing within the pending timeout")
		}
	})
}

// phaseList is the pending list of c's phase.
func (l *Listener) phaseList(c *conn) *list {
	switch c.phase {
	case phaseShaking:
		return &l.shaking
	case phaseShaken:
		return &l.shaken
	}
	return &l.fresh
}

// setPhaseLocked moves c to phase (in its pending list, if pending).
func (l *Listener) setPhaseLocked(c *conn, phase int) {
	if c.pending {
		l.phaseList(c).remove(c)
	}
	c.phase = phase
	if c.pending {
		l.phaseList(c).push(c)
	}
}

// slotBudget is how long a handshake may hold a slot, in all, while it
// waits for its peer. An honest handshake needs a millisecond or two of
// CPU on each side and a round trip or two; holding the slot across them
// keeps the bound end to end, so that peers on the same loaded machine
// (a load generator's thousands of clients) are not all started at once
// either. A peer that has not kept up within the budget (stalled, or
// trickling bytes) gives its slot back and from then on holds one only
// while meshd has its bytes to work on, so stalled handshakes cannot keep
// the slots from others.
const slotBudget = 100 * time.Millisecond

// shakenGrace is how long after its handshake a connection that has not
// authenticated is spared eviction while one that has not begun its
// handshake can go instead: a proxy opens its stream at once, and on a
// loaded machine within a second.
const shakenGrace = time.Second

// PaceHandshake returns the connection a handshake on nc (a connection l
// accepted) is to use, and end, to be called when the handshake is over
// (whether it succeeded or not). A read that returns bytes waits for a
// handshake slot (handshakes already begun before new ones) before it
// returns them, so a client that sends nothing holds none. The first slot
// begins the handshake: nc's deadline is set HandshakeTimeout ahead.
// The slot is kept across reads within slotBudget. end gives the slot
// back and starts the pending timeout. Without MaxHandshakes, nc itself.
func (l *Listener) PaceHandshake(nc net.Conn) (paced net.Conn, end func()) {
	c, ok := nc.(*conn)
	if !ok || c.l != l || l.o.MaxHandshakes <= 0 {
		return nc, func() {}
	}
	p := &pacedConn{Conn: c, c: c}
	return p, func() {
		p.ended.Store(true)
		l.endHandshake(c)
	}
}

// pacedConn is a connection while its handshake is paced. Its fields but
// ended belong to the handshake's goroutine.
type pacedConn struct {
	net.Conn
	c     *conn
	ended atomic.Bool // the handshake is over: reads pass through

	begun     bool          // it had a slot
	holds     bool          // it holds one (as far as it knows: eviction takes it)
	deadline  time.Time     // the handshake's
	grantedAt time.Time     // of the slot it holds
	held      time.Duration // slot time before grantedAt
}

func (p *pacedConn) Read(b []byte) (int, error) {
	if p.ended.Load() {
		return p.Conn.Read(b)
	}
	if p.holds {
		if left := slotBudget - p.held - time.Since(p.grantedAt); left > 0 {
			until := time.Now().Add(left)
			if !p.deadline.IsZero() && p.deadline.Before(until) {
				until = p.deadline
			}
			_ = p.c.Conn.SetReadDeadline(until)
			n, err := p.c.Conn.Read(b)
			// The handshake's deadline again, for what reads next (the
			// HTTP/2 preface, once the handshake is over).
			_ = p.c.Conn.SetReadDeadline(p.deadline)
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() || (!p.deadline.IsZero() && !time.Now().Before(p.deadline)) {
				return n, err
			}
		}
		// The peer has not kept up: its slot goes to others.
		p.yield()
	}
	n, err := p.c.Conn.Read(b)
	if n > 0 {
		if aerr := p.acquire(); aerr != nil {
			return 0, aerr
		}
	}
	return n, err
}

func (p *pacedConn) yield() {
	p.held += time.Since(p.grantedAt)
	p.holds = false
	p.c.l.yield(p.c)
}

// acquire waits for a slot; the first begins the handshake.
func (p *pacedConn) acquire() error {
	if err := p.c.l.acquire(p.c); err != nil {
		return err
	}
	p.holds, p.grantedAt = true, time.Now()
	if !p.begun {
		p.begun = true
		if t := p.c.l.o.HandshakeTimeout; t > 0 {
			p.deadline = p.grantedAt.Add(t)
			_ = p.c.Conn.SetDeadline(p.deadline)
		}
	}
	return nil
}

// acquire waits for a handshake slot for c.
func (l *Listener) acquire(c *conn) error {
	l.mu.Lock()
	if c.closed {
		l.mu.Unlock()
		return net.ErrClosed
	}
	if !c.holds && !c.waiting {
		if c.phase == phaseFresh {
			l.waitFresh.push(c)
		} else {
			l.waitBegun.push(c)
		}
		c.waiting = true
		l.nwaiting++
		c.wake = make(chan struct{})
		l.grantLocked()
	}
	wake := c.wake
	l.mu.Unlock()
	<-wake
	l.mu.Lock()
	holds := c.holds
	l.mu.Unlock()
	if !holds {
		return net.ErrClosed
	}
	return nil
}

// yield gives c's handshake slot back, if it holds one.
func (l *Listener) yield(c *conn) {
	l.mu.Lock()
	l.yieldLocked(c)
	l.mu.Unlock()
}

func (l *Listener) yieldLocked(c *conn) {
	if c.holds {
		c.holds = false
		l.active--
		l.grantLocked()
	}
}

// grantLocked hands free slots to the waiters, begun handshakes first.
func (l *Listener) grantLocked() {
	for l.active < l.o.MaxHandshakes {
		w := l.waitBegun.pop()
		if w == nil {
			w = l.waitFresh.pop()
		}
		if w == nil {
			return
		}
		w.waiting, w.holds = false, true
		l.nwaiting--
		l.active++
		if w.phase == phaseFresh {
			l.setPhaseLocked(w, phaseShaking)
		}
		close(w.wake)
	}
}

// endHandshake: c's handshake is over; its pending timeout starts.
func (l *Listener) endHandshake(c *conn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if c.closed {
		return
	}
	l.yieldLocked(c)
	c.shakenAt = time.Now()
	if c.pending {
		l.setPhaseLocked(c, phaseShaken)
		l.armLocked(c)
	} else {
		c.phase = phaseShaken
	}
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
	l.yieldLocked(c)
	if c.waiting {
		c.waiting = false
		l.nwaiting--
		if c.phase == phaseFresh {
			l.waitFresh.remove(c)
		} else {
			l.waitBegun.remove(c)
		}
		close(c.wake)
	}
	if c.pending {
		c.pending = false
		l.npending--
		l.phaseList(c).remove(c)
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
	l.phaseList(c).remove(c)
	c.pending = false
	l.npending--
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
