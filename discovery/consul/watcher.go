package consul

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshd/meshd/mesh"
)

// Defaults for Options.
const (
	// DefaultWaitTime is how long one blocking query may park in Consul.
	// Longer means fewer idle requests; Consul caps it at 10 minutes and adds
	// up to 1/16 of jitter itself.
	DefaultWaitTime = 5 * time.Minute
	// DefaultMinBackoff and DefaultMaxBackoff bound the retry delay after a
	// failed query; the delay doubles per consecutive failure, with full jitter
	// so that hundreds of watches do not reconnect in lock step.
	DefaultMinBackoff = 250 * time.Millisecond
	DefaultMaxBackoff = 30 * time.Second
)

// Options configures a Watcher. The zero value talks to the agent that the
// standard CONSUL_HTTP_* environment variables name (default 127.0.0.1:8500).
type Options struct {
	// Address of the Consul HTTP API, "host:port" or a URL
	// ("https://consul.internal:8501"). "" means CONSUL_HTTP_ADDR or
	// 127.0.0.1:8500.
	Address string
	// Datacenter to read; "" means the agent's own.
	Datacenter string
	// Token is the ACL token. TokenFile, if set, is read instead (and wins):
	// a file keeps the token out of the process list and the environment.
	// With neither, CONSUL_HTTP_TOKEN_FILE or CONSUL_HTTP_TOKEN apply.
	// The token needs service:read on the mesh's services and node:read.
	Token     string
	TokenFile string
	// TLS for an https Address (CA, client certificate).
	TLS api.TLSConfig
	// Stale allows any Consul server to answer, not only the leader: much
	// less load on the leader, at the price of data possibly a little behind.
	Stale bool
	// IncludeWarning also routes to instances whose checks are warning.
	IncludeWarning bool
	// WaitTime is the blocking-query wait (default DefaultWaitTime).
	WaitTime time.Duration
	// MinBackoff and MaxBackoff bound the retry delay after errors.
	MinBackoff, MaxBackoff time.Duration
	// Logger receives the watcher's logs; nil means slog.Default().
	Logger *slog.Logger
}

// Status describes the watcher for operators and metrics. meshd exports the
// counters and SyncAge.
type Status struct {
	// Address and Datacenter are as configured ("" = the agent's own).
	Address    string `json:"address"`
	Datacenter string `json:"datacenter,omitempty"`
	// Synced is true once a first complete catalog has been read.
	Synced bool `json:"synced"`
	// LoadedAt is when the catalog being served was built; SHA256 hashes it.
	LoadedAt time.Time `json:"loadedAt"`
	SHA256   string    `json:"sha256"`
	// Services is how many Consul services are being watched.
	Services int `json:"services"`
	// StaleSince is when some watch started failing and its part of the
	// catalog stopped being known current; zero while every watch is fine.
	// SyncAge is now minus StaleSince (0 while in sync): the metric to alert on.
	StaleSince time.Time     `json:"staleSince"`
	SyncAge    time.Duration `json:"syncAge"`
	// LastError is the last failed Consul request, "" once every query
	// succeeds again.
	LastError   string    `json:"lastError"`
	LastErrorAt time.Time `json:"lastErrorAt"`
	// CatalogError is why the latest view of Consul was not served (a
	// registration meshd cannot map, or an invalid mesh), "" when the latest
	// view is the catalog being served.
	CatalogError string `json:"catalogError"`
	// Errors counts failed Consul requests; Rejected counts catalogs built
	// from Consul that failed mapping or validation (and were not served);
	// Accepted counts changed catalogs served after the first; IndexResets
	// counts Consul indexes seen going backwards (each forces a resync).
	Errors uint64 `json:"errors"`
	// Answers counts answers from Consul with news (a new index), of the
	// service list and of every service: how much churn Consul reports.
	Answers     uint64 `json:"answers"`
	Rejected    uint64 `json:"rejected"`
	Accepted    uint64 `json:"accepted"`
	IndexResets uint64 `json:"indexResets"`
}

