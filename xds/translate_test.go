package xds

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"

	"github.com/meshd/meshd/mesh"
)

func quickstartCatalog(t *testing.T) (*mesh.Catalog, goldenInput) {
	t.Helper()
	in := loadCase(t, "../examples/quickstart/catalog.yaml")
	cat, err := mesh.NewCatalog(in.Services, in.Proxies)
	if err != nil {
		t.Fatal(err)
	}
	return cat, in
}

// The shared, memoising translator must give exactly what the pure
// per-proxy function gives, and the same pointer for shared resources.
func TestTranslatorMatchesTranslate(t *testing.T) {
	cat, _ := quickstartCatalog(t)
	opts := Options{TrustDomain: "cluster.local"}
	tr := NewTranslator(opts)
	for round := range 2 { // round 1 reuses the previous generation's resources
		gen := tr.Generation(cat, nil)
		for _, p := range cat.Proxies() {
			shared, err := gen.Proxy(p.ID)
			if err != nil {
				t.Fatal(err)
			}
			pure, err := Translate(cat, p.ID, opts)
			if err != nil {
				t.Fatal(err)
			}
			a, b := shared.ByType(), pure.ByType()
			for typ := range a {
				if len(a[typ]) != len(b[typ]) {
					t.Fatalf("round %d %s %s: %d vs %d resources", round, p.ID, typ, len(a[typ]), len(b[typ]))
				}
				for i := range a[typ] {
					if a[typ][i].Name != b[typ][i].Name || a[typ][i].Hash != b[typ][i].Hash {
						t.Errorf("round %d %s: %s differs: %s/%s vs %s/%s", round, p.ID, typ, a[typ][i].Name, a[typ][i].Hash, b[typ][i].Name, b[typ][i].Hash)
					}
				}
			}
		}
		gen.Close()
	}
	// Two callers of the same upstream share the endpoints resource.
	gen := tr.Generation(cat, nil)
	a, _ := gen.Proxy("hello-client.default")
	tr2 := gen
	b, _ := tr2.Proxy("hello-client.default")
	if a.Endpoints[0] != b.Endpoints[0] {
		t.Error("endpoints resource not shared within a generation")
	}
}

func TestFingerprint(t *testing.T) {
	in := loadCase(t, "../examples/quickstart/catalog.yaml")
	base, err := mesh.NewCatalog(in.Services, in.Proxies)
	if err != nil {
		t.Fatal(err)
	}
	fp := func(c *mesh.Catalog, id string) string {
		return NewTranslator(Options{TrustDomain: "cluster.local"}).Generation(c, nil).Fingerprint(c.Proxy(id))
	}
	mutate := func(f func(s []mesh.Service, p []mesh.Proxy)) *mesh.Catalog {
		s := make([]mesh.Service, len(in.Services))
		for i := range in.Services {
			s[i] = in.Services[i]
			s[i].Endpoints = append([]mesh.Endpoint(nil), in.Services[i].Endpoints...)
		}
		p := make([]mesh.Proxy, len(in.Proxies))
		for i := range in.Proxies {
			p[i] = in.Proxies[i]
			p[i].Upstreams = append([]mesh.Upstream(nil), in.Proxies[i].Upstreams...)
		}
		f(s, p)
		c, err := mesh.NewCatalog(s, p)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	svc := func(s []mesh.Service, name string) *mesh.Service {
		for i := range s {
			if s[i].Name == name {
				return &s[i]
			}
		}
		t.Fatalf("no service %s", name)
		return nil
	}
	proxy := func(p []mesh.Proxy, name string) *mesh.Proxy {
		for i := range p {
			if p[i].Service == name {
				return &p[i]
			}
		}
		t.Fatalf("no proxy %s", name)
		return nil
	}
	cases := []struct {
		name    string
		f       func(s []mesh.Service, p []mesh.Proxy)
		changes bool
	}{
		{"upstream endpoint added", func(s []mesh.Service, _ []mesh.Proxy) {
			x := svc(s, "api")
			x.Endpoints = append(x.Endpoints, mesh.Endpoint{Address: "127.0.0.2", Port: 1})
		}, true},
		{"upstream endpoint label", func(s []mesh.Service, _ []mesh.Proxy) {
			svc(s, "api").Endpoints[0].Labels = map[string]string{"a": "b"}
		}, true},
		{"upstream health", func(s []mesh.Service, _ []mesh.Proxy) { svc(s, "db").Endpoints[0].Health = mesh.HealthUnhealthy }, true},
		{"upstream protocol", func(s []mesh.Service, _ []mesh.Proxy) { svc(s, "db").Protocol = mesh.ProtocolHTTP }, true},
		{"own app port", func(_ []mesh.Service, p []mesh.Proxy) { proxy(p, "web").AppPort = 8999 }, true},
		{"own upstream local port", func(_ []mesh.Service, p []mesh.Proxy) { proxy(p, "web").Upstreams[0].LocalPort = 9999 }, true},
		{"own service account", func(s []mesh.Service, _ []mesh.Proxy) { svc(s, "web").ServiceAccount = "other" }, true},
		{"own endpoints (not an input)", func(s []mesh.Service, _ []mesh.Proxy) { svc(s, "web").Endpoints[0].Port = 1 }, false},
		{"unrelated service", func(s []mesh.Service, _ []mesh.Proxy) { svc(s, "hello").Endpoints[0].Port = 1 }, false},
	}
	want := fp(base, "web.default")
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := fp(mutate(c.f), "web.default")
			if (got != want) != c.changes {
				t.Fatalf("fingerprint changed=%v, want %v", got != want, c.changes)
			}
		})
	}
}

