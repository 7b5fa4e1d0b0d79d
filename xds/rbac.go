package xds

import (
	"fmt"
	"maps"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbachttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	rbacnetv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	auditstreamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/rbac/audit_loggers/stream/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshd/meshd/mesh"
)

// Authorization policies become Envoy RBAC rules with Istio's evaluation:
// a DENY filter first, then an ALLOW filter (without effect when no ALLOW
// policy applies, so that no policy means allow; with no policies when only
// ALLOW policies without rules apply, so that they deny everything). AUDIT
// policies are shadow rules of their own filter: they never change a
// decision, and Envoy records each match (stats, dynamic metadata
// audit_shadow_effective_policy_id) under the policy's name.
//
// Where the rules live depends on who enforces them: for an Envoy
// sidecar's HTTP services, in the inbound route (perRouteRBAC), so that a
// change reaches open connections; for tcp services and proxyless gRPC
// servers, in the listener (networkFilters, grpcServerFilters).
//
// Every Envoy RBAC policy is named "<namespace>/<policy>/rule-<n>" so that
// a denial (response details rbac_access_denied_matched_policy[...]) names
// the rule that caused it.

const (
	filterRBACNetwork     = "envoy.filters.network.rbac"
	auditStatPrefix       = "audit_"
	grpcStdoutAuditLogger = "envoy.rbac.audit_loggers.stream"
)

// RBACPolicyName names the Envoy RBAC policy rendered from rule n of p.
func RBACPolicyName(p *mesh.AuthorizationPolicy, n int) string {
	return p.Namespace + "/" + p.Name + "/rule-" + strconv.Itoa(n)
}

// rbacSets groups the rendered policies of one workload by action.
type rbacSets struct {
	deny, allow, audit map[string]*rbacv3.Policy
	hasAllow, hasAudit bool
	// warnings name rules that were changed because the service is tcp.
	warnings []string
}

// buildRBAC renders the policies applying to a workload. port is the
// workload's port as Istio sees it (the application's port): a sidecar
// receives traffic on its public port, so port conditions are decided here,
// statically, rather than by Envoy's destination_port. tcp selects
// Istio's TCP semantics: rules using HTTP-only fields never match in ALLOW
// policies, and lose those fields (becoming broader, failing closed) in
// DENY and AUDIT policies.
func buildRBAC(policies []*mesh.AuthorizationPolicy, trustDomain string, tcp bool, port uint32) (*rbacSets, error) {
	s := &rbacSets{deny: map[string]*rbacv3.Policy{}, allow: map[string]*rbacv3.Policy{}, audit: map[string]*rbacv3.Policy{}}
	for _, p := range policies {
		target := s.allow
		switch p.Action {
		case mesh.ActionAllow, "":
			s.hasAllow = true
		case mesh.ActionDeny:
			target = s.deny
		case mesh.ActionAudit:
			target = s.audit
			s.hasAudit = true
		default:
			return nil, fmt.Errorf("authorization policy %s/%s: unsupported action %q", p.Namespace, p.Name, p.Action)
		}
		for i, r := range p.Rules {
			name := RBACPolicyName(p, i)
			if tcp && ruleHasHTTP(&r) {
				if p.Action == mesh.ActionAllow || p.Action == "" {
					s.warnings = append(s.warnings, name+": uses HTTP-only fields on a tcp service; this ALLOW rule never matches")
					continue
				}
				s.warnings = append(s.warnings, name+": uses HTTP-only fields on a tcp service; they are ignored and the rest of the rule applies")
				r = stripHTTP(r)
			}
			pol, err := rulePolicy(&r, trustDomain, port)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			target[name] = pol
		}
	}
	return s, nil
}

func ruleHasHTTP(r *mesh.Rule) bool {
	for _, o := range append(append([]mesh.Operation(nil), r.To...), r.NotTo...) {
		if len(o.Hosts)+len(o.NotHosts)+len(o.Methods)+len(o.NotMethods)+len(o.Paths)+len(o.NotPaths)+len(o.Headers) > 0 {
			return true
		}
	}
	for _, c := range r.When {
		if strings.HasPrefix(c.Key, "request.") {
			return true
		}
	}
	return false
}

