package xds

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"weak"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"

	"github.com/meshd/meshd/mesh"
)

// Options are the mesh-wide settings translation depends on.
type Options struct {
	TrustDomain string
	// Telemetry makes every Envoy sidecar report its inbound requests and
	// connections to meshd over the gRPC access log service, through the
	// bootstrap's meshd cluster (accesslog.go; package telemetry).
	Telemetry bool
}

// ProxyResources is everything one proxy is served, by type, each list sorted
// by name. Identity secrets are not included: they come from the CA at
// publish time (see SecretNames).
type ProxyResources struct {
	Listeners []*Resource
	Clusters  []*Resource
	Routes    []*Resource
	Endpoints []*Resource
	// Secrets are the SDS secrets translation renders itself, which hold no
	// key material: a gateway listener's certificate files, by path.
	Secrets []*Resource
	// Identity is the identity the proxy runs as; an Envoy proxy is served its
	// certificate under IdentitySecretName plus the trust bundle.
	Identity mesh.Identity
	// SDS reports whether the proxy consumes secrets over SDS (Envoy does;
	// proxyless gRPC reads files through certificate providers).
	SDS bool
	// Warnings are policy effects an operator should know about (a rule
	// that can never match, a mode a proxyless server cannot honour).
	Warnings []string
}

// SecretNames lists the SDS secrets the proxy must be served.
func (r *ProxyResources) SecretNames() []string {
	var names []string
	if r.SDS {
		names = []string{IdentitySecretName, TrustBundleSecretName}
	}
	for _, s := range r.Secrets {
		names = append(names, s.Name)
	}
	return names
}

// Translate renders one proxy's resources from a catalog without policies.
// It is a pure function: no I/O, no clock, and the same input gives
// byte-identical output.
func Translate(cat *mesh.Catalog, proxyID string, opts Options) (*ProxyResources, error) {
	return NewTranslator(opts).Generation(cat, nil).Proxy(proxyID)
}

// Translator renders many proxies across many catalog generations, building
// each shared resource (a service's endpoints, clusters, routes) once and
// handing the same immutable *Resource to every proxy that needs it. Results
// are identical to calling Translate per proxy.
type Translator struct {
	opts Options
	mu   sync.Mutex
	// prev holds the resources of the last generation; cur those built or
	// reused in this one. Keys name every input a resource depends on, so a
	// hit is always correct, and a resource unused for a whole generation is
	// dropped for the garbage collector.
	prev, cur map[string]*Resource
	// live finds, by the same keys, every resource still in use anywhere
	// (a proxy's snapshot), however many generations ago it was built: a
	// publish that renders only the few proxies a change concerns (issue
	// 14) would otherwise rebuild, for each, every shared resource that
	// no other render of the last two generations happened to use. Weak:
	// an entry goes when the collector frees its resource.
	live map[string]weak.Pointer[Resource]
	// prevShared and curShared hold, with the same lifecycle, messages
	// found identical between proxies by content (shareMessage): the parts
	// of per-proxy resources that do not depend on the proxy.
	prevShared, curShared map[string]proto.Message
}

// NewTranslator returns a translator for the given mesh options.
func NewTranslator(opts Options) *Translator {
	return &Translator{opts: opts, prev: map[string]*Resource{}, cur: map[string]*Resource{}, live: map[string]weak.Pointer[Resource]{},
		prevShared: map[string]proto.Message{}, curShared: map[string]proto.Message{}}
}

// Generation is one catalog being rendered. Proxy may be called concurrently.
type Generation struct {
	t   *Translator
	cat *mesh.Catalog
	ps  *mesh.PolicySet
	// psIn is the policy set as given (nil for none), which Reuse compares.
	psIn *mesh.PolicySet
	ov   *Overrides
	// fullFP fingerprints a service with its endpoints and their mTLS
	// modes; shapeFP without them (what clusters, routes and listeners
	// depend on).
	fullFP, shapeFP map[mesh.ServiceKey]string
	// modes[svc][i] is the mTLS mode of the workload behind endpoint i.
	modes map[mesh.ServiceKey][]mesh.MTLSMode
	// policyFP fingerprints each authorization policy's content.
	policyFP map[*mesh.AuthorizationPolicy]string
	// vis holds the visible service sets computed so far, by selector
	// (visible.go).
	visMu sync.Mutex
	vis   map[string]*visibleSet
}

// Overrides replace the mTLS modes policy asks for while a mode change is
// being rolled out safely (snapshot's migration): the server side and the
// callers' side of a workload change in separate, acknowledged steps.
type Overrides struct {
	// ServerMode is the mode rendered in a proxy's inbound listener, by
	// proxy id.
	ServerMode map[string]mesh.MTLSMode
	// CallerMode is the mode callers assume for an endpoint (only DISABLE
	// matters: plaintext instead of mTLS), by EndpointKey.
	CallerMode map[string]mesh.MTLSMode
	// PlaintextCallers names the proxies whose PERMISSIVE plaintext chain
	// is rendered as FilterChainPlaintextCallers (their callers are moving
	// from plaintext to mTLS), by proxy id.
	PlaintextCallers map[string]bool
}

