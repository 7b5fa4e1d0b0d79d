package policy

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/meshd/meshd/mesh"
)

// Severity grades a Finding.
type Severity string

const (
	// SeverityError is a policy meshd cannot enforce as written.
	SeverityError Severity = "error"
	// SeverityWarning is a policy that loads but probably does not do what
	// was meant.
	SeverityWarning Severity = "warning"
)

// Finding is one result of Analyze.
type Finding struct {
	Severity Severity `json:"severity"`
	// File is "file:line" of the policy (or the catalog's path).
	File string `json:"file"`
	// Policy is "AuthorizationPolicy ns/name", "PeerAuthentication ns/name"
	// or "proxy <id>".
	Policy string `json:"policy"`
	// Field is the field of the policy the finding is about, if any.
	Field   string `json:"field,omitempty"`
	Message string `json:"message"`
}

// String renders "severity: file: policy: field: message".
func (f Finding) String() string {
	parts := []string{string(f.Severity)}
	for _, p := range []string{f.File, f.Policy, f.Field} {
		if p != "" {
			parts = append(parts, p)
		}
	}
	return strings.Join(append(parts, f.Message), ": ")
}

// AnalyzeInput is what Analyze looks at.
type AnalyzeInput struct {
	// Catalog is the mesh; nil limits the analysis to what needs none.
	Catalog *mesh.Catalog
	// CatalogPath names the catalog in findings that are about it.
	CatalogPath string
	Policy      *mesh.PolicySet
	// TrustDomain is the mesh's, for checking principals; "" means
	// mesh.DefaultTrustDomain.
	TrustDomain string
	// Policies are the documents Policy was made of, when known: findings
	// about Linkerd's ServerAuthorizations, AuthorizationPolicies and
	// MeshTLSAuthentications need them (the set holds only their result).
	Policies *Policies
}

// workload is an inbound proxy with what policies see of it.
type workload struct {
	proxy   *mesh.Proxy
	service *mesh.Service
	w       mesh.Workload
	mode    mesh.MTLSMode
}

func (wl *workload) name() string { return wl.proxy.ID }

// Analyze looks for policy that loads but will not do what was meant:
// selectors that select nothing, principals no workload has, several
// PeerAuthentications competing for one workload, identity rules on
// workloads that accept plaintext, HTTP-only fields on tcp services,
// PERMISSIVE on proxyless gRPC servers (which gRPC cannot serve, an error),
// Linkerd resources that select nothing or compete, and workloads under
// both Istio's and Linkerd's policies (analyze_linkerd.go).
// Findings are sorted errors first, then by file and policy.
func Analyze(in AnalyzeInput) []Finding {
	a := &analyzer{in: in, td: cmp.Or(in.TrustDomain, mesh.DefaultTrustDomain), grouped: map[groupKey]*group{}}
	ps := in.Policy
	if ps == nil {
		ps = &mesh.PolicySet{RootNamespace: mesh.DefaultRootNamespace, DefaultMode: mesh.MTLSPermissive}
		a.in.Policy = ps
	}
	if in.Catalog != nil {
		for _, p := range in.Catalog.Proxies() {
			if !p.Inbound() {
				continue
			}
			w := in.Catalog.WorkloadOf(p)
			a.workloads = append(a.workloads, &workload{proxy: p, service: in.Catalog.Service(p.ServiceKey()), w: w, mode: ps.MTLSModeFor(w)})
		}
	}
	for i := range ps.Peer {
		a.peer(&ps.Peer[i])
	}
	for i := range ps.Authorizations {
		a.authz(&ps.Authorizations[i])
	}
	for _, wl := range a.workloads {
		a.precedence(wl)
		a.grpcMode(wl)
	}
	a.linkerd()
	return a.result()
}

type analyzer struct {
	in        AnalyzeInput
	td        string
	workloads []*workload
	findings  []Finding
	// grouped collects one finding per policy and field whatever the
	// number of workloads it concerns, so a mesh-wide policy gives one line.
	grouped map[groupKey]*group
}

type groupKey struct {
	sev                 Severity
	file, policy, field string
	prefix, suffix      string
}

type group struct {
	names []string
}

func (a *analyzer) add(sev Severity, source, policy, field, format string, args ...any) {
	a.findings = append(a.findings, Finding{Severity: sev, File: source, Policy: policy, Field: field, Message: fmt.Sprintf(format, args...)})
}

