package snapshot

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"

	"github.com/meshd/meshd/internal/metrics"
	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/xds"
)

// Secrets supplies identity certificates and the trust bundle. The CA
// implements it; it caches leaves and reissues them when due.
type Secrets interface {
	// Identity returns the PEM certificate chain and private key for id.
	Identity(id mesh.Identity, dnsNames []string) (certPEM, keyPEM []byte, err error)
	// Bundle returns the PEM roots every proxy must trust.
	Bundle() []byte
	// NextRenewal is when the earliest cached leaf is due for reissue (zero
	// if none); the publisher re-renders then with one timer for all proxies.
	NextRenewal() time.Time
}

// Options configure a Publisher.
type Options struct {
	Translate xds.Options
	// Holdoff is how long the publisher waits after a change for further
	// changes before rendering; MaxDelay bounds the wait under a steady
	// stream of changes.
	Holdoff, MaxDelay time.Duration
	// MigrationOverdue is how long one step of an mTLS migration may wait
	// for proxies to ACK before it is reported (log, metric, status); it
	// can then be forced (ForceMigration). Default 1 minute.
	MigrationOverdue time.Duration
	Logger           *slog.Logger
	Metrics          *metrics.Metrics
}

// Update is one change of the publisher's inputs. A catalog and the policy
// derived from it (Consul intentions are mapped against the catalog) arrive
// as one Update and are rendered together: a catalog is never rendered with
// a policy older than the one it was sent with. A nil field is unchanged.
type Update struct {
	Catalog *mesh.Catalog
	Policy  *mesh.PolicySet
}

// Publisher renders catalogs and policies into per-proxy snapshots and sets
// them in a go-control-plane cache.
//
// It is an event loop (Run): one goroutine owns the catalog, the policy set,
// every proxy's render state, the mTLS migrations, what each proxy has
// ACKed, and the debounce and renewal timers. Everything else talks to it by
// message: Update, Republish, ForceMigration and the stream events
// (StreamOpened, StreamClosed, Acked) are put in an inbox — a mutex held
// only to store them, never while calling anything — and the loop is kicked
// without blocking. Stream events coalesce per node into a fixed size
// (nodeEvents), so a stream loop never waits for the publisher, and a
// storm of them never grows the inbox. Readers (admin status, config dumps, the xDS
// authenticator, the tracker) read the immutable View the loop publishes
// after each change through an atomic pointer (View).
type Publisher struct {
	cache   cachev3.SnapshotCache
	secrets Secrets
	opts    Options
	tr      *xds.Translator
	log     *slog.Logger
	m       *metrics.Metrics

	in      inbox
	kick    chan struct{}
	view    atomic.Pointer[View]
	running atomic.Bool
	// busySince is when the loop started the work it is doing now (0:
	// waiting for work); with the inbox's age it tells a wedged loop
	// (Stalled).
	busySince atomic.Int64

	// Everything below is owned by the loop goroutine (or by Publish's
	// caller when no loop runs).
	catalog *mesh.Catalog // latest delivered
	policy  *mesh.PolicySet
	seq     uint64 // of the latest Update taken from the inbox
	// current, currentPolicy and currentSeq are what the last publish
	// rendered.
	current       *mesh.Catalog
	currentPolicy *mesh.PolicySet
	currentSeq    uint64
	proxies       map[string]*proxyState
	// identities caches each identity's rendered secret by certificate, so a
	// secret is rebuilt only when the CA reissues the leaf.
	identities map[string]*secretEntry
	bundle     *secretEntry
	// sets shares identical per-type sets between proxies' snapshots.
	sets      *setTable
	published bool
	// nodes is what each connected proxy has ACKed (stream events).
	nodes map[string]*nodeAcks
	// workloads is the mTLS migration state of every inbound workload
	// (migrate.go); migrating those in a migration; lastPlan the
	// overrides the last publish rendered.
	workloads map[string]*workload
	migrating map[string]*workload
	forced    map[string]bool
	lastPlan  planned
	// idx knows who depends on what in the catalog being published
	// (index.go), so a publish visits only the proxies a change concerns.
	idx *index
	// gen, genPolicy and genBundle are the last publish's generation,
	// policy set and trust bundle: the next reuses what did not change.
	gen       *xds.Generation
	genPolicy *mesh.PolicySet
	genBundle *xds.Resource
	// checkSecrets: the CA may have reissued leaves (renewal due, or a
	// Republish); the next publish compares every identity's certificate.
	checkSecrets bool
	// failed are the proxies whose last render was rejected; every
	// publish tries them again.
	failed map[string]bool
	// viewDirty are the proxies whose view entry changed since the last
	// view was published.
	viewDirty map[string]bool

	// rendered, in tests, sees the inputs of every render.
	rendered func(*mesh.Catalog, *mesh.PolicySet)
}

