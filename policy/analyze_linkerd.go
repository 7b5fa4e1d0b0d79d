package policy

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"github.com/meshd/meshd/mesh"
)

// Findings about Linkerd's resources: what loads but will not do what was
// meant (Servers and authorizations that select nothing, identities no
// workload has, unauthenticated clients a STRICT workload refuses anyway),
// and workloads under Istio's and Linkerd's policies at once.

func (a *analyzer) linkerd() {
	docs := &linkerdDocs{}
	if a.in.Policies != nil {
		docs = &a.in.Policies.linkerd
	}
	a.linkerdIdentities(docs)
	ps := a.in.Policy
	if a.in.Catalog == nil {
		return
	}
	var servers []mesh.LinkerdServer
	if ps.Linkerd != nil {
		servers = ps.Linkerd.Servers
	}
	for i := range servers {
		a.linkerdServer(&servers[i])
	}
	a.linkerdTargets(docs, servers)
	for _, wl := range a.workloads {
		a.linkerdWorkload(docs, wl)
	}
}

func serverID(s *mesh.LinkerdServer) string { return kindServer + " " + s.Namespace + "/" + s.Name }

// linkerdServer warns about a Server that selects no workload, one that
// loses a workload to another Server, and a proxyProtocol that disagrees
// with the catalog's protocol.
func (a *analyzer) linkerdServer(s *mesh.LinkerdServer) {
	ps := a.in.Policy
	id := serverID(s)
	var selected []*workload
	var labelsOnly []*workload
	for _, wl := range a.workloads {
		if s.Selects(wl.w) {
			selected = append(selected, wl)
		} else if wl.w.Namespace == s.Namespace && s.Selector.Matches(wl.w.Labels) {
			labelsOnly = append(labelsOnly, wl)
		}
	}
	if len(selected) == 0 {
		msg := fmt.Sprintf("the Server selects no workload: no inbound proxy in namespace %s matches its podSelector and port", s.Namespace)
		if len(labelsOnly) > 0 {
			var have []string
			hint := ""
			for _, wl := range labelsOnly {
				have = append(have, fmt.Sprintf("%s: port %d, service %s", wl.name(), wl.w.Port, wl.w.Service))
				if s.PortName == "" && wl.proxy.Flavor == mesh.FlavorEnvoy && wl.proxy.PublicPort == s.Port {
					hint = fmt.Sprintf("; %d is the sidecar's publicPort of %s, but a Server names the application's port (appPort %d)", s.Port, wl.name(), wl.proxy.AppPort)
				}
			}
			port := fmt.Sprint(s.Port)
			if s.PortName != "" {
				port = fmt.Sprintf("%q (a port name is a catalog service's name)", s.PortName)
			}
			msg = fmt.Sprintf("the Server selects no workload: the workloads its podSelector matches have another port than %s (%s)%s", port, strings.Join(have, "; "), hint)
		}
		a.add(SeverityWarning, s.Source, id, "spec", "%s", msg)
		return
	}
	for _, wl := range selected {
		if win := ps.LinkerdServerFor(wl.w); win != nil && win.Name != s.Name {
			a.addFor(SeverityWarning, s.Source, id, "spec.podSelector", "several Servers select the port of ", wl.name(),
				fmt.Sprintf(": %s (the first by name) decides it and this Server is ignored there; keep one Server per workload port", serverID(win)))
		}
		if want := protocolFor(s.ProxyProtocol); wl.service != nil && want != nil && !slices.Contains(want, wl.service.Protocol) {
			a.addFor(SeverityWarning, s.Source, id, "spec.proxyProtocol", "proxyProtocol "+s.ProxyProtocol+" does not match the catalog's protocol of ",
				fmt.Sprintf("%s (%s)", wl.service.Key(), wl.service.Protocol), ": meshd takes the protocol from the catalog, and proxyProtocol changes nothing")
		}
	}
}

