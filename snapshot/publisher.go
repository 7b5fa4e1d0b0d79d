package snapshot

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
	"weak"

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
// re-hashes resources per proxy. The per-type parts (go-control-plane's
// indexed Resources and the delta version map) are shared with every other
// snapshot whose set of that type is identical (typeSets): the sidecars of
// a service, and every caller of the same upstreams, get the same clusters,
// endpoints, routes and secrets.
func buildSnapshot(sets map[string][]*xds.Resource) (*cachev3.Snapshot, map[string]string) {
	held := &heldSnapshot{Snapshot: cachev3.Snapshot{VersionMap: make(map[string]map[string]string, len(sets))}}
	versions := make(map[string]string, len(sets))
	for typ, list := range sets {
		ts := typeSets.get(typ, list)
		i := cachev3.GetResponseType(typ)
		held.sets[i] = ts
		versions[typ] = ts.res.Version
		held.Resources[i] = ts.res
		held.VersionMap[typ] = ts.versionMap
	}
	held.register()
	// The cache and the publisher hold the embedded Snapshot; that interior
	// pointer keeps held, and so the sets it uses, alive.
	return &held.Snapshot, versions
}

// heldSnapshots finds the heldSnapshot around a *cachev3.Snapshot (Wire):
// snapshot address → weak pointer to its heldSnapshot. Weak, so the
// registry never keeps a snapshot alive; an entry whose snapshot is gone is
// removed by a cleanup.
var heldSnapshots sync.Map

func (h *heldSnapshot) register() {
	addr := uintptr(unsafe.Pointer(&h.Snapshot))
	heldSnapshots.Store(addr, weak.Make(h))
	runtime.AddCleanup(h, func(addr uintptr) {
		// Unless a new snapshot has been registered at the same address.
		if v, ok := heldSnapshots.Load(addr); ok && v.(weak.Pointer[heldSnapshot]).Value() == nil {
			heldSnapshots.CompareAndDelete(addr, v)
		}
	}, addr)
}

// Wire returns the resources of typeURL in a snapshot the publisher built,
// sorted by name, with their shared encodings (xds.Resource.Wire), and the
// snapshot's version of the type; ok is false for any other snapshot. The
// server answers from them instead of having go-control-plane marshal every
// resource again for every response. The slice must not be modified.
func Wire(s cachev3.ResourceSnapshot, typeURL string) (sorted []*xds.Resource, version string, ok bool) {
	snap, isSnap := s.(*cachev3.Snapshot)
	if !isSnap || snap == nil {
		return nil, "", false
	}
	v, found := heldSnapshots.Load(uintptr(unsafe.Pointer(snap)))
	if !found {
		return nil, "", false
	}
	// The address alone could be a reused one: it is this snapshot only if
	// the live heldSnapshot registered there embeds exactly snap.
	h := v.(weak.Pointer[heldSnapshot]).Value()
	if h == nil || &h.Snapshot != snap {
		return nil, "", false
	}
	i := cachev3.GetResponseType(typeURL)
	if i == types.UnknownType || h.sets[i] == nil {
		return nil, "", false
	}
	return h.sets[i].sorted, h.sets[i].res.Version, true
}

// heldSnapshot is a snapshot with the shared per-type sets it was built from:
// typeSets only holds weak pointers, so a set lives exactly as long as some
// snapshot uses it.
type heldSnapshot struct {
	cachev3.Snapshot
	sets [types.UnknownType]*typeSet // by response type, like Resources
}

// typeSet is one type's resources as a snapshot holds them. Never modified
// once built: many snapshots share it.
type typeSet struct {
	res        cachev3.Resources
	versionMap map[string]string
	// sorted is the set's resources sorted by name: their shared encodings
	// (xds.Resource.Wire), for responses built without marshalling (Wire).
	// A slice, not another map: a set is held per proxy for listeners.
	sorted []*xds.Resource
}

type typeSetKey struct {
	typ string
	sum [sha256.Size]byte // of every resource's name and hash, by name
}

// setCache finds the typeSet of identical content built for another proxy.
// It is keyed by content (the full SHA-256 over names and resource hashes),
// so a hit is always the same resources, and it holds its sets weakly: a
// set no snapshot uses is collected and its entry removed.
type setCache struct {
	mu   sync.Mutex
	sets map[typeSetKey]weak.Pointer[typeSet]
}

// typeSets is shared by every publisher: content-keyed, a hit is right
// whichever publisher built the set.
var typeSets = &setCache{sets: map[typeSetKey]weak.Pointer[typeSet]{}}

func (c *setCache) get(typ string, list []*xds.Resource) *typeSet {
	sorted := list
	byName := func(a, b *xds.Resource) int { return strings.Compare(a.Name, b.Name) }
	if !slices.IsSortedFunc(list, byName) {
		sorted = slices.SortedFunc(slices.Values(list), byName)
	}
	// The same digest as writing each name and hash to a hash.Hash, from
	// one buffer: no per-field conversion garbage for every proxy.
	var scratch [1024]byte
	buf := scratch[:0]
	for _, r := range sorted {
		buf = append(append(buf, r.Name...), 0)
		buf = append(append(buf, r.Hash...), 0)
	}
	key := typeSetKey{typ: typ, sum: sha256.Sum256(buf)}
	c.mu.Lock()
	defer c.mu.Unlock()
	if ts := c.sets[key].Value(); ts != nil {
		return ts
	}
	// The version is the first 8 bytes of the same hash, as before sets
	// were shared, so versions do not change across the upgrade.
	v := hex.EncodeToString(key.sum[:8])
	if len(list) == 0 {
		// An empty set still needs a version so subscribers get an
		// (empty) answer instead of waiting forever.
		v = "empty"
	}
	items := make(map[string]types.ResourceWithTTL, len(sorted))
	vm := make(map[string]string, len(sorted))
	for _, r := range sorted {
		items[r.Name] = types.ResourceWithTTL{Resource: r.Message}
		vm[r.Name] = r.Hash
	}
	// A copy: sorted may be the caller's slice.
	ts := &typeSet{res: cachev3.Resources{Version: v, Items: items}, versionMap: vm, sorted: slices.Clone(sorted)}
	c.sets[key] = weak.Make(ts)
	runtime.AddCleanup(ts, c.forget, key)
	return ts
}

// forget drops the entry of a collected set, unless a new set of the same
// content has taken its place since.
func (c *setCache) forget(key typeSetKey) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if wp, ok := c.sets[key]; ok && wp.Value() == nil {
		delete(c.sets, key)
	}
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
