package policy

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"github.com/meshd/meshd/internal/suggest"
	"github.com/meshd/meshd/mesh"
)

// DefaultClusterNetworks are Linkerd's default cluster networks (its
// clusterNetworks value) plus loopback: meshd's sidecars on one host reach
// each other over loopback, which inside a Kubernetes pod never happens.
var DefaultClusterNetworks = []string{"10.0.0.0/8", "100.64.0.0/10", "172.16.0.0/12", "192.168.0.0/16", "fd00::/8", "127.0.0.0/8", "::1/128"}

// ParseDefaultInboundPolicy reads a default inbound policy as given on a
// command line.
func ParseDefaultInboundPolicy(s string) (mesh.DefaultInboundPolicy, error) {
	d := mesh.DefaultInboundPolicy(s)
	if !d.Valid() {
		names := make([]string, len(mesh.DefaultInboundPolicies))
		for i, p := range mesh.DefaultInboundPolicies {
			names[i] = string(p)
		}
		return "", fmt.Errorf("%q is not a default inbound policy: use %s%s", s, strings.Join(names, ", "), suggestion(s, names))
	}
	return d, nil
}

// ParseClusterNetworks checks a list of cluster networks (CIDR blocks or
// addresses).
func ParseClusterNetworks(l []string) error {
	for _, s := range l {
		if _, err := parseNet(s); err != nil {
			return err
		}
	}
	return nil
}

// findMeshTLS and findNetwork look a referenced resource up by namespace and
// name.
func (l *linkerdDocs) findMeshTLS(ns, name string) *linkerdMeshTLS {
	for _, m := range l.meshTLS {
		if m.namespace == ns && m.name == name {
			return m
		}
	}
	return nil
}

func (l *linkerdDocs) findNetwork(ns, name string) *linkerdNetworkAuthn {
	for _, n := range l.networks {
		if n.namespace == ns && n.name == name {
			return n
		}
	}
	return nil
}

// clients returns who an AuthorizationPolicy admits: every required
// authentication must hold (identity and network). ok is false when a
// reference does not resolve; Linkerd then ignores the policy, which
// admits nobody through it.
func (l *linkerdDocs) clients(a *linkerdAuthzPolicy) (linkerdClients, bool) {
	c := linkerdClients{unauthenticated: true}
	switch {
	case a.meshTLS != nil:
		m := l.findMeshTLS(a.meshTLS.namespace, a.meshTLS.name)
		if m == nil {
			return c, false
		}
		c.unauthenticated, c.ids = false, m.ids
	case a.serviceAccount != nil:
		c.unauthenticated = false
		c.ids = []linkerdID{{Namespace: a.serviceAccount.namespace, ServiceAccount: a.serviceAccount.name, field: a.serviceAccount.field}}
	}
	if a.network != nil {
		n := l.findNetwork(a.network.namespace, a.network.name)
		if n == nil {
			return c, false
		}
		c.networks = n.networks
	}
	return c, true
}

// resolve reports references to authentication resources the files do not
// define. Linkerd would ignore such a policy; meshd refuses the set, so
// that a file deleted first or a misspelt name is seen at once.
func (l *linkerdDocs) resolve() []Problem {
	var out []Problem
	for _, a := range l.policies {
		for _, r := range []*linkerdRef{a.meshTLS, a.network} {
			if r == nil {
				continue
			}
			found := false
			var have []string
			switch r.kind {
			case kindMeshTLS:
				found = l.findMeshTLS(r.namespace, r.name) != nil
				for _, m := range l.meshTLS {
					have = append(have, m.namespace+"/"+m.name)
				}
			case kindNetworkAuthn:
				found = l.findNetwork(r.namespace, r.name) != nil
				for _, n := range l.networks {
					have = append(have, n.namespace+"/"+n.name)
				}
			}
			if found {
				continue
			}
			msg := fmt.Sprintf("%s %s/%s is not defined in the policy files: define it, or fix the name or namespace", r.kind, r.namespace, r.name)
			if s := suggest.Closest(r.namespace+"/"+r.name, have); s != "" {
				msg += fmt.Sprintf("; did you mean %s?", s)
			}
			out = append(out, Problem{File: a.file, Line: r.line, Policy: kindLinkerdAuthz + " " + a.namespace + "/" + a.name, Field: r.field, Message: msg})
		}
	}
	return out
}

