package mesh

import (
	"cmp"
	"slices"
)

// Linkerd's inbound policy in normalised form. Linkerd decides per workload
// port: the first Server selecting the port decides who may connect (its
// authorizations; none means nobody), and a port no Server selects follows
// the workload's default inbound policy. Package policy reads Linkerd's
// resources and renders each such decision as one ordinary
// AuthorizationPolicy: a DENY (AUDIT for Linkerd's audit) rule whose NotFrom
// lists the clients allowed. This file picks the decision for a workload;
// AuthorizationsFor adds it to Istio's policies, so a request must pass both
// (docs/policy.md, "Istio and Linkerd on one workload").

// DefaultInboundPolicy is one of Linkerd's default inbound policies: what a
// workload port that no Server selects accepts.
type DefaultInboundPolicy string

const (
	// DefaultAllUnauthenticated allows every client, plaintext included
	// (Linkerd's default).
	DefaultAllUnauthenticated DefaultInboundPolicy = "all-unauthenticated"
	// DefaultAllAuthenticated allows mTLS clients with any mesh identity.
	DefaultAllAuthenticated DefaultInboundPolicy = "all-authenticated"
	// DefaultClusterUnauthenticated allows every client from the cluster
	// networks.
	DefaultClusterUnauthenticated DefaultInboundPolicy = "cluster-unauthenticated"
	// DefaultClusterAuthenticated allows mTLS clients from the cluster
	// networks.
	DefaultClusterAuthenticated DefaultInboundPolicy = "cluster-authenticated"
	// DefaultDeny allows nobody.
	DefaultDeny DefaultInboundPolicy = "deny"
	// DefaultAudit allows everybody and records (audits) every request.
	DefaultAudit DefaultInboundPolicy = "audit"
)

// DefaultInboundPolicies lists the values, in Linkerd's documentation order.
var DefaultInboundPolicies = []DefaultInboundPolicy{DefaultAllUnauthenticated, DefaultAllAuthenticated,
	DefaultClusterUnauthenticated, DefaultClusterAuthenticated, DefaultDeny, DefaultAudit}

// Valid reports whether d is one of Linkerd's values.
func (d DefaultInboundPolicy) Valid() bool { return slices.Contains(DefaultInboundPolicies, d) }

// DefaultInboundPolicyLabel is the catalog endpoint label that sets a
// workload's default inbound policy, as Linkerd's pod annotation of the same
// name does (the catalog has labels only).
const DefaultInboundPolicyLabel = "config.linkerd.io/default-inbound-policy"

// LinkerdPolicy is the policy written as Linkerd resources: the Servers
// and default inbound policies, and the decision each of them reaches.
type LinkerdPolicy struct {
	// Default is the mesh-wide default inbound policy (meshd
	// --default-inbound-policy); "" means all-unauthenticated.
	Default DefaultInboundPolicy `yaml:"default,omitempty" json:"default,omitempty"`
	// NamespaceDefaults override Default per namespace (Namespace documents'
	// config.linkerd.io/default-inbound-policy annotation).
	NamespaceDefaults map[string]DefaultInboundPolicy `yaml:"namespaceDefaults,omitempty" json:"namespaceDefaults,omitempty"`
	// Defaults are the decisions of the default inbound policies; a value
	// without one (all-unauthenticated) admits everybody. Every value an
	// endpoint label may name has its decision here.
	Defaults map[DefaultInboundPolicy]*AuthorizationPolicy `yaml:"defaults,omitempty" json:"defaults,omitempty"`
	// Servers in canonical order (namespace, name).
	Servers []LinkerdServer `yaml:"servers,omitempty" json:"servers,omitempty"`
}

// LinkerdServer is a Linkerd Server: a port of the workloads it selects.
type LinkerdServer struct {
	Name      string `yaml:"name" json:"name"`
	Namespace string `yaml:"namespace" json:"namespace"`
	// Selector matches endpoint labels in the Server's namespace; an empty
	// selector selects every workload of the namespace.
	Selector LabelSelector `yaml:"selector,omitempty" json:"selector,omitempty"`
	// Port is the workload port (a sidecar's appPort, a proxyless server's
	// port); PortName, when set instead, names the workload's service
	// (meshd's service is one port of a workload, as a named container port
	// is in Kubernetes).
	Port     uint32 `yaml:"port,omitempty" json:"port,omitempty"`
	PortName string `yaml:"portName,omitempty" json:"portName,omitempty"`
	// ProxyProtocol is Linkerd's proxyProtocol as written; meshd takes the
	// protocol from the catalog (meshctl analyze compares the two).
	ProxyProtocol string `yaml:"proxyProtocol,omitempty" json:"proxyProtocol,omitempty"`
	// Labels are the Server's own metadata labels, which
	// ServerAuthorization selectors match.
	Labels map[string]string `yaml:"labels,omitempty" json:"labels,omitempty"`
	// Decision is who may connect to the ports the Server decides, as a
	// policy; nil admits everybody.
	Decision *AuthorizationPolicy `yaml:"decision,omitempty" json:"decision,omitempty"`
	Source   string               `yaml:"source,omitempty" json:"source,omitempty"`
}