// Watcher follows Consul's catalog and serves it as mesh catalogs.
//
// Shape of the watch: one blocking query on /v1/catalog/services for the set
// of service names, and one blocking query on /v1/health/service/<name> (all
// instances, not only passing ones: sidecars need configuration while their
// instance is unhealthy) per service. A change on any of them rebuilds the
// whole catalog from the last answer of every query. A query that fails
// keeps its last answer, so a transport error can never empty a service; a
// service leaves the catalog only when Consul's own service list says it is
// gone.
type Watcher struct {
	opts    Options
	client  *api.Client
	logger  *slog.Logger
	updates chan *mesh.Catalog
	synced  chan struct{}
	running atomic.Bool
	mapper  *incrementalMapper // used only by Run's goroutine

	mu      sync.Mutex
	current *mesh.Catalog
	status  Status
}

// NewWatcher checks the options and prepares the Consul client. It does not
// contact Consul; Run does, and Synced says when the first catalog is in.
func NewWatcher(o Options) (*Watcher, error) {
	if o.WaitTime <= 0 {
		o.WaitTime = DefaultWaitTime
	}
	if o.WaitTime > 10*time.Minute {
		return nil, fmt.Errorf("consul: wait time %s is above Consul's maximum of 10m", o.WaitTime)
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = DefaultMinBackoff
	}
	if o.MaxBackoff < o.MinBackoff {
		o.MaxBackoff = max(DefaultMaxBackoff, o.MinBackoff)
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	cfg := api.DefaultConfig() // reads CONSUL_HTTP_ADDR, _TOKEN, _TOKEN_FILE, _SSL...
	if o.Address != "" {
		addr := o.Address
		switch {
		case strings.HasPrefix(addr, "https://"):
			cfg.Scheme, addr = "https", strings.TrimPrefix(addr, "https://")
		case strings.HasPrefix(addr, "http://"):
			cfg.Scheme, addr = "http", strings.TrimPrefix(addr, "http://")
		}
		cfg.Address = strings.TrimSuffix(addr, "/")
	}
	if o.Datacenter != "" {
		cfg.Datacenter = o.Datacenter
	}
	switch {
	case o.TokenFile != "":
		// Read here so that a missing or unreadable file stops start-up with
		// its name, instead of every query failing with "ACL not found".
		b, err := os.ReadFile(o.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("consul: reading ACL token file: %w", err)
		}
		tok := strings.TrimSpace(string(b))
		if tok == "" {
			return nil, fmt.Errorf("consul: ACL token file %s is empty", o.TokenFile)
		}
		cfg.Token, cfg.TokenFile = tok, ""
	case o.Token != "":
		cfg.Token, cfg.TokenFile = o.Token, ""
	}
	if tlsSet(o.TLS) {
		cfg.TLSConfig = o.TLS
	}
	// One long-poll per Consul service is parked at any time; without a pool
	// that large, every answered query would close its connection and dial
	// a new one.
	tr := cfg.Transport
	tr.MaxIdleConnsPerHost = 1 << 16
	tr.MaxIdleConns = 0
	cfg.HttpClient = nil
	client, err := api.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("consul: client for %s: %w", cfg.Address, err)
	}
	o.Address = cfg.Address
	return &Watcher{
		opts:    o,
		client:  client,
		logger:  o.Logger,
		updates: make(chan *mesh.Catalog, 1),
		synced:  make(chan struct{}),
		mapper:  newIncrementalMapper(MapOptions{IncludeWarning: o.IncludeWarning}),
		status:  Status{Address: cfg.Address, Datacenter: o.Datacenter},
	}, nil
}

// tlsSet reports whether any TLS option was given; if none was, the
// CONSUL_CACERT/CONSUL_CLIENT_CERT/... environment read by api.DefaultConfig
// stays in effect.
func tlsSet(t api.TLSConfig) bool {
	return t.Address != "" || t.CAFile != "" || t.CAPath != "" || len(t.CAPem) > 0 ||
		t.CertFile != "" || len(t.CertPEM) > 0 || t.KeyFile != "" || len(t.KeyPEM) > 0 || t.InsecureSkipVerify
}