// protocolFor lists the catalog protocols a proxyProtocol agrees with; nil
// for unknown (detect), which agrees with any.
func protocolFor(p string) []mesh.Protocol {
	switch p {
	case "HTTP/1":
		return []mesh.Protocol{mesh.ProtocolHTTP}
	case "HTTP/2":
		return []mesh.Protocol{mesh.ProtocolHTTP2, mesh.ProtocolGRPC}
	case "gRPC":
		return []mesh.Protocol{mesh.ProtocolGRPC}
	case "opaque", "TLS":
		return []mesh.Protocol{mesh.ProtocolTCP}
	}
	return nil
}

// linkerdTargets warns about authorizations that reach no Server.
func (a *analyzer) linkerdTargets(docs *linkerdDocs, servers []mesh.LinkerdServer) {
	for _, z := range docs.serverAuthz {
		found := false
		for i := range servers {
			s := &servers[i]
			if s.Namespace == z.namespace && (z.serverName != "" && z.serverName == s.Name || z.serverSelector != nil && z.serverSelector.Matches(s.Labels)) {
				found = true
			}
		}
		if !found {
			field, what := "spec.server.selector", "no Server in namespace "+z.namespace+" has labels matching server.selector"
			if z.serverName != "" {
				field, what = "spec.server.name", fmt.Sprintf("there is no Server %s/%s", z.namespace, z.serverName)
			}
			a.add(SeverityWarning, z.source, kindServerAuthz+" "+z.namespace+"/"+z.name, field, "%s, so this authorization admits nobody anywhere", what)
		}
	}
	for _, p := range docs.policies {
		id := kindLinkerdAuthz + " " + p.namespace + "/" + p.name
		found := false
		for i := range servers {
			s := &servers[i]
			if s.Namespace == p.namespace && (p.targetNamespace || s.Name == p.targetServer) {
				found = true
			}
		}
		switch {
		case found:
		case p.targetNamespace:
			a.add(SeverityWarning, p.source, id, "spec.targetRef", "namespace %s has no Server: a policy targeting a Namespace applies to its Servers only, and ports no Server selects follow the default inbound policy", p.namespace)
		default:
			a.add(SeverityWarning, p.source, id, "spec.targetRef.name", "there is no Server %s/%s, so this policy applies to nothing", p.namespace, p.targetServer)
		}
	}
}

// linkerdWorkload warns about one workload's Linkerd decision: mixed with
// Istio's policies, unauthenticated clients under STRICT, identities
// required under DISABLE.
func (a *analyzer) linkerdWorkload(docs *linkerdDocs, wl *workload) {
	ps := a.in.Policy
	dec := ps.LinkerdDecisionFor(wl.w)
	srv := ps.LinkerdServerFor(wl.w)
	var origin, originSource, originID string
	if srv != nil {
		origin, originSource, originID = serverID(srv), srv.Source, serverID(srv)
	} else {
		def := ps.LinkerdDefaultFor(wl.w)
		origin = "default inbound policy " + string(def)
		originSource, originID = a.defaultOrigin(docs, wl, def)
	}
	if dec != nil {
		var istio []string
		for _, p := range ps.AuthorizationsFor(wl.w) {
			if p != dec {
				istio = append(istio, p.Namespace+"/"+p.Name)
			}
		}
		if len(istio) > 0 {
			a.add(SeverityWarning, a.in.CatalogPath, "proxy "+wl.name(), "",
				"Istio (or Consul) authorization (%s) and Linkerd's %s both apply: a request must be allowed by both (docs/policy.md, \"Istio and Linkerd on one workload\")",
				strings.Join(istio, ", "), origin)
		}
	}
	// Who the decision admits, to compare with the mTLS mode.
	type admits struct {
		id, source, field string
		unauth, ids       bool
	}
	var list []admits
	if srv != nil {
		for _, s := range docs.servers {
			if s.Namespace != srv.Namespace || s.Name != srv.Name {
				continue
			}
			for _, z := range docs.authorizationsOf(s, docs.serverAuthz, docs.policies, a.td, nil) {
				ad := admits{id: z.id, source: z.source, field: "spec"}
				for _, src := range z.sources {
					if len(src.Principals) == 0 {
						ad.unauth = true
					} else {
						ad.ids = true
					}
				}
				list = append(list, ad)
			}
		}
	} else if def := ps.LinkerdDefaultFor(wl.w); def != mesh.DefaultAllUnauthenticated {
		list = append(list, admits{id: cmp.Or(originID, "meshd --default-inbound-policy"), source: originSource,
			unauth: def == mesh.DefaultClusterUnauthenticated, ids: def == mesh.DefaultAllAuthenticated || def == mesh.DefaultClusterAuthenticated})
	}
	for _, ad := range list {
		switch {
		case ad.unauth && wl.mode == mesh.MTLSStrict:
			a.addFor(SeverityWarning, ad.source, ad.id, "", "admits unauthenticated (plaintext) clients, but meshd refuses plaintext before authorization on STRICT workloads, so only mTLS clients get in (make them PERMISSIVE with a PeerAuthentication to admit plaintext, as Linkerd's proxies do): ",
				fmt.Sprintf("%s (%s)", wl.name(), origin), "")
		case ad.ids && !ad.unauth && wl.mode == mesh.MTLSDisable:
			a.addFor(SeverityWarning, ad.source, ad.id, "", "admits only clients with a mesh identity, but every caller of a DISABLE workload arrives in plaintext, without an identity, so it admits nobody on: ",
				fmt.Sprintf("%s (%s)", wl.name(), origin), "")
		}
	}
}

