package snapshot

import (
	"maps"
	"slices"
	"strings"

	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/xds"
)

// The publisher's index of who depends on what, so that a publish visits
// only the proxies whose inputs changed (issue 14: "a change visits only
// its consumers"). It describes the catalog of the last publish and is
// owned by the loop.
//
// A new catalog is compared with the previous one item by item (equal
// definitions are skipped by a field comparison, no hashing); what changed
// decides which proxies are rendered again:
//
//	change                                  proxies visited
//	a proxy added or its definition changed that proxy
//	a service changed (or added, removed)   its own proxies (its endpoints'
//	                                        labels decide their workload), and
//	                                        its consumers: rendered again, or,
//	                                        when only its endpoint set changed
//	                                        for them (xds.ServiceEndpoints),
//	                                        their endpoint set patched
//	an mTLS migration step                  the workload's proxy (server side)
//	                                        or its service's consumers (caller
//	                                        side)
//	a leaf reissued                         the proxies of that identity
//	authorization policies alone            the proxies of the namespaces of
//	                                        those added, removed or changed
//	                                        (mesh.AuthorizationChange); every
//	                                        proxy if one is in the root
//	                                        namespace
//	any other policy change, or the trust   every proxy (fingerprints then skip
//	bundle                                  the ones whose inputs are unchanged)
//
// Proxies are numbered (slots) so that the consumer lists stay small: at
// 1,000 proxies that each call 199 services the lists hold 199,000 int32s.
type index struct {
	cat   *mesh.Catalog
	slots map[string]int32 // proxy id → slot
	ids   []string         // slot → proxy id ("" when free)
	free  []int32
	// consumers: service → sorted slots of the proxies that have it as an
	// upstream; members: service → sorted slots of its own proxies.
	consumers map[mesh.ServiceKey][]int32
	members   map[mesh.ServiceKey][]int32
	// Proxies that call a visible service set (whole namespaces, a
	// transparent sidecar, a gateway's routes: xds.VisibleSelector) are not
	// in consumers: they are grouped by selector, and a changed service
	// concerns the groups whose selector takes it in. There are few
	// selectors, however many proxies share each.
	selectors map[string]*selectorGroup
	// selectorOf is the selector of each proxy in a group, by slot.
	selectorOf map[int32]string
}

// selectorGroup is the proxies sharing one visible-set selector.
type selectorGroup struct {
	sel   *xds.Selector
	slots []int32 // sorted
}

func newIndex() *index {
	return &index{slots: map[string]int32{}, consumers: map[mesh.ServiceKey][]int32{}, members: map[mesh.ServiceKey][]int32{},
		selectors: map[string]*selectorGroup{}, selectorOf: map[int32]string{}}
}

// catalogDiff is what changed between two catalogs.
type catalogDiff struct {
	// services added, removed or changed (definition).
	services []mesh.ServiceKey
	// proxies added or changed; removed proxies.
	proxies, removed []string
	// membersChanged: services whose own proxies were added, removed or
	// changed (their workloads decide the service's endpoint modes).
	membersChanged map[mesh.ServiceKey]bool
}

func (d *catalogDiff) memberChanged(k mesh.ServiceKey) {
	if d.membersChanged == nil {
		d.membersChanged = map[mesh.ServiceKey]bool{}
	}
	d.membersChanged[k] = true
}