// principal renders an identity in the model's (Istio's) principal form.
func (id linkerdID) principal(td string) string {
	if id.Any {
		return "*"
	}
	if id.TrustDomain != "" {
		td = id.TrustDomain
	}
	if id.Namespace == "" {
		return td + "/*" // any identity of the trust domain
	}
	return td + "/ns/" + id.Namespace + "/sa/" + id.ServiceAccount // "sa/*": any of the namespace
}

// sources renders who c admits as model sources, any one of which admits
// a caller; defaultNets applies when c has no networks (nil: any address).
func (c linkerdClients) sources(td string, defaultNets []linkerdNetwork) []mesh.Source {
	var principals []string
	if !c.unauthenticated {
		for _, id := range c.ids {
			if p := id.principal(td); !slices.Contains(principals, p) {
				principals = append(principals, p)
			}
		}
	}
	nets := c.networks
	if nets == nil {
		nets = defaultNets
	}
	if len(nets) == 0 {
		return []mesh.Source{{Principals: principals}}
	}
	// Networks without exceptions share one source (a field matches if
	// any of its values does); an exception belongs to its own network.
	var plain []string
	var out []mesh.Source
	for _, n := range nets {
		if len(n.except) == 0 {
			plain = append(plain, n.cidr)
			continue
		}
		out = append(out, mesh.Source{Principals: slices.Clone(principals), IPBlocks: []string{n.cidr}, NotIPBlocks: slices.Clone(n.except)})
	}
	if len(plain) > 0 {
		out = append([]mesh.Source{{Principals: slices.Clone(principals), IPBlocks: plain}}, out...)
	}
	return out
}

func networksOf(cidrs []string) []linkerdNetwork {
	out := make([]linkerdNetwork, len(cidrs))
	for i, c := range cidrs {
		out[i] = linkerdNetwork{cidr: c}
	}
	return out
}

// defaultClients is who a default inbound policy (or a Server's
// accessPolicy) admits; audit reports Linkerd's audit value, which admits
// everybody and records what nothing else admits.
func defaultClients(d mesh.DefaultInboundPolicy, cluster []linkerdNetwork) (c []linkerdClients, audit bool) {
	anyID := []linkerdID{{Any: true}}
	switch d {
	case mesh.DefaultAllUnauthenticated, "":
		return []linkerdClients{{unauthenticated: true}}, false
	case mesh.DefaultAllAuthenticated:
		return []linkerdClients{{ids: anyID}}, false
	case mesh.DefaultClusterUnauthenticated:
		return []linkerdClients{{unauthenticated: true, networks: cluster}}, false
	case mesh.DefaultClusterAuthenticated:
		return []linkerdClients{{ids: anyID, networks: cluster}}, false
	case mesh.DefaultAudit:
		return nil, true
	}
	return nil, false // deny
}

// decision renders Linkerd's decision for some workloads: a DENY (AUDIT
// for audit) rule matching the callers none of allowed admits. Nil when
// allowed admits everybody: there is nothing to enforce.
func decision(ns, name string, allowed []mesh.Source, audit bool, source string) *mesh.AuthorizationPolicy {
	for _, s := range allowed {
		if isEverybody(s) {
			return nil
		}
	}
	action := mesh.ActionDeny
	if audit {
		action = mesh.ActionAudit
	}
	return &mesh.AuthorizationPolicy{Name: name, Namespace: ns, Action: action,
		Rules: []mesh.Rule{{NotFrom: allowed}}, Source: source}
}

func isEverybody(s mesh.Source) bool {
	return len(s.Principals)+len(s.NotPrincipals)+len(s.Namespaces)+len(s.NotNamespaces)+
		len(s.IPBlocks)+len(s.NotIPBlocks)+len(s.RemoteIPBlocks)+len(s.NotRemoteIPBlocks) == 0
}

// Decision names: "server:<name>" in the Server's namespace and
// "default:<policy>" in the root namespace, after the kind and name Linkerd's
// proxy reports (srv_kind, srv_name). Istio's names cannot hold ':', so
// they never collide with an Istio policy's.
const (
	serverDecisionPrefix  = "server:"
	defaultDecisionPrefix = "default:"
)

