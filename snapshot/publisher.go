package snapshot

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

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
	// Holdoff is how long the publisher waits after a catalog update for
	// further updates before rendering; MaxDelay bounds the wait under a
	// steady stream of updates.
	Holdoff, MaxDelay time.Duration
	Logger            *slog.Logger
	Metrics           *metrics.Metrics
}

// Publisher owns the per-proxy snapshots in a go-control-plane cache.
type Publisher struct {
	cache   cachev3.SnapshotCache
	secrets Secrets
	opts    Options
	tr      *xds.Translator
	log     *slog.Logger
	m       *metrics.Metrics

	kick chan struct{}
	// batching counts Batch calls in progress; their updates kick Run once,
	// at the end.
	batching atomic.Int32

	mu      sync.Mutex
	latest  *mesh.Catalog // most recent catalog handed to Update
	current *mesh.Catalog // catalog of the last publish
	policy  *mesh.PolicySet
	proxies map[string]*proxyState
	// identities caches each identity's rendered secret by certificate, so a
	// secret is rebuilt only when the CA reissues the leaf.
	identities map[string]*secretEntry
	bundle     *secretEntry
	// sets shares identical per-type sets between proxies' snapshots.
	sets      *setTable
	published bool
	lastErr   error

	// Safe mTLS migration state (migrate.go).
	acks       AckSource
	applied    map[string]modes
	desired    map[string]mesh.MTLSMode
	migrations map[string]*migration
}

type secretEntry struct {
	key string // hash of the PEM the resource was built from
	res *xds.Resource
}

type proxyState struct {
	inputKey string // fingerprint of every input; unchanged → skip render
	snap     *Snapshot // last set in the cache (nil: none yet)
	err      error
	errAt    time.Time
	okAt     time.Time
	warnings []string
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
	return &Publisher{
		cache: cache, secrets: secrets, opts: opts,
		tr:         xds.NewTranslator(opts.Translate),
		log:        opts.Logger,
		m:          opts.Metrics,
		kick:       make(chan struct{}, 1),
		proxies:    map[string]*proxyState{},
		identities: map[string]*secretEntry{},
		sets:       newSetTable(),
		applied:    map[string]modes{},
		desired:    map[string]mesh.MTLSMode{},
		migrations: map[string]*migration{},
	}
}

// Update hands the publisher a new catalog; Run renders it (see Run for
// when).
func (p *Publisher) Update(cat *mesh.Catalog) {
	p.mu.Lock()
	p.latest = cat
	p.mu.Unlock()
	p.kickRun()
}

// UpdatePolicy hands the publisher a new policy set; Run renders it like a
// catalog change.
func (p *Publisher) UpdatePolicy(ps *mesh.PolicySet) {
	p.mu.Lock()
	p.policy = ps
	p.mu.Unlock()
	p.kickRun()
}

// Batch runs f, which makes several updates that belong together (a catalog
// and the policy mapped from it), and lets Run see them as one change. Run
// publishes the first change after a quiet period at once, so without Batch
// it could render the new catalog with the old policy for a moment.
func (p *Publisher) Batch(f func()) {
	p.batching.Add(1)
	defer func() {
		if p.batching.Add(-1) == 0 {
			p.kickRun()
		}
	}()
	f()
}

func (p *Publisher) kickRun() {
	if p.batching.Load() > 0 {
		return // the batch's end kicks
	}
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// Ready reports whether a catalog has been published at least once.
func (p *Publisher) Ready() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.published
}

// Run publishes updates until ctx is done. The first change after a quiet
// period (no publish for at least Holdoff) is published at once, so an
// isolated change — one endpoint, one health flip — reaches proxies without
// waiting; changes that follow within Holdoff of a publish are debounced:
// published once no change has arrived for Holdoff, or MaxDelay after the
// first of them, whichever comes first. A burst therefore costs two
// publishes, its first change and the rest together. Run also re-renders when
// the earliest certificate falls due, using a single timer.
func (p *Publisher) Run(ctx context.Context) {
	var (
		holdoff     <-chan time.Time
		deadline    <-chan time.Time
		renew       *time.Timer
		lastPublish time.Time
	)
	resetRenew := func() {
		if renew != nil {
			renew.Stop()
		}
		next := p.secrets.NextRenewal()
		if next.IsZero() {
			renew = nil
			return
		}
		// The floor stops a renewal that keeps failing (or a leaf that is
		// somehow never reissued) from turning into a busy loop.
		renew = time.NewTimer(max(time.Until(next), time.Second) + 10*time.Millisecond)
	}
	renewC := func() <-chan time.Time {
		if renew == nil {
			return nil
		}
		return renew.C
	}
	publish := func() {
		holdoff, deadline = nil, nil
		if _, err := p.Publish(); err != nil {
			p.log.Error("publish failed; the last good snapshots keep serving", "err", err)
		}
		lastPublish = time.Now()
		resetRenew()
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.kick:
			if deadline == nil && time.Since(lastPublish) >= p.opts.Holdoff {
				publish() // leading edge: quiet until now
				continue
			}
			holdoff = time.After(p.opts.Holdoff)
			if deadline == nil {
				deadline = time.After(p.opts.MaxDelay)
			}
		case <-holdoff:
			publish()
		case <-deadline:
			publish()
		case <-renewC():
			renew = nil
			publish()
		}
	}
}

