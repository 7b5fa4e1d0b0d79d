package xds

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	"github.com/meshd/meshd/mesh"
)

// rendered returns a proxy's inbound listener and routes from a golden
// input, as the proxy is served them.
func rendered(t *testing.T, path, proxy string, mode mesh.MTLSMode) (*listenerv3.Listener, map[string]*routev3.RouteConfiguration) {
	t.Helper()
	in := loadCase(t, path)
	if mode != "" {
		in.Policy.DefaultMode = mode
	}
	cat, err := mesh.NewCatalog(in.Services, in.Proxies)
	if err != nil {
		t.Fatal(err)
	}
	r, err := NewTranslator(Options{TrustDomain: in.TrustDomain}).Generation(cat, in.Policy).Proxy(proxy)
	if err != nil {
		t.Fatal(err)
	}
	routes := map[string]*routev3.RouteConfiguration{}
	for _, rr := range r.Routes {
		routes[rr.Name] = rr.Message.(*routev3.RouteConfiguration)
	}
	for _, l := range r.Listeners {
		lis := l.Message.(*listenerv3.Listener)
		if strings.HasPrefix(lis.GetName(), "inbound|") || strings.HasPrefix(lis.GetName(), "grpc/server") {
			return lis, routes
		}
	}
	t.Fatalf("%s has no inbound listener", proxy)
	return nil, nil
}

const authzCase = "testdata/in/policy-authz.yaml"

func mtlsReq(principal, method, path string) AuthzRequest {
	return AuthzRequest{MTLS: true, Principal: "spiffe://cluster.local/ns/" + principal, Method: method, Path: path,
		Host: "api.default.svc.cluster.local", SourceIP: netip.MustParseAddr("10.1.2.3"), SNI: "api.default.svc.cluster.local",
		Headers: map[string]string{"x-tenant": "acme"}}
}

func TestEvaluateHTTPSidecar(t *testing.T) {
	l, routes := rendered(t, authzCase, "api-1", "")
	for _, c := range []struct {
		name                 string
		req                  AuthzRequest
		allowed              bool
		deniedBy, allowedBy  string
		audited              []string
		explanationFragments string
	}{
		{"reader over mTLS", mtlsReq("default/sa/web", "GET", "/api/items"), true, "", "default/api-readers/rule-0", nil, "allowed by ALLOW rule"},
		{"the DENY rule comes first", mtlsReq("default/sa/web", "GET", "/debug/pprof"), false, "default/no-debug/rule-0", "", nil, "denied by DENY rule default/no-debug/rule-0"},
		{"a header any authenticated caller may not send", func() AuthzRequest {
			r := mtlsReq("default/sa/web", "GET", "/api/items")
			r.Headers["x-debug"] = "1"
			return r
		}(), false, "default/no-debug/rule-1", "", nil, ""},
		{"notPaths", mtlsReq("default/sa/web", "GET", "/api/admin/users"), false, "none", "", nil, "none of their rules matches"},
		// The AUDIT filter comes after ALLOW: a denied request never reaches it.
		{"wrong method", mtlsReq("default/sa/web", "POST", "/api/items"), false, "none", "", nil, ""},
		{"notPrincipals", mtlsReq("batch/sa/intruder", "GET", "/api/items"), false, "none", "", nil, ""},
		{"excluded tenant", func() AuthzRequest {
			r := mtlsReq("default/sa/web", "GET", "/api/items")
			r.Headers["x-tenant"] = "beta-test"
			return r
		}(), false, "none", "", nil, ""},
		// Rule 1 wants ipBlocks and remoteIpBlocks at once; without a
		// forwarded address they are the same address, which cannot be in
		// both.
		{"ipBlocks and remoteIpBlocks together", AuthzRequest{MTLS: true, Principal: "spiffe://cluster.local/ns/x/sa/y", Method: "PUT", Path: "/x",
			Host: "anything", SourceIP: netip.MustParseAddr("192.168.1.1")}, false, "none", "", nil, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			d, err := EvaluateInbound(l, routes, c.req)
			if err != nil {
				t.Fatal(err)
			}
			if d.Allowed != c.allowed || d.DeniedBy != c.deniedBy || d.AllowedBy != c.allowedBy || !slices.Equal(d.Audited, c.audited) ||
				!strings.Contains(d.Explanation, c.explanationFragments) || d.Chain != FilterChainMTLS {
				t.Errorf("%+v", d)
			}
		})
	}
	// Plaintext to a STRICT workload never reaches a policy.
	d, err := EvaluateInbound(l, routes, AuthzRequest{Method: "GET", Path: "/api/items", Host: "x"})
	if err != nil || d.Allowed || !d.Refused || !strings.Contains(d.Explanation, "STRICT") {
		t.Errorf("plaintext to STRICT: %+v %v", d, err)
	}
}