type secretEntry struct {
	key string // hash of the PEM the resource was built from
	res *xds.Resource
}

type proxyState struct {
	// structural, endpoints and secrets fingerprint every input of the
	// last render (xds.Generation.Fingerprints, and the secrets' hashes):
	// unchanged → no render.
	structural string
	endpoints  uint64
	secrets    string
	snap       *Snapshot // last set in the cache (nil: none yet)
	status     *ProxyStatus
}

// nodeAcks is what the loop knows about one connected node.
type nodeAcks struct {
	streams int
	acked   [types.UnknownType]string // version ACKed, by response type
}

// New returns a publisher writing into cache. The cache must answer named
// requests with the subset asked for (ads=false): gRPC subscribes to each
// listener by name as channels are created, and an ADS-mode cache answers a
// named request only when it names every resource of the type (FACTS.md).
func New(cache cachev3.SnapshotCache, secrets Secrets, opts Options) *Publisher {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Metrics == nil {
		opts.Metrics = metrics.New()
	}
	if opts.Holdoff == 0 {
		opts.Holdoff = 100 * time.Millisecond
	}
	if opts.MaxDelay == 0 {
		opts.MaxDelay = time.Second
	}
	if opts.MigrationOverdue == 0 {
		opts.MigrationOverdue = time.Minute
	}
	p := &Publisher{
		cache: cache, secrets: secrets, opts: opts,
		tr:         xds.NewTranslator(opts.Translate),
		log:        opts.Logger,
		m:          opts.Metrics,
		kick:       make(chan struct{}, 1),
		proxies:    map[string]*proxyState{},
		identities: map[string]*secretEntry{},
		sets:       newSetTable(),
		nodes:      map[string]*nodeAcks{},
		workloads:  map[string]*workload{},
		migrating:  map[string]*workload{},
		forced:     map[string]bool{},
		idx:        newIndex(),
		failed:     map[string]bool{},
		viewDirty:  map[string]bool{},
	}
	p.view.Store(&View{})
	return p
}

// inbox holds the messages the loop has not taken yet. Its mutex is held
// only to store or take them.
type inbox struct {
	mu        sync.Mutex
	update    Update
	seq       uint64 // of the latest Update put
	hasUpdate bool
	republish bool
	// events coalesces stream events per node (nodeEvents: a fixed size
	// however many arrive).
	events map[string]*nodeEvents
	force  []forceRequest
	// since is when the oldest message still waiting arrived (0: empty).
	since time.Time
}