// set renders the Linkerd resources with s: the selection data (Servers,
// default inbound policies) and the decision of each Server and each
// default inbound policy.
func (l *linkerdDocs) set(s Settings) *mesh.LinkerdPolicy {
	cluster := networksOf(s.ClusterNetworks)
	lp := &mesh.LinkerdPolicy{Default: s.DefaultInboundPolicy, Defaults: map[mesh.DefaultInboundPolicy]*mesh.AuthorizationPolicy{}}
	if lp.Default == mesh.DefaultAllUnauthenticated {
		lp.Default = "" // the default default
	}
	for _, n := range l.namespaces {
		if n.def != "" {
			if lp.NamespaceDefaults == nil {
				lp.NamespaceDefaults = map[string]mesh.DefaultInboundPolicy{}
			}
			lp.NamespaceDefaults[n.name] = n.def
		}
	}
	// Every default's decision is in every set: an endpoint label may ask
	// for any of them.
	for _, d := range mesh.DefaultInboundPolicies {
		clients, audit := defaultClients(d, cluster)
		var allowed []mesh.Source
		for _, c := range clients {
			allowed = append(allowed, c.sources(s.TrustDomain, nil)...)
		}
		if p := decision(s.RootNamespace, defaultDecisionPrefix+string(d), allowed, audit, "default inbound policy "+string(d)); p != nil {
			lp.Defaults[d] = p
		}
	}

	servers := slices.Clone(l.servers)
	slices.SortFunc(servers, func(a, b *linkerdServer) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	sazs := slices.Clone(l.serverAuthz)
	slices.SortFunc(sazs, func(a, b *linkerdServerAuthz) int {
		return cmp.Or(cmp.Compare(a.namespace, b.namespace), cmp.Compare(a.name, b.name))
	})
	aps := slices.Clone(l.policies)
	slices.SortFunc(aps, func(a, b *linkerdAuthzPolicy) int {
		return cmp.Or(cmp.Compare(a.namespace, b.namespace), cmp.Compare(a.name, b.name))
	})
	for _, srv := range servers {
		var allowed []mesh.Source
		for _, a := range l.authorizationsOf(srv, sazs, aps, s.TrustDomain, cluster) {
			allowed = append(allowed, a.sources...)
		}
		clients, audit := defaultClients(cmp.Or(srv.accessPolicy, mesh.DefaultDeny), cluster)
		for _, c := range clients {
			allowed = append(allowed, c.sources(s.TrustDomain, nil)...)
		}
		ms := srv.LinkerdServer
		ms.Decision = decision(srv.Namespace, serverDecisionPrefix+srv.Name, allowed, audit, srv.Source)
		lp.Servers = append(lp.Servers, ms)
	}
	return lp
}

// serverAuthorization is one authorization of a Server.
type serverAuthorization struct {
	// id is "ServerAuthorization ns/name" or "AuthorizationPolicy.policy.linkerd.io ns/name".
	id, source string
	sources    []mesh.Source
}

// authorizationsOf returns the authorizations of srv, in namespace/name
// order: the ServerAuthorizations selecting it (by name, or by a selector
// over its labels), then the AuthorizationPolicies targeting it or its
// namespace. A ServerAuthorization without networks admits the cluster
// networks; an AuthorizationPolicy without a NetworkAuthentication admits
// every address (Linkerd's defaults for each).
func (l *linkerdDocs) authorizationsOf(srv *linkerdServer, sazs []*linkerdServerAuthz, aps []*linkerdAuthzPolicy, td string, cluster []linkerdNetwork) []serverAuthorization {
	var out []serverAuthorization
	for _, a := range sazs {
		if a.namespace != srv.Namespace {
			continue
		}
		switch {
		case a.serverName != "" && a.serverName == srv.Name:
		case a.serverSelector != nil && a.serverSelector.Matches(srv.Labels):
		default:
			continue
		}
		out = append(out, serverAuthorization{id: kindServerAuthz + " " + a.namespace + "/" + a.name, source: a.source, sources: a.clients.sources(td, cluster)})
	}
	for _, a := range aps {
		if a.namespace != srv.Namespace || !a.targetNamespace && a.targetServer != srv.Name {
			continue
		}
		c, ok := l.clients(a)
		if !ok {
			continue // a dangling reference admits nobody (resolve refuses such sets)
		}
		out = append(out, serverAuthorization{id: kindLinkerdAuthz + " " + a.namespace + "/" + a.name, source: a.source, sources: c.sources(td, nil)})
	}
	return out
}
