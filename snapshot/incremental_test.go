package snapshot

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"

	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/meshd/meshd/mesh"
)

// randomMesh is a small mesh with every shape the publisher's index must
// follow: Envoy sidecars and proxyless gRPC proxies, upstreams, labels,
// a client-only sidecar.
type randomMesh struct {
	rnd  *rand.Rand
	svcs []mesh.Service
	pxs  []mesh.Proxy
	next int
}

func newRandomMesh(seed uint64) *randomMesh {
	m := &randomMesh{rnd: rand.New(rand.NewPCG(seed, 14))}
	for i := range 8 {
		m.addService(i%4 == 0)
	}
	for range 16 {
		m.addProxy()
	}
	return m
}

func (m *randomMesh) addService(grpc bool) {
	m.next++
	proto := []mesh.Protocol{mesh.ProtocolHTTP, mesh.ProtocolTCP, mesh.ProtocolHTTP2}[m.rnd.IntN(3)]
	if grpc {
		proto = mesh.ProtocolGRPC
	}
	s := mesh.Service{Name: fmt.Sprintf("s%d", m.next), Namespace: []string{"a", "b"}[m.rnd.IntN(2)], Protocol: proto}
	if m.rnd.IntN(2) == 0 {
		// A virtual address: transparent sidecars capture it.
		s.Address, s.Port = fmt.Sprintf("10.96.0.%d", m.next%250+1), 80
	}
	for e := range 1 + m.rnd.IntN(3) {
		s.Endpoints = append(s.Endpoints, mesh.Endpoint{Address: fmt.Sprintf("10.%d.0.%d", m.next, e+1), Port: 15001,
			Labels: map[string]string{"v": fmt.Sprint(m.rnd.IntN(2))}})
	}
	m.svcs = append(m.svcs, s)
}

func (m *randomMesh) addProxy() {
	m.next++
	s := &m.svcs[m.rnd.IntN(len(m.svcs))]
	p := mesh.Proxy{ID: fmt.Sprintf("p%d", m.next), Service: s.Name, Namespace: s.Namespace}
	grpc := s.Protocol == mesh.ProtocolGRPC && m.rnd.IntN(2) == 0
	if grpc {
		p.Flavor = mesh.FlavorGRPC
	}
	var free []mesh.Endpoint
	for _, e := range s.Endpoints {
		if !slices.ContainsFunc(m.pxs, func(q mesh.Proxy) bool { return q.Address == e.Address && q.PublicPort == e.Port }) {
			free = append(free, e)
		}
	}
	if len(free) > 0 && m.rnd.IntN(4) != 0 {
		// Serving one of the service's endpoints.
		e := free[m.rnd.IntN(len(free))]
		p.Address, p.PublicPort = e.Address, e.Port
		if !grpc {
			p.AppPort = 8080
		}
	} else if !grpc {
		p.Address = fmt.Sprintf("10.200.0.%d", m.next%250+1)
	}
	m.pxs = append(m.pxs, p)
	m.pickUpstreams(len(m.pxs) - 1)
}

func (m *randomMesh) pickUpstreams(i int) {
	p := &m.pxs[i]
	p.Upstreams, p.UpstreamNamespaces, p.Mode, p.CapturePort, p.Passthrough = nil, nil, "", 0, ""
	if m.rnd.IntN(3) == 0 {
		// A visible service set: whole namespaces, through a capture
		// listener for a sidecar.
		p.UpstreamNamespaces = [][]string{{"a"}, {"b"}, {mesh.AllNamespaces}}[m.rnd.IntN(3)]
		if p.Flavor != mesh.FlavorGRPC {
			p.Mode, p.CapturePort, p.Passthrough = mesh.ModeTransparent, 15006, mesh.PassthroughAllow
		}
	}
	for j, s := range m.svcs {
		if m.rnd.IntN(3) != 0 || (s.Name == p.Service && s.Namespace == p.Namespace) {
			continue
		}
		if p.Flavor == mesh.FlavorGRPC && s.Protocol != mesh.ProtocolGRPC {
			continue
		}
		u := mesh.Upstream{Service: s.Name, Namespace: s.Namespace}
		if p.Flavor != mesh.FlavorGRPC {
			u.LocalPort = uint32(20000 + j)
		}
		p.Upstreams = append(p.Upstreams, u)
	}
}