// EndpointKey names one endpoint of one service for Overrides.
func EndpointKey(k mesh.ServiceKey, e *mesh.Endpoint) string {
	return k.Namespace + "/" + k.Name + "/" + e.HostPort()
}

// Generation starts rendering a new catalog under a policy set (nil means
// no policies: the default mTLS mode, PERMISSIVE, and no authorization).
// Call Close when every proxy of interest has been rendered.
func (t *Translator) Generation(cat *mesh.Catalog, ps *mesh.PolicySet) *Generation {
	return t.GenerationWith(cat, ps, nil)
}

// GenerationWith is Generation with mode overrides.
func (t *Translator) GenerationWith(cat *mesh.Catalog, ps *mesh.PolicySet, ov *Overrides) *Generation {
	return t.GenerationFrom(cat, ps, ov, Reuse{})
}

// Reuse tells GenerationFrom what it may take from the previous
// generation instead of working it out again: a one-endpoint change should
// cost one service's fingerprints and modes, not every service's (issue
// 14).
type Reuse struct {
	// Prev is the previous generation (nil: nothing to reuse). Nothing is
	// reused if the policy set differs from Prev's (by pointer), unless
	// AuthorizationsOnly.
	Prev *Generation
	// AuthorizationsOnly says the policy set differs from Prev's in its
	// authorization policies alone (mesh.AuthorizationChange): every
	// service's endpoint modes, and so its fingerprints, are Prev's.
	AuthorizationsOnly bool
	// Changed reports whether the inputs of a service's per-service data
	// may differ from Prev's: its definition, the proxies serving its
	// endpoints (their workloads decide the endpoints' mTLS modes), or the
	// CallerMode overrides of its endpoints. Required with Prev.
	Changed func(mesh.ServiceKey) bool
	// Members lists the proxies of a service (those whose endpoints it
	// may serve); required with Prev.
	Members func(mesh.ServiceKey) []*mesh.Proxy
}

// GenerationFrom is GenerationWith that reuses what did not change since
// reuse.Prev. The result is the same as GenerationWith's.
func (t *Translator) GenerationFrom(cat *mesh.Catalog, ps *mesh.PolicySet, ov *Overrides, reuse Reuse) *Generation {
	if ov == nil {
		ov = &Overrides{}
	}
	prev := reuse.Prev
	if prev != nil && ((prev.psIn != ps && !reuse.AuthorizationsOnly) || prev.t != t) {
		prev = nil
	}
	psIn := ps
	if ps == nil {
		ps = &mesh.PolicySet{RootNamespace: mesh.DefaultRootNamespace}
	}
	g := &Generation{t: t, cat: cat, ps: ps, psIn: psIn, ov: ov,
		fullFP:  make(map[mesh.ServiceKey]string, len(cat.Services())),
		shapeFP: make(map[mesh.ServiceKey]string, len(cat.Services())),
		modes:   make(map[mesh.ServiceKey][]mesh.MTLSMode, len(cat.Services())),
		vis:     map[string]*visibleSet{},
	}
	// Which proxy serves which endpoint decides the endpoint's mTLS mode.
	var byEndpoint map[string]*mesh.Proxy
	endpointKey := func(p *mesh.Proxy) string {
		return p.Namespace + "/" + p.Service + "/" + p.Address + ":" + strconv.FormatUint(uint64(p.PublicPort), 10)
	}
	if prev == nil {
		byEndpoint = map[string]*mesh.Proxy{}
		for _, p := range cat.Proxies() {
			if p.Inbound() {
				byEndpoint[endpointKey(p)] = p
			}
		}
	}
	f := newFingerprinter()
	for _, s := range cat.Services() {
		k := s.Key()
		if prev != nil && !reuse.Changed(k) {
			if full, ok := prev.fullFP[k]; ok {
				g.fullFP[k], g.shapeFP[k], g.modes[k] = full, prev.shapeFP[k], prev.modes[k]
				continue
			}
		}
		serving := byEndpoint
		if prev != nil {
			serving = map[string]*mesh.Proxy{}
			for _, p := range reuse.Members(k) {
				if p.Inbound() {
					serving[endpointKey(p)] = p
				}
			}
		}
		modes := make([]mesh.MTLSMode, len(s.Endpoints))
		for i := range s.Endpoints {
			e := &s.Endpoints[i]
			w := mesh.Workload{Service: s.Name, Namespace: s.Namespace, Labels: e.Labels}
			if p := serving[s.Namespace+"/"+s.Name+"/"+e.HostPort()]; p != nil {
				w = cat.WorkloadOf(p)
			}
			modes[i] = ps.MTLSModeFor(w)
			if m, ok := ov.CallerMode[EndpointKey(k, e)]; ok {
				modes[i] = m
			}
			// Callers only tell plaintext (DISABLE) from mTLS: an
			// endpoint's mode is kept as they see it, so a workload moving
			// between PERMISSIVE and STRICT changes no caller's inputs.
			if modes[i] != mesh.MTLSDisable {
				modes[i] = mesh.MTLSStrict
			}
		}
		g.modes[k] = modes
		for _, m := range modes {
			f.str(string(m))
		}
		g.fullFP[k] = f.service(s, true)
		g.shapeFP[k] = f.service(s, false)
	}
	if prev != nil && prev.psIn == psIn {
		g.policyFP = prev.policyFP // the same policy set: read-only from here
	} else {
		g.policyFP = make(map[*mesh.AuthorizationPolicy]string, len(ps.Authorizations))
		ps.EachAuthorization(func(a *mesh.AuthorizationPolicy) {
			b, _ := json.Marshal(a) // plain data; map keys sorted
			g.policyFP[a] = hashString(string(b))
		})
	}
	return g
}

