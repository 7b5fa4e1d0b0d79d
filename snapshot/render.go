package snapshot

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/xds"
)

// Stats describes one publish.
type Stats struct {
	// Visited: proxies whose inputs were looked at (fingerprinted) because
	// something they depend on changed; the rest were not touched at all.
	Visited int
	// Rendered: proxies rendered again; Patched: proxies whose only change
	// was one or more upstreams' endpoint sets, which replaced those in
	// their snapshot without a render.
	Rendered, Patched  int
	Skipped, Unchanged int
	Pushed, Failed     int
	Removed            int
}

func (s *Stats) add(o Stats) {
	s.Visited += o.Visited
	s.Rendered += o.Rendered
	s.Patched += o.Patched
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

// Why a proxy is visited in a publish.
const (
	visitRender    uint8 = 1 << iota // its own inputs may have changed: render
	visitEndpoints                   // upstreams' endpoint sets changed: patch
)

func (p *Publisher) publishOnce() (Stats, error) {
	start := time.Now()
	cat := p.catalog
	var st Stats
	if cat == nil {
		return st, errors.New("no catalog yet")
	}
	bundle, err := p.bundleSecret()
	if err != nil {
		return st, fmt.Errorf("trust bundle: %w", err)
	}
	// Everything is looked at the first time, after a policy change that
	// can change any workload's mode, and after a new trust bundle (every
	// sidecar's secrets). A change of authorization policies alone
	// concerns the workloads of the namespaces they are in (authzNS), or
	// every workload when one is in the root namespace.
	var (
		authzOnly bool
		authzNS   map[string]bool
	)
	if p.gen != nil && p.policy != p.genPolicy && bundle == p.genBundle {
		var everywhere bool
		authzNS, everywhere, authzOnly = mesh.AuthorizationChange(p.genPolicy, p.policy)
		authzOnly = authzOnly && !everywhere
	}
	all := p.gen == nil || (p.policy != p.genPolicy && !authzOnly) || bundle != p.genBundle
	diff := p.idx.update(cat)
	ov, ovProxies, ovServices := p.plan(cat, p.policy, all, diff)
	changed := map[mesh.ServiceKey]bool{}
	for _, k := range diff.services {
		changed[k] = true
	}
	for k := range diff.membersChanged {
		changed[k] = true
	}
	for k := range ovServices {
		changed[k] = true
	}
	gen := p.tr.GenerationFrom(cat, p.policy, ov, xds.Reuse{Prev: p.gen, Members: p.idx.membersOf,
		Changed: func(k mesh.ServiceKey) bool { return changed[k] }, AuthorizationsOnly: authzOnly})
	defer gen.Close()
	if p.rendered != nil {
		p.rendered(cat, p.policy)
	}

	// visit: slot → why (and, for patches, how the endpoints
	// fingerprint moves).
	visit := map[int32]visitReason{}
	mark := func(slots []int32, why uint8) {
		for _, s := range slots {
			v := visit[s]
			v.why |= why
			visit[s] = v
		}
	}
	// newEndpoints: the endpoint sets that replace the old ones of the
	// same name in the snapshots of proxies patched below.
	newEndpoints := map[string]*xds.Resource{}
	// identitiesMoved: a service's identity or a proxy may be gone, so
	// cached identities are checked for being still in use.
	identitiesMoved := all || len(diff.removed) > 0 || len(diff.proxies) > 0
	markIDs := func(ids func(yield func(string) bool)) {
		for id := range ids {
			if s, ok := p.idx.slots[id]; ok {
				mark([]int32{s}, visitRender)
			}
		}
	}
	if all {
		for _, px := range cat.Proxies() {
			visit[p.idx.slots[px.ID]] = visitReason{why: visitRender}
		}
	} else {
		if authzOnly {
			// The proxies of every service in a namespace whose
			// authorization policies changed (a workload's namespace is
			// its proxy's, which is its service's).
			for k, slots := range p.idx.members {
				if authzNS[k.Namespace] {
					mark(slots, visitRender)
				}
			}
		}
		markIDs(slices.Values(diff.proxies))
		markIDs(maps.Keys(ovProxies))
		markIDs(maps.Keys(p.failed))
		for k := range changed {
			mark(p.idx.members[k], visitRender)
			var old *mesh.Service
			if p.current != nil {
				old = p.current.Service(k)
			}
			now := cat.Service(k)
			renderCallers := func(slots []int32) { mark(slots, visitRender) }
			switch gen.ServiceChangeSince(p.gen, k) {
			case xds.ServiceShape:
				identitiesMoved = true
				p.idx.callers(old, now, k, renderCallers)
			case xds.ServiceEndpoints:
				r, err := gen.Endpoints(k)
				if err != nil {
					p.idx.callers(old, now, k, renderCallers) // the render reports it
					continue
				}
				newEndpoints[r.Name] = r
				delta := gen.EndpointsTerm(k) - p.gen.EndpointsTerm(k)
				p.idx.callers(old, now, k, func(slots []int32) {
					for _, s := range slots {
						v := visit[s]
						v.why |= visitEndpoints
						v.delta += delta
						visit[s] = v
					}
				})
			}
		}
		if p.checkSecrets {
			// The CA may have reissued leaves (a renewal fell due, or it
			// changed): the proxies of identities whose certificate
			// changed are rendered again.
			for _, svc := range cat.Services() {
				if p.identityChanged(svc) {
					mark(p.idx.members[svc.Key()], visitRender)
				}
			}
		}
	}
	p.checkSecrets = false

	var errs []error
	// Each identity's secret is fetched and hashed once per publish, however
	// many proxies share it.
	idSecrets := map[mesh.Identity]secretResult{}
	// Proxies sharing an endpoint set share its patched successor.
	patched := map[*typeSet]*typeSet{}
	for slot, why := range visit {
		px := cat.Proxy(p.idx.ids[slot])
		if px == nil {
			continue
		}
		st.Visited++
		if err := p.publishProxy(gen, cat, px, why, bundle, idSecrets, newEndpoints, patched, &st); err != nil {
			st.Failed++
			errs = append(errs, err)
		}
	}
	st.Skipped = len(cat.Proxies()) - st.Rendered - st.Patched
	for _, id := range diff.removed {
		// A proxy removed from the catalog keeps whatever it has but gets
		// nothing new; a reconnect gets nothing at all.
		if state := p.proxies[id]; state != nil {
			p.cache.ClearSnapshot(id)
			p.sets.release(state.snap)
			delete(p.proxies, id)
			p.viewChanged(id)
			st.Removed++
		}
		delete(p.failed, id)
	}
	if identitiesMoved {
		p.forgetIdentities(cat)
	}
	p.current, p.currentPolicy, p.currentSeq = cat, p.policy, p.seq
	p.gen, p.genPolicy, p.genBundle = gen, p.policy, bundle
	p.published = true
	p.renderedMigrations()
	p.m.SnapshotBuilds.Inc()
	p.m.SnapshotBuildDuration.Observe(time.Since(start).Seconds())
	p.m.ProxiesRendered.Add(float64(st.Rendered + st.Patched))
	p.m.ProxiesSkipped.Add(float64(st.Skipped))
	p.m.PublishesUnchanged.Add(float64(st.Unchanged))
	p.m.SnapshotErrors.Add(float64(st.Failed))
	p.log.Debug("published", "visited", st.Visited, "rendered", st.Rendered, "patched", st.Patched, "skipped", st.Skipped,
		"unchanged", st.Unchanged, "pushed", st.Pushed, "failed", st.Failed, "removed", st.Removed, "took", time.Since(start))
	return st, errors.Join(errs...)
}

type secretResult struct {
	res *xds.Resource
	err error
}

// visitReason is why a publish visits a proxy: visitRender and
// visitEndpoints bits, and the sum of the endpoint terms by which its
// upstreams' endpoint sets moved its endpoints fingerprint (patches only).
type visitReason struct {
	why   uint8
	delta uint64
}

func (p *Publisher) publishProxy(gen *xds.Generation, cat *mesh.Catalog, px *mesh.Proxy, why visitReason, bundle *xds.Resource,
	idSecrets map[mesh.Identity]secretResult, newEndpoints map[string]*xds.Resource, patched map[*typeSet]*typeSet, st *Stats) error {
	state := p.proxies[px.ID]
	if state == nil {
		state = &proxyState{status: &ProxyStatus{ID: px.ID}}
		p.proxies[px.ID] = state
	}
	fail := func(err error) error {
		s := *state.status
		s.Error, s.ErrorAt = err.Error(), time.Now()
		state.status = &s
		p.failed[px.ID] = true
		p.viewChanged(px.ID)
		p.log.Error("proxy snapshot rejected; its last good snapshot keeps serving", "proxy", px.ID, "err", err)
		return fmt.Errorf("proxy %q: %w", px.ID, err)
	}

	if why.why == visitEndpoints && state.snap != nil && state.status.Error == "" {
		// Only upstreams' endpoint sets changed (xds.ServiceEndpoints):
		// the new configuration is the old one with those sets replaced,
		// as a render would make it, without rendering; the inputs'
		// fingerprint moves by those sets' terms.
		st.Patched++
		state.endpoints += why.delta
		snap := p.patchEndpoints(state.snap, newEndpoints, patched)
		return p.set(px, state, snap, &ProxyStatus{ID: px.ID, OKAt: time.Now(), Warnings: state.status.Warnings}, st)
	}
	var secrets []*xds.Resource
	structural, endpoints := gen.Fingerprints(px)
	secretsKey := ""
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
		secretsKey = idSecret.Hash + "|" + bundle.Hash
	}
	if structural == state.structural && endpoints == state.endpoints && secretsKey == state.secrets && state.status.Error == "" {
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
	state.structural, state.endpoints, state.secrets = structural, endpoints, secretsKey
	if len(res.Warnings) > 0 && !slices.Equal(res.Warnings, state.status.Warnings) {
		p.log.Warn("policy warnings for proxy", "proxy", px.ID, "warnings", res.Warnings)
	}
	// A new status record: views already published keep the old one.
	return p.set(px, state, snap, &ProxyStatus{ID: px.ID, OKAt: time.Now(), Warnings: res.Warnings}, st)
}

// set makes snap (held) the proxy's snapshot, unless it has the versions
// of the current one.
func (p *Publisher) set(px *mesh.Proxy, state *proxyState, snap *Snapshot, status *ProxyStatus, st *Stats) error {
	delete(p.failed, px.ID)
	p.viewChanged(px.ID)
	if snap.sameVersions(state.snap) {
		p.sets.release(snap)
		state.status = status
		st.Unchanged++
		return nil
	}
	if err := p.cache.SetSnapshot(context.Background(), px.ID, snap); err != nil {
		p.sets.release(snap)
		s := *state.status
		s.Error, s.ErrorAt = "set snapshot: "+err.Error(), time.Now()
		state.status = &s
		p.failed[px.ID] = true
		return fmt.Errorf("proxy %q: set snapshot: %w", px.ID, err)
	}
	p.forgetAcks(px.ID, state.snap, snap)
	p.sets.release(state.snap)
	state.snap, state.status = snap, status
	st.Pushed++
	return nil
}

// patchEndpoints returns old (held) with every endpoint set named in
// replace replaced by the new one. Proxies with the same endpoint sets
// share the result (patched, for one publish).
func (p *Publisher) patchEndpoints(old *Snapshot, replace map[string]*xds.Resource, patched map[*typeSet]*typeSet) *Snapshot {
	const i = types.Endpoint
	prev := old.sets[i]
	if prev == nil {
		return p.sets.with(old, i, nil)
	}
	next, ok := patched[prev]
	if !ok {
		sorted := slices.Clone(prev.sorted)
		for j, r := range sorted {
			if n := replace[r.Name]; n != nil {
				sorted[j] = n
			}
		}
		next = p.sets.entry(resourcev3.EndpointType, sorted)
		patched[prev] = next
	}
	return p.sets.with(old, i, next)
}

// identityChanged reports whether the CA now has another certificate for
// the identity of svc than the one its proxies were last rendered with.
func (p *Publisher) identityChanged(svc *mesh.Service) bool {
	id := mesh.IdentityOf(p.opts.Translate.TrustDomain, svc)
	e := p.identities[id.SPIFFEID()]
	if e == nil {
		return false // none rendered yet: its proxies are new, visited anyway
	}
	cert, _, err := p.secrets.Identity(id, xds.DNSNames(svc.Key(), id.TrustDomain))
	return err != nil || hashBytes(cert) != e.key
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