// nodeEvents is what one node's stream events since the loop last took
// them do to what the loop knows of the node (its open streams, what it
// ACKed), in a fixed size however many arrive: a proxy reconnecting in a
// loop, or ACKing faster than the loop takes them, costs nothing more.
//
// Applied one by one, the events would be: an open adds a stream; a close
// removes one, and the last one forgets the node with its ACKs (a proxy
// that reconnects ACKs again what it is sent); an ACK records the version
// of its type if the node has a stream open. Two rewrites keep the same
// effect from any starting state, and leave at most one ACK per type and
// the opens and closes as closes followed by opens:
//   - only the latest ACK of a type counts: a later one overwrites it, or
//     the node is forgotten in between and loses it anyway;
//   - an open followed by a close, with only ACKs between them, is the
//     ACKs alone: from a connected node the two cancel out; from a node
//     without streams the close forgets it again with the ACKs, as the
//     ACKs alone would be ignored.
//
// What remains is counted: closes, then opens, and each type's latest ACK
// with where it arrived among them.
type nodeEvents struct {
	closes, opens int
	acks          [types.UnknownType]pendingAck
}

// pendingAck is an ACK not yet applied, after closes closes and opens opens
// of its node's events (opens > 0 only once closes is final: no close
// follows an open).
type pendingAck struct {
	set           bool
	version       string
	closes, opens int
}

func (e *nodeEvents) open() { e.opens++ }

func (e *nodeEvents) close() {
	if e.opens == 0 {
		e.closes++
		return
	}
	// Cancels the last open; ACKs that arrived since then count as
	// arrived before it.
	e.opens--
	for i := range e.acks {
		if a := &e.acks[i]; a.set && a.opens > e.opens {
			a.opens = e.opens
		}
	}
}

func (e *nodeEvents) ack(typ types.ResponseType, version string) {
	e.acks[typ] = pendingAck{set: true, version: version, closes: e.closes, opens: e.opens}
}

// apply returns n (nil: no streams open) after the events.
func (e *nodeEvents) apply(n *nodeAcks) *nodeAcks {
	before := 0
	if n != nil {
		before = n.streams
	}
	// The closes come first: they end streams open before, and the last
	// of them forgets the node.
	forgotten := e.closes > 0 && e.closes >= before
	after := 0
	if !forgotten {
		after = before - e.closes
	}
	streams := after + e.opens
	if streams <= 0 {
		return nil
	}
	if n == nil || forgotten {
		n = &nodeAcks{}
	}
	n.streams = streams
	for i, a := range e.acks {
		switch {
		case !a.set:
		case a.closes < e.closes:
			// Before the last close: it counts unless that close forgot
			// the node (then n was replaced above).
			if !forgotten {
				n.acked[i] = a.version
			}
		case after+a.opens > 0: // a stream was open when it arrived
			n.acked[i] = a.version
		}
	}
	return n
}

type forceRequest struct {
	proxy string
	done  chan error
}