// mutate makes one random change and says what it was.
func (m *randomMesh) mutate() string {
	s := &m.svcs[m.rnd.IntN(len(m.svcs))]
	switch m.rnd.IntN(10) {
	case 9:
		// A service nobody names removed (proxies that see whole
		// namespaces lose it).
		for i := range m.svcs {
			k := m.svcs[i].Key()
			named := slices.ContainsFunc(m.pxs, func(p mesh.Proxy) bool {
				return p.ServiceKey() == k || slices.ContainsFunc(p.Upstreams, func(u mesh.Upstream) bool { return u.Key() == k })
			})
			if !named {
				m.svcs = slices.Delete(slices.Clone(m.svcs), i, i+1)
				return "service " + k.String() + " removed"
			}
		}
		return "nothing"
	case 0, 1:
		// An endpoint added (not served by a proxy: its mode is the
		// namespace's).
		m.next++
		s.Endpoints = append(slices.Clone(s.Endpoints), mesh.Endpoint{Address: fmt.Sprintf("10.250.%d.1", m.next%250), Port: 15001})
		return "endpoint added to " + s.Name
	case 2:
		if len(s.Endpoints) > 1 {
			s.Endpoints = slices.Clone(s.Endpoints[1:])
			return "endpoint removed from " + s.Name
		}
		return "nothing"
	case 3:
		if len(s.Endpoints) > 0 {
			s.Endpoints = slices.Clone(s.Endpoints)
			e := &s.Endpoints[m.rnd.IntN(len(s.Endpoints))]
			e.Labels = map[string]string{"v": fmt.Sprint(m.rnd.IntN(2))}
			e.Health = []mesh.Health{"", mesh.HealthUnhealthy}[m.rnd.IntN(2)]
			return "endpoint of " + s.Name + " relabelled"
		}
		return "nothing"
	case 4:
		m.addProxy()
		return "proxy added"
	case 5:
		i := m.rnd.IntN(len(m.pxs))
		id := m.pxs[i].ID
		m.pxs = slices.Delete(slices.Clone(m.pxs), i, i+1)
		return "proxy " + id + " removed"
	case 6:
		i := m.rnd.IntN(len(m.pxs))
		m.pxs = slices.Clone(m.pxs)
		m.pickUpstreams(i)
		return "proxy " + m.pxs[i].ID + " calls others"
	case 7:
		m.addService(m.rnd.IntN(4) == 0)
		return "service added"
	default:
		if s.Protocol != mesh.ProtocolGRPC {
			s.ServiceAccount = fmt.Sprintf("sa-%d", m.rnd.IntN(3))
			return "service " + s.Name + " runs as another identity"
		}
		return "nothing"
	}
}

func (m *randomMesh) catalog(t *testing.T) *mesh.Catalog {
	t.Helper()
	cat, err := mesh.NewCatalog(m.svcs, m.pxs)
	if err != nil {
		t.Fatalf("generated catalog: %v", err)
	}
	return cat
}

func (m *randomMesh) policy() *mesh.PolicySet {
	ps := &mesh.PolicySet{RootNamespace: mesh.DefaultRootNamespace}
	switch m.rnd.IntN(4) {
	case 0:
		ps.Peer = append(ps.Peer, mesh.PeerAuthentication{Name: "a", Namespace: "a", Mode: mesh.MTLSDisable})
	case 1:
		// Relabelled endpoints move in and out of it: a proxyless
		// caller's cluster turns plaintext when all of a service's
		// endpoints are DISABLE.
		ps.Peer = append(ps.Peer, mesh.PeerAuthentication{Name: "b", Namespace: "b", Mode: mesh.MTLSDisable,
			Selector: map[string]string{"v": "1"}})
	case 2:
		ps.Authorizations = append(ps.Authorizations, mesh.AuthorizationPolicy{Name: "deny", Namespace: "a",
			Action: mesh.ActionDeny, Rules: []mesh.Rule{{From: []mesh.Source{{Principals: []string{"cluster.local/ns/b/sa/x"}}}}}})
	}
	return ps
}