// Stats describes one publish.
type Stats struct {
	Rendered, Skipped, Unchanged, Pushed, Failed, Removed int
}

// Publish renders the latest catalog now and sets every changed snapshot.
// Errors of individual proxies are collected (and those proxies keep their
// last good snapshot); the others are still published.
func (p *Publisher) Publish() (Stats, error) {
	start := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	cat := p.latest
	var st Stats
	if cat == nil {
		return st, errors.New("no catalog yet")
	}
	gen := p.tr.GenerationWith(cat, p.policy, p.plan(cat, p.policy))
	defer gen.Close()

	bundle, err := p.bundleSecret()
	if err != nil {
		return st, fmt.Errorf("trust bundle: %w", err)
	}
	var errs []error
	seen := make(map[string]bool, len(cat.Proxies()))
	// Each identity's secret is fetched and hashed once per publish, however
	// many proxies share it.
	idSecrets := map[mesh.Identity]secretResult{}
	for _, px := range cat.Proxies() {
		seen[px.ID] = true
		if err := p.publishProxy(gen, cat, px, bundle, idSecrets, &st); err != nil {
			st.Failed++
			errs = append(errs, err)
		}
	}
	for id := range p.proxies {
		if !seen[id] {
			// A proxy removed from the catalog keeps whatever it has but gets
			// nothing new; a reconnect gets nothing at all.
			p.cache.ClearSnapshot(id)
			p.sets.release(p.proxies[id].snap)
			delete(p.proxies, id)
			st.Removed++
		}
	}
	p.forgetIdentities(cat)
	p.current = cat
	p.published = true
	p.lastErr = errors.Join(errs...)
	p.m.SnapshotBuilds.Inc()
	p.m.SnapshotBuildDuration.Observe(time.Since(start).Seconds())
	p.m.ProxiesRendered.Add(float64(st.Rendered))
	p.m.ProxiesSkipped.Add(float64(st.Skipped))
	p.m.PublishesUnchanged.Add(float64(st.Unchanged))
	p.m.SnapshotErrors.Add(float64(st.Failed))
	p.log.Debug("published", "rendered", st.Rendered, "skipped", st.Skipped, "unchanged", st.Unchanged,
		"pushed", st.Pushed, "failed", st.Failed, "removed", st.Removed, "took", time.Since(start))
	return st, p.lastErr
}

type secretResult struct {
	res *xds.Resource
	err error
}

func (p *Publisher) publishProxy(gen *xds.Generation, cat *mesh.Catalog, px *mesh.Proxy, bundle *xds.Resource, idSecrets map[mesh.Identity]secretResult, st *Stats) error {
	state := p.proxies[px.ID]
	if state == nil {
		state = &proxyState{}
		p.proxies[px.ID] = state
	}
	fail := func(err error) error {
		state.err, state.errAt = err, time.Now()
		p.log.Error("proxy snapshot rejected; its last good snapshot keeps serving", "proxy", px.ID, "err", err)
		return fmt.Errorf("proxy %q: %w", px.ID, err)
	}

	var secrets []*xds.Resource
	inputKey := gen.Fingerprint(px)
	if px.SecretsFromMeshd() {
		svc := cat.Service(px.ServiceKey())
		id := mesh.IdentityOf(p.opts.Translate.TrustDomain, svc)
		r, ok := idSecrets[id]
		if !ok {
			r.res, r.err = p.identitySecret(id, svc)
			idSecrets[id] = r
		}
		idSecret, err := r.res, r.err
		if err != nil {
			return fail(fmt.Errorf("identity %s: %w", id, err))
		}
		secrets = []*xds.Resource{idSecret, bundle}
		inputKey += "|" + idSecret.Hash + "|" + bundle.Hash
	}
	if inputKey == state.inputKey && state.err == nil {
		st.Skipped++
		return nil
	}
	st.Rendered++
	res, err := gen.Proxy(px.ID)
	if err != nil {
		return fail(err)
	}
	sets := res.ByType()
	sets[resourcev3.SecretType] = secrets
	if err := xds.CheckReferences(sets); err != nil {
		return fail(err)
	}
	snap := p.sets.build(sets)
	state.inputKey = inputKey
	state.err = nil
	if len(res.Warnings) > 0 && !slices.Equal(res.Warnings, state.warnings) {
		p.log.Warn("policy warnings for proxy", "proxy", px.ID, "warnings", res.Warnings)
	}
	state.warnings = res.Warnings
	state.okAt = time.Now()
	if snap.sameVersions(state.snap) {
		p.sets.release(snap)
		st.Unchanged++
		return nil
	}
	if err := p.cache.SetSnapshot(context.Background(), px.ID, snap); err != nil {
		p.sets.release(snap)
		return fail(fmt.Errorf("set snapshot: %w", err))
	}
	p.sets.release(state.snap)
	state.snap = snap
	st.Pushed++
	return nil
}

