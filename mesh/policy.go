package mesh

import (
	"cmp"
	"reflect"
	"slices"
)

// Mesh policy in normalised form. Sources (Istio- and Linkerd-compatible YAML
// in package policy, Consul intentions) produce these types; translation
// consumes them. The semantics are Istio's; Linkerd's decisions are expressed
// in them (linkerd.go). See docs/policy.md.

// MTLSMode is a PeerAuthentication mode.
type MTLSMode string

const (
	// MTLSUnset inherits the mode of the enclosing scope (workload →
	// namespace → mesh).
	MTLSUnset MTLSMode = "UNSET"
	// MTLSStrict accepts mutual TLS only.
	MTLSStrict MTLSMode = "STRICT"
	// MTLSPermissive accepts mutual TLS and plaintext on the same port.
	MTLSPermissive MTLSMode = "PERMISSIVE"
	// MTLSDisable accepts plaintext only; callers do not originate mTLS.
	MTLSDisable MTLSMode = "DISABLE"
)

// Valid reports whether m is one of the four modes.
func (m MTLSMode) Valid() bool {
	switch m {
	case MTLSUnset, MTLSStrict, MTLSPermissive, MTLSDisable:
		return true
	}
	return false
}

// PeerAuthentication sets the mTLS mode of the workloads it selects.
type PeerAuthentication struct {
	Name      string `yaml:"name,omitempty" json:"name,omitempty"`
	Namespace string `yaml:"namespace,omitempty" json:"namespace,omitempty"`
	// Selector matches endpoint labels; nil selects every workload of the
	// namespace (or of the mesh, in the root namespace).
	Selector map[string]string `yaml:"selector,omitempty" json:"selector,omitempty"`
	Mode     MTLSMode          `yaml:"mode,omitempty" json:"mode,omitempty"`
	// PortModes override Mode for a workload port (the application's port:
	// a sidecar's appPort, a proxyless server's port).
	PortModes map[uint32]MTLSMode `yaml:"portModes,omitempty" json:"portModes,omitempty"`
	// Source names where the policy came from (file, Consul), for messages.
	Source string `yaml:"source,omitempty" json:"source,omitempty"`
}

// AuthzAction is an AuthorizationPolicy action.
type AuthzAction string

const (
	ActionAllow AuthzAction = "ALLOW"
	ActionDeny  AuthzAction = "DENY"
	// ActionAudit records matching requests without affecting the decision.
	ActionAudit AuthzAction = "AUDIT"
)

// AuthorizationPolicy allows, denies or audits requests to the workloads it
// selects.
type AuthorizationPolicy struct {
	Name      string            `yaml:"name,omitempty" json:"name,omitempty"`
	Namespace string            `yaml:"namespace,omitempty" json:"namespace,omitempty"`
	Selector  map[string]string `yaml:"selector,omitempty" json:"selector,omitempty"`
	// Service, when set, selects the workloads of that service in the
	// policy's namespace (Consul intentions name their destination this way).
	Service string      `yaml:"service,omitempty" json:"service,omitempty"`
	Action  AuthzAction `yaml:"action,omitempty" json:"action,omitempty"`
	// Rules: a request matches the policy if it matches any rule. No rules
	// matches nothing (so an ALLOW policy without rules denies everything);
	// one empty rule matches everything.
	Rules  []Rule `yaml:"rules,omitempty" json:"rules,omitempty"`
	Source string `yaml:"source,omitempty" json:"source,omitempty"`
}

// Rule matches a request when From, To and When all match. An empty From or
// To matches any request; every When condition must hold.
type Rule struct {
	From []Source    `yaml:"from,omitempty" json:"from,omitempty"` // any one must match
	To   []Operation `yaml:"to,omitempty" json:"to,omitempty"`     // any one must match
	When []Condition `yaml:"when,omitempty" json:"when,omitempty"` // all must match
	// NotTo: the request must match none of these. Consul's ordered L7
	// permissions need it (a permission applies only if no earlier one
	// matched); Istio's YAML has no such field.
	NotTo []Operation `yaml:"notTo,omitempty" json:"notTo,omitempty"`
	// NotFrom: the caller must match none of these. A Linkerd decision
	// denies the callers no authorization allows, which Istio's fields
	// (each a "not" of one value list) cannot say.
	NotFrom []Source `yaml:"notFrom,omitempty" json:"notFrom,omitempty"`
}