// addFor records a finding about several workloads: prefix + the workloads'
// names + suffix.
func (a *analyzer) addFor(sev Severity, source, policy, field, prefix, name, suffix string) {
	k := groupKey{sev: sev, file: source, policy: policy, field: field, prefix: prefix, suffix: suffix}
	g := a.grouped[k]
	if g == nil {
		g = &group{}
		a.grouped[k] = g
	}
	if !slices.Contains(g.names, name) {
		g.names = append(g.names, name)
	}
}

func (a *analyzer) result() []Finding {
	out := slices.Clone(a.findings)
	for k, g := range a.grouped {
		out = append(out, Finding{Severity: k.sev, File: k.file, Policy: k.policy, Field: k.field,
			Message: k.prefix + strings.Join(g.names, ", ") + k.suffix})
	}
	slices.SortFunc(out, func(x, y Finding) int {
		return cmp.Or(
			cmp.Compare(severityRank(x.Severity), severityRank(y.Severity)),
			compareSource(x.File, y.File),
			cmp.Compare(x.Policy, y.Policy),
			cmp.Compare(x.Field, y.Field),
			cmp.Compare(x.Message, y.Message))
	})
	return slices.CompactFunc(out, func(x, y Finding) bool { return x == y })
}

func severityRank(s Severity) int {
	if s == SeverityError {
		return 0
	}
	return 1
}

// compareSource orders "file:line" by file, then numerically by line.
func compareSource(x, y string) int {
	fx, lx := splitSource(x)
	fy, ly := splitSource(y)
	return cmp.Or(cmp.Compare(fx, fy), cmp.Compare(lx, ly))
}

func peerID(p *mesh.PeerAuthentication) string { return kindPeer + " " + p.Namespace + "/" + p.Name }

func authzID(p *mesh.AuthorizationPolicy) string {
	return kindAuthz + " " + p.Namespace + "/" + p.Name
}

func selects(sel, labels map[string]string) bool {
	for k, v := range sel {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

func formatLabels(sel map[string]string) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(sel)) {
		parts = append(parts, k+": "+sel[k])
	}
	return "{" + strings.Join(parts, ", ") + "}"
}

// levels returns the PeerAuthentications that apply to w at each level of
// precedence (workload, namespace, mesh), each sorted by namespace/name. It
// mirrors mesh.PolicySet.MTLSModeFor, which has no way to say which policy
// decided; TestDecideMatchesMTLSModeFor keeps the two in step.
func levels(ps *mesh.PolicySet, w mesh.Workload) [3][]*mesh.PeerAuthentication {
	var out [3][]*mesh.PeerAuthentication
	for i := range ps.Peer {
		p := &ps.Peer[i]
		switch {
		case p.Namespace == w.Namespace && p.Selector != nil && selects(p.Selector, w.Labels):
			out[0] = append(out[0], p)
		case p.Namespace == w.Namespace && p.Selector == nil && p.Namespace != ps.RootNamespace:
			out[1] = append(out[1], p)
		case p.Namespace == ps.RootNamespace && p.Selector == nil:
			out[2] = append(out[2], p)
		}
	}
	for _, l := range out {
		slices.SortFunc(l, func(a, b *mesh.PeerAuthentication) int {
			return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
		})
	}
	return out
}

var levelNames = [3]string{"workload-level (selector)", "namespace-wide", "mesh-wide (root namespace, no selector)"}

// decide returns w's effective mode, the policy that set it (nil for the
// mesh default) and the field within it.
func decide(ps *mesh.PolicySet, w mesh.Workload) (mesh.MTLSMode, *mesh.PeerAuthentication, string) {
	for _, level := range levels(ps, w) {
		if len(level) == 0 {
			continue
		}
		p := level[0]
		if m, ok := p.PortModes[w.Port]; ok && m != mesh.MTLSUnset && m != "" {
			return m, p, fmt.Sprintf("spec.portLevelMtls.%d.mode", w.Port)
		}
		if p.Mode != mesh.MTLSUnset && p.Mode != "" {
			return p.Mode, p, "spec.mtls.mode"
		}
	}
	if ps.DefaultMode == "" || ps.DefaultMode == mesh.MTLSUnset {
		return mesh.MTLSPermissive, nil, ""
	}
	return ps.DefaultMode, nil, ""
}