func (p *Publisher) bundleSecret() (*xds.Resource, error) {
	pem := p.secrets.Bundle()
	key := hashBytes(pem)
	if p.bundle != nil && p.bundle.key == key {
		return p.bundle.res, nil
	}
	r, err := xds.BuildTrustBundleSecret(pem)
	if err != nil {
		return nil, err
	}
	p.bundle = &secretEntry{key: key, res: r}
	return r, nil
}

func (p *Publisher) identitySecret(id mesh.Identity, svc *mesh.Service) (*xds.Resource, error) {
	cert, key, err := p.secrets.Identity(id, xds.DNSNames(svc.Key(), id.TrustDomain))
	if err != nil {
		return nil, err
	}
	// The cache key hashes the certificate only: a new key always comes with
	// a new certificate, and hashing the key would gain nothing.
	k := hashBytes(cert)
	name := xds.IdentitySecretName(id)
	if e := p.identities[name]; e != nil && e.key == k {
		return e.res, nil
	}
	r, err := xds.BuildIdentitySecret(name, cert, key)
	if err != nil {
		return nil, err
	}
	p.identities[name] = &secretEntry{key: k, res: r}
	return r, nil
}

func (p *Publisher) forgetIdentities(cat *mesh.Catalog) {
	keep := map[string]bool{}
	for _, px := range cat.Proxies() {
		if px.SecretsFromMeshd() {
			if s := cat.Service(px.ServiceKey()); s != nil {
				keep[xds.IdentitySecretName(mesh.IdentityOf(p.opts.Translate.TrustDomain, s))] = true
			}
		}
	}
	for name := range p.identities {
		if !keep[name] {
			delete(p.identities, name)
		}
	}
	// The CA must forget them too: a cached leaf nobody uses would keep
	// NextRenewal in the past and the renewal timer firing.
	if f, ok := p.secrets.(interface{ Forget(keep map[string]bool) }); ok {
		f.Forget(keep)
	}
}

func hashBytes(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:12])
}

// ProxyStatus is what the publisher knows about one proxy.
type ProxyStatus struct {
	ID       string            `json:"id"`
	Versions map[string]string `json:"versions,omitempty"`
	Error    string            `json:"error,omitempty"`
	ErrorAt  time.Time         `json:"errorAt,omitzero"`
	OKAt     time.Time         `json:"renderedAt,omitzero"`
	Warnings []string          `json:"warnings,omitempty"`
}

// Status lists every proxy of the current catalog, sorted by id.
func (p *Publisher) Status() []ProxyStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]ProxyStatus, 0, len(p.proxies))
	for id, s := range p.proxies {
		ps := ProxyStatus{ID: id, OKAt: s.okAt, ErrorAt: s.errAt, Warnings: s.warnings}
		if s.snap != nil {
			ps.Versions = map[string]string{}
			for t, v := range s.snap.versions() {
				ps.Versions[shortType(t)] = v
			}
		}
		if s.err != nil {
			ps.Error = s.err.Error()
		}
		out = append(out, ps)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Snapshot returns the snapshot currently served to a proxy (nil if none).
func (p *Publisher) Snapshot(id string) *Snapshot {
	p.mu.Lock()
	defer p.mu.Unlock()
	if s := p.proxies[id]; s != nil {
		return s.snap
	}
	return nil
}

// Catalog returns the catalog of the last publish.
func (p *Publisher) Catalog() *mesh.Catalog {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.current
}

func shortType(typeURL string) string {
	if i := strings.LastIndexByte(typeURL, '.'); i >= 0 {
		return typeURL[i+1:]
	}
	return typeURL
}