func TestEvaluatePermissivePlaintextHasNoIdentity(t *testing.T) {
	l, routes := rendered(t, authzCase, "open-1", mesh.MTLSPermissive)
	d, err := EvaluateInbound(l, routes, AuthzRequest{Method: "GET", Path: "/", Host: "open", SourceIP: netip.MustParseAddr("10.0.0.9")})
	if err != nil || !d.Allowed || d.AllowedBy != "default/allow-all/rule-0" || d.Chain != FilterChainPlaintext {
		t.Errorf("plaintext to a PERMISSIVE allow-all: %+v %v", d, err)
	}
	// The mesh-wide AUDIT rule is for port 1 only: not audited here.
	l, routes = rendered(t, authzCase, "open-1", "")
	d, err = EvaluateInbound(l, routes, mtlsReq("default/sa/web", "POST", "/x"))
	if err != nil || !d.Allowed || d.Chain != FilterChainMTLS || len(d.Audited) != 0 {
		t.Errorf("POST to open: %+v %v", d, err)
	}
	l, routes = rendered(t, authzCase, "api-1", mesh.MTLSPermissive)
	// A principal claimed over plaintext is not verified: it does not count.
	r := mtlsReq("default/sa/web", "GET", "/api/items")
	r.MTLS = false
	d, err = EvaluateInbound(l, routes, r)
	if err != nil || d.Allowed || d.DeniedBy != "none" || d.Chain != FilterChainPlaintext {
		t.Errorf("plaintext web to PERMISSIVE api: %+v %v", d, err)
	}
}

func TestEvaluateLockedAndTCP(t *testing.T) {
	l, routes := rendered(t, authzCase, "locked-1", "")
	d, err := EvaluateInbound(l, routes, mtlsReq("default/sa/web", "GET", "/"))
	if err != nil || d.Allowed || d.DeniedBy != "none" {
		t.Errorf("ALLOW without rules: %+v %v", d, err)
	}
	l, routes = rendered(t, authzCase, "db-1", "")
	for _, c := range []struct {
		principal string
		allowed   bool
		by        string
	}{
		{"default/sa/api", true, "default/db-callers/rule-0"},
		// HTTP-only fields on tcp: the ALLOW rule is dropped...
		{"default/sa/web", false, "none"},
		// ...and the DENY rule narrowed to its tcp fields (every batch caller).
		{"batch/sa/job", false, "default/db-no-writes/rule-0"},
		{"default/sa/intruder", false, "default/db-no-writes/rule-1"},
	} {
		d, err := EvaluateInbound(l, routes, AuthzRequest{MTLS: true, Principal: "spiffe://cluster.local/ns/" + c.principal})
		by := d.AllowedBy + d.DeniedBy
		if err != nil || d.Allowed != c.allowed || by != c.by {
			t.Errorf("tcp from %s: %+v %v; want allowed=%v by %s", c.principal, d, err, c.allowed, c.by)
		}
	}
}

func TestEvaluateProxylessServer(t *testing.T) {
	l, routes := rendered(t, authzCase, "greeter-1", "")
	for _, c := range []struct {
		principal, path string
		headers         map[string]string
		allowed         bool
		by              string
	}{
		// Rules are tried in name order: consul-intentions before
		// greeter-callers; rule-1 admits everyone but ops unless both of
		// its headers are there.
		{"default/sa/web", "/grpc.testing.TestService/UnaryCall", nil, true, "default/consul-intentions/rule-1"},
		{"default/sa/web", "/grpc.testing.TestService/UnaryCall", map[string]string{"x-block": "yes", "x-sig": "ab12"}, true, "default/greeter-callers/rule-0"},
		{"default/sa/web", "/grpc.testing.TestService/EmptyCall", map[string]string{"x-block": "yes", "x-sig": "ab12"}, false, "none"},
		{"default/sa/ops", "/grpc.testing.TestService/UnaryCall", map[string]string{"x-role": "admin"}, true, "default/consul-intentions/rule-0"},
		// NotTo takes EmptyCall (POST) out of the ops rule, and rule 1 is
		// for everyone but ops.
		{"default/sa/ops", "/grpc.testing.TestService/EmptyCall", map[string]string{"x-role": "admin"}, false, "none"},
		{"default/sa/ops", "/grpc.testing.TestService/UnaryCall", map[string]string{"x-role": "admin", "x-debug": "1"}, false, "none"},
	} {
		d, err := EvaluateInbound(l, routes, AuthzRequest{MTLS: true, Principal: "spiffe://cluster.local/ns/" + c.principal,
			Method: "POST", Path: c.path, Host: "greeter.default", Headers: c.headers})
		if err != nil || d.Allowed != c.allowed || d.AllowedBy+d.DeniedBy != c.by {
			t.Errorf("%s %s: %+v %v; want allowed=%v by %s", c.principal, c.path, d, err, c.allowed, c.by)
		}
	}
}