// update moves the index to cat and returns what changed since the
// catalog it described (everything, the first time). Both catalogs list
// services and proxies in canonical order, so they are walked side by
// side: one comparison per item, no lookup.
func (x *index) update(cat *mesh.Catalog) catalogDiff {
	var prevSvcs []*mesh.Service
	var prevPxs []*mesh.Proxy
	if x.cat != nil {
		prevSvcs, prevPxs = x.cat.Services(), x.cat.Proxies()
	}
	x.cat = cat
	var d catalogDiff
	svcs := cat.Services()
	for i, j := 0, 0; i < len(svcs) || j < len(prevSvcs); {
		var c int
		switch {
		case i == len(svcs):
			c = 1
		case j == len(prevSvcs):
			c = -1
		default:
			c = compareServiceKeys(svcs[i].Key(), prevSvcs[j].Key())
		}
		switch {
		case c < 0: // added
			d.services = append(d.services, svcs[i].Key())
			i++
		case c > 0: // removed
			d.services = append(d.services, prevSvcs[j].Key())
			j++
		default:
			if !sameService(prevSvcs[j], svcs[i]) {
				d.services = append(d.services, svcs[i].Key())
			}
			i, j = i+1, j+1
		}
	}
	pxs := cat.Proxies()
	for i, j := 0, 0; i < len(pxs) || j < len(prevPxs); {
		var c int
		switch {
		case i == len(pxs):
			c = 1
		case j == len(prevPxs):
			c = -1
		default:
			c = strings.Compare(pxs[i].ID, prevPxs[j].ID)
		}
		switch {
		case c < 0: // added
			p := pxs[i]
			x.add(p)
			d.proxies = append(d.proxies, p.ID)
			d.memberChanged(p.ServiceKey())
			i++
		case c > 0: // removed
			old := prevPxs[j]
			x.remove(old)
			d.removed = append(d.removed, old.ID)
			d.memberChanged(old.ServiceKey())
			j++
		default:
			p, old := pxs[i], prevPxs[j]
			if !sameProxy(old, p) {
				x.remove(old)
				x.add(p)
				d.proxies = append(d.proxies, p.ID)
				d.memberChanged(old.ServiceKey())
				d.memberChanged(p.ServiceKey())
			}
			i, j = i+1, j+1
		}
	}
	return d
}

// compareServiceKeys is the catalog's order of services.
func compareServiceKeys(a, b mesh.ServiceKey) int {
	if c := strings.Compare(a.Namespace, b.Namespace); c != 0 {
		return c
	}
	return strings.Compare(a.Name, b.Name)
}

func (x *index) add(p *mesh.Proxy) {
	slot, ok := x.slots[p.ID]
	if !ok {
		if n := len(x.free); n > 0 {
			slot, x.free = x.free[n-1], x.free[:n-1]
			x.ids[slot] = p.ID
		} else {
			slot = int32(len(x.ids))
			x.ids = append(x.ids, p.ID)
		}
		x.slots[p.ID] = slot
	}
	insertSlot(x.members, p.ServiceKey(), slot)
	if sel := xds.VisibleSelector(p); sel != nil {
		g := x.selectors[sel.Key]
		if g == nil {
			g = &selectorGroup{sel: sel}
			x.selectors[sel.Key] = g
		}
		if i, found := slices.BinarySearch(g.slots, slot); !found {
			g.slots = slices.Insert(g.slots, i, slot)
		}
		x.selectorOf[slot] = sel.Key
		return
	}
	for i := range p.Upstreams {
		insertSlot(x.consumers, p.Upstreams[i].Key(), slot)
	}
}

// remove takes p's edges out of the index; its slot stays reserved while
// the same id is added again (a changed proxy), and is freed by forget.
func (x *index) remove(p *mesh.Proxy) {
	slot, ok := x.slots[p.ID]
	if !ok {
		return
	}
	deleteSlot(x.members, p.ServiceKey(), slot)
	if key, ok := x.selectorOf[slot]; ok {
		g := x.selectors[key]
		if i, found := slices.BinarySearch(g.slots, slot); found {
			g.slots = slices.Delete(g.slots, i, i+1)
		}
		if len(g.slots) == 0 {
			delete(x.selectors, key)
		}
		delete(x.selectorOf, slot)
	} else {
		for i := range p.Upstreams {
			deleteSlot(x.consumers, p.Upstreams[i].Key(), slot)
		}
	}
	if x.cat.Proxy(p.ID) == nil {
		delete(x.slots, p.ID)
		x.ids[slot] = ""
		x.free = append(x.free, slot)
	}
}