func TestDeterministic(t *testing.T) {
	cat, _ := quickstartCatalog(t)
	for _, p := range cat.Proxies() {
		a, err := Translate(cat, p.ID, Options{TrustDomain: "cluster.local"})
		if err != nil {
			t.Fatal(err)
		}
		for range 5 {
			b, _ := Translate(cat, p.ID, Options{TrustDomain: "cluster.local"})
			for typ, list := range a.ByType() {
				for i, r := range list {
					if r.Hash != b.ByType()[typ][i].Hash {
						t.Fatalf("%s %s %s: hash differs between runs", p.ID, typ, r.Name)
					}
				}
			}
		}
	}
}

func TestUnknownProxy(t *testing.T) {
	cat, _ := quickstartCatalog(t)
	_, err := Translate(cat, "nobody", Options{TrustDomain: "cluster.local"})
	if err == nil || !strings.Contains(err.Error(), `proxy "nobody" is not in the catalog`) {
		t.Fatalf("got %v", err)
	}
}

func TestCheckReferencesReportsDangling(t *testing.T) {
	cat, _ := quickstartCatalog(t)
	r, err := Translate(cat, "web.default", Options{TrustDomain: "cluster.local"})
	if err != nil {
		t.Fatal(err)
	}
	sets := r.ByType()
	sets["type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"] = sets["type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"][1:]
	err = CheckReferences(sets)
	if err == nil || !strings.Contains(err.Error(), "refers to missing ClusterLoadAssignment") {
		t.Fatalf("got %v", err)
	}
}