// ServiceChange is how a service's rendering inputs differ between two
// generations, as its callers see them.
type ServiceChange uint8

const (
	ServiceUnchanged ServiceChange = iota
	// ServiceEndpoints: only the service's endpoint set (its
	// ClusterLoadAssignment, Endpoints) differs; every other resource a
	// caller is rendered from the service is the same. A caller's new
	// configuration is its old one with that one resource replaced.
	ServiceEndpoints
	// ServiceShape: anything else (protocol, identity, the transport its
	// callers use, the service added or removed): callers must be
	// rendered again.
	ServiceShape
)

// ServiceChangeSince classifies how service k changed for its callers
// since prev (nil: ServiceShape). It is the contract the publisher's
// endpoint-only update relies on (snapshot: patchEndpoints), so anything
// translation derives from a service's endpoints for its callers, other
// than its ClusterLoadAssignment, must make this report ServiceShape
// (TestServiceChangeEndpointsOnlyChangesEndpoints).
func (g *Generation) ServiceChangeSince(prev *Generation, k mesh.ServiceKey) ServiceChange {
	if prev == nil {
		return ServiceShape
	}
	full, ok := g.fullFP[k]
	prevFull, prevOK := prev.fullFP[k]
	switch {
	case !ok || !prevOK || g.shapeFP[k] != prev.shapeFP[k]:
		return ServiceShape
	case full == prevFull:
		return ServiceUnchanged
	case allDisabled(g.modes[k]) != allDisabled(prev.modes[k]):
		// A proxyless gRPC caller's cluster is plaintext when every
		// endpoint is (buildGRPCCluster).
		return ServiceShape
	}
	return ServiceEndpoints
}

// Endpoints returns the shared ClusterLoadAssignment of service k, as
// Proxy renders it for every caller.
func (g *Generation) Endpoints(k mesh.ServiceKey) (*Resource, error) {
	s := g.cat.Service(k)
	if s == nil {
		return nil, fmt.Errorf("service %s is not in the catalog", k)
	}
	return g.endpoints(s)
}

// Close ends the generation: resources not used in it are forgotten.
func (g *Generation) Close() {
	t := g.t
	t.mu.Lock()
	defer t.mu.Unlock()
	t.prev, t.cur = t.cur, make(map[string]*Resource, len(t.cur))
	t.prevShared, t.curShared = t.curShared, make(map[string]proto.Message, len(t.curShared))
}

// Fingerprint summarises every input that proxy's resources depend on. If it
// is unchanged between generations the proxy need not be re-rendered: its
// own definition, the shape of its own service, and its upstreams in full
// (its visible service set's, computed once per selector, when it has one).
// It is Fingerprints' two parts in one string.
func (g *Generation) Fingerprint(p *mesh.Proxy) string {
	structural, endpoints := g.Fingerprints(p)
	return EndpointsFingerprint(structural, endpoints)
}

// EndpointsFingerprint joins Fingerprints' two parts as Fingerprint does.
func EndpointsFingerprint(structural string, endpoints uint64) string {
	return structural + "/" + strconv.FormatUint(endpoints, 16)
}

// Fingerprints is Fingerprint in two parts: structural covers every input
// but the content of the upstreams' endpoint sets, and endpoints sums one
// term per upstream (EndpointsTerm), so that when some upstreams' endpoint
// sets change (ServiceEndpoints) the sum moves by their terms' difference,
// without going over the proxy's other upstreams (issue 14: 199 of them
// when every proxy sees every service).
func (g *Generation) Fingerprints(p *mesh.Proxy) (structural string, endpoints uint64) {
	deps := make([]string, 0, 2*len(p.Upstreams)+3)
	deps = append(deps, g.shapeFP[p.ServiceKey()])
	if usesVisibleSet(p) {
		vs := g.visible(p)
		deps = append(deps, vs.structural)
		endpoints = vs.endpoints
	} else {
		for i := range p.Upstreams {
			k := p.Upstreams[i].Key()
			deps = append(deps, g.shapeFP[k], g.transport(k))
			endpoints += g.EndpointsTerm(k)
		}
	}
	if p.Inbound() {
		w := g.cat.WorkloadOf(p)
		deps = append(deps, string(g.serverMode(p, w)), g.plaintextChain(p))
		for _, a := range g.ps.AuthorizationsFor(w) {
			deps = append(deps, g.policyFP[a])
		}
	}
	f := fingerprinters.Get().(*fingerprinter)
	defer fingerprinters.Put(f)
	return f.proxy(p, g.t.opts.TrustDomain, deps), endpoints
}