func stripHTTP(r mesh.Rule) mesh.Rule {
	out := mesh.Rule{From: r.From, NotFrom: r.NotFrom}
	for _, o := range r.To {
		out.To = append(out.To, mesh.Operation{Ports: o.Ports, NotPorts: o.NotPorts})
	}
	for _, c := range r.When {
		if !strings.HasPrefix(c.Key, "request.") {
			out.When = append(out.When, c)
		}
	}
	// NotTo narrows a rule; with its HTTP fields gone it could only narrow
	// wrongly, so the TCP form keeps the broader (fail-closed for DENY) rule.
	return out
}

// rulePolicy renders one rule: the request must match a permission (To,
// NotTo and request-side conditions) and a principal (From, NotFrom and
// caller-side conditions). Envoy ORs the lists, so each side is a single AND.
func rulePolicy(r *mesh.Rule, td string, port uint32) (*rbacv3.Policy, error) {
	var perms []*rbacv3.Permission
	var ids []*rbacv3.Principal
	if len(r.To) > 0 {
		var ors []*rbacv3.Permission
		for i := range r.To {
			p, err := operationPermission(&r.To[i], port)
			if err != nil {
				return nil, err
			}
			ors = append(ors, p)
		}
		perms = append(perms, orPerm(ors))
	}
	if len(r.From) > 0 {
		p, err := anySource(r.From, td)
		if err != nil {
			return nil, err
		}
		ids = append(ids, p)
	}
	if len(r.NotTo) > 0 {
		var ors []*rbacv3.Permission
		for i := range r.NotTo {
			p, err := operationPermission(&r.NotTo[i], port)
			if err != nil {
				return nil, err
			}
			ors = append(ors, p)
		}
		perms = append(perms, &rbacv3.Permission{Rule: &rbacv3.Permission_NotRule{NotRule: orPerm(ors)}})
	}
	if len(r.NotFrom) > 0 {
		// Linkerd decisions: the caller matches none of the sources.
		p, err := anySource(r.NotFrom, td)
		if err != nil {
			return nil, err
		}
		ids = append(ids, &rbacv3.Principal{Identifier: &rbacv3.Principal_NotId{NotId: p}})
	}
	for _, c := range r.When {
		perm, id, err := condition(c, td, port)
		if err != nil {
			return nil, err
		}
		if perm != nil {
			perms = append(perms, perm)
		}
		if id != nil {
			ids = append(ids, id)
		}
	}
	return &rbacv3.Policy{Permissions: []*rbacv3.Permission{andPerm(perms)}, Principals: []*rbacv3.Principal{andID(ids)}}, nil
}

func operationPermission(o *mesh.Operation, workloadPort uint32) (*rbacv3.Permission, error) {
	var and []*rbacv3.Permission
	add := func(values []string, not bool, one func(string) (*rbacv3.Permission, error)) error {
		if len(values) == 0 {
			return nil
		}
		var ors []*rbacv3.Permission
		for _, v := range values {
			p, err := one(v)
			if err != nil {
				return err
			}
			ors = append(ors, p)
		}
		p := orPerm(ors)
		if not {
			p = &rbacv3.Permission{Rule: &rbacv3.Permission_NotRule{NotRule: p}}
		}
		and = append(and, p)
		return nil
	}
	host := func(v string) (*rbacv3.Permission, error) { return headerPerm(":authority", hostMatcher(v)), nil }
	method := func(v string) (*rbacv3.Permission, error) { return headerPerm(":method", exact(v)), nil }
	path := func(v string) (*rbacv3.Permission, error) {
		return &rbacv3.Permission{Rule: &rbacv3.Permission_UrlPath{UrlPath: &matcherv3.PathMatcher{
			Rule: &matcherv3.PathMatcher_Path{Path: wildcard(v)}}}}, nil
	}
	for _, step := range []struct {
		vals []string
		not  bool
		f    func(string) (*rbacv3.Permission, error)
	}{
		{o.Hosts, false, host}, {o.NotHosts, true, host},
		{o.Methods, false, method}, {o.NotMethods, true, method},
		{o.Paths, false, path}, {o.NotPaths, true, path},
	} {
		if err := add(step.vals, step.not, step.f); err != nil {
			return nil, err
		}
	}
	for _, h := range o.Headers {
		and = append(and, &rbacv3.Permission{Rule: &rbacv3.Permission_Header{Header: headerMatch(h)}})
	}
	if len(o.Ports) > 0 && !slices.Contains(o.Ports, workloadPort) {
		and = append(and, never())
	}
	if slices.Contains(o.NotPorts, workloadPort) {
		and = append(and, never())
	}
	return andPerm(and), nil
}