// Current returns the catalog being served, or nil before the first sync.
func (w *Watcher) Current() *mesh.Catalog {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.current
}

// Updates delivers each new catalog while Run runs, with latest-value
// semantics (at most one waiting; a newer one replaces it). Never closed.
func (w *Watcher) Updates() <-chan *mesh.Catalog { return w.updates }

// Synced is closed once the first complete catalog is being served.
func (w *Watcher) Synced() <-chan struct{} { return w.synced }

// Status returns a snapshot of the watcher's state.
func (w *Watcher) Status() Status {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := w.status
	if !s.StaleSince.IsZero() {
		s.SyncAge = time.Since(s.StaleSince)
	}
	return s
}

// result is one answer (or failure) of one blocking query.
type result struct {
	service string // "" for the service list
	gen     uint64 // which generation of the service's watch sent it
	names   map[string][]string
	entries []*api.ServiceEntry
	err     error
	reset   bool // the index went backwards
}

// serviceWatch is the state of one per-service query, owned by Run.
type serviceWatch struct {
	gen     uint64
	cancel  context.CancelFunc
	entries []*api.ServiceEntry
	have    bool // entries hold an answer (possibly empty)
	failing time.Time
}

// Run follows Consul until ctx is done, then returns nil. It must not be
// called concurrently with itself.
func (w *Watcher) Run(ctx context.Context) error {
	if !w.running.CompareAndSwap(false, true) {
		return errors.New("consul: Watcher.Run is already running")
	}
	defer w.running.Store(false)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	results := make(chan result, 64)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel() // runs before wg.Wait

	var (
		watches     = map[string]*serviceWatch{}
		gen         uint64
		listHave    bool
		listFailing time.Time
		dirty       bool
		down        bool // logged "unreachable" and not yet "reachable again"
	)
	start := func(name string) {
		gen++
		wctx, wcancel := context.WithCancel(ctx)
		sw := &serviceWatch{gen: gen, cancel: wcancel}
		if old := watches[name]; old != nil {
			// A resync keeps the last answer until the new watch replaces it.
			old.cancel()
			sw.entries, sw.have, sw.failing = old.entries, old.have, old.failing
		}
		watches[name] = sw
		wg.Add(1)
		go func(g uint64) {
			defer wg.Done()
			w.watchService(wctx, name, g, results)
		}(gen)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		w.watchList(ctx, results)
	}()

	for {
		// Take every result already queued before rebuilding, so that a
		// burst (start-up, a resync, a deploy) makes one catalog, without
		// adding a delay to a lone change.
		var r result
		select {
		case <-ctx.Done():
			return nil
		case r = <-results:
		}
		for {
			now := time.Now()
			if r.service == "" {
				if r.err != nil {
					w.noteError(r.err)
					if listFailing.IsZero() {
						listFailing = now
					}
				} else {
					listFailing = time.Time{}
					listHave = true
					if r.reset {
						// Consul's state was replaced (restored snapshot, new
						// cluster): every per-service index is meaningless.
						w.logger.Warn("consul index went backwards; resyncing every service", "address", w.opts.Address)
						for name := range watches {
							start(name)
						}
					}
					for name := range r.names {
						if watches[name] == nil {
							start(name)
						}
					}
					for name, sw := range watches {
						if _, ok := r.names[name]; !ok {
							// Consul says the service is gone: a real removal.
							sw.cancel()
							delete(watches, name)
							dirty = true
						}
					}
				}
			} else if sw := watches[r.service]; sw != nil && sw.gen == r.gen {
				if r.err != nil {
					w.noteError(fmt.Errorf("service %q: %w", r.service, r.err))
					if sw.failing.IsZero() {
						sw.failing = now
					}
				} else {
					sw.entries, sw.have, sw.failing = r.entries, true, time.Time{}
					dirty = true
				}
			}
			select {
			case r = <-results:
				continue
			default:
			}
			break
		}

		// Staleness and the one-line outage log.
		stale := listFailing
		for _, sw := range watches {
			if !sw.failing.IsZero() && (stale.IsZero() || sw.failing.Before(stale)) {
				stale = sw.failing
			}
		}
		w.mu.Lock()
		w.status.StaleSince = stale
		w.status.Services = len(watches)
		if stale.IsZero() {
			w.status.LastError = ""
		}
		lastErr := w.status.LastError
		w.mu.Unlock()
		switch {
		case !stale.IsZero() && !down:
			down = true
			w.logger.Warn("consul queries failing; still serving the last catalog read", "address", w.opts.Address, "error", lastErr)
		case stale.IsZero() && down:
			down = false
			w.logger.Info("consul queries succeed again", "address", w.opts.Address)
		}

		// The first catalog waits for an answer about every service: a
		// partial first view would look like mass deregistration. Later, a
		// service that Consul has just listed and not yet answered for is
		// left out until it has, so that one failing query cannot hold back
		// every other change.
		if !dirty || !listHave || (!w.isSynced() && !allHave(watches)) {
			continue
		}
		dirty = false
		entries := make(map[string][]*api.ServiceEntry, len(watches))
		for name, sw := range watches {
			if sw.have && !waitsForDestination(sw.entries, watches) {
				entries[name] = sw.entries
			}
		}
		w.build(entries)
	}
}