// transport is what callers derive from a service's endpoints besides its
// endpoint set (ServiceChangeSince says the same): a proxyless caller's
// cluster is plaintext when every endpoint's workload is DISABLE.
func (g *Generation) transport(k mesh.ServiceKey) string {
	if allDisabled(g.modes[k]) {
		return "plaintext"
	}
	return "mtls"
}

// EndpointsTerm is service k's term in its callers' endpoints fingerprint:
// 64 bits of the fingerprint of its endpoints and their modes (which
// names the service, so two services trading endpoint sets still change
// both terms). 0 for a service not in the catalog.
func (g *Generation) EndpointsTerm(k mesh.ServiceKey) uint64 {
	full := g.fullFP[k]
	if len(full) < 16 {
		return 0
	}
	v, _ := strconv.ParseUint(full[:16], 16, 64)
	return v
}

// memo returns the resource built for key, building it at most once per
// generation and reusing the previous generation's when the key matches.
func (g *Generation) memo(key string, build func() (*Resource, error)) (*Resource, error) {
	t := g.t
	t.mu.Lock()
	if r, ok := t.cur[key]; ok {
		t.mu.Unlock()
		return r, nil
	}
	if r, ok := t.prev[key]; ok {
		t.cur[key] = r
		t.mu.Unlock()
		return r, nil
	}
	if r := t.live[key].Value(); r != nil {
		t.cur[key] = r
		t.mu.Unlock()
		return r, nil
	}
	t.mu.Unlock()
	// Built outside the lock: two proxies racing for the same key build
	// identical resources and one wins, which is cheaper than serialising.
	r, err := build()
	if err != nil {
		return nil, err
	}
	t.mu.Lock()
	if prev, ok := t.cur[key]; ok {
		r = prev
	} else {
		t.cur[key] = r
		t.live[key] = weak.Make(r)
		runtime.AddCleanup(r, t.forget, key)
	}
	t.mu.Unlock()
	return r, nil
}

// forget drops a live entry whose resource the collector freed (unless the
// key has been built again since).
func (t *Translator) forget(key string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.live[key].Value() == nil {
		delete(t.live, key)
	}
}

// shareMessage returns the message of this or the previous generation with
// the same type and deterministic encoding as m, or m itself, recorded for
// later calls. The caller puts the result in place of m, so identical parts
// of resources built per proxy or per caller (an inbound listener's filter
// chains: everything but its name and address) point at one copy instead
// of one per proxy. Keyed by content (type and SHA-256 of the encoding), a
// hit is correct whatever the inputs were. Shared messages are never
// modified: resources are immutable once built.
func shareMessage[M proto.Message](g *Generation, m M) (M, error) {
	buf := marshalBuffers.Get().(*[]byte)
	b, err := deterministic.MarshalAppend((*buf)[:0], m)
	if err != nil {
		marshalBuffers.Put(buf)
		return m, fmt.Errorf("marshal %T: %w", m, err)
	}
	*buf = b
	sum := sha256.Sum256(b)
	marshalBuffers.Put(buf)
	k := string(m.ProtoReflect().Descriptor().FullName()) + "|" + string(sum[:])
	t := g.t
	t.mu.Lock()
	defer t.mu.Unlock()
	if prev, ok := t.curShared[k]; ok {
		return prev.(M), nil
	}
	if prev, ok := t.prevShared[k]; ok {
		t.curShared[k] = prev
		return prev.(M), nil
	}
	t.curShared[k] = m
	return m, nil
}

// shareEach replaces every message of ms by its shared copy (shareMessage).
func shareEach[M proto.Message](g *Generation, ms []M) error {
	for i := range ms {
		var err error
		if ms[i], err = shareMessage(g, ms[i]); err != nil {
			return err
		}
	}
	return nil
}

// shareInboundParts replaces an inbound listener's filter chains and
// listener filters by shared identical copies (shareMessage). Only its name
// and address are the proxy's own; the rest depends on the service, its
// mTLS mode and policies, and is the same for most sidecars of a service.
// The content, and so the resource's hash, is unchanged.
func (g *Generation) shareInboundParts(l *listenerv3.Listener) error {
	var err error
	if err = shareEach(g, l.FilterChains); err != nil {
		return err
	}
	if l.DefaultFilterChain != nil {
		if l.DefaultFilterChain, err = shareMessage(g, l.DefaultFilterChain); err != nil {
			return err
		}
	}
	if err = shareEach(g, l.ListenerFilters); err != nil {
		return err
	}
	return nil
}

