package policy

import (
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/meshd/meshd/internal/suggest"
	"github.com/meshd/meshd/mesh"
)

// Linkerd's policy resources (policy.linkerd.io) and the Namespace
// annotation that sets a namespace's default inbound policy. This file reads
// them, one document at a time, into the linkerd* types below; references
// between them are resolved once every file is read (linkerdDocs.resolve), and
// they become the model's Linkerd decisions in Policies.SetWith
// (linkerd_set.go). Semantics: docs/policy.md, "Linkerd".

const (
	linkerdGroup     = "policy.linkerd.io"
	kindServer       = "Server"
	kindServerAuthz  = "ServerAuthorization"
	kindMeshTLS      = "MeshTLSAuthentication"
	kindNetworkAuthn = "NetworkAuthentication"
	kindNamespace    = "Namespace"
	kindSA           = "ServiceAccount"
	// kindLinkerdAuthz is how messages name Linkerd's AuthorizationPolicy,
	// which shares its kind with Istio's (kubectl's kind.group form).
	kindLinkerdAuthz = kindAuthz + "." + linkerdGroup
)

var (
	// kindVersions lists the apiVersions each kind is read in.
	kindVersions = map[string][]string{
		kindPeer:         istioVersions,
		kindAuthz:        append(slices.Clone(istioVersions), linkerdGroup+"/v1alpha1"),
		kindServer:       {linkerdGroup + "/v1beta3", linkerdGroup + "/v1beta2", linkerdGroup + "/v1beta1"},
		kindServerAuthz:  {linkerdGroup + "/v1beta1", linkerdGroup + "/v1alpha1"},
		kindMeshTLS:      {linkerdGroup + "/v1alpha1"},
		kindNetworkAuthn: {linkerdGroup + "/v1alpha1"},
		kindNamespace:    {"v1"},
	}
	allVersions = func() []string {
		var out []string
		for _, k := range allKinds {
			for _, v := range kindVersions[k] {
				if !slices.Contains(out, v) {
					out = append(out, v)
				}
			}
		}
		return out
	}()

	// otherLinkerdKinds explains why a known Linkerd kind is not read.
	otherLinkerdKinds = map[string]string{
		"HTTPRoute":                "routes come from the catalog, and route-level authorization is not supported: authorize the Server",
		"GRPCRoute":                "routes come from the catalog, and route-level authorization is not supported: authorize the Server",
		"HTTPLocalRateLimitPolicy": "rate limiting is not supported",
		"EgressNetwork":            "egress control is not supported",
		"ExternalWorkload":         "workloads come from the catalog (docs/catalog.md)",
	}

	proxyProtocols = []string{"unknown", "HTTP/1", "HTTP/2", "gRPC", "opaque", "TLS"}

	// portNameRE is a Kubernetes port name (IANA service name): the
	// catalog service it names must also be a DNS label.
	portNameRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	// dnsIdentityRE is Linkerd's DNS-like identity.
	dnsIdentityRE = regexp.MustCompile(`^(\*|[a-z0-9]([-a-z0-9]*[a-z0-9])?)(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
)

func versionsOf(kind string) []string { return kindVersions[kind] }

// displayKind names a kind in messages; Linkerd's AuthorizationPolicy
// carries its group so that it is not taken for Istio's.
func displayKind(kind string, linkerd bool) string {
	if kind == kindAuthz && linkerd {
		return kindLinkerdAuthz
	}
	return kind
}

// linkerdDocs are the Linkerd documents read, in file order.
type linkerdDocs struct {
	servers     []*linkerdServer
	serverAuthz []*linkerdServerAuthz
	policies    []*linkerdAuthzPolicy
	meshTLS     []*linkerdMeshTLS
	networks    []*linkerdNetworkAuthn
	namespaces  []*linkerdNamespace
}

func (l *linkerdDocs) add(o *linkerdDocs) {
	l.servers = append(l.servers, o.servers...)
	l.serverAuthz = append(l.serverAuthz, o.serverAuthz...)
	l.policies = append(l.policies, o.policies...)
	l.meshTLS = append(l.meshTLS, o.meshTLS...)
	l.networks = append(l.networks, o.networks...)
	l.namespaces = append(l.namespaces, o.namespaces...)
}

// each calls f with every document's id ("Kind ns/name") and source.
func (l *linkerdDocs) each(f func(id, source string)) {
	for _, x := range l.servers {
		f(kindServer+" "+x.Namespace+"/"+x.Name, x.Source)
	}
	for _, x := range l.serverAuthz {
		f(kindServerAuthz+" "+x.namespace+"/"+x.name, x.source)
	}
	for _, x := range l.policies {
		f(kindLinkerdAuthz+" "+x.namespace+"/"+x.name, x.source)
	}
	for _, x := range l.meshTLS {
		f(kindMeshTLS+" "+x.namespace+"/"+x.name, x.source)
	}
	for _, x := range l.networks {
		f(kindNetworkAuthn+" "+x.namespace+"/"+x.name, x.source)
	}
	for _, x := range l.namespaces {
		f(kindNamespace+" "+x.name, x.source)
	}
}

// LinkerdCounts counts the Linkerd documents by kind.
func (p *Policies) LinkerdCounts() map[string]int {
	out := map[string]int{}
	p.linkerd.each(func(id, _ string) { out[strings.Fields(id)[0]]++ })
	return out
}

// linkerdMeta is what a document's metadata gives.
type linkerdMeta struct {
	name, namespace, source string
	labels                  map[string]string
}

type linkerdServer struct {
	mesh.LinkerdServer
	// accessPolicy is v1beta3's spec.accessPolicy: what the Server allows
	// besides its authorizations ("" is Linkerd's default, deny).
	accessPolicy mesh.DefaultInboundPolicy
}

// linkerdID is one client identity an authorization names. TrustDomain ""
// means the mesh's (filled in by SetWith): ServiceAccount references carry
// none. ServiceAccount "*" is any in Namespace; Namespace "" any in
// TrustDomain; Any any identity at all.
type linkerdID struct {
	Any                                    bool
	TrustDomain, Namespace, ServiceAccount string
	// field is where the identity was written, for meshctl analyze.
	field string
}

type linkerdNetwork struct {
	cidr   string
	except []string
}

// linkerdClients is who one authorization admits.
type linkerdClients struct {
	// unauthenticated admits callers without an identity (plaintext) too.
	unauthenticated bool
	ids             []linkerdID
	// networks limit the caller's address; nil means the kind's default
	// (the cluster networks for ServerAuthorization, every address for
	// AuthorizationPolicy).
	networks []linkerdNetwork
}

type linkerdServerAuthz struct {
	name, namespace, source string
	serverName              string
	serverSelector          *mesh.LabelSelector
	clients                 linkerdClients
}

// linkerdRef is a reference to another resource, kept with its place for
// messages.
type linkerdRef struct {
	kind, name, namespace string
	line                  int
	field                 string
}

type linkerdAuthzPolicy struct {
	name, namespace, source string
	file                    string
	// targetServer is the Server targeted; "" with targetNamespace, which
	// targets every Server of the policy's namespace.
	targetServer    string
	targetNamespace bool
	meshTLS         *linkerdRef // MeshTLSAuthentication, or
	serviceAccount  *linkerdRef // a ServiceAccount
	network         *linkerdRef // NetworkAuthentication
	// clients is filled in by linkerdResolve.
	clients linkerdClients
}

type linkerdMeshTLS struct {
	name, namespace, source string
	ids                     []linkerdID
}

type linkerdNetworkAuthn struct {
	name, namespace, source string
	networks                []linkerdNetwork
}

type linkerdNamespace struct {
	name, source string
	// def is the namespace's default inbound policy; "" sets none.
	def mesh.DefaultInboundPolicy
}

// linkerdDocument reads the spec of one policy.linkerd.io document.
func (d *docParser) linkerdDocument(kind, apiVersion string, meta linkerdMeta, spec *yaml.Node, out *linkerdDocs) {
	switch kind {
	case kindServer:
		s := &linkerdServer{LinkerdServer: mesh.LinkerdServer{Name: meta.name, Namespace: meta.namespace, Labels: meta.labels, Source: meta.source}}
		d.serverSpec(spec, apiVersion, s)
		out.servers = append(out.servers, s)
	case kindServerAuthz:
		a := &linkerdServerAuthz{name: meta.name, namespace: meta.namespace, source: meta.source}
		d.serverAuthzSpec(spec, a)
		out.serverAuthz = append(out.serverAuthz, a)
	case kindAuthz:
		a := &linkerdAuthzPolicy{name: meta.name, namespace: meta.namespace, source: meta.source, file: d.file}
		d.linkerdAuthzSpec(spec, a)
		out.policies = append(out.policies, a)
	case kindMeshTLS:
		m := &linkerdMeshTLS{name: meta.name, namespace: meta.namespace, source: meta.source}
		d.meshTLSSpec(spec, m)
		out.meshTLS = append(out.meshTLS, m)
	case kindNetworkAuthn:
		n := &linkerdNetworkAuthn{name: meta.name, namespace: meta.namespace, source: meta.source}
		d.networkAuthnSpec(spec, n)
		out.networks = append(out.networks, n)
	}
}

// required reports a missing required field of m.
func (d *docParser) required(m map[string]entry, n *yaml.Node, path, field, hint string) (entry, bool) {
	e, ok := m[field]
	if !ok || isNull(e.val) {
		at := n
		if ok {
			at = e.key
		}
		d.add(deref(at), join(path, field), "%s is required: %s", field, hint)
		return entry{}, false
	}
	return e, true
}

func (d *docParser) serverSpec(spec *yaml.Node, apiVersion string, s *linkerdServer) {
	accepted := []string{"podSelector", "port", "proxyProtocol"}
	unsupported := map[string]string{}
	switch apiVersion {
	case linkerdGroup + "/v1beta1":
		unsupported["externalWorkloadSelector"] = "externalWorkloadSelector needs apiVersion " + linkerdGroup + "/v1beta2 or later"
		unsupported["accessPolicy"] = "accessPolicy needs apiVersion " + linkerdGroup + "/v1beta3"
	case linkerdGroup + "/v1beta2":
		accepted = append(accepted, "externalWorkloadSelector")
		unsupported["accessPolicy"] = "accessPolicy needs apiVersion " + linkerdGroup + "/v1beta3"
	default:
		accepted = append(accepted, "externalWorkloadSelector", "accessPolicy")
	}
	m, ok := d.fields(spec, "spec", "a Server spec", accepted, unsupported)
	if !ok {
		return
	}
	if spec == nil {
		d.add(nil, "spec", "spec is required, with podSelector and port")
		return
	}
	pod, hasPod := m["podSelector"]
	ext, hasExt := m["externalWorkloadSelector"]
	switch {
	case hasPod && hasExt:
		d.add(ext.key, "spec.externalWorkloadSelector", "give podSelector or externalWorkloadSelector, not both (both select catalog endpoints by their labels)")
	case hasPod:
		s.Selector = d.labelSelector(pod.val, "spec.podSelector")
	case hasExt:
		s.Selector = d.labelSelector(ext.val, "spec.externalWorkloadSelector")
	default:
		d.add(deref(spec), "spec.podSelector", "podSelector is required: it selects catalog endpoints by their labels ({} selects every workload of the namespace)")
	}
	if e, ok := d.required(m, spec, "spec", "port", "a port number (the workload's port: a sidecar's appPort, a gRPC server's port) or a name (the catalog service's name)"); ok {
		v := deref(e.val)
		switch {
		case v.Kind == yaml.ScalarNode && v.ShortTag() == "!!int":
			port, err := parsePort(v.Value)
			if err != nil {
				d.add(v, "spec.port", "%v", err)
			} else {
				s.Port = port
			}
		case v.Kind == yaml.ScalarNode && v.ShortTag() == "!!str":
			if _, err := strconv.Atoi(v.Value); err == nil {
				d.add(v, "spec.port", "%q is a port name made of digits, which no port has: write the number unquoted (port: %s)", v.Value, v.Value)
			} else if !portNameRE.MatchString(v.Value) || len(v.Value) > 63 {
				d.add(v, "spec.port", "%q is not a port name: use lowercase letters, digits and '-' (the name of a catalog service)", v.Value)
			} else {
				s.PortName = v.Value
			}
		default:
			d.add(v, "spec.port", "want a port number or name, got %s", describe(v))
		}
	}
	if e, ok := m["proxyProtocol"]; ok {
		if v, ok := d.str(e.val, "spec.proxyProtocol"); ok {
			if slices.Contains(proxyProtocols, v) {
				s.ProxyProtocol = v
			} else {
				d.add(deref(e.val), "spec.proxyProtocol", "unknown proxyProtocol %q: use %s%s", v, strings.Join(proxyProtocols, ", "), suggestion(v, proxyProtocols))
			}
		}
	}
	if e, ok := m["accessPolicy"]; ok {
		s.accessPolicy = d.defaultPolicy(e.val, "spec.accessPolicy")
	}
}

// defaultPolicy reads one of Linkerd's default inbound policy values.
func (d *docParser) defaultPolicy(n *yaml.Node, path string) mesh.DefaultInboundPolicy {
	v, ok := d.str(n, path)
	if !ok {
		return ""
	}
	if !mesh.DefaultInboundPolicy(v).Valid() {
		names := make([]string, len(mesh.DefaultInboundPolicies))
		for i, p := range mesh.DefaultInboundPolicies {
			names[i] = string(p)
		}
		d.add(deref(n), path, "unknown policy %q: use %s%s", v, strings.Join(names, ", "), suggestion(v, names))
		return ""
	}
	return mesh.DefaultInboundPolicy(v)
}

// labelSelector reads a Kubernetes label selector; an empty one selects
// everything, as in Linkerd.
func (d *docParser) labelSelector(n *yaml.Node, path string) mesh.LabelSelector {
	var sel mesh.LabelSelector
	m, ok := d.fields(n, path, "a label selector", []string{"matchLabels", "matchExpressions"}, nil)
	if !ok {
		return sel
	}
	if e, ok := m["matchLabels"]; ok {
		sel.MatchLabels = d.stringMap(e.val, path+".matchLabels")
		for k, v := range sel.MatchLabels {
			if strings.Contains(k, "*") || strings.Contains(v, "*") {
				d.add(deref(e.val), path+".matchLabels."+k, "wildcards are not supported in selectors: labels match exactly")
			}
		}
	}
	if e, ok := m["matchExpressions"]; ok {
		items, _ := d.list(e.val, path+".matchExpressions", "expressions ({key, operator, values})")
		for i, it := range items {
			p := fmt.Sprintf("%s.matchExpressions[%d]", path, i)
			x, ok := d.fields(it, p, "a label expression", []string{"key", "operator", "values"}, nil)
			if !ok {
				continue
			}
			var r mesh.LabelRequirement
			if k, ok := d.required(x, it, p, "key", "the label's name"); ok {
				r.Key, _ = d.str(k.val, p+".key")
			}
			ops := []string{mesh.OpIn, mesh.OpNotIn, mesh.OpExists, mesh.OpDoesNotExist}
			if o, ok := d.required(x, it, p, "operator", strings.Join(ops, ", ")); ok {
				if v, ok := d.str(o.val, p+".operator"); ok {
					if slices.Contains(ops, v) {
						r.Operator = v
					} else {
						d.add(deref(o.val), p+".operator", "unknown operator %q: use %s%s", v, strings.Join(ops, ", "), suggestion(v, ops))
					}
				}
			}
			if v, ok := x["values"]; ok {
				r.Values = d.strings(v.val, p+".values", nil)
			}
			switch r.Operator {
			case mesh.OpIn, mesh.OpNotIn:
				if len(r.Values) == 0 && !d.hasProblemsUnder(p) {
					d.add(deref(it), p+".values", "operator %s needs at least one value", r.Operator)
				}
			case mesh.OpExists, mesh.OpDoesNotExist:
				if len(r.Values) > 0 {
					d.add(deref(it), p+".values", "operator %s takes no values: remove them", r.Operator)
				}
			}
			sel.MatchExpressions = append(sel.MatchExpressions, r)
		}
	}
	return sel
}

func (d *docParser) serverAuthzSpec(spec *yaml.Node, a *linkerdServerAuthz) {
	m, ok := d.fields(spec, "spec", "a ServerAuthorization spec", []string{"server", "client"}, nil)
	if !ok {
		return
	}
	if e, ok := d.required(m, spec, "spec", "server", "{name: <Server>} or {selector: {matchLabels: ...}} (matching Servers' labels)"); ok {
		if srv, ok := d.fields(e.val, "spec.server", "a server reference", []string{"name", "selector"}, nil); ok {
			name, hasName := srv["name"]
			sel, hasSel := srv["selector"]
			switch {
			case hasName && hasSel:
				d.add(sel.key, "spec.server.selector", "give server.name or server.selector, not both")
			case hasName:
				if v, ok := d.str(name.val, "spec.server.name"); ok {
					if !objectNameRE.MatchString(v) {
						d.add(deref(name.val), "spec.server.name", "%q is not a Server name", v)
					}
					a.serverName = v
				}
			case hasSel:
				s := d.labelSelector(sel.val, "spec.server.selector")
				a.serverSelector = &s
			default:
				d.add(deref(e.val), "spec.server", "give server.name or server.selector")
			}
		}
	}
	if e, ok := d.required(m, spec, "spec", "client", "{meshTLS: {serviceAccounts: [...]}}, {meshTLS: {identities: [...]}} or {unauthenticated: true}"); ok {
		a.clients = d.serverAuthzClient(e.val)
		for i, id := range a.clients.ids {
			if id.ServiceAccount != "" && id.Namespace == "" {
				// serviceAccounts without a namespace are in the
				// authorization's, as in Linkerd.
				a.clients.ids[i].Namespace = a.namespace
			}
		}
	}
}

func (d *docParser) serverAuthzClient(n *yaml.Node) linkerdClients {
	var c linkerdClients
	const path = "spec.client"
	m, ok := d.fields(n, path, "a client", []string{"networks", "unauthenticated", "meshTLS"}, nil)
	if !ok {
		return c
	}
	if e, ok := m["networks"]; ok {
		// An empty list means the cluster networks, as leaving it out does.
		c.networks = d.networks(e.val, path+".networks")
	}
	if e, ok := m["unauthenticated"]; ok {
		c.unauthenticated = d.boolean(e.val, path+".unauthenticated")
	}
	mt, hasMTLS := m["meshTLS"]
	switch {
	case hasMTLS && c.unauthenticated:
		d.add(mt.key, path+".meshTLS", "unauthenticated: true admits every client, so meshTLS says nothing: remove one of them")
	case hasMTLS:
		t, ok := d.fields(mt.val, path+".meshTLS", "meshTLS", []string{"unauthenticatedTLS", "identities", "serviceAccounts"}, nil)
		if !ok {
			return c
		}
		anyTLS := false
		if e, ok := t["unauthenticatedTLS"]; ok {
			anyTLS = d.boolean(e.val, path+".meshTLS.unauthenticatedTLS")
		}
		if e, ok := t["identities"]; ok {
			c.ids = d.identities(e.val, path+".meshTLS.identities")
		}
		if e, ok := t["serviceAccounts"]; ok {
			items, _ := d.list(e.val, path+".meshTLS.serviceAccounts", "service accounts ({name, namespace})")
			for i, it := range items {
				p := fmt.Sprintf("%s.meshTLS.serviceAccounts[%d]", path, i)
				sa, ok := d.fields(it, p, "a service account", []string{"name", "namespace"}, nil)
				if !ok {
					continue
				}
				id := linkerdID{field: p}
				if e, ok := d.required(sa, it, p, "name", "the service account's name"); ok {
					id.ServiceAccount = d.dnsLabel(e.val, p+".name")
				}
				if e, ok := sa["namespace"]; ok {
					id.Namespace = d.dnsLabel(e.val, p+".namespace")
				}
				c.ids = append(c.ids, id) // Namespace "" is the authorization's: filled in below
			}
		}
		if anyTLS {
			if len(c.ids) > 0 {
				d.add(mt.key, path+".meshTLS.unauthenticatedTLS", "unauthenticatedTLS admits every TLS client, so identities and serviceAccounts say nothing: remove one of them")
			}
			// meshd's mTLS always verifies a client certificate, so "any
			// TLS client" is any client with a mesh identity.
			c.ids = []linkerdID{{Any: true, field: path + ".meshTLS.unauthenticatedTLS"}}
		}
		if len(c.ids) == 0 && !d.hasProblemsUnder(path+".meshTLS") {
			d.add(mt.key, path+".meshTLS", "meshTLS admits no client: list identities or serviceAccounts (or set unauthenticatedTLS: true)")
		}
	case !c.unauthenticated && !d.hasProblemsUnder(path):
		d.add(deref(n), path, "the client needs meshTLS (identities or serviceAccounts) or unauthenticated: true; an authorization that authenticates nobody is refused, as Linkerd refuses it")
	}
	return c
}

// dnsLabel reads a Kubernetes name (namespace or service account).
func (d *docParser) dnsLabel(n *yaml.Node, path string) string {
	v, ok := d.str(n, path)
	if !ok {
		return ""
	}
	if err := mesh.ValidName(v); err != nil {
		d.add(deref(n), path, "%v", err)
		return ""
	}
	return v
}

func (d *docParser) boolean(n *yaml.Node, path string) bool {
	v := deref(n)
	if !d.spend(v) {
		return false
	}
	if v == nil || v.Kind != yaml.ScalarNode || v.ShortTag() != "!!bool" {
		d.add(v, path, "want true or false, got %s", describe(v))
		return false
	}
	b, _ := strconv.ParseBool(v.Value)
	return b
}

// networks reads Linkerd's [{cidr, except}] list: each cidr minus its
// exceptions, which must lie inside it and not cover it (as Linkerd's
// admission checks).
func (d *docParser) networks(n *yaml.Node, path string) []linkerdNetwork {
	items, ok := d.list(n, path, "networks ({cidr, except})")
	if !ok {
		return nil
	}
	var out []linkerdNetwork
	for i, it := range items {
		p := fmt.Sprintf("%s[%d]", path, i)
		m, ok := d.fields(it, p, "a network", []string{"cidr", "except"}, nil)
		if !ok {
			continue
		}
		e, ok := d.required(m, it, p, "cidr", "an IP address or CIDR block, e.g. 10.0.0.0/8")
		if !ok {
			continue
		}
		v, ok := d.str(e.val, p+".cidr")
		if !ok {
			continue
		}
		cidr, err := parseNet(v)
		if err != nil {
			d.add(deref(e.val), p+".cidr", "%v", err)
			continue
		}
		nw := linkerdNetwork{cidr: v}
		if x, ok := m["except"]; ok {
			items, _ := d.list(x.val, p+".except", "IP addresses or CIDR blocks")
			for j, xi := range items {
				xp := fmt.Sprintf("%s.except[%d]", p, j)
				xs, ok := d.str(xi, xp)
				if !ok {
					continue
				}
				ex, err := parseNet(xs)
				switch {
				case err != nil:
					d.add(deref(xi), xp, "%v", err)
				case ex.Bits() <= cidr.Bits() && ex.Contains(cidr.Addr()):
					d.add(deref(xi), xp, "exception %s covers the whole of cidr %s, so this network admits nothing", xs, v)
				case !cidr.Contains(ex.Addr()):
					d.add(deref(xi), xp, "exception %s is not inside cidr %s", xs, v)
				default:
					nw.except = append(nw.except, xs)
				}
			}
		}
		out = append(out, nw)
	}
	return out
}

// parseNet reads an address or CIDR block as a prefix.
func parseNet(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked(), nil
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	return netip.Prefix{}, fmt.Errorf("%q is not an IP address or CIDR block (e.g. 10.0.0.1 or 10.0.0.0/16)", s)
}

// identities reads a list of identities as Linkerd writes them.
func (d *docParser) identities(n *yaml.Node, path string) []linkerdID {
	var out []linkerdID
	items, _ := d.list(n, path, "identities")
	for i, it := range items {
		p := fmt.Sprintf("%s[%d]", path, i)
		if v, ok := d.str(it, p); ok {
			if id, err := parseLinkerdIdentity(v); err != nil {
				d.add(deref(it), p, "%v", err)
			} else {
				id.field = p
				out = append(out, id)
			}
		}
	}
	return out
}

// parseLinkerdIdentity maps an identity as Linkerd writes it onto meshd's
// SPIFFE identities:
//
//   - any mesh identity
//     <sa>.<ns>.serviceaccount.identity.<cp>.<td>         spiffe://<td>/ns/<ns>/sa/<sa>
//     *.<ns>.serviceaccount.identity.<cp>.<td>            any service account of <ns>
//     *.serviceaccount.identity.<cp>.<td>                 any identity of trust domain <td>
//     spiffe://<td>/ns/<ns>/sa/<sa>                       itself
//
// <cp> is Linkerd's control-plane namespace (linkerd), which meshd's
// identities do not carry; <td> is Linkerd's identity trust domain, which is
// meshd's trust domain (--trust-domain; both default to cluster.local).
func parseLinkerdIdentity(s string) (linkerdID, error) {
	if s == "*" {
		return linkerdID{Any: true}, nil
	}
	if rest, ok := strings.CutPrefix(s, "spiffe://"); ok {
		if strings.Contains(rest, "*") {
			return linkerdID{}, fmt.Errorf("%q: SPIFFE identities match exactly, without wildcards (write *.<ns>.serviceaccount.identity.linkerd.<trust-domain> for a namespace)", s)
		}
		id, err := mesh.ParseSPIFFEID(s)
		if err != nil {
			return linkerdID{}, fmt.Errorf("%q is not a meshd identity: meshd's SPIFFE ids are spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>", s)
		}
		if err := mesh.ValidTrustDomain(id.TrustDomain); err != nil {
			return linkerdID{}, fmt.Errorf("%q: %v", s, err)
		}
		return linkerdID{TrustDomain: id.TrustDomain, Namespace: id.Namespace, ServiceAccount: id.ServiceAccount}, nil
	}
	if !dnsIdentityRE.MatchString(s) {
		return linkerdID{}, fmt.Errorf("%q is not an identity: write <sa>.<ns>.serviceaccount.identity.linkerd.<trust-domain>, a spiffe:// id, or *", s)
	}
	const marker = "serviceaccount.identity."
	i := strings.Index(s, marker)
	if i < 0 || (i > 0 && s[i-1] != '.') {
		return linkerdID{}, fmt.Errorf("%q is not a workload identity: meshd's identities are service accounts, written <sa>.<ns>.serviceaccount.identity.linkerd.<trust-domain> (or spiffe://<trust-domain>/ns/<ns>/sa/<sa>)", s)
	}
	cp, td, ok := strings.Cut(s[i+len(marker):], ".")
	if !ok || cp == "*" || td == "" || strings.Contains(td, "*") {
		return linkerdID{}, fmt.Errorf("%q: the identity must end in .serviceaccount.identity.<control-plane-namespace>.<trust-domain>, e.g. .serviceaccount.identity.linkerd.cluster.local", s)
	}
	head := strings.Split(strings.TrimSuffix(s[:i], "."), ".")
	switch {
	case i == 0:
		return linkerdID{}, fmt.Errorf("%q names no service account: write <sa>.<ns>.%s%s.%s", s, marker, cp, td)
	case len(head) == 1 && head[0] == "*":
		return linkerdID{TrustDomain: td}, nil
	case len(head) == 2 && head[1] != "*":
		return linkerdID{TrustDomain: td, Namespace: head[1], ServiceAccount: head[0]}, nil
	}
	return linkerdID{}, fmt.Errorf("%q: write <sa>.<ns>.%s%s.%s, with * only as the whole service account (*.<ns>...) or in front of %s", s, marker, cp, td, marker)
}

// targetRef is a reference read from targetRef or an authentication list.
type targetRef struct {
	group, kind, name, namespace string
	hasNamespace                 bool
}

// ref reads {group, kind, name[, namespace]}; withNamespace allows the
// namespace field.
func (d *docParser) ref(n *yaml.Node, path string, withNamespace bool) (targetRef, bool) {
	accepted := []string{"group", "kind", "name"}
	unsupported := map[string]string{"namespace": "a targetRef points into the policy's own namespace: remove namespace"}
	if withNamespace {
		accepted = append(accepted, "namespace")
		unsupported = nil
	}
	m, ok := d.fields(n, path, "a reference ({group, kind, name})", accepted, unsupported)
	if !ok {
		return targetRef{}, false
	}
	var r targetRef
	if e, ok := m["group"]; ok && !isNull(e.val) {
		r.group, _ = d.str(e.val, path+".group")
	}
	if e, ok := d.required(m, n, path, "kind", "the kind referred to"); ok {
		r.kind, _ = d.str(e.val, path+".kind")
	}
	if e, ok := d.required(m, n, path, "name", "the name referred to"); ok {
		r.name, _ = d.str(e.val, path+".name")
	}
	if e, ok := m["namespace"]; ok && withNamespace {
		r.namespace = d.dnsLabel(e.val, path+".namespace")
		r.hasNamespace = true
	}
	return r, !d.hasProblemsUnder(path)
}

// is reports whether r names kind in group ("" and "core" are the core
// group), as Linkerd compares them: case-insensitively.
func (r targetRef) is(group, kind string) bool {
	g := r.group
	if g == "" {
		g = "core"
	}
	if group == "" {
		group = "core"
	}
	return strings.EqualFold(g, group) && strings.EqualFold(r.kind, kind)
}

func (d *docParser) linkerdAuthzSpec(spec *yaml.Node, a *linkerdAuthzPolicy) {
	m, ok := d.fields(spec, "spec", "an AuthorizationPolicy spec", []string{"targetRef", "requiredAuthenticationRefs"}, nil)
	if !ok {
		return
	}
	if e, ok := d.required(m, spec, "spec", "targetRef", "{group: policy.linkerd.io, kind: Server, name: ...} or {kind: Namespace, name: <this namespace>}"); ok {
		if r, ok := d.ref(e.val, "spec.targetRef", false); ok {
			v := deref(e.val)
			switch {
			case r.is(linkerdGroup, kindServer):
				a.targetServer = r.name
			case r.is("", kindNamespace):
				if r.name != a.namespace {
					d.add(v, "spec.targetRef.name", "a policy can only target its own namespace (%s), not %s", a.namespace, r.name)
				}
				a.targetNamespace = true
			case r.is(linkerdGroup, "HTTPRoute"), r.is("gateway.networking.k8s.io", "HTTPRoute"), r.is("gateway.networking.k8s.io", "GRPCRoute"):
				d.unsupported(v, "spec.targetRef", "targeting a %s (route-level authorization) is not supported: meshd's routes come from the catalog; target the Server (or the Namespace)", r.kind)
			case strings.EqualFold(r.kind, kindServer):
				d.add(v, "spec.targetRef.group", "kind Server is in group %s: write group: %s", linkerdGroup, linkerdGroup)
			default:
				d.add(v, "spec.targetRef", "cannot target %s: target a Server (group %s) or the Namespace", canonicalKind(r), linkerdGroup)
			}
		}
	}
	e, ok := m["requiredAuthenticationRefs"]
	if !ok {
		d.add(deref(spec), "spec.requiredAuthenticationRefs", "requiredAuthenticationRefs is required: MeshTLSAuthentication, NetworkAuthentication or ServiceAccount references ([] requires nothing and allows every client)")
		return
	}
	items, _ := d.list(e.val, "spec.requiredAuthenticationRefs", "references ({group, kind, name, namespace})")
	for i, it := range items {
		p := fmt.Sprintf("spec.requiredAuthenticationRefs[%d]", i)
		r, ok := d.ref(it, p, true)
		if !ok {
			continue
		}
		lr := &linkerdRef{kind: r.kind, name: r.name, namespace: r.namespace, line: line(deref(it)), field: p}
		if !r.hasNamespace {
			lr.namespace = a.namespace
		}
		v := deref(it)
		var slot **linkerdRef
		switch {
		case r.is(linkerdGroup, kindMeshTLS):
			lr.kind, slot = kindMeshTLS, &a.meshTLS
		case r.is(linkerdGroup, kindNetworkAuthn):
			lr.kind, slot = kindNetworkAuthn, &a.network
		case r.is("", kindSA):
			lr.kind, slot = kindSA, &a.serviceAccount
			if mesh.ValidName(r.name) != nil {
				d.add(v, p+".name", "%q is not a service account name", r.name)
			}
		case strings.EqualFold(r.kind, kindMeshTLS), strings.EqualFold(r.kind, kindNetworkAuthn):
			d.add(v, p+".group", "kind %s is in group %s: write group: %s", r.kind, linkerdGroup, linkerdGroup)
			continue
		default:
			d.add(v, p, "unsupported authentication %s: use MeshTLSAuthentication, NetworkAuthentication (group %s) or ServiceAccount", canonicalKind(r), linkerdGroup)
			continue
		}
		if *slot != nil {
			d.add(v, p, "a second %s: an AuthorizationPolicy takes at most one (Linkerd's rule); list every identity in one MeshTLSAuthentication or every network in one NetworkAuthentication", lr.kind)
			continue
		}
		*slot = lr
	}
	if a.meshTLS != nil && a.serviceAccount != nil {
		d.add(deref(e.val), "spec.requiredAuthenticationRefs", "a MeshTLSAuthentication and a ServiceAccount may not be required together (Linkerd's rule): name the service account in the MeshTLSAuthentication")
	}
}

func canonicalKind(r targetRef) string {
	if r.group == "" || strings.EqualFold(r.group, "core") {
		return r.kind
	}
	return r.kind + "." + r.group
}

func (d *docParser) meshTLSSpec(spec *yaml.Node, m *linkerdMeshTLS) {
	f, ok := d.fields(spec, "spec", "a MeshTLSAuthentication spec", []string{"identities", "identityRefs"}, nil)
	if !ok {
		return
	}
	if e, ok := f["identities"]; ok {
		m.ids = d.identities(e.val, "spec.identities")
	}
	if e, ok := f["identityRefs"]; ok {
		items, _ := d.list(e.val, "spec.identityRefs", "references ({kind: ServiceAccount, name}, {kind: Namespace, name})")
		for i, it := range items {
			p := fmt.Sprintf("spec.identityRefs[%d]", i)
			r, ok := d.ref(it, p, true)
			if !ok {
				continue
			}
			v := deref(it)
			switch {
			case r.is("", kindSA):
				ns := m.namespace
				if r.hasNamespace {
					ns = r.namespace
				}
				if mesh.ValidName(r.name) != nil {
					d.add(v, p+".name", "%q is not a service account name", r.name)
				} else {
					m.ids = append(m.ids, linkerdID{Namespace: ns, ServiceAccount: r.name, field: p})
				}
			case r.is("", kindNamespace):
				if r.hasNamespace {
					d.add(v, p+".namespace", "a Namespace reference names the namespace in name: remove namespace")
				} else if mesh.ValidName(r.name) != nil {
					d.add(v, p+".name", "%q is not a namespace name", r.name)
				} else {
					m.ids = append(m.ids, linkerdID{Namespace: r.name, ServiceAccount: "*", field: p})
				}
			default:
				d.add(v, p, "unsupported identity reference %s: use ServiceAccount or Namespace", canonicalKind(r))
			}
		}
	}
	if len(m.ids) == 0 && !d.hasProblemsUnder("spec") {
		d.add(deref(spec), "spec", "the MeshTLSAuthentication names no identity: give identities or identityRefs")
	}
}

func (d *docParser) networkAuthnSpec(spec *yaml.Node, n *linkerdNetworkAuthn) {
	f, ok := d.fields(spec, "spec", "a NetworkAuthentication spec", []string{"networks"}, nil)
	if !ok {
		return
	}
	if e, ok := d.required(f, spec, "spec", "networks", "at least one {cidr: ..., except: [...]}"); ok {
		n.networks = d.networks(e.val, "spec.networks")
		if len(n.networks) == 0 && !d.hasProblemsUnder("spec.networks") {
			d.add(deref(e.val), "spec.networks", "at least one network must be given")
		}
	}
}

// requireIdentityAnnotation is Linkerd's per-port "identity required"
// setting, which meshd does not implement.
const requireIdentityAnnotation = "config.linkerd.io/proxy-require-identity-inbound-ports"

// namespaceDoc reads a Namespace document: its default inbound policy
// annotation. Other annotations are ignored, except misspellings of that
// one and the security setting meshd does not implement.
func (d *docParser) namespaceDoc(meta *yaml.Node, annotations map[string]string) *linkerdNamespace {
	ns := &linkerdNamespace{}
	var node *yaml.Node
	if a := deref(meta); a != nil && a.Kind == yaml.MappingNode {
		for i := 0; i+1 < len(a.Content); i += 2 {
			if a.Content[i].Value == "annotations" {
				node = deref(a.Content[i+1])
			}
		}
	}
	at := func(key string) *yaml.Node {
		if node != nil && node.Kind == yaml.MappingNode {
			for i := 0; i+1 < len(node.Content); i += 2 {
				if node.Content[i].Value == key {
					return node.Content[i+1]
				}
			}
		}
		return node
	}
	for _, k := range sortedKeys(annotations) {
		if k == mesh.DefaultInboundPolicyLabel {
			ns.def = d.defaultPolicy(at(k), "metadata.annotations."+k)
			continue
		}
		if k == requireIdentityAnnotation {
			// Ignoring it would admit callers without identity that the
			// namespace meant to refuse.
			d.unsupported(at(k), "metadata.annotations."+k, "%s is not supported: require identities with a Server and its authorizations, or with the default inbound policy all-authenticated", k)
			continue
		}
		if s := suggest.Closest(k, []string{mesh.DefaultInboundPolicyLabel}); s != "" {
			d.add(at(k), "metadata.annotations."+k, "unknown annotation %q; did you mean %q?", k, s)
		}
	}
	return ns
}
