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
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
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

	mu      sync.Mutex
	latest  *mesh.Catalog // most recent catalog handed to Update
	current *mesh.Catalog // catalog of the last publish
	policy  *mesh.PolicySet
	proxies map[string]*proxyState
	// identities caches each identity's rendered secret by certificate, so a
	// secret is rebuilt only when the CA reissues the leaf.
	identities map[string]*secretEntry
	bundle     *secretEntry
	published  bool
	lastErr    error

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
	versions map[string]string
	snap     *cachev3.Snapshot
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
		applied:    map[string]modes{},
		desired:    map[string]mesh.MTLSMode{},
		migrations: map[string]*migration{},
	}
}

// Update hands the publisher a new catalog; Run renders it after the holdoff.
func (p *Publisher) Update(cat *mesh.Catalog) {
	p.mu.Lock()
	p.latest = cat
	p.mu.Unlock()
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// UpdatePolicy hands the publisher a new policy set; Run renders it after
// the holdoff like a catalog change.
func (p *Publisher) UpdatePolicy(ps *mesh.PolicySet) {
	p.mu.Lock()
	p.policy = ps
	p.mu.Unlock()
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

// Run debounces updates and publishes until ctx is done. It also re-renders
// when the earliest certificate falls due, using a single timer.
func (p *Publisher) Run(ctx context.Context) {
	var (
		holdoff  <-chan time.Time
		deadline <-chan time.Time
		renew    *time.Timer
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
		resetRenew()
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.kick:
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
	snap, versions := buildSnapshot(sets)
	state.inputKey = inputKey
	state.err = nil
	if len(res.Warnings) > 0 && !slices.Equal(res.Warnings, state.warnings) {
		p.log.Warn("policy warnings for proxy", "proxy", px.ID, "warnings", res.Warnings)
	}
	state.warnings = res.Warnings
	state.okAt = time.Now()
	if maps2Equal(versions, state.versions) {
		st.Unchanged++
		return nil
	}
	if err := p.cache.SetSnapshot(context.Background(), px.ID, snap); err != nil {
		return fail(fmt.Errorf("set snapshot: %w", err))
	}
	state.snap, state.versions = snap, versions
	st.Pushed++
	return nil
}

// buildSnapshot assembles a cache snapshot with one content-hash version per
// type and a precomputed delta version map, so neither SotW nor delta serving
// re-hashes resources per proxy.
func buildSnapshot(sets map[string][]*xds.Resource) (*cachev3.Snapshot, map[string]string) {
	snap := &cachev3.Snapshot{VersionMap: map[string]map[string]string{}}
	versions := map[string]string{}
	for typ, list := range sets {
		items := make([]types.Resource, len(list))
		vm := make(map[string]string, len(list))
		h := sha256.New()
		sorted := slices.Clone(list)
		sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
		for i, r := range sorted {
			items[i] = r.Message
			vm[r.Name] = r.Hash
			h.Write([]byte(r.Name))
			h.Write([]byte{0})
			h.Write([]byte(r.Hash))
			h.Write([]byte{0})
		}
		v := hex.EncodeToString(h.Sum(nil)[:8])
		if len(list) == 0 {
			// An empty set still needs a version so subscribers get an
			// (empty) answer instead of waiting forever.
			v = "empty"
		}
		versions[typ] = v
		snap.Resources[cachev3.GetResponseType(typ)] = cachev3.NewResources(v, items)
		snap.VersionMap[typ] = vm
	}
	return snap, versions
}

func maps2Equal(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
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
		if len(s.versions) > 0 {
			ps.Versions = map[string]string{}
			for t, v := range s.versions {
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
func (p *Publisher) Snapshot(id string) *cachev3.Snapshot {
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