// inboundListener renders a sidecar's inbound listener. Everything in it but
// its name and address (the filter chains, with TLS, RBAC and the HTTP
// connection manager, and the listener filters) is rendered once per
// distinct input and shared by every sidecar with the same: the service's
// shape (which gives its identity and protocol), the mTLS mode, where the
// secrets come from and, for tcp services only, the authorization policies
// (by content) with the port they are evaluated for — exactly buildRBAC's
// and inboundListenerParts' arguments. An HTTP service's listener does not
// depend on policies at all (they are in its route), so a policy change
// never replaces it. Each listener is still validated and hashed whole.
func (g *Generation) inboundListener(p *mesh.Proxy, self *mesh.Service, id mesh.Identity, mode mesh.MTLSMode, authz []*mesh.AuthorizationPolicy, port uint32, rbac *rbacSets) (*Resource, error) {
	agent := !p.SecretsFromMeshd()
	plain := g.plaintextChain(p)
	key := "lds-in|" + g.shapeFP[self.Key()] + "|" + string(mode) + "|" + plain + "|" + strconv.FormatBool(agent)
	if self.Protocol == mesh.ProtocolTCP {
		pk, ok := g.policyKey(authz, port)
		if !ok {
			// Not policies of this generation's set: no content key, so
			// render this listener on its own.
			return buildEnvoyInboundListener(self, p, id, g.t.opts, mode, plain, rbac)
		}
		key += "|" + pk
	}
	// A template holding the shared parts; a memo entry, never served.
	tmpl, err := g.memo(key, func() (*Resource, error) {
		parts, refs, err := inboundListenerParts(self, id, g.t.opts, mode, plain, rbac, agent)
		if err != nil {
			return nil, err
		}
		// Identical parts across templates (a plaintext chain, the TLS
		// inspector) are shared too.
		if err := g.shareInboundParts(parts); err != nil {
			return nil, err
		}
		return &Resource{Name: "template " + key, Message: parts, Refs: refs}, nil
	})
	if err != nil {
		return nil, err
	}
	return inboundListener(p, tmpl.Message.(*listenerv3.Listener), tmpl.Refs)
}

// policyKey names authorization policies by content, with the port they are
// evaluated for: a memo key part for what is rendered from them. ok is false
// when a policy is not of this generation's set (it has no content hash).
func (g *Generation) policyKey(authz []*mesh.AuthorizationPolicy, port uint32) (string, bool) {
	var key strings.Builder
	key.WriteString(strconv.FormatUint(uint64(port), 10))
	for _, a := range authz {
		fp, ok := g.policyFP[a]
		if !ok {
			return "", false
		}
		key.WriteString("|" + fp)
	}
	return key.String(), true
}

// inboundRoute renders an HTTP service's inbound route with the workload's
// policies, shared by every sidecar of the service with the same policies
// and port.
func (g *Generation) inboundRoute(self *mesh.Service, authz []*mesh.AuthorizationPolicy, port uint32, rbac *rbacSets) (*Resource, error) {
	pk, ok := g.policyKey(authz, port)
	if !ok {
		return buildInboundRoute(self, rbac)
	}
	return g.memo("rds-in|"+g.shapeFP[self.Key()]+"|"+pk, func() (*Resource, error) { return buildInboundRoute(self, rbac) })
}

// shareOutboundListenerParts shares an outbound listener's filter chains
// (which depend only on the upstream service: a listener exists per local
// port too) and its loopback address (which depends only on the port).
func (g *Generation) shareOutboundListenerParts(l *listenerv3.Listener) error {
	var err error
	if err = shareEach(g, l.FilterChains); err != nil {
		return err
	}
	if l.Address != nil {
		l.Address, err = shareMessage(g, l.Address)
	}
	return err
}

// shareClusterParts shares the parts of a cluster that do not depend on
// where its secrets come from (an outbound cluster exists per upstream and
// SDS source: meshd or a mesh-agent): the EDS config, the plaintext
// transport socket match and the protocol options.
func (g *Generation) shareClusterParts(c *clusterv3.Cluster) error {
	var err error
	if c.EdsClusterConfig != nil {
		if c.EdsClusterConfig, err = shareMessage(g, c.EdsClusterConfig); err != nil {
			return err
		}
	}
	if err = shareEach(g, c.TransportSocketMatches); err != nil {
		return err
	}
	for k, v := range c.TypedExtensionProtocolOptions {
		if c.TypedExtensionProtocolOptions[k], err = shareMessage(g, v); err != nil {
			return err
		}
	}
	return nil
}

// Proxy renders the resources of the proxy with the given node id.
func (g *Generation) Proxy(id string) (*ProxyResources, error) {
	p := g.cat.Proxy(id)
	if p == nil {
		return nil, fmt.Errorf("proxy %q is not in the catalog: add it under proxies (its id must match the node id in its bootstrap)", id)
	}
	self := g.cat.Service(p.ServiceKey())
	if self == nil {
		return nil, fmt.Errorf("proxy %q: its service %s is not in the catalog", id, p.ServiceKey())
	}
	td := g.t.opts.TrustDomain
	out := &ProxyResources{Identity: mesh.IdentityOf(td, self), SDS: p.SecretsFromMeshd()}
	var err error
	switch p.Flavor {
	case mesh.FlavorEnvoy:
		err = g.envoy(p, self, out)
	case mesh.FlavorGateway:
		err = g.gateway(p, out)
	case mesh.FlavorGRPC:
		err = g.grpc(p, self, out)
	default:
		err = fmt.Errorf("unknown flavor %q", p.Flavor)
	}
	if err != nil {
		return nil, fmt.Errorf("proxy %q: %w", id, err)
	}
	for _, l := range [][]*Resource{out.Listeners, out.Clusters, out.Routes, out.Endpoints, out.Secrets} {
		slices.SortFunc(l, func(a, b *Resource) int { return strings.Compare(a.Name, b.Name) })
	}
	return out, nil
}