func (p *Publisher) put(f func(in *inbox)) {
	p.in.mu.Lock()
	if p.in.since.IsZero() {
		p.in.since = time.Now()
	}
	f(&p.in)
	p.in.mu.Unlock()
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// Update delivers new inputs; the loop renders them (see Run for when). It
// returns the update's sequence number (View.Seq reports the last one
// applied). Never blocks on the loop.
func (p *Publisher) Update(u Update) uint64 {
	var seq uint64
	p.put(func(in *inbox) {
		if u.Catalog != nil {
			in.update.Catalog = u.Catalog
		}
		if u.Policy != nil {
			in.update.Policy = u.Policy
		}
		in.hasUpdate = true
		in.seq++
		seq = in.seq
	})
	return seq
}

// Republish asks for a render of the current inputs, as after a CA change
// (a new bundle, reissued leaves).
func (p *Publisher) Republish() {
	p.put(func(in *inbox) { in.republish = true })
}

func (p *Publisher) event(node string, f func(*nodeEvents)) {
	if node == "" {
		return
	}
	p.put(func(in *inbox) {
		if in.events == nil {
			in.events = map[string]*nodeEvents{}
		}
		e := in.events[node]
		if e == nil {
			e = &nodeEvents{}
			in.events[node] = e
		}
		f(e)
	})
}

// StreamOpened tells the publisher a stream of node was opened (the stream
// loops call it once the stream names its node). Never blocks.
func (p *Publisher) StreamOpened(node string) { p.event(node, (*nodeEvents).open) }

// StreamClosed tells the publisher a stream of node ended. Never blocks.
func (p *Publisher) StreamClosed(node string) { p.event(node, (*nodeEvents).close) }

// Acked tells the publisher node ACKed version of typeURL (on a stream it
// opened: an ACK from a node with no stream open is ignored). Never blocks.
func (p *Publisher) Acked(node, typeURL, version string) {
	if i := cachev3.GetResponseType(typeURL); i != types.UnknownType {
		p.event(node, func(e *nodeEvents) { e.ack(i, version) })
	}
}

// ErrNoMigration is ForceMigration's answer for a proxy with no mTLS
// migration in progress.
var ErrNoMigration = errors.New("no mTLS migration in progress for this proxy")

// ForceMigration completes the pending mTLS migration of a proxy at once,
// without waiting for the ACKs its current step waits for (an operator's
// decision, after a report that it is overdue). It waits for the loop to
// apply and publish it, or for ctx.
func (p *Publisher) ForceMigration(ctx context.Context, proxy string) error {
	done := make(chan error, 1)
	p.put(func(in *inbox) { in.force = append(in.force, forceRequest{proxy: proxy, done: done}) })
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// take empties the inbox.
func (p *Publisher) take() (u Update, seq uint64, hasUpdate, republish bool, events map[string]*nodeEvents, force []forceRequest) {
	p.in.mu.Lock()
	defer p.in.mu.Unlock()
	u, seq, hasUpdate, republish, events, force = p.in.update, p.in.seq, p.in.hasUpdate, p.in.republish, p.in.events, p.in.force
	p.in.update, p.in.hasUpdate, p.in.republish, p.in.events, p.in.force = Update{}, false, false, nil, nil
	p.in.since = time.Time{}
	return
}

// change is what taking the inbox asks of the loop.
type change struct {
	render bool // inputs changed: render (debounced)
	now    bool // render at once (a forced migration)
	force  []forceRequest
}

// drain applies the inbox to the loop's state.
func (p *Publisher) drain() change {
	u, seq, hasUpdate, republish, events, force := p.take()
	var c change
	if hasUpdate {
		if u.Catalog != nil {
			p.catalog = u.Catalog
		}
		if u.Policy != nil {
			p.policy = u.Policy
		}
		p.seq = seq
		c.render = true
	}
	if republish {
		c.render = true
		p.checkSecrets = true
	}
	if len(events) > 0 {
		for node, evs := range events {
			p.applyEvents(node, evs)
		}
		// ACKs and disconnects can let migration steps proceed.
		if p.advanceMigrations() {
			c.render = true
		}
	}
	for _, f := range force {
		if p.forceMigration(f.proxy) {
			c.now = true
			c.force = append(c.force, f)
		} else {
			f.done <- ErrNoMigration
		}
	}
	return c
}

func (p *Publisher) applyEvents(node string, evs *nodeEvents) {
	if n := evs.apply(p.nodes[node]); n != nil {
		p.nodes[node] = n
	} else {
		// No stream open: forgotten, and a reconnecting proxy ACKs again
		// what it is sent (a delta proxy sent nothing, because it declared
		// everything served, is reported as holding it: server/delta.go).
		delete(p.nodes, node)
	}
}

// Run is the publisher's loop; it returns when ctx is done. The first
// change after a quiet period (no publish for at least Holdoff) is
// published at once, so an isolated change — one endpoint, one health flip —
// reaches proxies without waiting; changes that follow within Holdoff of a
// publish are debounced: published once no change has arrived for Holdoff,
// or MaxDelay after the first of them, whichever comes first. A burst
// therefore costs two publishes, its first change and the rest together.
// Run also re-renders when the earliest certificate falls due (one timer for
// all proxies) and reports migration steps that become overdue.
func (p *Publisher) Run(ctx context.Context) {
	if !p.running.CompareAndSwap(false, true) {
		panic("snapshot: Publisher.Run called twice")
	}
	defer p.running.Store(false)
	var (
		holdoff, deadline <-chan time.Time
		renew, overdue    *time.Timer
		lastPublish       time.Time
	)
	timerC := func(t *time.Timer) <-chan time.Time {
		if t == nil {
			return nil
		}
		return t.C
	}
	reset := func(t **time.Timer, at time.Time, floor time.Duration) {
		if *t != nil {
			(*t).Stop()
			*t = nil
		}
		if !at.IsZero() {
			*t = time.NewTimer(max(time.Until(at), floor))
		}
	}
	arm := func() {
		// The floor stops a renewal that keeps failing (or a leaf that is
		// somehow never reissued) from turning into a busy loop.
		if next := p.secrets.NextRenewal(); !next.IsZero() {
			reset(&renew, next.Add(10*time.Millisecond), time.Second)
		} else {
			reset(&renew, time.Time{}, 0)
		}
		reset(&overdue, p.nextOverdue(), 10*time.Millisecond)
	}
	publish := func(force []forceRequest) {
		holdoff, deadline = nil, nil
		if _, err := p.publish(); err != nil {
			p.log.Error("publish failed; the last good snapshots keep serving", "err", err)
		}
		for _, f := range force {
			f.done <- nil
		}
		lastPublish = time.Now()
		arm()
	}
	// A publish made before Run (Publish) may have cached leaves and
	// started migrations: their timers start now.
	arm()
	for {
		fired := false
		select {
		case <-ctx.Done():
			return
		case <-p.kick:
		case <-holdoff:
			fired = true
		case <-deadline:
			fired = true
		case <-timerC(renew):
			renew, fired = nil, true
			p.checkSecrets = true
		case <-timerC(overdue):
			overdue = nil
			p.busySince.Store(time.Now().UnixNano())
			p.reportOverdue()
			p.publishView(false)
			reset(&overdue, p.nextOverdue(), 10*time.Millisecond)
		}
		p.busySince.Store(time.Now().UnixNano())
		c := p.drain()
		switch {
		case c.now || fired:
			publish(c.force)
		case c.render && deadline == nil && time.Since(lastPublish) >= p.opts.Holdoff:
			publish(nil) // leading edge: quiet until now
		case c.render:
			holdoff = time.After(p.opts.Holdoff)
			if deadline == nil {
				deadline = time.After(p.opts.MaxDelay)
			}
			p.publishView(false) // migration status may have changed
		default:
			p.publishView(false)
		}
		p.busySince.Store(0)
	}
}

// Publish applies everything delivered so far and renders it now, on the
// caller's goroutine. It is for tests, benchmarks and tools that drive a
// publisher without its loop; it panics if Run is running (the loop owns
// the state then).
func (p *Publisher) Publish() (Stats, error) {
	if p.running.Load() {
		panic("snapshot: Publish called while Run runs")
	}
	c := p.drain()
	st, err := p.publish()
	for _, f := range c.force {
		f.done <- nil
	}
	return st, err
}

// Stalled reports whether the loop has work it has not got to for longer
// than bound: messages waiting in its inbox, or one piece of work (a
// publish) still running. A healthy loop takes each message within
// milliseconds and publishes within seconds even at 10,000 proxies, so a
// stall means it is wedged; what says why.
func (p *Publisher) Stalled(now time.Time, bound time.Duration) (stalled bool, what string) {
	if b := p.busySince.Load(); b != 0 {
		if d := now.Sub(time.Unix(0, b)); d > bound {
			return true, "the publisher has been busy with one piece of work for " + d.Round(time.Second).String()
		}
	}
	p.in.mu.Lock()
	since := p.in.since
	p.in.mu.Unlock()
	if !since.IsZero() && now.Sub(since) > bound {
		return true, "changes have waited " + now.Sub(since).Round(time.Second).String() + " for the publisher to take them"
	}
	return false, ""
}