// Source describes the caller. Every non-empty field must match; within a
// field any value may match, and no value of a Not field may.
type Source struct {
	Principals        []string `yaml:"principals,omitempty" json:"principals,omitempty"`       // "<td>/ns/<ns>/sa/<sa>", with "*" prefix/suffix wildcards
	NotPrincipals     []string `yaml:"notPrincipals,omitempty" json:"notPrincipals,omitempty"` // "<td>/ns/<ns>/sa/<sa>", with "*" prefix/suffix wildcards
	Namespaces        []string `yaml:"namespaces,omitempty" json:"namespaces,omitempty"`
	NotNamespaces     []string `yaml:"notNamespaces,omitempty" json:"notNamespaces,omitempty"`
	IPBlocks          []string `yaml:"ipBlocks,omitempty" json:"ipBlocks,omitempty"`                   // peer address of the connection, CIDR or IP
	NotIPBlocks       []string `yaml:"notIpBlocks,omitempty" json:"notIpBlocks,omitempty"`             // peer address of the connection, CIDR or IP
	RemoteIPBlocks    []string `yaml:"remoteIpBlocks,omitempty" json:"remoteIpBlocks,omitempty"`       // original client address (X-Forwarded-For), CIDR or IP
	NotRemoteIPBlocks []string `yaml:"notRemoteIpBlocks,omitempty" json:"notRemoteIpBlocks,omitempty"` // original client address (X-Forwarded-For), CIDR or IP
}

// Operation describes the request. Fields combine as in Source.
type Operation struct {
	Hosts      []string `yaml:"hosts,omitempty" json:"hosts,omitempty"`
	NotHosts   []string `yaml:"notHosts,omitempty" json:"notHosts,omitempty"`
	Ports      []uint32 `yaml:"ports,omitempty" json:"ports,omitempty"`
	NotPorts   []uint32 `yaml:"notPorts,omitempty" json:"notPorts,omitempty"`
	Methods    []string `yaml:"methods,omitempty" json:"methods,omitempty"`
	NotMethods []string `yaml:"notMethods,omitempty" json:"notMethods,omitempty"`
	Paths      []string `yaml:"paths,omitempty" json:"paths,omitempty"`       // exact, "prefix*", "*suffix" or "*"
	NotPaths   []string `yaml:"notPaths,omitempty" json:"notPaths,omitempty"` // exact, "prefix*", "*suffix" or "*"
	// Headers must all match (Consul L7 permissions; Istio writes headers
	// as "when" conditions instead).
	Headers []HeaderMatch `yaml:"headers,omitempty" json:"headers,omitempty"`
}

// HeaderMatch matches one request header: present, or its value exact,
// by prefix, suffix or regular expression; Invert negates the match.
type HeaderMatch struct {
	Name    string `yaml:"name" json:"name"`
	Present bool   `yaml:"present,omitempty" json:"present,omitempty"`
	Exact   string `yaml:"exact,omitempty" json:"exact,omitempty"`
	Prefix  string `yaml:"prefix,omitempty" json:"prefix,omitempty"`
	Suffix  string `yaml:"suffix,omitempty" json:"suffix,omitempty"`
	Regex   string `yaml:"regex,omitempty" json:"regex,omitempty"`
	Invert  bool   `yaml:"invert,omitempty" json:"invert,omitempty"`
}

// Condition is a "when" clause: Key is one of the supported keys
// (request.headers[name], source.ip, source.namespace, source.principal,
// destination.port, connection.sni).
type Condition struct {
	Key       string   `yaml:"key,omitempty" json:"key,omitempty"`
	Values    []string `yaml:"values,omitempty" json:"values,omitempty"`
	NotValues []string `yaml:"notValues,omitempty" json:"notValues,omitempty"`
}

