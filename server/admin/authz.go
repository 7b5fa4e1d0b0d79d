package admin

import (
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"strings"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/snapshot"
	"github.com/meshd/meshd/xds"
)

// meshctl authz check and meshctl describe: what a workload's proxy
// enforces, decided by xds.EvaluateInbound on the configuration the proxy
// is served now (staged mTLS migrations included).

// AuthzSource is the caller as resolved.
type AuthzSource struct {
	// Input is what was asked for: a service, a SPIFFE ID, an IP address
	// or "plaintext".
	Input    string `json:"input"`
	Service  string `json:"service,omitempty"`
	Identity string `json:"identity,omitempty"`
	Address  string `json:"address,omitempty"`
	MTLS     bool   `json:"mtls"`
}

// AuthzResult is the decision of one proxy of the destination.
type AuthzResult struct {
	Proxy string `json:"proxy"`
	xds.AuthzDecision
	Error string `json:"error,omitempty"`
}

// AuthzReport is GET /authz/check.
type AuthzReport struct {
	Source      AuthzSource   `json:"source"`
	Destination string        `json:"destination"`
	Method      string        `json:"method,omitempty"`
	Path        string        `json:"path,omitempty"`
	Results     []AuthzResult `json:"results"`
}

// authzCheck serves GET /authz/check?source=&destination=[&path=&method=
// &host=&header=name:value].
func (a *Admin) authzCheck(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	v, dst, svc, proxies, ok := a.destination(w, q.Get("destination"))
	if !ok {
		return
	}
	src, err := resolveSource(v.Catalog, a.TrustDomain, q.Get("source"))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	req := requestFor(src, svc, a.TrustDomain)
	if m := q.Get("method"); m != "" {
		req.Method = strings.ToUpper(m)
	}
	if p := q.Get("path"); p != "" {
		req.Path = p
	}
	if h := q.Get("host"); h != "" {
		req.Host = h
	}
	for _, h := range q["header"] {
		name, value, ok := strings.Cut(h, ":")
		if !ok {
			http.Error(w, fmt.Sprintf("header %q: give name:value", h), http.StatusBadRequest)
			return
		}
		req.Headers[strings.ToLower(strings.TrimSpace(name))] = strings.TrimSpace(value)
	}
	rep := AuthzReport{Source: src, Destination: dst, Method: req.Method, Path: req.Path}
	for _, p := range proxies {
		rep.Results = append(rep.Results, evaluateProxy(v, p, a.TrustDomain, req))
	}
	writeJSON(w, http.StatusOK, rep)
}

// destination is where both handlers start: the published view, and the
// named destination's service key, service and the proxies that receive
// its traffic. It answers the request itself when there is none (ok false).
func (a *Admin) destination(w http.ResponseWriter, name string) (v *snapshot.View, key string, svc *mesh.Service, proxies []*mesh.Proxy, ok bool) {
	v = a.Publisher.View()
	if v.Catalog == nil {
		http.Error(w, "no catalog published yet", http.StatusServiceUnavailable)
		return nil, "", nil, nil, false
	}
	key, proxies, err := destinationProxies(v.Catalog, name)
	if err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return nil, "", nil, nil, false
	}
	return v, key, v.Catalog.Service(proxies[0].ServiceKey()), proxies, true
}

// destinationProxies resolves name.namespace, a bare name (namespace
// default) or a node id to the proxies that receive its traffic.
func destinationProxies(cat *mesh.Catalog, dst string) (string, []*mesh.Proxy, error) {
	if dst == "" {
		return "", nil, fmt.Errorf("missing ?destination=<service or node id>")
	}
	if p := cat.Proxy(dst); p != nil && p.Inbound() {
		return p.ServiceKey().String(), []*mesh.Proxy{p}, nil
	}
	k := serviceKey(dst)
	var out []*mesh.Proxy
	for _, p := range cat.Proxies() {
		if p.ServiceKey() == k && p.Inbound() {
			out = append(out, p)
		}
	}
	if len(out) == 0 {
		return "", nil, fmt.Errorf("no proxy receives traffic for %q: name a service of the catalog (name or name.namespace) with a sidecar or proxyless server, or a proxy's node id", dst)
	}
	return k.String(), out, nil
}

func serviceKey(s string) mesh.ServiceKey {
	name, ns, ok := strings.Cut(s, ".")
	if !ok {
		ns = mesh.DefaultNamespace
	}
	return mesh.ServiceKey{Namespace: ns, Name: name}
}