// anySource matches a caller that matches any of sources.
func anySource(sources []mesh.Source, td string) (*rbacv3.Principal, error) {
	ors := make([]*rbacv3.Principal, 0, len(sources))
	for i := range sources {
		p, err := sourcePrincipal(&sources[i], td)
		if err != nil {
			return nil, err
		}
		ors = append(ors, p)
	}
	return orID(ors), nil
}

func sourcePrincipal(s *mesh.Source, td string) (*rbacv3.Principal, error) {
	var and []*rbacv3.Principal
	add := func(values []string, not bool, one func(string) (*rbacv3.Principal, error)) error {
		if len(values) == 0 {
			return nil
		}
		var ors []*rbacv3.Principal
		for _, v := range values {
			p, err := one(v)
			if err != nil {
				return err
			}
			ors = append(ors, p)
		}
		p := orID(ors)
		if not {
			p = &rbacv3.Principal{Identifier: &rbacv3.Principal_NotId{NotId: p}}
		}
		and = append(and, p)
		return nil
	}
	principal := func(v string) (*rbacv3.Principal, error) { return principalID(v), nil }
	namespace := func(v string) (*rbacv3.Principal, error) { return namespaceID(v), nil }
	direct := func(v string) (*rbacv3.Principal, error) { return ipID(v, false) }
	remote := func(v string) (*rbacv3.Principal, error) { return ipID(v, true) }
	for _, step := range []struct {
		vals []string
		not  bool
		f    func(string) (*rbacv3.Principal, error)
	}{
		{s.Principals, false, principal}, {s.NotPrincipals, true, principal},
		{s.Namespaces, false, namespace}, {s.NotNamespaces, true, namespace},
		{s.IPBlocks, false, direct}, {s.NotIPBlocks, true, direct},
		{s.RemoteIPBlocks, false, remote}, {s.NotRemoteIPBlocks, true, remote},
	} {
		if err := add(step.vals, step.not, step.f); err != nil {
			return nil, err
		}
	}
	return andID(and), nil
}