func (a *analyzer) peer(p *mesh.PeerAuthentication) {
	if a.in.Catalog == nil {
		return
	}
	ps := a.in.Policy
	id := peerID(p)
	var selected []*workload
	for _, wl := range a.workloads {
		for _, level := range levels(ps, wl.w) {
			if slices.Contains(level, p) {
				selected = append(selected, wl)
			}
		}
	}
	if len(selected) == 0 {
		a.noWorkload(p.Source, id, p.Namespace, p.Selector, p.Namespace == ps.RootNamespace && p.Selector != nil,
			"(a PeerAuthentication with a selector in the root namespace applies only to workloads of that namespace, as in Istio)")
		return
	}
	for _, port := range slices.Sorted(maps.Keys(p.PortModes)) {
		var have []string
		hint := ""
		found := false
		for _, wl := range selected {
			if wl.w.Port == port {
				found = true
				break
			}
			have = append(have, fmt.Sprintf("%s: %d", wl.name(), wl.w.Port))
			if wl.proxy.Flavor == mesh.FlavorEnvoy && wl.proxy.PublicPort == port {
				hint = fmt.Sprintf("; %d is the sidecar's publicPort of %s, but port-level modes name the application's port (appPort %d)", port, wl.name(), wl.proxy.AppPort)
			}
		}
		if !found {
			a.add(SeverityWarning, p.Source, id, fmt.Sprintf("spec.portLevelMtls.%d", port),
				"no workload this policy selects has port %d, so this port-level mode applies to nothing (workload ports: %s)%s",
				port, strings.Join(have, ", "), hint)
		}
	}
}

// noWorkload reports a policy that applies to no workload of the catalog.
func (a *analyzer) noWorkload(source, id, namespace string, sel map[string]string, rootSelector bool, rootNote string) {
	switch {
	case sel != nil:
		msg := fmt.Sprintf("matchLabels %s select no workload in the catalog: no inbound proxy in namespace %s serves an endpoint with these labels", formatLabels(sel), namespace)
		if namespace == a.in.Policy.RootNamespace && !rootSelector {
			msg = fmt.Sprintf("matchLabels %s select no workload in the catalog: no inbound proxy serves an endpoint with these labels", formatLabels(sel))
		}
		if rootSelector {
			msg += " " + rootNote
		}
		a.add(SeverityWarning, source, id, "spec.selector", "%s", msg)
	case namespace == a.in.Policy.RootNamespace:
		// Mesh-wide: it applies to every workload there is; none is not a
		// mistake of the policy.
	default:
		a.add(SeverityWarning, source, id, "metadata.namespace", "namespace %s has no workload (inbound proxy) in the catalog, so this policy applies to nothing", namespace)
	}
}

// precedence warns when several PeerAuthentications compete at one level
// for a workload: only the first by namespace/name counts.
func (a *analyzer) precedence(wl *workload) {
	for i, level := range levels(a.in.Policy, wl.w) {
		if len(level) < 2 {
			continue
		}
		winner := level[0]
		var names []string
		for _, p := range level {
			names = append(names, p.Namespace+"/"+p.Name)
		}
		for _, p := range level[1:] {
			a.addFor(SeverityWarning, p.Source, peerID(p), "",
				fmt.Sprintf("%d %s PeerAuthentications (%s) apply to ", len(level), levelNames[i], strings.Join(names, ", ")),
				wl.name(),
				fmt.Sprintf(": %s/%s wins (the first by namespace/name) and this policy is ignored there; keep one policy per workload and level", winner.Namespace, winner.Name))
		}
	}
}

// grpcMode reports PERMISSIVE on a proxyless gRPC server: gRPC cannot tell
// plaintext from TLS on one port, so there is nothing faithful to render.
func (a *analyzer) grpcMode(wl *workload) {
	if wl.proxy.Flavor != mesh.FlavorGRPC || wl.mode != mesh.MTLSPermissive {
		return
	}
	mode, p, field := decide(a.in.Policy, wl.w)
	msg := fmt.Sprintf("proxy %s is a proxyless gRPC server and its effective mTLS mode is PERMISSIVE: gRPC servers support STRICT and DISABLE only", wl.name())
	if p == nil || mode != wl.mode {
		a.add(SeverityError, a.in.CatalogPath, "proxy "+wl.name(), "",
			"%s; PERMISSIVE is the mesh default here (meshd --mtls-mode): make the default STRICT or select the server with a PeerAuthentication in mode STRICT", msg)
		return
	}
	a.add(SeverityError, p.Source, peerID(p), field, "%s; use STRICT (or DISABLE) for it", msg)
}