// resolveSource turns a caller's description into what the destination
// sees: a service of the catalog (its identity over mTLS, from its
// proxy's address), a SPIFFE ID, an IP address (plaintext), or
// "plaintext".
func resolveSource(cat *mesh.Catalog, td, s string) (AuthzSource, error) {
	src := AuthzSource{Input: s}
	switch {
	case s == "":
		return src, fmt.Errorf("missing ?source=<service, SPIFFE ID, IP address or plaintext>")
	case s == "plaintext":
		return src, nil
	case strings.HasPrefix(s, "spiffe://"):
		id, err := mesh.ParseSPIFFEID(s)
		if err != nil {
			return src, fmt.Errorf("source %q: %w", s, err)
		}
		src.Identity, src.MTLS = id.SPIFFEID(), true
		for _, svc := range cat.Services() {
			if mesh.IdentityOf(td, svc).SPIFFEID() == src.Identity {
				src.Service, src.Address = svc.Key().String(), addressOf(cat, svc.Key())
				break
			}
		}
		return src, nil
	}
	if ip, err := netip.ParseAddr(s); err == nil {
		src.Address = ip.String()
		return src, nil
	}
	k := serviceKey(s)
	svc := cat.Service(k)
	if svc == nil {
		return src, fmt.Errorf("source %q is not a service of the catalog (name or name.namespace), a SPIFFE ID, an IP address or plaintext", s)
	}
	src.Service, src.Identity, src.MTLS, src.Address = k.String(), mesh.IdentityOf(td, svc).SPIFFEID(), true, addressOf(cat, k)
	return src, nil
}

// addressOf is where a service's calls come from: its first proxy's
// address (sidecars call from their host).
func addressOf(cat *mesh.Catalog, k mesh.ServiceKey) string {
	for _, p := range cat.Proxies() {
		if p.ServiceKey() == k && p.Address != "" {
			return p.Address
		}
	}
	if s := cat.Service(k); s != nil && len(s.Endpoints) > 0 {
		return s.Endpoints[0].Address
	}
	return ""
}

// requestFor is the default request of src to a service: GET / (POST for
// gRPC), with the authority and SNI a mesh caller sends.
func requestFor(src AuthzSource, svc *mesh.Service, td string) xds.AuthzRequest {
	req := xds.AuthzRequest{MTLS: src.MTLS, Principal: src.Identity, Method: "GET", Path: "/", Headers: map[string]string{}}
	if svc != nil {
		req.Host = svc.Key().String()
		if src.MTLS {
			req.SNI = xds.SNI(svc.Key(), td)
		}
		if svc.Protocol == mesh.ProtocolGRPC {
			req.Method = "POST"
		}
	}
	if ip, err := netip.ParseAddr(src.Address); err == nil {
		req.SourceIP = ip
	}
	return req
}

// evaluateProxy decides req on what proxy p is served.
func evaluateProxy(v *snapshot.View, p *mesh.Proxy, td string, req xds.AuthzRequest) AuthzResult {
	res := AuthzResult{Proxy: p.ID}
	l, routes, err := inboundOf(v, p)
	if err != nil {
		res.Error = err.Error()
		return res
	}
	d, err := xds.EvaluateInbound(l, routes, req)
	if err != nil {
		res.Error = err.Error()
	}
	res.AuthzDecision = d
	return res
}

// inboundOf finds a proxy's inbound listener and its routes in the
// snapshot it is served.
func inboundOf(v *snapshot.View, p *mesh.Proxy) (*listenerv3.Listener, map[string]*routev3.RouteConfiguration, error) {
	snap := v.Snapshot(p.ID)
	if snap == nil {
		return nil, nil, fmt.Errorf("meshd serves proxy %s nothing (see meshctl status)", p.ID)
	}
	name := xds.InboundListenerName(p)
	if p.Flavor == mesh.FlavorGRPC {
		name = xds.GRPCServerListenerName(p.Address, p.PublicPort)
	}
	var l *listenerv3.Listener
	if r, ok := snap.GetResources(resourcev3.ListenerType)[name]; ok {
		l, _ = r.(*listenerv3.Listener)
	}
	if l == nil {
		return nil, nil, fmt.Errorf("proxy %s has no inbound listener %s", p.ID, name)
	}
	routes := map[string]*routev3.RouteConfiguration{}
	for n, r := range snap.GetResources(resourcev3.RouteType) {
		if rc, ok := r.(*routev3.RouteConfiguration); ok {
			routes[n] = rc
		}
	}
	return l, routes, nil
}

// servedMode reads the mTLS mode a proxy's inbound listener enforces now.
func servedMode(l *listenerv3.Listener) mesh.MTLSMode {
	tls, plain := false, false
	chains := append(slices.Clone(l.GetFilterChains()), l.GetDefaultFilterChain())
	for _, c := range chains {
		if c == nil {
			continue
		}
		if c.GetTransportSocket() != nil {
			tls = true
		} else {
			plain = true
		}
	}
	switch {
	case tls && plain:
		return mesh.MTLSPermissive
	case tls:
		return mesh.MTLSStrict
	}
	return mesh.MTLSDisable
}

// PolicyRef is an authorization policy applying to a workload.
type PolicyRef struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Action    string `json:"action"`
	// Rules are the RBAC rules it renders to (<ns>/<policy>/rule-<n>).
	Rules []string `json:"rules"`
}

// CallerAccess is whether a caller of the catalog would be allowed.
type CallerAccess struct {
	Caller   string `json:"caller"`
	Identity string `json:"identity,omitempty"`
	AuthzResult
}