// withAuthorizations is ps with its authorization policies replaced by a
// random few (ALLOW and DENY, by namespace, selector or service, some in
// the root namespace): a change of authorizations alone, which visits only
// the namespaces it concerns.
func (m *randomMesh) withAuthorizations(ps *mesh.PolicySet) *mesh.PolicySet {
	next := *ps
	next.Authorizations = nil
	for i := range m.rnd.IntN(4) {
		a := mesh.AuthorizationPolicy{Name: fmt.Sprintf("authz-%d", i),
			Namespace: []string{"a", "b", mesh.DefaultRootNamespace, "a"}[m.rnd.IntN(4)],
			Action:    []mesh.AuthzAction{mesh.ActionAllow, mesh.ActionDeny}[m.rnd.IntN(2)],
			Rules:     []mesh.Rule{{From: []mesh.Source{{Namespaces: []string{[]string{"a", "b"}[m.rnd.IntN(2)]}}}}}}
		switch m.rnd.IntN(3) {
		case 0:
			a.Selector = map[string]string{"v": fmt.Sprint(m.rnd.IntN(2))}
		case 1:
			if s := m.svcs[m.rnd.IntN(len(m.svcs))]; a.Namespace != mesh.DefaultRootNamespace {
				a.Service, a.Namespace = s.Name, s.Namespace
			}
		}
		next.Authorizations = append(next.Authorizations, a)
	}
	return &next
}

// A publisher that follows a sequence of changes, visiting only what each
// concerns, serves exactly what a new publisher serves for the same inputs
// when it renders everything: same types, same versions, same resources.
func TestIncrementalPublishEqualsFullPublish(t *testing.T) {
	for seed := range uint64(16) {
		m := newRandomMesh(seed)
		pub, cache := newTestPublisher(&fakeSecrets{})
		ps := m.policy()
		pub.Update(Update{Catalog: m.catalog(t), Policy: ps})
		if _, err := pub.Publish(); err != nil {
			t.Fatal(err)
		}
		for step := range 40 {
			what := m.mutate()
			u := Update{Catalog: m.catalog(t)}
			switch {
			case step%10 == 9:
				ps = m.policy()
				u.Policy = ps
				what += ", policy replaced"
			case step%3 == 1:
				ps = m.withAuthorizations(ps)
				u.Policy = ps
				what += ", authorizations replaced"
			}
			pub.Update(u)
			if _, err := pub.Publish(); err != nil {
				t.Fatalf("seed %d step %d (%s): %v", seed, step, what, err)
			}
			fresh, freshCache := newTestPublisher(&fakeSecrets{})
			fresh.Update(Update{Catalog: m.catalog(t), Policy: ps})
			if _, err := fresh.Publish(); err != nil {
				t.Fatal(err)
			}
			for _, p := range m.pxs {
				got, _ := cache.GetSnapshot(p.ID)
				want, _ := freshCache.GetSnapshot(p.ID)
				if got == nil || want == nil {
					t.Fatalf("seed %d step %d (%s): %s has snapshot %v, a full publish %v", seed, step, what, p.ID, got != nil, want != nil)
				}
				for _, typ := range []string{resourcev3.ListenerType, resourcev3.ClusterType, resourcev3.RouteType, resourcev3.EndpointType, resourcev3.SecretType} {
					if g, w := got.GetVersion(typ), want.GetVersion(typ); g != w {
						t.Fatalf("seed %d step %d (%s): %s %s version %q, a full publish gives %q", seed, step, what, p.ID, shortType(typ), g, w)
					}
				}
			}
			// Every proxy's recorded fingerprint is that of the current
			// inputs, however it got there (rendered, patched, skipped).
			for _, px := range pub.current.Proxies() {
				st := pub.proxies[px.ID]
				structural, endpoints := pub.gen.Fingerprints(px)
				if st == nil || st.structural != structural || st.endpoints != endpoints {
					t.Fatalf("seed %d step %d (%s): %s's recorded fingerprint is not its inputs'", seed, step, what, px.ID)
				}
			}
			if n := len(pub.Status()); n != len(m.pxs) {
				t.Fatalf("seed %d step %d (%s): status lists %d proxies, the catalog has %d", seed, step, what, n, len(m.pxs))
			}
		}
	}
}