// PolicySet is every policy in force, plus the mesh-level settings.
type PolicySet struct {
	// RootNamespace holds mesh-wide policies (Istio's istio-system).
	RootNamespace string `yaml:"rootNamespace,omitempty" json:"rootNamespace,omitempty"`
	// DefaultMode applies when no PeerAuthentication sets one.
	DefaultMode    MTLSMode              `yaml:"defaultMode,omitempty" json:"defaultMode,omitempty"`
	Peer           []PeerAuthentication  `yaml:"peer,omitempty" json:"peer,omitempty"`
	Authorizations []AuthorizationPolicy `yaml:"authorizations,omitempty" json:"authorizations,omitempty"`
	// Linkerd is the policy written as Linkerd resources, with its
	// decisions (nil: none, and endpoint labels are not read).
	Linkerd *LinkerdPolicy `yaml:"linkerd,omitempty" json:"linkerd,omitempty"`
}

// DefaultRootNamespace is the root namespace unless configured otherwise.
const DefaultRootNamespace = "meshd-system"

// Workload is what policies select: the namespace and labels of a proxy's
// instance, and its application port.
type Workload struct {
	Service   string            `yaml:"service,omitempty" json:"service,omitempty"`
	Namespace string            `yaml:"namespace,omitempty" json:"namespace,omitempty"`
	Labels    map[string]string `yaml:"labels,omitempty" json:"labels,omitempty"`
	Port      uint32            `yaml:"port,omitempty" json:"port,omitempty"`
}