// Sidecars of one service get their own inbound listener (it carries their
// address) and local_app cluster (it carries their app port), but the parts
// that come out identical are held once: the same local_app *Resource for
// the same app port, the same filter chain messages in every inbound
// listener. Content must be exactly what the pure per-proxy function
// renders, and a sidecar whose content differs must not be given another's.
func TestSidecarsOfAServiceShareIdenticalParts(t *testing.T) {
	const catalog = `
services:
  - name: api
    protocol: http
    endpoints:
      - {address: 10.0.0.1, port: 15001}
      - {address: 10.0.0.2, port: 15001}
      - {address: 10.0.0.3, port: 15001}
proxies:
  - {id: api-1, service: api, address: 10.0.0.1, publicPort: 15001, appPort: 8080}
  - {id: api-2, service: api, address: 10.0.0.2, publicPort: 15001, appPort: 8080}
  - {id: api-3, service: api, address: 10.0.0.3, publicPort: 15001, appPort: 9090}
`
	path := filepath.Join(t.TempDir(), "catalog.yaml")
	if err := os.WriteFile(path, []byte(catalog), 0o600); err != nil {
		t.Fatal(err)
	}
	in := loadCase(t, path)
	cat, err := mesh.NewCatalog(in.Services, in.Proxies)
	if err != nil {
		t.Fatal(err)
	}
	opts := Options{TrustDomain: "cluster.local"}
	tr := NewTranslator(opts)
	for round := range 2 { // round 1 finds the parts in the previous generation
		gen := tr.Generation(cat, nil)
		got := map[string]*ProxyResources{}
		for _, id := range []string{"api-1", "api-2", "api-3"} {
			r, err := gen.Proxy(id)
			if err != nil {
				t.Fatal(err)
			}
			pure, err := Translate(cat, id, opts)
			if err != nil {
				t.Fatal(err)
			}
			for typ, list := range r.ByType() {
				want := pure.ByType()[typ]
				for i := range list {
					if list[i].Name != want[i].Name || list[i].Hash != want[i].Hash {
						t.Errorf("round %d %s: %s %s differs from Translate's", round, id, typ, list[i].Name)
					}
					// The hash must still describe the shared message.
					b, err := deterministic.Marshal(list[i].Message)
					if err != nil {
						t.Fatal(err)
					}
					if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != list[i].Hash {
						t.Errorf("round %d %s: %s %s: hash no longer matches its content", round, id, typ, list[i].Name)
					}
				}
			}
			got[id] = r
		}
		gen.Close()
		localApp := func(id string) *Resource {
			for _, c := range got[id].Clusters {
				if c.Name == LocalAppClusterName(mesh.ServiceKey{Name: "api", Namespace: "default"}) {
					return c
				}
			}
			t.Fatalf("%s has no local_app cluster", id)
			return nil
		}
		if localApp("api-1") != localApp("api-2") {
			t.Errorf("round %d: sidecars with the same app port hold separate local_app clusters", round)
		}
		if localApp("api-1") == localApp("api-3") || localApp("api-1").Hash == localApp("api-3").Hash {
			t.Errorf("round %d: a sidecar with another app port was given the same local_app cluster", round)
		}
		l1 := got["api-1"].Listeners[0].Message.(*listenerv3.Listener)
		l2 := got["api-2"].Listeners[0].Message.(*listenerv3.Listener)
		if l1 == l2 || got["api-1"].Listeners[0].Hash == got["api-2"].Listeners[0].Hash {
			t.Fatalf("round %d: inbound listeners of two sidecars are one resource; each carries its own address", round)
		}
		if len(l1.FilterChains) == 0 || l1.FilterChains[0] != l2.FilterChains[0] || l1.DefaultFilterChain != l2.DefaultFilterChain {
			t.Errorf("round %d: identical inbound filter chains are not shared", round)
		}
		if l1.GetAddress().GetSocketAddress().GetAddress() != "10.0.0.1" || l2.GetAddress().GetSocketAddress().GetAddress() != "10.0.0.2" {
			t.Errorf("round %d: inbound addresses %v, %v", round, l1.GetAddress(), l2.GetAddress())
		}
	}
}

// References are found in unsorted lists too (the secrets the publisher
// adds), and a missing one is reported whatever the list's order.
func TestCheckReferencesUnsortedLists(t *testing.T) {
	cat, _ := quickstartCatalog(t)
	r, err := Translate(cat, "web.default", Options{TrustDomain: "cluster.local"})
	if err != nil {
		t.Fatal(err)
	}
	sets := r.ByType()
	const secretType = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
	var secrets []*Resource
	for _, name := range r.SecretNames() {
		secrets = append(secrets, &Resource{Name: name})
	}
	slices.Reverse(secrets)
	if slices.IsSortedFunc(secrets, func(a, b *Resource) int { return strings.Compare(a.Name, b.Name) }) {
		slices.Reverse(secrets) // the test wants them out of order
	}
	sets[secretType] = secrets
	const endpointType = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
	slices.Reverse(sets[endpointType])
	if err := CheckReferences(sets); err != nil {
		t.Fatalf("complete but unsorted sets: %v", err)
	}
	sets[secretType] = secrets[1:]
	if err := CheckReferences(sets); err == nil || !strings.Contains(err.Error(), "refers to missing Secret") {
		t.Fatalf("missing secret in an unsorted list: %v", err)
	}
	sets[secretType] = secrets
	sets[endpointType] = sets[endpointType][1:]
	if err := CheckReferences(sets); err == nil || !strings.Contains(err.Error(), "refers to missing ClusterLoadAssignment") {
		t.Fatalf("missing endpoints in an unsorted list: %v", err)
	}
}

