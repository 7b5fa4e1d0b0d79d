package xds

import (
	"slices"
	"strings"
	"sync"

	"github.com/meshd/meshd/mesh"
)

// A proxy's visible service set is what it may call: its explicit
// upstreams, every service of its upstreamNamespaces ("*": all of them;
// for proxyless gRPC, the grpc ones), and a gateway's route destinations.
// Proxies that name whole namespaces share a set: it is computed once per
// distinct selector per generation, with its fingerprints, so neither the
// catalog nor the work grows with proxies × services (issue 14 item 4). A
// transparent sidecar reaches the services of its set that have a virtual
// address through its capture listener.

// visibleSet is one selector's services, in the catalog's canonical order.
type visibleSet struct {
	services []*mesh.Service
	// full fingerprints every service in full (endpoints and their mTLS
	// modes included): a proxy's resources depend on it. structural and
	// endpoints are the same in the two parts of Generation.Fingerprints:
	// everything but the endpoint sets, and the sum of their terms.
	full       string
	structural string
	endpoints  uint64
	// captured are the services with a virtual address, and captureShape
	// fingerprints their shapes: what a capture listener depends on.
	captured     []*mesh.Service
	captureShape string
	// upstreams holds what captured renders, per SDS source (meshd,
	// mesh-agent), once.
	upstreams [2]struct {
		once sync.Once
		res  *ProxyResources
		err  error
	}
}

// usesVisibleSet reports whether a proxy's upstreams come from its visible
// service set rather than from its upstreams list alone.
func usesVisibleSet(p *mesh.Proxy) bool {
	return len(p.UpstreamNamespaces) > 0 || p.Transparent() || p.Flavor == mesh.FlavorGateway
}

// Selector is what a proxy's visible set is computed from: its flavor,
// the services it names (upstreams, a gateway's routes) and its
// upstreamNamespaces. Proxies with equal Keys have the same visible set.
// The publisher groups proxies by it to find, for a changed service, the
// proxies that see it (snapshot's index).
type Selector struct {
	Key        string
	flavor     mesh.Flavor
	named      map[mesh.ServiceKey]bool
	all        bool
	namespaces map[string]bool
}

// VisibleSelector returns the selector of a proxy's visible set, or nil if
// the proxy calls only its upstreams list (usesVisibleSet).
func VisibleSelector(p *mesh.Proxy) *Selector {
	if !usesVisibleSet(p) {
		return nil
	}
	sel := &Selector{Key: selectorKey(p), flavor: p.Flavor, named: map[mesh.ServiceKey]bool{},
		all: slices.Contains(p.UpstreamNamespaces, mesh.AllNamespaces), namespaces: map[string]bool{}}
	for i := range p.Upstreams {
		sel.named[p.Upstreams[i].Key()] = true
	}
	for i := range p.Listeners {
		for j := range p.Listeners[i].Routes {
			sel.named[p.Listeners[i].Routes[j].Key()] = true
		}
	}
	for _, ns := range p.UpstreamNamespaces {
		sel.namespaces[ns] = true
	}
	return sel
}

// Includes reports whether service s is in the visible set.
func (sel *Selector) Includes(s *mesh.Service) bool {
	if sel.named[s.Key()] {
		return true
	}
	if sel.all || sel.namespaces[s.Namespace] {
		// Proxyless gRPC can only call grpc services.
		return sel.flavor != mesh.FlavorGRPC || s.Protocol == mesh.ProtocolGRPC
	}
	return false
}

// selectorKey names everything a visible set is computed from.
func selectorKey(p *mesh.Proxy) string {
	var b strings.Builder
	b.WriteString(string(p.Flavor))
	ns := slices.Clone(p.UpstreamNamespaces)
	slices.Sort(ns)
	for _, n := range ns {
		b.WriteString("|ns:" + n)
	}
	keys := make([]string, 0, len(p.Upstreams))
	for i := range p.Upstreams {
		keys = append(keys, p.Upstreams[i].Key().String())
	}
	for i := range p.Listeners {
		for j := range p.Listeners[i].Routes {
			keys = append(keys, p.Listeners[i].Routes[j].Key().String())
		}
	}
	slices.Sort(keys)
	for _, k := range slices.Compact(keys) {
		b.WriteString("|svc:" + k)
	}
	return b.String()
}

// visible returns the proxy's visible set, computed once per selector in
// this generation. Safe for concurrent use.
func (g *Generation) visible(p *mesh.Proxy) *visibleSet {
	key := selectorKey(p)
	g.visMu.Lock()
	vs, ok := g.vis[key]
	g.visMu.Unlock()
	if ok {
		return vs
	}
	vs = g.buildVisible(p)
	g.visMu.Lock()
	if prev, ok := g.vis[key]; ok {
		vs = prev
	} else {
		g.vis[key] = vs
	}
	g.visMu.Unlock()
	return vs
}

func (g *Generation) buildVisible(p *mesh.Proxy) *visibleSet {
	sel := VisibleSelector(p)
	vs := &visibleSet{}
	full, shape, structural := newFingerprinter(), newFingerprinter(), newFingerprinter()
	for _, s := range g.cat.Services() {
		if !sel.Includes(s) {
			continue
		}
		vs.services = append(vs.services, s)
		full.str(g.fullFP[s.Key()])
		structural.str(g.shapeFP[s.Key()])
		structural.str(g.transport(s.Key()))
		vs.endpoints += g.EndpointsTerm(s.Key())
		if s.VirtualAddress() {
			vs.captured = append(vs.captured, s)
			shape.str(g.shapeFP[s.Key()])
		}
	}
	vs.full, vs.captureShape, vs.structural = full.sum(), shape.sum(), structural.sum()
	return vs
}