func (a *analyzer) authz(p *mesh.AuthorizationPolicy) {
	id := authzID(p)
	a.principals(p, id)
	if a.in.Catalog == nil {
		return
	}
	ps := a.in.Policy
	var applies []*workload
	for _, wl := range a.workloads {
		if slices.Contains(ps.AuthorizationsFor(wl.w), p) {
			applies = append(applies, wl)
		}
	}
	if len(applies) == 0 {
		a.noWorkload(p.Source, id, p.Namespace, p.Selector, false, "")
		return
	}
	for _, wl := range applies {
		a.plaintext(p, id, wl)
		if wl.service == nil {
			continue
		}
		switch wl.service.Protocol {
		case mesh.ProtocolTCP:
			a.httpOnTCP(p, id, wl)
		case mesh.ProtocolGRPC:
			a.grpcMethods(p, id, wl)
		}
	}
}

// identityFields lists the fields of p's rules that match the caller's
// identity, with whether each is a negative (not-) match.
func identityFields(p *mesh.AuthorizationPolicy) (fields []string, negative []bool) {
	for i, r := range p.Rules {
		for j, s := range r.From {
			base := fmt.Sprintf("spec.rules[%d].from[%d].source.", i, j)
			for _, f := range []struct {
				name string
				vals []string
				neg  bool
			}{{"principals", s.Principals, false}, {"notPrincipals", s.NotPrincipals, true}, {"namespaces", s.Namespaces, false}, {"notNamespaces", s.NotNamespaces, true}} {
				if len(f.vals) > 0 {
					fields = append(fields, base+f.name)
					negative = append(negative, f.neg)
				}
			}
		}
		for j, c := range r.When {
			if c.Key == "source.principal" || c.Key == "source.namespace" {
				if len(c.Values) > 0 {
					fields = append(fields, fmt.Sprintf("spec.rules[%d].when[%d].values", i, j))
					negative = append(negative, false)
				}
				if len(c.NotValues) > 0 {
					fields = append(fields, fmt.Sprintf("spec.rules[%d].when[%d].notValues", i, j))
					negative = append(negative, true)
				}
			}
		}
	}
	return fields, negative
}

// plaintext warns about identity rules on a workload that accepts
// plaintext: such callers have no principal and no namespace.
func (a *analyzer) plaintext(p *mesh.AuthorizationPolicy, id string, wl *workload) {
	if wl.mode == mesh.MTLSStrict || p.Action == mesh.ActionAudit {
		return
	}
	fields, negative := identityFields(p)
	for i, f := range fields {
		var consequence string
		switch {
		case p.Action == mesh.ActionAllow && negative[i]:
			consequence = "a plaintext caller matches this not-rule and is allowed"
		case p.Action == mesh.ActionAllow:
			consequence = "this rule never allows a plaintext caller"
		case negative[i]:
			continue // a DENY not-rule denies plaintext callers: the safe side
		default:
			consequence = "a caller this rule denies is not denied when it connects in plaintext"
		}
		a.addFor(SeverityWarning, p.Source, id, f, "the policy applies to ", fmt.Sprintf("%s (%s)", wl.name(), wl.mode),
			": plaintext callers have no identity, so such rules only work under STRICT; "+consequence)
	}
}

// httpFields lists rule fields that only HTTP requests have.
func httpFields(r mesh.Rule, i int) []string {
	var out []string
	for j, o := range r.To {
		for _, f := range []struct {
			name string
			n    int
		}{{"hosts", len(o.Hosts)}, {"notHosts", len(o.NotHosts)}, {"methods", len(o.Methods)}, {"notMethods", len(o.NotMethods)}, {"paths", len(o.Paths)}, {"notPaths", len(o.NotPaths)}} {
			if f.n > 0 {
				out = append(out, fmt.Sprintf("spec.rules[%d].to[%d].operation.%s", i, j, f.name))
			}
		}
	}
	for j, c := range r.When {
		if strings.HasPrefix(c.Key, "request.headers[") {
			out = append(out, fmt.Sprintf("spec.rules[%d].when[%d]", i, j))
		}
	}
	return out
}