// condition renders a "when" clause; it returns a permission (request-side
// keys) or a principal (caller-side keys).
func condition(c mesh.Condition, td string, workloadPort uint32) (*rbacv3.Permission, *rbacv3.Principal, error) {
	vals := func(one func(string) (*rbacv3.Principal, error)) (*rbacv3.Principal, error) {
		var and []*rbacv3.Principal
		if len(c.Values) > 0 {
			var ors []*rbacv3.Principal
			for _, v := range c.Values {
				p, err := one(v)
				if err != nil {
					return nil, err
				}
				ors = append(ors, p)
			}
			and = append(and, orID(ors))
		}
		if len(c.NotValues) > 0 {
			var ors []*rbacv3.Principal
			for _, v := range c.NotValues {
				p, err := one(v)
				if err != nil {
					return nil, err
				}
				ors = append(ors, p)
			}
			and = append(and, &rbacv3.Principal{Identifier: &rbacv3.Principal_NotId{NotId: orID(ors)}})
		}
		return andID(and), nil
	}
	permVals := func(one func(string) *rbacv3.Permission) *rbacv3.Permission {
		var and []*rbacv3.Permission
		if len(c.Values) > 0 {
			var ors []*rbacv3.Permission
			for _, v := range c.Values {
				ors = append(ors, one(v))
			}
			and = append(and, orPerm(ors))
		}
		if len(c.NotValues) > 0 {
			var ors []*rbacv3.Permission
			for _, v := range c.NotValues {
				ors = append(ors, one(v))
			}
			and = append(and, &rbacv3.Permission{Rule: &rbacv3.Permission_NotRule{NotRule: orPerm(ors)}})
		}
		return andPerm(and)
	}
	switch {
	case strings.HasPrefix(c.Key, "request.headers[") && strings.HasSuffix(c.Key, "]"):
		h := strings.ToLower(strings.TrimSuffix(strings.TrimPrefix(c.Key, "request.headers["), "]"))
		id, err := vals(func(v string) (*rbacv3.Principal, error) {
			return &rbacv3.Principal{Identifier: &rbacv3.Principal_Header{Header: headerMatcher(h, wildcard(v))}}, nil
		})
		return nil, id, err
	case c.Key == "source.ip":
		id, err := vals(func(v string) (*rbacv3.Principal, error) { return ipID(v, false) })
		return nil, id, err
	case c.Key == "source.namespace":
		id, err := vals(func(v string) (*rbacv3.Principal, error) { return namespaceID(v), nil })
		return nil, id, err
	case c.Key == "source.principal":
		id, err := vals(func(v string) (*rbacv3.Principal, error) { return principalID(v), nil })
		return nil, id, err
	case c.Key == "destination.port":
		// Decided statically against the workload's port (see buildRBAC).
		port := strconv.FormatUint(uint64(workloadPort), 10)
		if (len(c.Values) > 0 && !slices.Contains(c.Values, port)) || slices.Contains(c.NotValues, port) {
			return never(), nil, nil
		}
		return andPerm(nil), nil, nil
	case c.Key == "connection.sni":
		return permVals(func(v string) *rbacv3.Permission {
			return &rbacv3.Permission{Rule: &rbacv3.Permission_RequestedServerName{RequestedServerName: wildcard(v)}}
		}), nil, nil
	}
	return nil, nil, fmt.Errorf("unsupported condition key %q", c.Key)
}

// principalID matches the caller's certificate URI SAN. Istio writes
// principals without the scheme ("cluster.local/ns/default/sa/web");
// "*" alone means any authenticated caller.
func principalID(v string) *rbacv3.Principal {
	var m *matcherv3.StringMatcher
	switch {
	case v == "*":
		m = &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: ".+"}}}
	case strings.HasPrefix(v, "*"):
		m = &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Suffix{Suffix: v[1:]}}
	case strings.HasSuffix(v, "*"):
		m = &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: "spiffe://" + v[:len(v)-1]}}
	default:
		m = exact("spiffe://" + v)
	}
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_Authenticated_{Authenticated: &rbacv3.Principal_Authenticated{PrincipalName: m}}}
}

// namespaceID matches callers whose SPIFFE ID is in namespace v (with
// Istio's prefix*/suffix wildcards on the namespace).
func namespaceID(v string) *rbacv3.Principal {
	var ns string
	switch {
	case v == "*":
		ns = "[^/]+"
	case strings.HasPrefix(v, "*"):
		ns = "[^/]*" + regexp.QuoteMeta(v[1:])
	case strings.HasSuffix(v, "*"):
		ns = regexp.QuoteMeta(v[:len(v)-1]) + "[^/]*"
	default:
		ns = regexp.QuoteMeta(v)
	}
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_Authenticated_{Authenticated: &rbacv3.Principal_Authenticated{
		PrincipalName: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{
			Regex: "^spiffe://[^/]+/ns/" + ns + "/sa/[^/]+$"}}}}}}
}

func ipID(v string, remote bool) (*rbacv3.Principal, error) {
	pfx, err := netip.ParsePrefix(v)
	if err != nil {
		a, aerr := netip.ParseAddr(v)
		if aerr != nil {
			return nil, fmt.Errorf("%q is not an IP address or CIDR block", v)
		}
		pfx = netip.PrefixFrom(a, a.BitLen())
	}
	cidr := &corev3.CidrRange{AddressPrefix: pfx.Addr().String(), PrefixLen: wrapperspb.UInt32(uint32(pfx.Bits()))}
	if remote {
		return &rbacv3.Principal{Identifier: &rbacv3.Principal_RemoteIp{RemoteIp: cidr}}, nil
	}
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_DirectRemoteIp{DirectRemoteIp: cidr}}, nil
}