// defaultOrigin names where w's default inbound policy comes from: its
// endpoint label (the catalog), its Namespace document, or the flag.
func (a *analyzer) defaultOrigin(docs *linkerdDocs, wl *workload, def mesh.DefaultInboundPolicy) (source, id string) {
	if wl.w.Labels[mesh.DefaultInboundPolicyLabel] != "" {
		return a.in.CatalogPath, "proxy " + wl.name() + " (label " + mesh.DefaultInboundPolicyLabel + ")"
	}
	for _, n := range docs.namespaces {
		if n.name == wl.w.Namespace && n.def == def {
			return n.source, kindNamespace + " " + n.name
		}
	}
	return "", ""
}

// linkerdIdentities warns about identities that name no workload identity:
// another trust domain, a namespace without services, a service account no
// service runs as.
func (a *analyzer) linkerdIdentities(docs *linkerdDocs) {
	check := func(source, id string, x linkerdID) {
		if x.Any {
			return
		}
		td := cmp.Or(x.TrustDomain, a.td)
		if td != a.td {
			a.add(SeverityWarning, source, id, x.field, "identity in trust domain %q, but the mesh's is %q (meshd --trust-domain; Linkerd's identity trust domain is meshd's), so it matches no workload", td, a.td)
			return
		}
		if a.in.Catalog == nil || x.Namespace == "" {
			return
		}
		for _, s := range a.in.Catalog.Services() {
			if s.Namespace == x.Namespace && (x.ServiceAccount == "*" || s.ServiceAccount == x.ServiceAccount) {
				return
			}
		}
		if x.ServiceAccount == "*" {
			a.add(SeverityWarning, source, id, x.field, "namespace %q has no service in the catalog, so no caller comes from it", x.Namespace)
			return
		}
		a.add(SeverityWarning, source, id, x.field, "identity %s names no workload: no service in the catalog runs as service account %s in namespace %s",
			x.principal(a.td), x.ServiceAccount, x.Namespace)
	}
	for _, z := range docs.serverAuthz {
		for _, x := range z.clients.ids {
			check(z.source, kindServerAuthz+" "+z.namespace+"/"+z.name, x)
		}
	}
	for _, m := range docs.meshTLS {
		for _, x := range m.ids {
			check(m.source, kindMeshTLS+" "+m.namespace+"/"+m.name, x)
		}
	}
	for _, p := range docs.policies {
		if r := p.serviceAccount; r != nil {
			check(p.source, kindLinkerdAuthz+" "+p.namespace+"/"+p.name, linkerdID{Namespace: r.namespace, ServiceAccount: r.name, field: r.field})
		}
	}
}