// sameService and sameProxy decide that a definition did not change, so
// its proxies are not looked at: they must see a change of every field.
// Reflection walks every field (a field added to the model later is
// covered, or this fails) and changes it alone.
func TestSameDefinitionsSeeEveryField(t *testing.T) {
	svc := mesh.Service{Name: "a", Namespace: "n", Protocol: mesh.ProtocolHTTP, ServiceAccount: "x", Address: "10.9.0.1", Port: 80,
		Endpoints: []mesh.Endpoint{{Address: "10.0.0.1", Port: 1, Labels: map[string]string{"k": "v"}, Health: mesh.HealthHealthy,
			Locality: mesh.Locality{Region: "r", Zone: "z", SubZone: "s"}, Weight: 1}}}
	px := mesh.Proxy{ID: "p", Flavor: mesh.FlavorEnvoy, Service: "a", Namespace: "n", Address: "10.0.0.1", PublicPort: 1, AppPort: 2,
		Upstreams: []mesh.Upstream{{Service: "b", Namespace: "n", LocalPort: 3}}, SDS: mesh.SDSMeshd,
		Mode: mesh.ModeTransparent, CapturePort: 4, Passthrough: mesh.PassthroughAllow, UpstreamNamespaces: []string{"n"},
		Listeners: []mesh.GatewayListener{{Port: 5, TLS: mesh.GatewayTLS{CertificateFile: "c", KeyFile: "k", SDSSecret: "s", SDSSocket: "o"},
			Routes: []mesh.GatewayRoute{{Host: "h", PathPrefix: "/", Service: "b", Namespace: "n"}}}}}
	check := func(name string, orig any, same func(a, b any) bool) {
		n := 0
		eachLeaf(reflect.ValueOf(orig), func(path string, mutate func(reflect.Value)) {
			n++
			cp := deepCopy(orig)
			mutate(reflect.ValueOf(cp).Elem())
			if same(orig, cp) {
				t.Errorf("%s: a change of %s is not seen", name, path)
			}
		}, name)
		if !same(orig, deepCopy(orig)) {
			t.Errorf("%s: an identical copy is not the same", name)
		}
		if n < 5 {
			t.Fatalf("%s: only %d fields walked", name, n)
		}
	}
	check("Service", &svc, func(a, b any) bool { return sameService(a.(*mesh.Service), b.(*mesh.Service)) })
	check("Proxy", &px, func(a, b any) bool { return sameProxy(a.(*mesh.Proxy), b.(*mesh.Proxy)) })
}

// eachLeaf calls f for every leaf field (string, integer, map) reachable
// from v (a pointer to a struct), with a function that changes that leaf in
// a copy (given as the copy's struct value).
func eachLeaf(v reflect.Value, f func(path string, mutate func(reflect.Value)), path string) {
	var walk func(t reflect.Type, path string, get func(reflect.Value) reflect.Value)
	walk = func(t reflect.Type, path string, get func(reflect.Value) reflect.Value) {
		switch t.Kind() {
		case reflect.Struct:
			for i := range t.NumField() {
				walk(t.Field(i).Type, path+"."+t.Field(i).Name, func(r reflect.Value) reflect.Value { return get(r).Field(i) })
			}
		case reflect.Slice:
			walk(t.Elem(), path+"[0]", func(r reflect.Value) reflect.Value { return get(r).Index(0) })
		case reflect.String:
			f(path, func(r reflect.Value) { x := get(r); x.SetString(x.String() + "x") })
		case reflect.Uint32, reflect.Uint64, reflect.Int:
			f(path, func(r reflect.Value) {
				x := get(r)
				if x.CanUint() {
					x.SetUint(x.Uint() + 1)
				} else {
					x.SetInt(x.Int() + 1)
				}
			})
		case reflect.Map:
			f(path, func(r reflect.Value) {
				x := get(r)
				m := reflect.MakeMap(x.Type())
				m.SetMapIndex(reflect.ValueOf("added"), reflect.ValueOf("x"))
				x.Set(m)
			})
		default:
			panic(fmt.Sprintf("%s: a field of kind %s: teach the walk to change it", path, t.Kind()))
		}
	}
	walk(v.Type().Elem(), path, func(r reflect.Value) reflect.Value { return r })
}