// wildcard renders Istio's string forms: exact, "prefix*", "*suffix", "*".
func wildcard(v string) *matcherv3.StringMatcher {
	switch {
	case v == "*":
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: ".*"}}}
	case strings.HasPrefix(v, "*"):
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Suffix{Suffix: v[1:]}}
	case strings.HasSuffix(v, "*"):
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: v[:len(v)-1]}}
	}
	return exact(v)
}

// hostMatcher matches the authority case-insensitively, as hosts are.
func hostMatcher(v string) *matcherv3.StringMatcher {
	m := wildcard(strings.ToLower(v))
	m.IgnoreCase = true
	if _, ok := m.MatchPattern.(*matcherv3.StringMatcher_SafeRegex); ok {
		m.IgnoreCase = false // not allowed with safe_regex; ".*" needs no case folding
	}
	return m
}

func exact(v string) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: v}}
}

func headerMatcher(name string, m *matcherv3.StringMatcher) *routev3.HeaderMatcher {
	return &routev3.HeaderMatcher{Name: name, HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: m}}
}

// headerMatch renders a model header match (Consul L7 permissions).
func headerMatch(h mesh.HeaderMatch) *routev3.HeaderMatcher {
	hm := &routev3.HeaderMatcher{Name: strings.ToLower(h.Name), InvertMatch: h.Invert}
	var m *matcherv3.StringMatcher
	switch {
	case h.Exact != "":
		m = exact(h.Exact)
	case h.Prefix != "":
		m = &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: h.Prefix}}
	case h.Suffix != "":
		m = &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Suffix{Suffix: h.Suffix}}
	case h.Regex != "":
		m = &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: h.Regex}}}
	}
	if m != nil {
		hm.HeaderMatchSpecifier = &routev3.HeaderMatcher_StringMatch{StringMatch: m}
	} else {
		hm.HeaderMatchSpecifier = &routev3.HeaderMatcher_PresentMatch{PresentMatch: true}
	}
	return hm
}

func headerPerm(name string, m *matcherv3.StringMatcher) *rbacv3.Permission {
	return &rbacv3.Permission{Rule: &rbacv3.Permission_Header{Header: headerMatcher(name, m)}}
}

// never is a permission no request has.
func never() *rbacv3.Permission {
	return &rbacv3.Permission{Rule: &rbacv3.Permission_NotRule{NotRule: andPerm(nil)}}
}

// andPerm/orPerm/andID/orID collapse trivial lists so the rendered policies
// stay readable: an empty AND is "any".
func andPerm(l []*rbacv3.Permission) *rbacv3.Permission {
	switch len(l) {
	case 0:
		return &rbacv3.Permission{Rule: &rbacv3.Permission_Any{Any: true}}
	case 1:
		return l[0]
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_AndRules{AndRules: &rbacv3.Permission_Set{Rules: l}}}
}

func orPerm(l []*rbacv3.Permission) *rbacv3.Permission {
	if len(l) == 1 {
		return l[0]
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_OrRules{OrRules: &rbacv3.Permission_Set{Rules: l}}}
}

func andID(l []*rbacv3.Principal) *rbacv3.Principal {
	switch len(l) {
	case 0:
		return &rbacv3.Principal{Identifier: &rbacv3.Principal_Any{Any: true}}
	case 1:
		return l[0]
	}
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_AndIds{AndIds: &rbacv3.Principal_Set{Ids: l}}}
}

func orID(l []*rbacv3.Principal) *rbacv3.Principal {
	if len(l) == 1 {
		return l[0]
	}
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_OrIds{OrIds: &rbacv3.Principal_Set{Ids: l}}}
}