// Sidecars of one service share rendered parts only when everything those
// depend on is the same: here the same services with different
// authorization policies (by label) and different app ports (port rules
// are decided per workload port). An HTTP service's listener does not
// depend on policies (they are in its route), a tcp service's does. One
// generation must render each exactly as the pure per-proxy function does.
func TestInboundPartsSharedOnlyForSameInputs(t *testing.T) {
	// Two services (api http, db tcp) of four sidecars each: v1, v2, v1b
	// (same inputs as v1) and v1-9090 (another app port).
	var services, proxies strings.Builder
	for i, svc := range []struct{ name, protocol string }{{"api", "http"}, {"db", "tcp"}} {
		fmt.Fprintf(&services, "  - name: %s\n    protocol: %s\n    endpoints:\n", svc.name, svc.protocol)
		for j, v := range []struct{ id, version, appPort string }{{"-v1", "v1", "8080"}, {"-v2", "v2", "8080"}, {"-v1b", "v1", "8080"}, {"-v1-9090", "v1", "9090"}} {
			addr := fmt.Sprintf("10.0.%d.%d", i, j+1)
			fmt.Fprintf(&services, "      - {address: %s, port: 15001, labels: {app: %s, version: %s}}\n", addr, svc.name, v.version)
			fmt.Fprintf(&proxies, "  - {id: %s%s, service: %s, address: %s, publicPort: 15001, appPort: %s}\n", svc.name, v.id, svc.name, addr, v.appPort)
		}
	}
	catalog := "services:\n" + services.String() + "proxies:\n" + proxies.String() + `policy:
  rootNamespace: meshd-system
  defaultMode: STRICT
  authorizations:
    - name: v1-only
      namespace: default
      selector: {version: v1}
      action: ALLOW
      rules:
        - to: [{methods: [GET], ports: [8080]}]
        - to: [{ports: [8080]}]
`
	path := filepath.Join(t.TempDir(), "catalog.yaml")
	if err := os.WriteFile(path, []byte(catalog), 0o600); err != nil {
		t.Fatal(err)
	}
	in := loadCase(t, path)
	cat, err := mesh.NewCatalog(in.Services, in.Proxies)
	if err != nil {
		t.Fatal(err)
	}
	opts := Options{TrustDomain: "cluster.local"}
	gen := NewTranslator(opts).Generation(cat, in.Policy)
	chains := map[string]*listenerv3.FilterChain{}
	routes := map[string]*Resource{}
	for _, svc := range []string{"api", "db"} {
		for _, sfx := range []string{"-v1", "-v2", "-v1b", "-v1-9090"} {
			id := svc + sfx
			got, err := gen.Proxy(id)
			if err != nil {
				t.Fatal(err)
			}
			pure, err := NewTranslator(opts).Generation(cat, in.Policy).Proxy(id)
			if err != nil {
				t.Fatal(err)
			}
			if got.Listeners[0].Hash != pure.Listeners[0].Hash {
				t.Errorf("%s: inbound listener differs from the one rendered on its own", id)
			}
			if len(got.Routes) > 0 {
				if got.Routes[0].Hash != pure.Routes[0].Hash {
					t.Errorf("%s: inbound route differs from the one rendered on its own", id)
				}
				routes[id] = got.Routes[0]
			}
			chains[id] = got.Listeners[0].Message.(*listenerv3.Listener).FilterChains[0]
		}
	}
	chainBytes := func(id string) string {
		b, err := deterministic.Marshal(chains[id])
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	// HTTP: one chain for every sidecar; the route says the policy.
	for _, id := range []string{"api-v2", "api-v1b", "api-v1-9090"} {
		if chains[id] != chains["api-v1"] {
			t.Errorf("%s does not share api-v1's filter chain; an HTTP listener must not depend on policies", id)
		}
	}
	if routes["api-v1"].Hash == routes["api-v2"].Hash || routes["api-v1"].Hash == routes["api-v1-9090"].Hash {
		t.Fatal("the test needs the policy and the port to change the route")
	}
	if routes["api-v1"] != routes["api-v1b"] {
		t.Error("sidecars with the same policies do not share their inbound route")
	}
	// tcp: the chain carries the network RBAC.
	if chainBytes("db-v1") == chainBytes("db-v2") || chainBytes("db-v1") == chainBytes("db-v1-9090") {
		t.Fatal("the test needs the policy and the port to change the tcp chain")
	}
	if chains["db-v1"] != chains["db-v1b"] {
		t.Error("tcp sidecars with the same inputs do not share their filter chain")
	}
}

// The contract ServiceChangeSince makes with the publisher: when it says
// only a service's endpoints changed (ServiceEndpoints), every caller's
// render differs from the previous one in that service's
// ClusterLoadAssignment alone, so the publisher may replace just that
// (snapshot: patchEndpoints). Anything else must be ServiceShape. The
// callers here are an Envoy sidecar and a proxyless gRPC client, whose
// cluster turns plaintext when every endpoint of the service is DISABLE.
func TestServiceChangeEndpointsOnlyChangesEndpoints(t *testing.T) {
	base := func(labels []string, extra ...mesh.Endpoint) []mesh.Service {
		g := mesh.Service{Name: "g", Namespace: "b", Protocol: mesh.ProtocolGRPC}
		for i, l := range labels {
			g.Endpoints = append(g.Endpoints, mesh.Endpoint{Address: fmt.Sprintf("10.0.0.%d", i+1), Port: 15001, Labels: map[string]string{"v": l}})
		}
		g.Endpoints = append(g.Endpoints, extra...)
		return []mesh.Service{g, {Name: "web", Namespace: "b", Protocol: mesh.ProtocolHTTP}, {Name: "cli", Namespace: "b", Protocol: mesh.ProtocolGRPC}}
	}
	proxies := []mesh.Proxy{
		{ID: "web", Service: "web", Namespace: "b", Address: "10.1.0.1", Upstreams: []mesh.Upstream{{Service: "g", LocalPort: 9000}}},
		{ID: "cli", Service: "cli", Namespace: "b", Flavor: mesh.FlavorGRPC, Upstreams: []mesh.Upstream{{Service: "g"}}},
	}
	ps := &mesh.PolicySet{RootNamespace: mesh.DefaultRootNamespace, Peer: []mesh.PeerAuthentication{
		{Name: "plain", Namespace: "b", Selector: map[string]string{"v": "1"}, Mode: mesh.MTLSDisable}}}
	g := mesh.ServiceKey{Namespace: "b", Name: "g"}
	for _, tc := range []struct {
		name     string
		from, to []mesh.Service
		want     ServiceChange
	}{
		{"nothing", base([]string{"0", "1"}), base([]string{"0", "1"}), ServiceUnchanged},
		{"endpoint added", base([]string{"0", "1"}), base([]string{"0", "1"}, mesh.Endpoint{Address: "10.0.0.9", Port: 15001}), ServiceEndpoints},
		{"endpoint unhealthy", base([]string{"0", "1"}), base([]string{"0"}, mesh.Endpoint{Address: "10.0.0.2", Port: 15001, Labels: map[string]string{"v": "1"}, Health: mesh.HealthUnhealthy}), ServiceEndpoints},
		{"one endpoint turns plaintext", base([]string{"0", "0"}), base([]string{"0", "1"}), ServiceEndpoints},
		{"every endpoint plaintext", base([]string{"0", "1"}), base([]string{"1", "1"}), ServiceShape},
		{"back to mTLS", base([]string{"1", "1"}), base([]string{"0", "1"}), ServiceShape},
		{"identity", base([]string{"0"}), func() []mesh.Service { s := base([]string{"0"}); s[0].ServiceAccount = "other"; return s }(), ServiceShape},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := NewTranslator(Options{TrustDomain: "cluster.local"})
			from, err := mesh.NewCatalog(tc.from, proxies)
			if err != nil {
				t.Fatal(err)
			}
			to, err := mesh.NewCatalog(tc.to, proxies)
			if err != nil {
				t.Fatal(err)
			}
			g1 := tr.Generation(from, ps)
			g2 := tr.Generation(to, ps)
			if got := g2.ServiceChangeSince(g1, g); got != tc.want {
				t.Fatalf("ServiceChangeSince = %d, want %d", got, tc.want)
			}
			if tc.want != ServiceEndpoints {
				return
			}
			cla, err := g2.Endpoints(g)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range proxies {
				a, err := g1.Proxy(p.ID)
				if err != nil {
					t.Fatal(err)
				}
				b, err := g2.Proxy(p.ID)
				if err != nil {
					t.Fatal(err)
				}
				for typ, before := range a.ByType() {
					after := b.ByType()[typ]
					if len(after) != len(before) {
						t.Fatalf("%s %s: %d resources, before %d", p.ID, typ, len(after), len(before))
					}
					for i := range after {
						switch {
						case after[i].Name == cla.Name && typ == resourcev3.EndpointType:
							if after[i].Hash != cla.Hash || after[i].Hash == before[i].Hash {
								t.Errorf("%s: the endpoint set is not the new one Endpoints gives", p.ID)
							}
						case after[i].Hash != before[i].Hash:
							t.Errorf("%s %s %s changed, though only endpoints did", p.ID, typ, after[i].Name)
						}
					}
				}
			}
		})
	}
}