func (w *Watcher) isSynced() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.status.Synced
}

// waitsForDestination reports whether a service's entries include a sidecar
// whose application service Consul lists but has not answered for yet. Such
// a sidecar is held back with it: mapped without its application it would
// get default attributes (protocol, ...) and be served until the
// application's answer arrives — even when that answer is then refused (a
// registration with a bad meshd-protocol would slip in with the default).
func waitsForDestination(entries []*api.ServiceEntry, watches map[string]*serviceWatch) bool {
	for _, e := range entries {
		if e == nil || e.Service == nil || e.Service.Kind != api.ServiceKindConnectProxy {
			continue
		}
		if d := destinationOf(e); d != "" {
			if dw := watches[d]; dw != nil && !dw.have {
				return true
			}
		}
	}
	return false
}

func allHave(watches map[string]*serviceWatch) bool {
	for _, sw := range watches {
		if !sw.have {
			return false
		}
	}
	return true
}

func (w *Watcher) noteError(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.status.Errors++
	w.status.LastError = err.Error()
	w.status.LastErrorAt = time.Now()
}

// build maps entries and serves the catalog if it is valid and different.
func (w *Watcher) build(entries map[string][]*api.ServiceEntry) {
	cat, err := w.mapper.Map(entries)
	now := time.Now()
	if err != nil {
		w.mu.Lock()
		repeat := w.status.CatalogError == err.Error()
		w.status.Rejected++
		w.status.CatalogError = err.Error()
		w.mu.Unlock()
		if !repeat {
			w.logger.Warn("consul catalog rejected; still serving the previous catalog", "address", w.opts.Address, "error", err.Error())
		}
		return
	}
	sum, err := hashCatalog(cat)
	if err != nil {
		w.logger.Error("hashing the catalog", "error", err) // cannot happen: plain data
		return
	}
	w.mu.Lock()
	w.status.CatalogError = ""
	if w.status.SHA256 == sum {
		w.mu.Unlock()
		return
	}
	first := w.current == nil
	w.current = cat
	w.status.LoadedAt = now
	w.status.SHA256 = sum
	if !first {
		w.status.Accepted++
	}
	w.status.Synced = true
	w.mu.Unlock()
	if first {
		close(w.synced)
	}
	w.logger.Info("consul catalog loaded", "address", w.opts.Address, "sha256", sum,
		"services", len(cat.Services()), "proxies", len(cat.Proxies()))
	w.publish(cat)
}

// hashCatalog hashes a catalog's canonical JSON: NewCatalog sorts
// everything and encoding/json sorts map keys, so equal catalogs hash equal.
func hashCatalog(c *mesh.Catalog) (string, error) {
	b, err := json.Marshal(struct {
		S []*mesh.Service
		P []*mesh.Proxy
	}{c.Services(), c.Proxies()})
	if err != nil {
		return "", err
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:]), nil
}

