package xds

import (
	"fmt"
	"maps"
	"net/netip"
	"regexp"
	"slices"
	"strings"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbachttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	rbacnetv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// The authorization evaluator (meshctl authz check, meshctl describe):
// given what a proxy is served — its inbound listener and routes, exactly
// as this package rendered them — and a request, it answers what Envoy (or
// gRPC) would decide, and which RBAC rule decided. It evaluates the
// rendered Envoy RBAC, not the policies: there is one rendering of the
// semantics (rbac.go) and this reads its output, so the answer is what the
// proxy enforces, staged mTLS migrations and all. It knows exactly the
// matchers rbac.go and listener.go produce and refuses anything else
// rather than guess.

// AuthzRequest is a request (or, for tcp, a connection) as a workload's
// inbound listener sees it.
type AuthzRequest struct {
	// MTLS: the caller connects with mesh mTLS (a sidecar or proxyless
	// client with an identity); Principal is its SPIFFE ID then.
	MTLS      bool
	Principal string
	// SourceIP is the caller's address (ipBlocks, remoteIpBlocks).
	SourceIP netip.Addr
	// HTTP: method, path (query ignored), authority and other headers
	// (lower-case names).
	Method, Path, Host string
	Headers            map[string]string
	// SNI is the TLS server name the caller sent (connection.sni).
	SNI string
}

// AuthzDecision is the outcome.
type AuthzDecision struct {
	Allowed bool `json:"allowed"`
	// Refused: the connection itself is refused (plaintext to a STRICT
	// workload); no policy was consulted.
	Refused bool `json:"refused,omitempty"`
	// DeniedBy is the RBAC rule that denied (<ns>/<policy>/rule-<n>), or
	// "none" when ALLOW policies apply and no rule matched — the words of
	// Envoy's rbac_access_denied_matched_policy[...].
	DeniedBy string `json:"deniedBy,omitempty"`
	// AllowedBy is the ALLOW rule that matched (empty when no ALLOW policy
	// applies: no policy means allow).
	AllowedBy string `json:"allowedBy,omitempty"`
	// Audited lists the AUDIT rules that match (they never decide).
	Audited []string `json:"audited,omitempty"`
	// Chain is the listener's filter chain the request lands on.
	Chain string `json:"chain"`
	// Explanation says it in words.
	Explanation string `json:"explanation"`
}

// EvaluateInbound decides req against a proxy's inbound listener, with the
// proxy's route configurations by name (for RDS).
func EvaluateInbound(l *listenerv3.Listener, routes map[string]*routev3.RouteConfiguration, req AuthzRequest) (AuthzDecision, error) {
	chain, refused := selectChain(l, req)
	if refused != "" {
		return AuthzDecision{Refused: true, Explanation: refused}, nil
	}
	d := AuthzDecision{Chain: chain.GetName()}
	if chain.GetTransportSocket() == nil {
		req = identityLess(req) // a plaintext chain verifies no peer
	}
	for _, f := range chain.GetFilters() {
		m, err := f.GetTypedConfig().UnmarshalNew()
		if err != nil {
			return d, fmt.Errorf("filter %s: %w", f.GetName(), err)
		}
		switch x := m.(type) {
		case *rbacnetv3.RBAC:
			if err := applyRBAC(&d, x.GetRules(), x.GetShadowRules(), req, false); err != nil {
				return d, err
			}
			if !d.Allowed && d.DeniedBy != "" {
				return finish(d), nil
			}
		case *hcmv3.HttpConnectionManager:
			return evaluateHCM(d, x, routes, req)
		}
	}
	d.Allowed = true
	return finish(d), nil
}

// selectChain picks the filter chain Envoy (or gRPC) would: mesh mTLS
// lands on the chain matching TLS (with the mesh ALPN), everything else on
// the default chain; a chain that requires TLS cannot take plaintext.
func selectChain(l *listenerv3.Listener, req AuthzRequest) (*listenerv3.FilterChain, string) {
	var tlsChain, plain *listenerv3.FilterChain
	for _, c := range l.GetFilterChains() {
		if c.GetFilterChainMatch().GetTransportProtocol() == "tls" || (c.GetTransportSocket() != nil && tlsChain == nil) {
			tlsChain = c
		} else if c.GetTransportSocket() == nil {
			plain = c
		}
	}
	if d := l.GetDefaultFilterChain(); d != nil {
		if d.GetTransportSocket() == nil {
			plain = d
		} else if tlsChain == nil {
			tlsChain = d
		}
	}
	switch {
	case req.MTLS && tlsChain != nil:
		return tlsChain, ""
	case req.MTLS:
		// DISABLE: callers' clusters send plaintext to such endpoints
		// (auto mTLS), so the request arrives without an identity.
		return plain, ""
	case plain != nil:
		return plain, ""
	}
	return nil, "refused: the workload accepts only mTLS (STRICT), so a plaintext connection fails its TLS handshake"
}

// identityLess makes req what a plaintext chain sees: no principal.
func identityLess(req AuthzRequest) AuthzRequest {
	req.Principal, req.SNI = "", ""
	return req
}

func evaluateHCM(d AuthzDecision, h *hcmv3.HttpConnectionManager, routes map[string]*routev3.RouteConfiguration, req AuthzRequest) (AuthzDecision, error) {
	rc := h.GetRouteConfig()
	if name := h.GetRds().GetRouteConfigName(); name != "" {
		rc = routes[name]
		if rc == nil {
			return d, fmt.Errorf("route configuration %q is not among the proxy's routes", name)
		}
	}
	vh, route, err := selectRoute(rc, req)
	if err != nil {
		return d, err
	}
	for _, f := range h.GetHttpFilters() {
		if !strings.Contains(f.GetName(), "rbac") {
			continue
		}
		cfg := &rbachttpv3.RBAC{}
		if err := f.GetTypedConfig().UnmarshalTo(cfg); err != nil {
			return d, fmt.Errorf("HTTP filter %s: %w", f.GetName(), err)
		}
		// A route's override replaces the filter's configuration; one
		// without rbac turns the filter off for the route.
		for _, over := range []map[string]*anypb.Any{route.GetTypedPerFilterConfig(), vh.GetTypedPerFilterConfig()} {
			if a, ok := over[f.GetName()]; ok {
				pr := &rbachttpv3.RBACPerRoute{}
				if err := a.UnmarshalTo(pr); err != nil {
					return d, fmt.Errorf("route override of %s: %w", f.GetName(), err)
				}
				cfg = pr.GetRbac()
				break
			}
		}
		if err := applyRBAC(&d, cfg.GetRules(), cfg.GetShadowRules(), req, true); err != nil {
			return d, err
		}
		if !d.Allowed && d.DeniedBy != "" {
			return finish(d), nil
		}
	}
	d.Allowed = true
	return finish(d), nil
}

// applyRBAC runs one RBAC filter: enforced rules decide (a DENY match or
// an ALLOW miss sets d.DeniedBy), shadow rules only record matches.
func applyRBAC(d *AuthzDecision, rules, shadow *rbacv3.RBAC, req AuthzRequest, http bool) error {
	if rules != nil {
		name, matched, err := firstMatch(rules.GetPolicies(), req, http)
		if err != nil {
			return err
		}
		switch rules.GetAction() {
		case rbacv3.RBAC_ALLOW:
			if !matched {
				d.DeniedBy = "none"
				return nil
			}
			d.AllowedBy = name
		case rbacv3.RBAC_DENY:
			if matched {
				d.DeniedBy = name
				return nil
			}
		default:
			return fmt.Errorf("RBAC action %s is not one meshd renders", rules.GetAction())
		}
	}
	if shadow != nil {
		names := slices.Sorted(maps.Keys(shadow.GetPolicies()))
		for _, n := range names {
			ok, err := policyMatches(shadow.GetPolicies()[n], req, http)
			if err != nil {
				return err
			}
			if ok {
				d.Audited = append(d.Audited, n)
			}
		}
	}
	return nil
}

// firstMatch is the first policy, in name order (Envoy keeps them sorted),
// that matches.
func firstMatch(policies map[string]*rbacv3.Policy, req AuthzRequest, http bool) (string, bool, error) {
	for _, n := range slices.Sorted(maps.Keys(policies)) {
		ok, err := policyMatches(policies[n], req, http)
		if err != nil {
			return "", false, fmt.Errorf("rule %s: %w", n, err)
		}
		if ok {
			return n, true, nil
		}
	}
	return "", false, nil
}

func finish(d AuthzDecision) AuthzDecision {
	switch {
	case d.DeniedBy == "none":
		d.Allowed = false
		d.Explanation = "denied: ALLOW policies apply to the workload and none of their rules matches"
	case d.DeniedBy != "":
		d.Allowed = false
		d.Explanation = "denied by DENY rule " + d.DeniedBy
	case d.AllowedBy != "":
		d.Explanation = "allowed by ALLOW rule " + d.AllowedBy
	default:
		d.Explanation = "allowed: no DENY rule matches and no ALLOW policy applies"
	}
	return d
}

// policyMatches: some permission and some principal match (Envoy ORs each
// list).
func policyMatches(p *rbacv3.Policy, req AuthzRequest, http bool) (bool, error) {
	if p.GetCondition() != nil || p.GetCheckedCondition() != nil {
		return false, fmt.Errorf("CEL conditions are not rendered by meshd")
	}
	perm := false
	for _, x := range p.GetPermissions() {
		ok, err := permissionMatches(x, req, http)
		if err != nil {
			return false, err
		}
		if ok {
			perm = true
			break
		}
	}
	if !perm {
		return false, nil
	}
	for _, x := range p.GetPrincipals() {
		ok, err := principalMatches(x, req, http)
		if err != nil {
			return false, err
		}
		if ok {
			return true, nil
		}
	}
	return false, nil
}

func permissionMatches(p *rbacv3.Permission, req AuthzRequest, http bool) (bool, error) {
	switch r := p.GetRule().(type) {
	case *rbacv3.Permission_Any:
		return r.Any, nil
	case *rbacv3.Permission_AndRules:
		for _, x := range r.AndRules.GetRules() {
			ok, err := permissionMatches(x, req, http)
			if err != nil || !ok {
				return false, err
			}
		}
		return true, nil
	case *rbacv3.Permission_OrRules:
		for _, x := range r.OrRules.GetRules() {
			ok, err := permissionMatches(x, req, http)
			if err != nil || ok {
				return ok, err
			}
		}
		return false, nil
	case *rbacv3.Permission_NotRule:
		ok, err := permissionMatches(r.NotRule, req, http)
		return !ok, err
	case *rbacv3.Permission_Header:
		if !http {
			return false, nil // network RBAC sees no headers
		}
		return headerMatches(r.Header, req)
	case *rbacv3.Permission_UrlPath:
		if !http {
			return false, nil
		}
		path, _, _ := strings.Cut(req.Path, "?")
		return stringMatches(r.UrlPath.GetPath(), path)
	case *rbacv3.Permission_RequestedServerName:
		return stringMatches(r.RequestedServerName, req.SNI)
	}
	return false, fmt.Errorf("permission %T is not one meshd renders", p.GetRule())
}

func principalMatches(p *rbacv3.Principal, req AuthzRequest, http bool) (bool, error) {
	switch id := p.GetIdentifier().(type) {
	case *rbacv3.Principal_Any:
		return id.Any, nil
	case *rbacv3.Principal_AndIds:
		for _, x := range id.AndIds.GetIds() {
			ok, err := principalMatches(x, req, http)
			if err != nil || !ok {
				return false, err
			}
		}
		return true, nil
	case *rbacv3.Principal_OrIds:
		for _, x := range id.OrIds.GetIds() {
			ok, err := principalMatches(x, req, http)
			if err != nil || ok {
				return ok, err
			}
		}
		return false, nil
	case *rbacv3.Principal_NotId:
		ok, err := principalMatches(id.NotId, req, http)
		return !ok, err
	case *rbacv3.Principal_Authenticated_:
		if req.Principal == "" {
			return false, nil // no verified peer certificate
		}
		if id.Authenticated.GetPrincipalName() == nil {
			return true, nil
		}
		return stringMatches(id.Authenticated.GetPrincipalName(), req.Principal)
	case *rbacv3.Principal_RemoteIp:
		return cidrMatches(id.RemoteIp.GetAddressPrefix(), id.RemoteIp.GetPrefixLen().GetValue(), req.SourceIP)
	case *rbacv3.Principal_DirectRemoteIp:
		return cidrMatches(id.DirectRemoteIp.GetAddressPrefix(), id.DirectRemoteIp.GetPrefixLen().GetValue(), req.SourceIP)
	case *rbacv3.Principal_Header:
		if !http {
			return false, nil
		}
		return headerMatches(id.Header, req)
	}
	return false, fmt.Errorf("principal %T is not one meshd renders", p.GetIdentifier())
}

func cidrMatches(addr string, bits uint32, ip netip.Addr) (bool, error) {
	a, err := netip.ParseAddr(addr)
	if err != nil {
		return false, fmt.Errorf("CIDR %s/%d: %w", addr, bits, err)
	}
	if !ip.IsValid() {
		return false, nil
	}
	pfx, err := a.Prefix(int(bits))
	if err != nil {
		return false, err
	}
	return pfx.Contains(ip.Unmap()), nil
}

// headerValue is what a header matcher reads: the pseudo-headers from the
// request line, others from Headers.
func headerValue(name string, req AuthzRequest) (string, bool) {
	switch name {
	case ":method":
		return req.Method, req.Method != ""
	case ":path":
		return req.Path, req.Path != ""
	case ":authority", "host":
		return req.Host, req.Host != ""
	}
	v, ok := req.Headers[strings.ToLower(name)]
	return v, ok
}

func headerMatches(h *routev3.HeaderMatcher, req AuthzRequest) (bool, error) {
	v, present := headerValue(h.GetName(), req)
	var ok bool
	var err error
	switch m := h.GetHeaderMatchSpecifier().(type) {
	case *routev3.HeaderMatcher_StringMatch:
		ok = present
		if present {
			ok, err = stringMatches(m.StringMatch, v)
		}
	case *routev3.HeaderMatcher_PresentMatch:
		ok = present == m.PresentMatch
	case nil:
		ok = present
	default:
		return false, fmt.Errorf("header matcher %T is not one meshd renders", m)
	}
	if h.GetInvertMatch() {
		ok = !ok
	}
	return ok, err
}

func stringMatches(m *matcherv3.StringMatcher, v string) (bool, error) {
	if m.GetIgnoreCase() {
		v = strings.ToLower(v)
	}
	low := func(s string) string {
		if m.GetIgnoreCase() {
			return strings.ToLower(s)
		}
		return s
	}
	switch p := m.GetMatchPattern().(type) {
	case *matcherv3.StringMatcher_Exact:
		return v == low(p.Exact), nil
	case *matcherv3.StringMatcher_Prefix:
		return strings.HasPrefix(v, low(p.Prefix)), nil
	case *matcherv3.StringMatcher_Suffix:
		return strings.HasSuffix(v, low(p.Suffix)), nil
	case *matcherv3.StringMatcher_Contains:
		return strings.Contains(v, low(p.Contains)), nil
	case *matcherv3.StringMatcher_SafeRegex:
		// Envoy's safe_regex must match the whole value (RE2, as Go's).
		re, err := regexp.Compile(`^(?:` + p.SafeRegex.GetRegex() + `)$`)
		if err != nil {
			return false, fmt.Errorf("regex %q: %w", p.SafeRegex.GetRegex(), err)
		}
		return re.MatchString(v), nil
	}
	return false, fmt.Errorf("string matcher %T is not one meshd renders", m.GetMatchPattern())
}

// selectRoute finds the virtual host (by authority) and route (by path and
// headers) Envoy would pick.
func selectRoute(rc *routev3.RouteConfiguration, req AuthzRequest) (*routev3.VirtualHost, *routev3.Route, error) {
	host, _, _ := strings.Cut(req.Host, ":")
	var vh *routev3.VirtualHost
	for _, v := range rc.GetVirtualHosts() {
		for _, d := range v.GetDomains() {
			if d == "*" || d == req.Host || d == host || (strings.HasPrefix(d, "*") && strings.HasSuffix(host, d[1:])) {
				vh = v
				break
			}
		}
		if vh != nil {
			break
		}
	}
	if vh == nil {
		return nil, nil, fmt.Errorf("no virtual host of %s takes authority %q", rc.GetName(), req.Host)
	}
	path, _, _ := strings.Cut(req.Path, "?")
	for _, r := range vh.GetRoutes() {
		m := r.GetMatch()
		ok := false
		switch p := m.GetPathSpecifier().(type) {
		case *routev3.RouteMatch_Prefix:
			ok = strings.HasPrefix(path, p.Prefix)
		case *routev3.RouteMatch_Path:
			ok = path == p.Path
		case *routev3.RouteMatch_SafeRegex:
			re, err := regexp.Compile(`^(?:` + p.SafeRegex.GetRegex() + `)$`)
			if err != nil {
				return nil, nil, err
			}
			ok = re.MatchString(path)
		default:
			return nil, nil, fmt.Errorf("route match %T is not one meshd renders", p)
		}
		for _, h := range m.GetHeaders() {
			if !ok {
				break
			}
			hm, err := headerMatches(h, req)
			if err != nil {
				return nil, nil, err
			}
			ok = hm
		}
		if ok {
			return vh, r, nil
		}
	}
	return nil, nil, fmt.Errorf("no route of %s matches %s", rc.GetName(), req.Path)
}