// deepCopy copies a *mesh.Service or *mesh.Proxy with fresh slices and maps.
func deepCopy(v any) any {
	switch x := v.(type) {
	case *mesh.Service:
		c := *x
		c.Endpoints = slices.Clone(x.Endpoints)
		for i := range c.Endpoints {
			if l := c.Endpoints[i].Labels; l != nil {
				m := map[string]string{}
				for k, v := range l {
					m[k] = v
				}
				c.Endpoints[i].Labels = m
			}
		}
		return &c
	case *mesh.Proxy:
		c := *x
		c.Upstreams = slices.Clone(x.Upstreams)
		c.UpstreamNamespaces = slices.Clone(x.UpstreamNamespaces)
		c.Listeners = slices.Clone(x.Listeners)
		for i := range c.Listeners {
			c.Listeners[i].Routes = slices.Clone(x.Listeners[i].Routes)
		}
		return &c
	}
	panic(fmt.Sprintf("deepCopy of %T", v))
}

// A change of authorization policies alone visits the proxies of the
// namespaces they are in; one in the root namespace, or any other policy
// change, visits every proxy.
func TestAuthorizationChangeVisitsItsNamespaces(t *testing.T) {
	svcs, pxs := largeMesh(50, 2, 200, 3) // namespaces ns-0 … ns-9
	pub, _ := benchPublisher()
	publishMesh(t, pub, svcs, pxs)
	inNS := 0
	for _, p := range pxs {
		if p.Namespace == "ns-1" {
			inNS++
		}
	}
	allow := func(ns string) mesh.AuthorizationPolicy {
		return mesh.AuthorizationPolicy{Name: "allow", Namespace: ns, Action: mesh.ActionAllow,
			Rules: []mesh.Rule{{From: []mesh.Source{{Namespaces: []string{"ns-2"}}}}}}
	}
	base := &mesh.PolicySet{RootNamespace: mesh.DefaultRootNamespace}
	for _, step := range []struct {
		name  string
		ps    *mesh.PolicySet
		visit int
	}{
		{"an authorization in ns-1", &mesh.PolicySet{RootNamespace: mesh.DefaultRootNamespace, Authorizations: []mesh.AuthorizationPolicy{allow("ns-1")}}, inNS},
		{"the same set again (a new pointer)", &mesh.PolicySet{RootNamespace: mesh.DefaultRootNamespace, Authorizations: []mesh.AuthorizationPolicy{allow("ns-1")}}, 0},
		{"removed", base, inNS},
		{"one in the root namespace", &mesh.PolicySet{RootNamespace: mesh.DefaultRootNamespace, Authorizations: []mesh.AuthorizationPolicy{allow(mesh.DefaultRootNamespace)}}, len(pxs)},
		{"a PeerAuthentication", &mesh.PolicySet{RootNamespace: mesh.DefaultRootNamespace, Authorizations: []mesh.AuthorizationPolicy{allow(mesh.DefaultRootNamespace)},
			Peer: []mesh.PeerAuthentication{{Name: "p", Namespace: "ns-3", Mode: mesh.MTLSStrict}}}, len(pxs)},
	} {
		pub.Update(Update{Policy: step.ps})
		st, err := pub.Publish()
		if err != nil {
			t.Fatal(err)
		}
		if st.Visited != step.visit {
			t.Errorf("%s: visited %d proxies, want %d", step.name, st.Visited, step.visit)
		}
	}
}