func (w *Watcher) publish(c *mesh.Catalog) {
	for {
		select {
		case w.updates <- c:
			return
		default:
		}
		select {
		case <-w.updates:
		default:
		}
	}
}

func (w *Watcher) query(ctx context.Context, index uint64) *api.QueryOptions {
	q := &api.QueryOptions{
		Datacenter: w.opts.Datacenter,
		AllowStale: w.opts.Stale,
		WaitIndex:  index,
		WaitTime:   w.opts.WaitTime,
	}
	return q.WithContext(ctx)
}

// blockingLoop runs one blocking query until ctx ends: fetch(index) returns
// the answer's index; send reports each new answer or error. It follows
// Consul's rules for blocking queries: the first read does not block, an
// index of 0 is never waited on, an index that goes backwards is a reset
// (counted, and the answer is taken as the new truth), and errors back off
// exponentially with full jitter.
func (w *Watcher) blockingLoop(ctx context.Context, fetch func(ctx context.Context, index uint64) (uint64, error), send func(err error, reset bool)) {
	var index uint64 // index of the last answer sent; 0 before the first
	failures := 0
	for ctx.Err() == nil {
		// After an error the connection to Consul was lost, and Consul may
		// have come back restarted or restored with lower indexes. A query
		// waiting for our old index would then park for the whole WaitTime
		// while we serve stale data, so the first query after an error
		// does not block: it reads the current state and its index.
		wait := index
		if failures > 0 {
			wait = 0
		}
		last, err := fetch(ctx, wait)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			failures++
			send(err, false)
			if !sleep(ctx, backoff(w.opts.MinBackoff, w.opts.MaxBackoff, failures)) {
				return
			}
			continue
		}
		recovered := failures > 0
		failures = 0
		last = max(last, 1)
		reset := index != 0 && last < index
		if reset {
			w.mu.Lock()
			w.status.IndexResets++
			w.mu.Unlock()
			w.logger.Debug("consul index went backwards", "was", index, "now", last)
		}
		if last == index && !recovered {
			// The wait timed out with nothing new: sending would only make
			// Run rebuild an identical catalog (the idle cost this avoids).
			continue
		}
		index = last
		w.mu.Lock()
		w.status.Answers++
		w.mu.Unlock()
		send(nil, reset)
	}
}

func (w *Watcher) watchList(ctx context.Context, out chan<- result) {
	var names map[string][]string
	w.blockingLoop(ctx, func(ctx context.Context, index uint64) (uint64, error) {
		n, meta, err := w.client.Catalog().Services(w.query(ctx, index))
		if err != nil {
			return 0, fmt.Errorf("listing services: %w", err)
		}
		names = n
		return meta.LastIndex, nil
	}, func(err error, reset bool) {
		r := result{names: names, err: err, reset: reset}
		select {
		case out <- r:
		case <-ctx.Done():
		}
	})
}

func (w *Watcher) watchService(ctx context.Context, name string, gen uint64, out chan<- result) {
	var entries []*api.ServiceEntry
	w.blockingLoop(ctx, func(ctx context.Context, index uint64) (uint64, error) {
		// passingOnly=false: health is decided in Map, per instance, with
		// the sidecar's and the application's checks together.
		es, meta, err := w.client.Health().Service(name, "", false, w.query(ctx, index))
		if err != nil {
			return 0, err
		}
		entries = es
		return meta.LastIndex, nil
	}, func(err error, reset bool) {
		r := result{service: name, gen: gen, entries: entries, err: err, reset: reset}
		select {
		case out <- r:
		case <-ctx.Done():
		}
	})
}

// backoff is the delay before retry number n (n ≥ 1): full jitter over an
// exponentially growing ceiling.
func backoff(minD, maxD time.Duration, n int) time.Duration {
	ceiling := minD
	for i := 1; i < n && ceiling < maxD; i++ {
		ceiling *= 2
	}
	ceiling = min(ceiling, maxD)
	return minD/2 + rand.N(ceiling-minD/2+1)
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