func (g *Generation) envoy(p *mesh.Proxy, self *mesh.Service, out *ProxyResources) error {
	td := g.t.opts.TrustDomain
	if p.Inbound() {
		w := g.cat.WorkloadOf(p)
		authz := g.ps.AuthorizationsFor(w)
		rbac, err := buildRBAC(authz, td, self.Protocol == mesh.ProtocolTCP, w.Port)
		if err != nil {
			return fmt.Errorf("authorization: %w", err)
		}
		out.Warnings = append(out.Warnings, rbac.warnings...)
		l, err := g.inboundListener(p, self, out.Identity, g.serverMode(p, w), authz, w.Port, rbac)
		if err != nil {
			return fmt.Errorf("inbound listener: %w", err)
		}
		// Built once per service and app port: the cluster depends on
		// nothing else of the proxy (so every sidecar of a service on the
		// usual port shares one).
		c, err := g.memo("cds-local|"+g.shapeFP[self.Key()]+"|"+strconv.FormatUint(uint64(p.AppPort), 10), func() (*Resource, error) {
			return buildLocalAppCluster(self, p)
		})
		if err != nil {
			return fmt.Errorf("local app cluster: %w", err)
		}
		out.Listeners = append(out.Listeners, l)
		out.Clusters = append(out.Clusters, c)
		if self.Protocol.IsHTTP() {
			r, err := g.inboundRoute(self, authz, w.Port, rbac)
			if err != nil {
				return fmt.Errorf("inbound route: %w", err)
			}
			out.Routes = append(out.Routes, r)
		}
	}
	u := g.newUpstreams(p, out)
	for i := range p.Upstreams {
		up, err := g.upstream(&p.Upstreams[i])
		if err != nil {
			return err
		}
		if p.Upstreams[i].LocalPort == 0 {
			continue // transparent: reached at its address, below
		}
		if err := g.loopbackListener(up, &p.Upstreams[i], out); err != nil {
			return err
		}
		if p.Transparent() && up.VirtualAddress() {
			continue // its cluster comes with the visible set's, below
		}
		if err := u.add(up); err != nil {
			return err
		}
	}
	if p.Transparent() {
		return g.transparent(p, u, out)
	}
	return nil
}

// loopbackListener adds an explicit upstream's listener on loopback,
// shared by every sidecar with the same local port for the service.
func (g *Generation) loopbackListener(up *mesh.Service, u *mesh.Upstream, out *ProxyResources) error {
	l, err := g.memo("lds-out|"+strconv.FormatUint(uint64(u.LocalPort), 10)+"|"+g.shapeFP[up.Key()], func() (*Resource, error) {
		r, err := buildEnvoyOutboundListener(up, u)
		if err != nil {
			return nil, err
		}
		return r, g.shareOutboundListenerParts(r.Message.(*listenerv3.Listener))
	})
	if err != nil {
		return fmt.Errorf("upstream %s: listener: %w", up.Key(), err)
	}
	out.Listeners = append(out.Listeners, l)
	return nil
}

// transparent adds a transparent sidecar's capture listener and what its
// chains refer to: every service of the visible set that has a virtual
// address, and the passthrough or blackhole cluster.
func (g *Generation) transparent(p *mesh.Proxy, u *upstreams, out *ProxyResources) error {
	vs := g.visible(p)
	shared, err := g.captured(vs, u.agent)
	if err != nil {
		return err
	}
	out.Clusters = append(out.Clusters, shared.Clusters...)
	out.Endpoints = append(out.Endpoints, shared.Endpoints...)
	out.Routes = append(out.Routes, shared.Routes...)
	key := "lds-capture|" + strconv.FormatUint(uint64(p.CapturePort), 10) + "|" + string(p.Passthrough) + "|" + vs.captureShape
	l, err := g.memo(key, func() (*Resource, error) {
		r, err := buildCaptureListener(p.CapturePort, vs.captured, p.Passthrough)
		if err != nil {
			return nil, err
		}
		// Each chain depends on its service only: shared with every
		// other capture listener that has it.
		return r, shareEach(g, r.Message.(*listenerv3.Listener).FilterChains)
	})
	if err != nil {
		return fmt.Errorf("capture listener: %w", err)
	}
	out.Listeners = append(out.Listeners, l)
	build, name := buildPassthroughCluster, "cds-passthrough"
	if p.Passthrough == mesh.PassthroughBlock {
		build, name = buildBlackholeCluster, "cds-blackhole"
	}
	c, err := g.memo(name, build)
	if err != nil {
		return fmt.Errorf("capture listener: %w", err)
	}
	out.Clusters = append(out.Clusters, c)
	return nil
}

