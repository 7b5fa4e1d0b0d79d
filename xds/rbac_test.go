package xds

import (
	"fmt"
	"testing"

	"github.com/meshd/meshd/mesh"
)

// A policy change must not replace an Envoy sidecar's inbound listener for
// an HTTP service: Envoy keeps connections opened before a listener change
// on the old filter chain until they drain (minutes, by default), so a new
// DENY would not reach a keep-alive caller. The policies live in the
// inbound route instead, which Envoy applies to the next request. For every
// HTTP protocol and mTLS mode: two different policy sets give the same
// listener bytes and different routes. A tcp service's listener, which
// carries network RBAC, does change (its connections are drained: see
// docs/architecture.md).
func TestPolicyChangeLeavesHTTPListenerAlone(t *testing.T) {
	none := &mesh.PolicySet{RootNamespace: mesh.DefaultRootNamespace}
	some := &mesh.PolicySet{RootNamespace: mesh.DefaultRootNamespace, Authorizations: []mesh.AuthorizationPolicy{
		{Name: "deny-ops", Namespace: "default", Action: mesh.ActionDeny, Rules: []mesh.Rule{{From: []mesh.Source{{Principals: []string{"cluster.local/ns/default/sa/ops"}}}}}},
		{Name: "allow-web", Namespace: "default", Action: mesh.ActionAllow, Rules: []mesh.Rule{{From: []mesh.Source{{Principals: []string{"cluster.local/ns/default/sa/web"}}}}}},
		{Name: "audit-all", Namespace: "default", Action: mesh.ActionAudit, Rules: []mesh.Rule{{}}},
	}}
	lockdown := &mesh.PolicySet{RootNamespace: mesh.DefaultRootNamespace, Authorizations: []mesh.AuthorizationPolicy{
		{Name: "lockdown", Namespace: "default", Action: mesh.ActionAllow},
	}}
	for _, proto := range []mesh.Protocol{mesh.ProtocolHTTP, mesh.ProtocolHTTP2, mesh.ProtocolGRPC, mesh.ProtocolTCP} {
		for _, mode := range []mesh.MTLSMode{mesh.MTLSStrict, mesh.MTLSPermissive, mesh.MTLSDisable} {
			t.Run(fmt.Sprintf("%s/%s", proto, mode), func(t *testing.T) {
				cat, err := mesh.NewCatalog([]mesh.Service{
					{Name: "api", Protocol: proto, Endpoints: []mesh.Endpoint{{Address: "10.0.0.1", Port: 15001}}},
				}, []mesh.Proxy{{Service: "api", Address: "10.0.0.1", PublicPort: 15001, AppPort: 8080}})
				if err != nil {
					t.Fatal(err)
				}
				render := func(ps *mesh.PolicySet) *ProxyResources {
					t.Helper()
					ps.DefaultMode = mode
					r, err := NewTranslator(Options{TrustDomain: "cluster.local"}).Generation(cat, ps).Proxy("api.default")
					if err != nil {
						t.Fatal(err)
					}
					return r
				}
				listenerBytes := func(r *ProxyResources) string {
					t.Helper()
					b, err := deterministic.Marshal(r.Listeners[0].Message)
					if err != nil {
						t.Fatal(err)
					}
					return string(b)
				}
				sets := []*ProxyResources{render(none), render(some), render(lockdown)}
				for i := 1; i < len(sets); i++ {
					sameListener := listenerBytes(sets[0]) == listenerBytes(sets[i])
					if proto == mesh.ProtocolTCP {
						if sameListener {
							t.Fatalf("policy set %d: a tcp listener carries network RBAC and should have changed", i)
						}
						continue
					}
					if !sameListener {
						t.Errorf("policy set %d changed the inbound listener", i)
					}
					if sets[0].Routes[0].Hash == sets[i].Routes[0].Hash {
						t.Errorf("policy set %d left the inbound route unchanged: where did the policy go?", i)
					}
				}
			})
		}
	}
}
