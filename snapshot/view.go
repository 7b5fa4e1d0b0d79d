package snapshot

import (
	"sort"
	"strings"
	"time"

	"github.com/meshd/meshd/mesh"
)

// View is what the publisher has published, as one immutable value: the
// loop builds a new one after each change and swaps it in through an
// atomic pointer, so readers (the admin API, the authenticator's node
// lookup, the tracker) never take a lock the loop holds, and never see a
// catalog and statuses from different publishes.
type View struct {
	// Ready: a catalog has been published at least once.
	Ready bool
	// Catalog is the catalog of the last publish (nil before the first).
	Catalog *mesh.Catalog
	// Policy is the policy set of the last publish (nil: defaults).
	Policy *mesh.PolicySet
	// Seq is the sequence number of the last Update rendered.
	Seq uint64
	// PublishedAt is when the last publish finished.
	PublishedAt time.Time
	// Migrations are the mTLS mode changes in progress, sorted by proxy.
	Migrations []Transition
	proxies    map[string]proxyEntry
}

type proxyEntry struct {
	snap   *Snapshot
	status *ProxyStatus
}

// View returns the current view. Never nil.
func (p *Publisher) View() *View { return p.view.Load() }

// publishView swaps in a new view; proxiesChanged rebuilds the per-proxy
// index (after a publish), otherwise the previous one is shared. Loop only.
func (p *Publisher) publishView(proxiesChanged bool) {
	old := p.view.Load()
	v := &View{Ready: p.published, Catalog: p.current, Policy: p.currentPolicy, Seq: p.currentSeq,
		PublishedAt: old.PublishedAt, Migrations: p.transitions(), proxies: old.proxies}
	if proxiesChanged {
		v.PublishedAt = time.Now()
		v.proxies = make(map[string]proxyEntry, len(p.proxies))
		for id, s := range p.proxies {
			v.proxies[id] = proxyEntry{snap: s.snap, status: s.status}
		}
	}
	p.view.Store(v)
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

// Status lists every proxy of the published catalog, sorted by id.
func (v *View) Status() []ProxyStatus {
	out := make([]ProxyStatus, 0, len(v.proxies))
	for _, e := range v.proxies {
		ps := *e.status
		if e.snap != nil {
			ps.Versions = map[string]string{}
			for t, ver := range e.snap.versions() {
				ps.Versions[shortType(t)] = ver
			}
		}
		out = append(out, ps)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Snapshot returns the snapshot served to a proxy (nil if none).
func (v *View) Snapshot(id string) *Snapshot { return v.proxies[id].snap }

// Known reports whether a node id is a proxy of the published catalog.
func (v *View) Known(id string) bool { return v.Catalog != nil && v.Catalog.Proxy(id) != nil }

// Ready reports whether a catalog has been published at least once.
func (p *Publisher) Ready() bool { return p.View().Ready }

// Catalog returns the catalog of the last publish.
func (p *Publisher) Catalog() *mesh.Catalog { return p.View().Catalog }

// Status lists every proxy of the published catalog, sorted by id.
func (p *Publisher) Status() []ProxyStatus { return p.View().Status() }

// Snapshot returns the snapshot currently served to a proxy (nil if none).
func (p *Publisher) Snapshot(id string) *Snapshot { return p.View().Snapshot(id) }

// Transitions lists the mTLS mode changes in progress, sorted by proxy.
func (p *Publisher) Transitions() []Transition { return p.View().Migrations }

func shortType(typeURL string) string {
	if i := strings.LastIndexByte(typeURL, '.'); i >= 0 {
		return typeURL[i+1:]
	}
	return typeURL
}