// Selects reports whether the Server selects w's port.
func (s *LinkerdServer) Selects(w Workload) bool {
	if s.Namespace != w.Namespace || !s.Selector.Matches(w.Labels) {
		return false
	}
	if s.PortName != "" {
		return s.PortName == w.Service
	}
	return s.Port == w.Port
}

// LabelSelector is a Kubernetes label selector: every matchLabels entry and
// every expression must hold. The zero value selects everything.
type LabelSelector struct {
	MatchLabels      map[string]string  `yaml:"matchLabels,omitempty" json:"matchLabels,omitempty"`
	MatchExpressions []LabelRequirement `yaml:"matchExpressions,omitempty" json:"matchExpressions,omitempty"`
}

// LabelRequirement is one matchExpressions entry.
type LabelRequirement struct {
	Key string `yaml:"key" json:"key"`
	// Operator is In, NotIn, Exists or DoesNotExist.
	Operator string   `yaml:"operator" json:"operator"`
	Values   []string `yaml:"values,omitempty" json:"values,omitempty"`
}

// Label selector operators.
const (
	OpIn           = "In"
	OpNotIn        = "NotIn"
	OpExists       = "Exists"
	OpDoesNotExist = "DoesNotExist"
)

// Matches reports whether labels satisfy the selector.
func (s *LabelSelector) Matches(labels map[string]string) bool {
	if !selects(s.MatchLabels, labels) {
		return false
	}
	for _, r := range s.MatchExpressions {
		v, ok := labels[r.Key]
		switch r.Operator {
		case OpIn:
			if !ok || !slices.Contains(r.Values, v) {
				return false
			}
		case OpNotIn:
			if ok && slices.Contains(r.Values, v) {
				return false
			}
		case OpExists:
			if !ok {
				return false
			}
		case OpDoesNotExist:
			if ok {
				return false
			}
		default:
			return false // unknown operators select nothing (fail closed)
		}
	}
	return true
}

// LinkerdServerFor returns the Server deciding w's port: among the Servers
// selecting it, the first by name (Linkerd takes the oldest; meshd has no
// creation times, and meshctl analyze warns about the conflict). nil: no
// Server selects it.
func (ps *PolicySet) LinkerdServerFor(w Workload) *LinkerdServer {
	if ps.Linkerd == nil {
		return nil
	}
	var best *LinkerdServer
	for i := range ps.Linkerd.Servers {
		s := &ps.Linkerd.Servers[i]
		if s.Selects(w) && (best == nil || cmp.Compare(s.Name, best.Name) < 0) {
			best = s
		}
	}
	return best
}

// LinkerdDefaultFor returns w's default inbound policy: its endpoint's
// DefaultInboundPolicyLabel, else its namespace's default, else the
// mesh-wide default, else all-unauthenticated.
func (ps *PolicySet) LinkerdDefaultFor(w Workload) DefaultInboundPolicy {
	if d := DefaultInboundPolicy(w.Labels[DefaultInboundPolicyLabel]); d.Valid() {
		return d
	}
	if ps.Linkerd != nil {
		if d, ok := ps.Linkerd.NamespaceDefaults[w.Namespace]; ok {
			return d
		}
		if ps.Linkerd.Default != "" {
			return ps.Linkerd.Default
		}
	}
	return DefaultAllUnauthenticated
}

// LinkerdDecisionFor returns Linkerd's decision for w: the deciding
// Server's, or that of w's default inbound policy; nil admits everybody.
func (ps *PolicySet) LinkerdDecisionFor(w Workload) *AuthorizationPolicy {
	if ps.Linkerd == nil {
		return nil
	}
	if s := ps.LinkerdServerFor(w); s != nil {
		return s.Decision
	}
	return ps.Linkerd.Defaults[ps.LinkerdDefaultFor(w)]
}

// EachAuthorization calls f with every authorization policy of the set:
// Authorizations, then the Linkerd decisions (Servers', then the
// defaults' in DefaultInboundPolicies order).
func (ps *PolicySet) EachAuthorization(f func(*AuthorizationPolicy)) {
	for i := range ps.Authorizations {
		f(&ps.Authorizations[i])
	}
	if ps.Linkerd == nil {
		return
	}
	for i := range ps.Linkerd.Servers {
		if d := ps.Linkerd.Servers[i].Decision; d != nil {
			f(d)
		}
	}
	for _, v := range DefaultInboundPolicies {
		if d := ps.Linkerd.Defaults[v]; d != nil {
			f(d)
		}
	}
}