// ProxyDescription is one proxy of a described service.
type ProxyDescription struct {
	Proxy    string            `json:"proxy"`
	Flavor   string            `json:"flavor"`
	Port     uint32            `json:"port"`
	Labels   map[string]string `json:"labels,omitempty"`
	MTLS     MTLSDescription   `json:"mtls"`
	Policies []PolicyRef       `json:"policies"`
	Callers  []CallerAccess    `json:"callers"`
	Error    string            `json:"error,omitempty"`
}

// MTLSDescription is a workload's mTLS mode: what policy says and why, and
// what its proxy enforces now (they differ during a migration).
type MTLSDescription struct {
	Policy mesh.MTLSMode `json:"policy"`
	// DecidedBy names the PeerAuthentication (namespace/name) and the
	// level, or the mesh default.
	DecidedBy string               `json:"decidedBy"`
	Served    mesh.MTLSMode        `json:"served,omitempty"`
	Migration *snapshot.Transition `json:"migration,omitempty"`
}

// Description is GET /describe.
type Description struct {
	Service  string             `json:"service"`
	Protocol string             `json:"protocol"`
	Identity string             `json:"identity"`
	Proxies  []ProxyDescription `json:"proxies"`
}

// describe serves GET /describe?service=.
func (a *Admin) describe(w http.ResponseWriter, r *http.Request) {
	v, dst, svc, proxies, ok := a.destination(w, r.URL.Query().Get("service"))
	if !ok {
		return
	}
	ps := v.Policy
	if ps == nil {
		ps = &mesh.PolicySet{}
	}
	d := Description{Service: dst, Protocol: string(svc.Protocol), Identity: mesh.IdentityOf(a.TrustDomain, svc).SPIFFEID()}
	migr := map[string]*snapshot.Transition{}
	for i := range v.Migrations {
		migr[v.Migrations[i].Proxy] = &v.Migrations[i]
	}
	for _, p := range proxies {
		wl := v.Catalog.WorkloadOf(p)
		dec := ps.DecideMTLS(wl)
		pd := ProxyDescription{Proxy: p.ID, Flavor: string(p.Flavor), Port: wl.Port, Labels: wl.Labels,
			MTLS: MTLSDescription{Policy: dec.Mode, DecidedBy: decidedBy(dec, ps), Migration: migr[p.ID]}, Policies: []PolicyRef{}, Callers: []CallerAccess{}}
		for _, ap := range ps.AuthorizationsFor(wl) {
			ref := PolicyRef{Namespace: ap.Namespace, Name: ap.Name, Action: string(ap.Action)}
			if ref.Action == "" {
				ref.Action = string(mesh.ActionAllow)
			}
			for i := range ap.Rules {
				ref.Rules = append(ref.Rules, xds.RBACPolicyName(ap, i))
			}
			pd.Policies = append(pd.Policies, ref)
		}
		if l, _, err := inboundOf(v, p); err != nil {
			pd.Error = err.Error()
		} else {
			pd.MTLS.Served = servedMode(l)
		}
		// Every service of the catalog that calls this one, and a
		// plaintext caller.
		callers := callersOf(v.Catalog, svc.Key())
		for _, c := range callers {
			src, _ := resolveSource(v.Catalog, a.TrustDomain, c)
			pd.Callers = append(pd.Callers, CallerAccess{Caller: c, Identity: src.Identity,
				AuthzResult: evaluateProxy(v, p, a.TrustDomain, requestFor(src, svc, a.TrustDomain))})
		}
		src := AuthzSource{Input: "plaintext"}
		pd.Callers = append(pd.Callers, CallerAccess{Caller: "plaintext", AuthzResult: evaluateProxy(v, p, a.TrustDomain, requestFor(src, svc, a.TrustDomain))})
		d.Proxies = append(d.Proxies, pd)
	}
	writeJSON(w, http.StatusOK, d)
}

func decidedBy(d mesh.MTLSDecision, ps *mesh.PolicySet) string {
	if d.Policy == nil {
		if ps.DefaultMode == "" || ps.DefaultMode == mesh.MTLSUnset {
			return "the default (PERMISSIVE): no PeerAuthentication covers the workload"
		}
		return "meshd --mtls-mode: no PeerAuthentication covers the workload"
	}
	s := fmt.Sprintf("PeerAuthentication %s/%s (%s-wide", d.Policy.Namespace, d.Policy.Name, d.Level)
	if d.Level == "workload" {
		s = fmt.Sprintf("PeerAuthentication %s/%s (selecting the workload", d.Policy.Namespace, d.Policy.Name)
	}
	if d.Port {
		s += ", port-level mode"
	}
	return s + ")"
}

// callersOf lists the services (name.namespace) whose proxies have k as an
// upstream.
func callersOf(cat *mesh.Catalog, k mesh.ServiceKey) []string {
	seen := map[string]bool{}
	var out []string
	for _, p := range cat.Proxies() {
		for _, u := range p.Upstreams {
			if u.Key() == k && !seen[p.ServiceKey().String()] {
				seen[p.ServiceKey().String()] = true
				out = append(out, p.ServiceKey().String())
			}
		}
	}
	slices.Sort(out)
	return out
}