// gateway renders an ingress gateway: per listener its own listener (its
// address, port and TLS source), route configuration and, for a
// certificate from files, the secret naming them; and the outbound
// cluster and endpoints of every service its routes name, shared with
// every sidecar calling them (the gateway's identity is its secret named
// IdentitySecretName, as a sidecar's).
func (g *Generation) gateway(p *mesh.Proxy, out *ProxyResources) error {
	for i := range p.Listeners {
		gl := &p.Listeners[i]
		l, err := buildGatewayListener(p, gl)
		if err != nil {
			return fmt.Errorf("listener %d: %w", gl.Port, err)
		}
		r, err := buildGatewayRoute(gl)
		if err != nil {
			return fmt.Errorf("listener %d: route: %w", gl.Port, err)
		}
		out.Listeners = append(out.Listeners, l)
		out.Routes = append(out.Routes, r)
		if gl.TLS.FromFiles() {
			s, err := BuildGatewayFileSecret(gl.Port, gl.TLS.CertificateFile, gl.TLS.KeyFile)
			if err != nil {
				return fmt.Errorf("listener %d: certificate: %w", gl.Port, err)
			}
			out.Secrets = append(out.Secrets, s)
		}
	}
	u := g.newUpstreams(p, out)
	for _, up := range g.visible(p).services {
		if err := u.add(up); err != nil {
			return err
		}
	}
	return nil
}

// captured returns the clusters, endpoints and routes of a visible set's
// services with a virtual address, sorted by name: computed once per set
// and SDS source in a generation and appended whole to every proxy that
// has the set (the list itself is shared, not only its resources), so a
// proxy seeing every service does not look up every service's resources.
func (g *Generation) captured(vs *visibleSet, agent bool) (*ProxyResources, error) {
	i := 0
	if agent {
		i = 1
	}
	c := &vs.upstreams[i]
	c.once.Do(func() {
		c.res = &ProxyResources{}
		u := &upstreams{g: g, out: c.res, agent: agent, seen: make(map[mesh.ServiceKey]bool, len(vs.captured))}
		for _, up := range vs.captured {
			if c.err = u.add(up); c.err != nil {
				return
			}
		}
		for _, l := range [][]*Resource{c.res.Clusters, c.res.Endpoints, c.res.Routes} {
			slices.SortFunc(l, func(a, b *Resource) int { return strings.Compare(a.Name, b.Name) })
		}
	})
	return c.res, c.err
}

// upstreams adds each upstream service's outbound cluster, endpoints and
// (HTTP) route to a proxy's resources once, however many listeners or
// chains lead to it. All three are shared by every Envoy calling the
// service with the same SDS source.
type upstreams struct {
	g     *Generation
	out   *ProxyResources
	agent bool
	seen  map[mesh.ServiceKey]bool
}

func (g *Generation) newUpstreams(p *mesh.Proxy, out *ProxyResources) *upstreams {
	return &upstreams{g: g, out: out, agent: !p.SecretsFromMeshd(), seen: map[mesh.ServiceKey]bool{}}
}

func (u *upstreams) add(up *mesh.Service) error {
	if u.seen[up.Key()] {
		return nil
	}
	u.seen[up.Key()] = true
	g, td := u.g, u.g.t.opts.TrustDomain
	shape := g.shapeFP[up.Key()]
	c, err := g.memo("cds-envoy|"+shape+"|"+strconv.FormatBool(u.agent), func() (*Resource, error) {
		r, err := buildEnvoyOutboundCluster(up, td, u.agent)
		if err != nil {
			return nil, err
		}
		return r, g.shareClusterParts(r.Message.(*clusterv3.Cluster))
	})
	if err != nil {
		return fmt.Errorf("upstream %s: cluster: %w", up.Key(), err)
	}
	e, err := g.endpoints(up)
	if err != nil {
		return fmt.Errorf("upstream %s: endpoints: %w", up.Key(), err)
	}
	u.out.Clusters = append(u.out.Clusters, c)
	u.out.Endpoints = append(u.out.Endpoints, e)
	if up.Protocol.IsHTTP() {
		r, err := g.memo("rds-out|"+shape, func() (*Resource, error) { return buildOutboundRoute(up) })
		if err != nil {
			return fmt.Errorf("upstream %s: route: %w", up.Key(), err)
		}
		u.out.Routes = append(u.out.Routes, r)
	}
	return nil
}

