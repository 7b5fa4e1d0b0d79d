package snapshot

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"time"

	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/xds"
)

// Stats describes one publish.
type Stats struct {
	Rendered, Skipped, Unchanged, Pushed, Failed, Removed int
}

func (s *Stats) add(o Stats) {
	s.Rendered += o.Rendered
	s.Skipped += o.Skipped
	s.Unchanged += o.Unchanged
	s.Pushed += o.Pushed
	s.Failed += o.Failed
	s.Removed += o.Removed
}

// maxChained bounds the renders one publish chains while migration steps
// that wait for nothing proceed (each needs at most three steps).
const maxChained = 4

// publish renders the latest inputs and sets every changed snapshot, then,
// while migration steps can proceed without waiting for anyone (no proxy
// connected that must ACK them), renders their next step at once. Errors
// of individual proxies are collected (those proxies keep their last good
// snapshot); the others are still published. Loop goroutine only.
func (p *Publisher) publish() (Stats, error) {
	var total Stats
	var err error
	for range maxChained {
		st, e := p.publishOnce()
		total.add(st)
		err = e
		if p.catalog == nil || !p.advanceMigrations() {
			break
		}
	}
	p.publishView(true)
	return total, err
}

func (p *Publisher) publishOnce() (Stats, error) {
	start := time.Now()
	cat := p.catalog
	var st Stats
	if cat == nil {
		return st, errors.New("no catalog yet")
	}
	gen := p.tr.GenerationWith(cat, p.policy, p.plan(cat, p.policy))
	defer gen.Close()
	if p.rendered != nil {
		p.rendered(cat, p.policy)
	}

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
	for id, state := range p.proxies {
		if !seen[id] {
			// A proxy removed from the catalog keeps whatever it has but gets
			// nothing new; a reconnect gets nothing at all.
			p.cache.ClearSnapshot(id)
			p.sets.release(state.snap)
			delete(p.proxies, id)
			st.Removed++
		}
	}
	p.forgetIdentities(cat)
	p.current, p.currentPolicy, p.currentSeq = cat, p.policy, p.seq
	p.published = true
	p.renderedMigrations()
	p.m.SnapshotBuilds.Inc()
	p.m.SnapshotBuildDuration.Observe(time.Since(start).Seconds())
	p.m.ProxiesRendered.Add(float64(st.Rendered))
	p.m.ProxiesSkipped.Add(float64(st.Skipped))
	p.m.PublishesUnchanged.Add(float64(st.Unchanged))
	p.m.SnapshotErrors.Add(float64(st.Failed))
	p.log.Debug("published", "rendered", st.Rendered, "skipped", st.Skipped, "unchanged", st.Unchanged,
		"pushed", st.Pushed, "failed", st.Failed, "removed", st.Removed, "took", time.Since(start))
	return st, errors.Join(errs...)
}

type secretResult struct {
	res *xds.Resource
	err error
}

func (p *Publisher) publishProxy(gen *xds.Generation, cat *mesh.Catalog, px *mesh.Proxy, bundle *xds.Resource, idSecrets map[mesh.Identity]secretResult, st *Stats) error {
	state := p.proxies[px.ID]
	if state == nil {
		state = &proxyState{status: &ProxyStatus{ID: px.ID}}
		p.proxies[px.ID] = state
	}
	fail := func(err error) error {
		s := *state.status
		s.Error, s.ErrorAt = err.Error(), time.Now()
		state.status = &s
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
	if inputKey == state.inputKey && state.status.Error == "" {
		st.Skipped++
		return nil
	}
	st.Rendered++
	res, err := gen.Proxy(px.ID)
	if err != nil {
		return fail(err)
	}
	sets := res.ByType()
	// The CA's secrets, then those translation rendered (a gateway's
	// certificate files, by path).
	sets[resourcev3.SecretType] = append(secrets, res.Secrets...)
	if err := xds.CheckReferences(sets); err != nil {
		return fail(err)
	}
	snap := p.sets.build(sets)
	state.inputKey = inputKey
	if len(res.Warnings) > 0 && !slices.Equal(res.Warnings, state.status.Warnings) {
		p.log.Warn("policy warnings for proxy", "proxy", px.ID, "warnings", res.Warnings)
	}
	// A new status record: views already published keep the old one.
	status := &ProxyStatus{ID: px.ID, OKAt: time.Now(), Warnings: res.Warnings}
	if snap.sameVersions(state.snap) {
		p.sets.release(snap)
		state.status = status
		st.Unchanged++
		return nil
	}
	if err := p.cache.SetSnapshot(context.Background(), px.ID, snap); err != nil {
		p.sets.release(snap)
		return fail(fmt.Errorf("set snapshot: %w", err))
	}
	p.forgetAcks(px.ID, state.snap, snap)
	p.sets.release(state.snap)
	state.snap, state.status = snap, status
	st.Pushed++
	return nil
}

// forgetAcks drops what a connected node ACKed of each type whose version
// the new snapshot changes, so only an ACK that follows this publish counts
// for it: with content-hash versions a proxy may be sent again a version it
// ACKed before (a mode flipped and flipped back), and that old ACK says
// nothing about whether it applied the newer one in between.
func (p *Publisher) forgetAcks(node string, old, snap *Snapshot) {
	n := p.nodes[node]
	if n == nil {
		return
	}
	for i := range n.acked {
		var was string
		if old != nil && old.sets[i] != nil {
			was = old.sets[i].version
		}
		if snap.sets[i] == nil || snap.sets[i].version != was {
			n.acked[i] = ""
		}
	}
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
	// Cached by SPIFFE ID: every identity's secret has the same name
	// (xds.IdentitySecretName), so the name cannot tell them apart.
	spiffe := id.SPIFFEID()
	if e := p.identities[spiffe]; e != nil && e.key == k {
		return e.res, nil
	}
	r, err := xds.BuildIdentitySecret(xds.IdentitySecretName, cert, key)
	if err != nil {
		return nil, err
	}
	p.identities[spiffe] = &secretEntry{key: k, res: r}
	return r, nil
}

func (p *Publisher) forgetIdentities(cat *mesh.Catalog) {
	keep := map[string]bool{}
	for _, px := range cat.Proxies() {
		if px.SecretsFromMeshd() {
			if s := cat.Service(px.ServiceKey()); s != nil {
				keep[mesh.IdentityOf(p.opts.Translate.TrustDomain, s).SPIFFEID()] = true
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