func insertSlot(m map[mesh.ServiceKey][]int32, k mesh.ServiceKey, slot int32) {
	l := m[k]
	if i, found := slices.BinarySearch(l, slot); !found {
		m[k] = slices.Insert(l, i, slot)
	}
}

func deleteSlot(m map[mesh.ServiceKey][]int32, k mesh.ServiceKey, slot int32) {
	l := m[k]
	if i, found := slices.BinarySearch(l, slot); found {
		if l = slices.Delete(l, i, i+1); len(l) == 0 {
			delete(m, k)
		} else {
			m[k] = l
		}
	}
}

// proxiesOf returns the catalog's proxies of the given slots.
func (x *index) proxiesOf(slots []int32) []*mesh.Proxy {
	out := make([]*mesh.Proxy, 0, len(slots))
	for _, s := range slots {
		if p := x.cat.Proxy(x.ids[s]); p != nil {
			out = append(out, p)
		}
	}
	return out
}

// callers calls f with the slots of every proxy that calls service k:
// those that list it as an upstream, then every group whose visible set
// takes it in, as it was (old) or as it is (now; either may be nil). A
// slot is given once.
func (x *index) callers(old, now *mesh.Service, k mesh.ServiceKey, f func(slots []int32)) {
	if l := x.consumers[k]; len(l) > 0 {
		f(l)
	}
	for _, g := range x.selectors {
		if (old != nil && g.sel.Includes(old)) || (now != nil && g.sel.Includes(now)) {
			f(g.slots)
		}
	}
}

// membersOf returns the proxies of service k.
func (x *index) membersOf(k mesh.ServiceKey) []*mesh.Proxy { return x.proxiesOf(x.members[k]) }

// consumerIDs returns the ids of the proxies that call service k.
func (x *index) consumerIDs(k mesh.ServiceKey) []string {
	var out []string
	svc := x.cat.Service(k)
	x.callers(svc, svc, k, func(slots []int32) {
		for _, s := range slots {
			out = append(out, x.ids[s])
		}
	})
	return out
}

// sameService reports whether two service definitions are equal. Every
// field counts (TestSameDefinitionsSeeEveryField checks that a change of
// each is seen): an equal definition is not looked at again.
func sameService(a, b *mesh.Service) bool {
	if a == b {
		return true
	}
	if a.Name != b.Name || a.Namespace != b.Namespace || a.Protocol != b.Protocol || a.ServiceAccount != b.ServiceAccount ||
		a.Address != b.Address || a.Port != b.Port || len(a.Endpoints) != len(b.Endpoints) {
		return false
	}
	for i := range a.Endpoints {
		x, y := &a.Endpoints[i], &b.Endpoints[i]
		if x.Address != y.Address || x.Port != y.Port || x.Health != y.Health || x.Locality != y.Locality ||
			x.Weight != y.Weight || !maps.Equal(x.Labels, y.Labels) {
			return false
		}
	}
	return true
}

// sameProxy reports whether two proxy definitions are equal (every field,
// as sameService).
func sameProxy(a, b *mesh.Proxy) bool {
	if a == b {
		return true
	}
	return a.ID == b.ID && a.Flavor == b.Flavor && a.Service == b.Service && a.Namespace == b.Namespace &&
		a.Address == b.Address && a.PublicPort == b.PublicPort && a.AppPort == b.AppPort && a.SDS == b.SDS &&
		a.Mode == b.Mode && a.CapturePort == b.CapturePort && a.Passthrough == b.Passthrough &&
		slices.Equal(a.Upstreams, b.Upstreams) && slices.Equal(a.UpstreamNamespaces, b.UpstreamNamespaces) &&
		slices.EqualFunc(a.Listeners, b.Listeners, func(x, y mesh.GatewayListener) bool {
			return x.Port == y.Port && x.TLS == y.TLS && slices.Equal(x.Routes, y.Routes)
		})
}