func selects(sel, labels map[string]string) bool {
	for k, v := range sel {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// appliesTo reports whether a policy in namespace ns with selector sel
// applies to w: policies in the root namespace apply mesh-wide (their
// selector still filters), others only in their own namespace.
func (ps *PolicySet) appliesTo(ns string, sel map[string]string, w Workload) bool {
	if ns != ps.RootNamespace && ns != w.Namespace {
		return false
	}
	return selects(sel, w.Labels)
}

func (ps *PolicySet) authzAppliesTo(a *AuthorizationPolicy, w Workload) bool {
	if a.Service != "" && (a.Service != w.Service || a.Namespace != w.Namespace) {
		return false
	}
	return ps.appliesTo(a.Namespace, a.Selector, w)
}

// MTLSDecision is a workload's effective mTLS mode and what decided it.
type MTLSDecision struct {
	Mode MTLSMode `json:"mode"`
	// Policy is the PeerAuthentication that decided (nil: DefaultMode);
	// Level is "workload", "namespace" or "mesh" (a root-namespace policy
	// without selector), "" for DefaultMode; Port is set when a port-level
	// mode of Policy decided.
	Policy *PeerAuthentication `json:"-"`
	Level  string              `json:"level,omitempty"`
	Port   bool                `json:"portLevel,omitempty"`
}

// MTLSModeFor resolves the effective mTLS mode of a workload (DecideMTLS).
func (ps *PolicySet) MTLSModeFor(w Workload) MTLSMode { return ps.DecideMTLS(w).Mode }

// DecideMTLS resolves the effective mTLS mode of a workload with Istio's
// precedence: a workload-selecting policy over a namespace-wide one over a
// mesh-wide one (root namespace, no selector) over DefaultMode; UNSET defers
// to the next level; a port-level mode for the workload's port wins within
// its policy. Among several policies at one level, the one whose
// namespace/name sorts first wins (meshctl analyze warns about the conflict).
func (ps *PolicySet) DecideMTLS(w Workload) MTLSDecision {
	var workload, namespace, meshWide []*PeerAuthentication
	for i := range ps.Peer {
		p := &ps.Peer[i]
		switch {
		case p.Namespace == w.Namespace && p.Selector != nil && selects(p.Selector, w.Labels):
			workload = append(workload, p)
		case p.Namespace == w.Namespace && p.Selector == nil && p.Namespace != ps.RootNamespace:
			namespace = append(namespace, p)
		case p.Namespace == ps.RootNamespace && p.Selector == nil:
			meshWide = append(meshWide, p)
		}
	}
	for li, level := range [][]*PeerAuthentication{workload, namespace, meshWide} {
		slices.SortFunc(level, func(a, b *PeerAuthentication) int {
			return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
		})
		name := [...]string{"workload", "namespace", "mesh"}[li]
		for _, p := range level {
			if m, ok := p.PortModes[w.Port]; ok && m != MTLSUnset && m != "" {
				return MTLSDecision{Mode: m, Policy: p, Level: name, Port: true}
			}
			if p.Mode != MTLSUnset && p.Mode != "" {
				return MTLSDecision{Mode: p.Mode, Policy: p, Level: name}
			}
			break // only the first policy of a level counts
		}
	}
	if ps.DefaultMode == "" || ps.DefaultMode == MTLSUnset {
		return MTLSDecision{Mode: MTLSPermissive}
	}
	return MTLSDecision{Mode: ps.DefaultMode}
}

// AuthorizationsFor returns the authorization policies that apply to w, in
// canonical order (namespace, name): Istio's and Consul's by their
// selection, and Linkerd's decision for w if it has one.
func (ps *PolicySet) AuthorizationsFor(w Workload) []*AuthorizationPolicy {
	var out []*AuthorizationPolicy
	for i := range ps.Authorizations {
		a := &ps.Authorizations[i]
		if ps.authzAppliesTo(a, w) {
			out = append(out, a)
		}
	}
	if d := ps.LinkerdDecisionFor(w); d != nil {
		out = append(out, d)
	}
	slices.SortFunc(out, func(a, b *AuthorizationPolicy) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	return out
}

// WorkloadOf returns the workload a proxy fronts: its namespace, the labels
// of the endpoint it serves (matched by address and public port, or by
// public port alone when the proxy binds every address and the match is
// unique), and its application port.
func (c *Catalog) WorkloadOf(p *Proxy) Workload {
	w := Workload{Service: p.Service, Namespace: p.Namespace, Port: p.AppPort}
	if p.Flavor == FlavorGRPC {
		w.Port = p.PublicPort
	}
	s := c.Service(p.ServiceKey())
	if s == nil || !p.Inbound() {
		return w
	}
	var match *Endpoint
	matches := 0
	for i := range s.Endpoints {
		e := &s.Endpoints[i]
		if e.Port != p.PublicPort {
			continue
		}
		if e.Address == p.Address {
			return Workload{Service: w.Service, Namespace: w.Namespace, Labels: e.Labels, Port: w.Port}
		}
		match = e
		matches++
	}
	if matches == 1 && (p.Address == "0.0.0.0" || p.Address == "::") {
		w.Labels = match.Labels
	}
	return w
}

// AuthorizationChange compares two policy sets (nil: no policies) for a
// publish that must know which workloads a change can concern (issue 14:
// a change visits only what it concerns). If the sets differ in their
// authorization policies alone — the same root namespace, default mode,
// PeerAuthentications and Linkerd policy — ok is true and namespaces holds
// the namespace of every authorization policy added, removed or changed:
// only workloads in those namespaces can have different authorizations
// (AuthorizationsFor), and their mTLS modes are the same. everywhere is
// true when one of them is in the root namespace, which applies to every
// workload. Anything else is not ok: any workload's mode may have moved.
func AuthorizationChange(a, b *PolicySet) (namespaces map[string]bool, everywhere, ok bool) {
	empty := &PolicySet{RootNamespace: DefaultRootNamespace}
	if a == nil {
		a = empty
	}
	if b == nil {
		b = empty
	}
	if a.RootNamespace != b.RootNamespace || a.DefaultMode != b.DefaultMode ||
		!reflect.DeepEqual(a.Peer, b.Peer) || !reflect.DeepEqual(a.Linkerd, b.Linkerd) {
		return nil, false, false
	}
	type key struct{ ns, name string }
	byKey := func(ps *PolicySet) (map[key]*AuthorizationPolicy, bool) {
		m := make(map[key]*AuthorizationPolicy, len(ps.Authorizations))
		for i := range ps.Authorizations {
			p := &ps.Authorizations[i]
			k := key{p.Namespace, p.Name}
			if _, dup := m[k]; dup {
				return nil, false // not told apart by name: compare nothing
			}
			m[k] = p
		}
		return m, true
	}
	old, ok1 := byKey(a)
	now, ok2 := byKey(b)
	if !ok1 || !ok2 {
		return nil, false, false
	}
	namespaces = map[string]bool{}
	for k, p := range old {
		if q, ok := now[k]; !ok || !reflect.DeepEqual(p, q) {
			namespaces[k.ns] = true
		}
	}
	for k := range now {
		if _, ok := old[k]; !ok {
			namespaces[k.ns] = true
		}
	}
	return namespaces, namespaces[a.RootNamespace], true
}