// httpOnTCP reproduces Istio's handling of HTTP-only fields on a tcp
// service, which a reader of the policy would not guess.
func (a *analyzer) httpOnTCP(p *mesh.AuthorizationPolicy, id string, wl *workload) {
	for i, r := range p.Rules {
		for _, f := range httpFields(r, i) {
			var suffix string
			switch p.Action {
			case mesh.ActionAllow:
				suffix = " is tcp: an HTTP-only field never matches TCP traffic, so this ALLOW rule never matches there (Istio's behaviour)"
			default:
				suffix = fmt.Sprintf(" is tcp: HTTP-only fields are ignored there and this %s rule keeps only its TCP fields, so it matches more connections than on HTTP (Istio's behaviour)", p.Action)
			}
			a.addFor(SeverityWarning, p.Source, id, f, "service ", wl.service.Key().String()+" (proxy "+wl.name()+")", suffix)
		}
	}
}

// grpcMethods warns about methods other than POST on a gRPC service: every
// gRPC call is a POST.
func (a *analyzer) grpcMethods(p *mesh.AuthorizationPolicy, id string, wl *workload) {
	for i, r := range p.Rules {
		for j, o := range r.To {
			for _, m := range o.Methods {
				if m != "POST" && !strings.Contains(m, "*") {
					a.addFor(SeverityWarning, p.Source, id, fmt.Sprintf("spec.rules[%d].to[%d].operation.methods", i, j), "every request to gRPC service ",
						wl.service.Key().String(), fmt.Sprintf(" is a POST, so method %q never matches; match gRPC methods with paths (/package.Service/Method)", m))
				}
			}
		}
	}
}

// principals warns about principals and namespaces that name no identity
// of the catalog.
func (a *analyzer) principals(p *mesh.AuthorizationPolicy, id string) {
	check := func(field, v string) {
		if strings.Contains(v, "*") {
			return // wildcards may well be meant to match future identities
		}
		parts := strings.Split(v, "/")
		if len(parts) != 5 || parts[1] != "ns" || parts[3] != "sa" || parts[0] == "" || parts[2] == "" || parts[4] == "" {
			a.add(SeverityWarning, p.Source, id, field, "principal %q is not of the form <trust-domain>/ns/<namespace>/sa/<service-account>, so it matches no meshd workload identity", v)
			return
		}
		if parts[0] != a.td {
			a.add(SeverityWarning, p.Source, id, field, "principal %q is in trust domain %q, but the mesh's is %q (--trust-domain), so it matches no workload", v, parts[0], a.td)
			return
		}
		if a.in.Catalog == nil {
			return
		}
		for _, s := range a.in.Catalog.Services() {
			if s.Namespace == parts[2] && s.ServiceAccount == parts[4] {
				return
			}
		}
		a.add(SeverityWarning, p.Source, id, field, "principal %q names an identity that does not exist: no service in the catalog runs as service account %s in namespace %s", v, parts[4], parts[2])
	}
	checkNS := func(field, v string) {
		if a.in.Catalog == nil || strings.Contains(v, "*") {
			return
		}
		for _, s := range a.in.Catalog.Services() {
			if s.Namespace == v {
				return
			}
		}
		a.add(SeverityWarning, p.Source, id, field, "namespace %q has no service in the catalog, so no caller comes from it", v)
	}
	for i, r := range p.Rules {
		for j, s := range r.From {
			base := fmt.Sprintf("spec.rules[%d].from[%d].source.", i, j)
			for k, v := range s.Principals {
				check(fmt.Sprintf("%sprincipals[%d]", base, k), v)
			}
			for k, v := range s.NotPrincipals {
				check(fmt.Sprintf("%snotPrincipals[%d]", base, k), v)
			}
			for k, v := range s.Namespaces {
				checkNS(fmt.Sprintf("%snamespaces[%d]", base, k), v)
			}
			for k, v := range s.NotNamespaces {
				checkNS(fmt.Sprintf("%snotNamespaces[%d]", base, k), v)
			}
		}
		for j, c := range r.When {
			var f func(string, string)
			switch c.Key {
			case "source.principal":
				f = check
			case "source.namespace":
				f = checkNS
			default:
				continue
			}
			for k, v := range c.Values {
				f(fmt.Sprintf("spec.rules[%d].when[%d].values[%d]", i, j, k), v)
			}
			for k, v := range c.NotValues {
				f(fmt.Sprintf("spec.rules[%d].when[%d].notValues[%d]", i, j, k), v)
			}
		}
	}
}