// A STRICT and a PERMISSIVE workload's inbound listeners differ only in the
// default filter chain: Envoy updates such a change in place (only the
// replaced chain's connections drain), and replaces the whole listener when
// any other field differs. That is also why the listener filter timeout is
// Envoy's default (15 s, then close) in both modes (docs/policy.md, "PERMISSIVE
// and clients that say little or nothing first"): continuing after it could
// not be set for PERMISSIVE alone.
func TestStrictAndPermissiveListenersDifferOnlyInTheDefaultChain(t *testing.T) {
	for _, proxy := range []string{"db-1", "api-1"} { // tcp and http
		strict, _ := rendered(t, authzCase, proxy, mesh.MTLSStrict)
		permissive, _ := rendered(t, authzCase, proxy, mesh.MTLSPermissive)
		if proto.Equal(strict.DefaultFilterChain, permissive.DefaultFilterChain) {
			t.Fatalf("%s: STRICT and PERMISSIVE have the same default chain %s", proxy, strict.DefaultFilterChain.GetName())
		}
		s, p := proto.Clone(strict).(*listenerv3.Listener), proto.Clone(permissive).(*listenerv3.Listener)
		s.DefaultFilterChain, p.DefaultFilterChain = nil, nil
		if !proto.Equal(s, p) {
			t.Errorf("%s: STRICT and PERMISSIVE listeners differ beyond the default chain:\nSTRICT %v\nPERMISSIVE %v", proxy, s, p)
		}
		if len(p.ListenerFilters) != 1 || p.ListenerFilters[0].GetName() != listenerTLSInspector ||
			p.ListenerFiltersTimeout != nil || p.ContinueOnListenerFiltersTimeout {
			t.Errorf("%s: PERMISSIVE listener filters %v, timeout %v, continue %v; docs/policy.md says: the TLS inspector alone, Envoy's default timeout, close at the timeout",
				proxy, p.ListenerFilters, p.ListenerFiltersTimeout, p.ContinueOnListenerFiltersTimeout)
		}
	}
}
