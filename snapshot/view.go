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
	proxies    proxyTable
}

// proxyTable is the view's proxies: a base map shared by many views and
// the entries changed since it was made, so that a publish that changed a
// few proxies does not copy an entry per proxy of the fleet into the next
// view (issue 14). A removed proxy is an entry with neither.
type proxyTable struct {
	base, changed map[string]proxyEntry
}

func (t proxyTable) get(id string) (proxyEntry, bool) {
	if e, ok := t.changed[id]; ok {
		return e, e.status != nil
	}
	e, ok := t.base[id]
	return e, ok
}

func (t proxyTable) each(f func(id string, e proxyEntry)) {
	for id, e := range t.changed {
		if e.status != nil {
			f(id, e)
		}
	}
	for id, e := range t.base {
		if _, ok := t.changed[id]; !ok {
			f(id, e)
		}
	}
}

func (t proxyTable) len() int {
	n := len(t.base)
	for id, e := range t.changed {
		_, inBase := t.base[id]
		switch {
		case e.status != nil && !inBase:
			n++
		case e.status == nil && inBase:
			n--
		}
	}
	return n
}

type proxyEntry struct {
	snap   *Snapshot
	status *ProxyStatus
}

// View returns the current view. Never nil.
func (p *Publisher) View() *View { return p.view.Load() }

// publishView swaps in a new view; proxiesChanged takes in the proxies
// changed since the last one (after a publish), otherwise the previous
// table is shared. Loop only.
func (p *Publisher) publishView(proxiesChanged bool) {
	old := p.view.Load()
	v := &View{Ready: p.published, Catalog: p.current, Policy: p.currentPolicy, Seq: p.currentSeq,
		PublishedAt: old.PublishedAt, Migrations: p.transitions(), proxies: old.proxies}
	if proxiesChanged {
		v.PublishedAt = time.Now()
		t := old.proxies
		if len(t.changed)+len(p.viewDirty) > len(t.base)/8 {
			// Fold the changes into a new base now and then: the cost of
			// a copy per proxy, spread over the publishes since the last.
			t = proxyTable{base: make(map[string]proxyEntry, len(p.proxies)), changed: map[string]proxyEntry{}}
			for id, s := range p.proxies {
				t.base[id] = proxyEntry{snap: s.snap, status: s.status}
			}
		} else {
			changed := make(map[string]proxyEntry, len(t.changed)+len(p.viewDirty))
			for id, e := range t.changed {
				changed[id] = e
			}
			for id := range p.viewDirty {
				if s := p.proxies[id]; s != nil {
					changed[id] = proxyEntry{snap: s.snap, status: s.status}
				} else {
					changed[id] = proxyEntry{}
				}
			}
			t = proxyTable{base: t.base, changed: changed}
		}
		v.proxies = t
		clear(p.viewDirty)
	}
	p.view.Store(v)
}

// viewChanged records that a proxy's view entry changed.
func (p *Publisher) viewChanged(id string) { p.viewDirty[id] = true }

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
	out := make([]ProxyStatus, 0, v.proxies.len())
	v.proxies.each(func(_ string, e proxyEntry) {
		ps := *e.status
		if e.snap != nil {
			ps.Versions = map[string]string{}
			for t, ver := range e.snap.versions() {
				ps.Versions[shortType(t)] = ver
			}
		}
		out = append(out, ps)
	})
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Snapshot returns the snapshot served to a proxy (nil if none).
func (v *View) Snapshot(id string) *Snapshot {
	e, _ := v.proxies.get(id)
	return e.snap
}

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