// envoyRBACFilters are the HTTP RBAC filters of every inbound HTTP
// connection manager of an Envoy sidecar (RBACFilterDeny, RBACFilterAllow,
// RBACFilterAudit, in Istio's order), whatever the policies. The policies
// are per-route overrides on the inbound route (perRouteRBAC), so a policy
// change is an RDS update: Envoy applies it to the next request, also on a
// connection opened before it, and the listener — whose replacement would
// leave open connections on the old filter chain until they drain — does
// not change. Each filter has its own stat prefix, so a DENY match and a
// missing ALLOW match are counted apart.
//
// The filters' own configurations only apply to a request without a route
// (which the router would answer 404 anyway): the DENY and AUDIT filters
// then do nothing and the ALLOW filter, an ALLOW with no policies, denies.
// A request never passes for want of an override.
func envoyRBACFilters() ([]*hcmv3.HttpFilter, error) {
	var out []*hcmv3.HttpFilter
	for _, f := range []struct {
		name string
		cfg  *rbachttpv3.RBAC
	}{
		{RBACFilterDeny, &rbachttpv3.RBAC{RulesStatPrefix: RBACStatDeny}},
		{RBACFilterAllow, &rbachttpv3.RBAC{RulesStatPrefix: RBACStatAllow, Rules: &rbacv3.RBAC{Action: rbacv3.RBAC_ALLOW}}},
		{RBACFilterAudit, &rbachttpv3.RBAC{ShadowRulesStatPrefix: RBACStatAudit}},
	} {
		a, err := anyOf(f.cfg)
		if err != nil {
			return nil, err
		}
		out = append(out, &hcmv3.HttpFilter{Name: f.name, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: a}})
	}
	return out, nil
}

// perRouteRBAC renders the policies as the overrides of envoyRBACFilters,
// for the inbound route's typed_per_filter_config. Every filter gets one:
// an override without rules turns its filter off for the route (no DENY
// policy; no ALLOW policy, so no policy means allow; no AUDIT policy),
// and an ALLOW override with no policies denies everything (ALLOW policies
// without rules). track_per_rule_stats makes Envoy count each rule under
// the filter's stat prefix: rbac.deny.policy.<ns>/<policy>/rule-<n>.denied.
// The overrides' own prefixes only name the dynamic metadata keys
// (deny_enforced_effective_policy_id, audit_shadow_effective_policy_id, …).
func (s *rbacSets) perRouteRBAC() (map[string]*anypb.Any, error) {
	deny := &rbachttpv3.RBAC{RulesStatPrefix: RBACStatDeny + "_", TrackPerRuleStats: true}
	if len(s.deny) > 0 {
		deny.Rules = &rbacv3.RBAC{Action: rbacv3.RBAC_DENY, Policies: s.deny}
	}
	allow := &rbachttpv3.RBAC{RulesStatPrefix: RBACStatAllow + "_", TrackPerRuleStats: true}
	if s.hasAllow {
		allow.Rules = &rbacv3.RBAC{Action: rbacv3.RBAC_ALLOW, Policies: s.allow}
	}
	audit := &rbachttpv3.RBAC{ShadowRulesStatPrefix: RBACStatAudit + "_", TrackPerRuleStats: true}
	if s.hasAudit {
		audit.ShadowRules = &rbacv3.RBAC{Action: rbacv3.RBAC_DENY, Policies: s.audit}
	}
	out := map[string]*anypb.Any{}
	for name, cfg := range map[string]*rbachttpv3.RBAC{RBACFilterDeny: deny, RBACFilterAllow: allow, RBACFilterAudit: audit} {
		a, err := anyOf(&rbachttpv3.RBACPerRoute{Rbac: cfg})
		if err != nil {
			return nil, err
		}
		out[name] = a
	}
	return out, nil
}