func (g *Generation) grpc(p *mesh.Proxy, self *mesh.Service, out *ProxyResources) error {
	td := g.t.opts.TrustDomain
	if p.Inbound() {
		w := g.cat.WorkloadOf(p)
		mode := g.serverMode(p, w)
		if mode == mesh.MTLSPermissive {
			// gRPC servers cannot serve TLS and plaintext on one port: fail
			// closed to STRICT and say so.
			out.Warnings = append(out.Warnings, "mTLS mode PERMISSIVE is not supported by proxyless gRPC servers; serving STRICT (set STRICT or DISABLE for this workload)")
			mode = mesh.MTLSStrict
		}
		rbac, err := buildRBAC(g.ps.AuthorizationsFor(w), td, false, w.Port)
		if err != nil {
			return fmt.Errorf("authorization: %w", err)
		}
		out.Warnings = append(out.Warnings, rbac.warnings...)
		l, err := buildGRPCServerListener(self, p, mode, rbac)
		if err != nil {
			return fmt.Errorf("server listener: %w", err)
		}
		if err := g.shareInboundParts(l.Message.(*listenerv3.Listener)); err != nil {
			return fmt.Errorf("server listener: %w", err)
		}
		out.Listeners = append(out.Listeners, l)
	}
	ups := make([]*mesh.Service, 0, len(p.Upstreams))
	for i := range p.Upstreams {
		up, err := g.upstream(&p.Upstreams[i])
		if err != nil {
			return err
		}
		ups = append(ups, up)
	}
	if usesVisibleSet(p) {
		ups = g.visible(p).services
	}
	for _, up := range ups {
		shape := g.shapeFP[up.Key()]
		l, err := g.memo("lds-grpc|"+shape, func() (*Resource, error) { return buildGRPCClientListener(up) })
		if err != nil {
			return fmt.Errorf("upstream %s: listener: %w", up.Key(), err)
		}
		plaintext := allDisabled(g.modes[up.Key()])
		c, err := g.memo("cds-grpc|"+shape+"|"+td+"|"+strconv.FormatBool(plaintext), func() (*Resource, error) { return buildGRPCCluster(up, td, plaintext) })
		if err != nil {
			return fmt.Errorf("upstream %s: cluster: %w", up.Key(), err)
		}
		e, err := g.endpoints(up)
		if err != nil {
			return fmt.Errorf("upstream %s: endpoints: %w", up.Key(), err)
		}
		out.Listeners = append(out.Listeners, l)
		out.Clusters = append(out.Clusters, c)
		out.Endpoints = append(out.Endpoints, e)
	}
	return nil
}

// serverMode is the mode a proxy's inbound side is rendered with.
func (g *Generation) serverMode(p *mesh.Proxy, w mesh.Workload) mesh.MTLSMode {
	if m, ok := g.ov.ServerMode[p.ID]; ok {
		return m
	}
	return g.ps.MTLSModeFor(w)
}

// plaintextChain is the name of a proxy's inbound plaintext chain.
func (g *Generation) plaintextChain(p *mesh.Proxy) string {
	if g.ov.PlaintextCallers[p.ID] {
		return FilterChainPlaintextCallers
	}
	return FilterChainPlaintext
}

// endpoints returns the shared EDS resource of a service.
func (g *Generation) endpoints(up *mesh.Service) (*Resource, error) {
	return g.memo("eds|"+g.fullFP[up.Key()], func() (*Resource, error) { return buildEndpoints(up, g.modes[up.Key()]) })
}

// allDisabled reports whether a service has endpoints and every one of them
// has mTLS disabled.
func allDisabled(modes []mesh.MTLSMode) bool {
	for _, m := range modes {
		if m != mesh.MTLSDisable {
			return false
		}
	}
	return len(modes) > 0
}

func (g *Generation) upstream(u *mesh.Upstream) (*mesh.Service, error) {
	up := g.cat.Service(u.Key())
	if up == nil {
		return nil, fmt.Errorf("upstream %s does not exist in the catalog: define the service or remove the upstream", u.Key())
	}
	return up, nil
}

// CheckReferences verifies that every name a resource refers to (RDS, EDS,
// SDS, route clusters) is present in the set, so a proxy is never served a
// configuration that would leave Envoy warming forever or failing requests.
//
// It looks names up in the lists themselves (sorted by name, as Proxy
// returns them, or searched in order) rather than indexing them: it runs for
// every proxy at every publish.
func CheckReferences(sets map[string][]*Resource) error {
	byName := func(r *Resource, name string) int { return strings.Compare(r.Name, name) }
	// Which lists are sorted, worked out once (a few types: no map).
	var sortedTypes [8]string
	n := 0
	for typ, list := range sets {
		if n < len(sortedTypes) && slices.IsSortedFunc(list, func(a, b *Resource) int { return strings.Compare(a.Name, b.Name) }) {
			sortedTypes[n] = typ
			n++
		}
	}
	have := func(ref Ref) bool {
		list := sets[ref.TypeURL]
		if slices.Contains(sortedTypes[:n], ref.TypeURL) {
			_, found := slices.BinarySearchFunc(list, ref.Name, byName)
			return found
		}
		return slices.ContainsFunc(list, func(r *Resource) bool { return r.Name == ref.Name })
	}
	var missing []string
	for typ, list := range sets {
		for _, r := range list {
			for _, ref := range r.Refs {
				if !have(ref) {
					missing = append(missing, fmt.Sprintf("%s %q refers to missing %s %q", shortType(typ), r.Name, shortType(ref.TypeURL), ref.Name))
				}
			}
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		return fmt.Errorf("dangling references: %s", strings.Join(missing, "; "))
	}
	return nil
}

// ByType returns the resources keyed by type URL (secrets excluded).
func (r *ProxyResources) ByType() map[string][]*Resource {
	return map[string][]*Resource{
		resourcev3.ListenerType: r.Listeners,
		resourcev3.ClusterType:  r.Clusters,
		resourcev3.RouteType:    r.Routes,
		resourcev3.EndpointType: r.Endpoints,
	}
}

func shortType(typeURL string) string {
	if i := strings.LastIndexByte(typeURL, '.'); i >= 0 {
		return typeURL[i+1:]
	}
	return typeURL
}

func hashString(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:12])
}