// grpcServerFilters renders the HTTP filters (DENY, ALLOW) of a proxyless
// gRPC server's listener, in the shape gRPC accepts. gRPC ignores shadow
// rules, so AUDIT is not rendered. gRPC closes a server's connections when
// its listener changes, so policies stay in the listener there. Each
// filter asks gRPC to log its denials (gRFC A59 audit logging, gRPC's
// stdout logger): the server application's standard output gets a JSON
// line {"grpc_audit_log": {...}} with the method, the caller's SPIFFE ID
// and matched_rule, the DENY rule (empty when no ALLOW rule matched).
func (s *rbacSets) grpcServerFilters() ([]*hcmv3.HttpFilter, error) {
	logDenials, err := grpcDenialAudit()
	if err != nil {
		return nil, err
	}
	var out []*hcmv3.HttpFilter
	mk := func(name string, cfg *rbachttpv3.RBAC) error {
		a, err := anyOf(cfg)
		if err != nil {
			return err
		}
		out = append(out, &hcmv3.HttpFilter{Name: name, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: a}})
		return nil
	}
	if len(s.deny) > 0 {
		if err := mk(RBACFilterDeny, &rbachttpv3.RBAC{Rules: &rbacv3.RBAC{Action: rbacv3.RBAC_DENY, Policies: s.deny, AuditLoggingOptions: logDenials}}); err != nil {
			return nil, err
		}
	}
	if s.hasAllow {
		if err := mk(RBACFilterAllow, &rbachttpv3.RBAC{Rules: &rbacv3.RBAC{Action: rbacv3.RBAC_ALLOW, Policies: s.allow, AuditLoggingOptions: logDenials}}); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// grpcDenialAudit makes gRPC log every denial with its stdout audit logger
// (the StdoutAuditLog type selects it; gRPC ignores the name).
func grpcDenialAudit() (*rbacv3.RBAC_AuditLoggingOptions, error) {
	stdout, err := anyOf(&auditstreamv3.StdoutAuditLog{})
	if err != nil {
		return nil, err
	}
	return &rbacv3.RBAC_AuditLoggingOptions{
		AuditCondition: rbacv3.RBAC_AuditLoggingOptions_ON_DENY,
		LoggerConfigs: []*rbacv3.RBAC_AuditLoggingOptions_AuditLoggerConfig{{
			AuditLogger: &corev3.TypedExtensionConfig{Name: grpcStdoutAuditLogger, TypedConfig: stdout},
		}},
	}, nil
}

// networkFilters renders network RBAC filters for tcp services: one DENY
// filter per DENY rule, then the ALLOW filter, then AUDIT. Envoy's network
// RBAC has no per-rule stats, but a chain of DENY filters denies exactly
// what one DENY filter with all the rules denies, so one filter per rule,
// with the rule in its stat prefix (NetworkRBACStatPrefix), counts each
// rule's denials: <stat>.deny.policy.<ns>/<policy>/rule-<n>.rbac.denied.
// The filters run in rule-name order, the order in which one filter's
// engine would have tried them. A tcp listener changes with its policies
// anyway (there is no per-request configuration to carry them).
func (s *rbacSets) networkFilters(stat string) ([]*listenerv3.Filter, error) {
	var out []*listenerv3.Filter
	mk := func(cfg *rbacnetv3.RBAC) error {
		f, err := networkFilter(filterRBACNetwork, cfg)
		if err != nil {
			return err
		}
		out = append(out, f)
		return nil
	}
	for _, rule := range slices.Sorted(maps.Keys(s.deny)) {
		if err := mk(&rbacnetv3.RBAC{StatPrefix: NetworkRBACStatPrefix(stat, RBACStatDeny, rule),
			Rules: &rbacv3.RBAC{Action: rbacv3.RBAC_DENY, Policies: map[string]*rbacv3.Policy{rule: s.deny[rule]}}}); err != nil {
			return nil, err
		}
	}
	if s.hasAllow {
		if err := mk(&rbacnetv3.RBAC{StatPrefix: NetworkRBACStatPrefix(stat, RBACStatAllow, ""), Rules: &rbacv3.RBAC{Action: rbacv3.RBAC_ALLOW, Policies: s.allow}}); err != nil {
			return nil, err
		}
	}
	if s.hasAudit {
		if err := mk(&rbacnetv3.RBAC{StatPrefix: NetworkRBACStatPrefix(stat, RBACStatAudit, ""), ShadowRules: &rbacv3.RBAC{Action: rbacv3.RBAC_DENY, Policies: s.audit},
			ShadowRulesStatPrefix: auditStatPrefix}); err != nil {
			return nil, err
		}
	}
	return out, nil
}
