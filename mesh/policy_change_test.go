package mesh

import "testing"

func TestAuthorizationChange(t *testing.T) {
	allowA := AuthorizationPolicy{Name: "allow", Namespace: "a", Action: ActionAllow, Rules: []Rule{{}}}
	denyB := AuthorizationPolicy{Name: "deny", Namespace: "b", Action: ActionDeny, Rules: []Rule{{}}}
	rootDeny := AuthorizationPolicy{Name: "deny", Namespace: DefaultRootNamespace, Action: ActionDeny, Rules: []Rule{{}}}
	set := func(authz ...AuthorizationPolicy) *PolicySet {
		return &PolicySet{RootNamespace: DefaultRootNamespace, Authorizations: authz}
	}
	changedA := allowA
	changedA.Rules = []Rule{{From: []Source{{Namespaces: []string{"b"}}}}}
	for _, tc := range []struct {
		name       string
		a, b       *PolicySet
		ns         []string
		everywhere bool
		ok         bool
	}{
		{"nothing", nil, set(), nil, false, true},
		{"the same", set(allowA, denyB), set(allowA, denyB), nil, false, true},
		{"reordered", set(allowA, denyB), set(denyB, allowA), nil, false, true},
		{"added", set(denyB), set(allowA, denyB), []string{"a"}, false, true},
		{"removed", set(allowA, denyB), set(allowA), []string{"b"}, false, true},
		{"changed", set(allowA, denyB), set(changedA, denyB), []string{"a"}, false, true},
		{"root namespace", set(allowA), set(allowA, rootDeny), []string{DefaultRootNamespace}, true, true},
		{"peer", set(allowA), &PolicySet{RootNamespace: DefaultRootNamespace, Authorizations: []AuthorizationPolicy{allowA},
			Peer: []PeerAuthentication{{Name: "p", Namespace: "a", Mode: MTLSStrict}}}, nil, false, false},
		{"default mode", set(), &PolicySet{RootNamespace: DefaultRootNamespace, DefaultMode: MTLSStrict}, nil, false, false},
		{"root namespace moved", set(), &PolicySet{RootNamespace: "elsewhere"}, nil, false, false},
		{"linkerd", set(), &PolicySet{RootNamespace: DefaultRootNamespace, Linkerd: &LinkerdPolicy{}}, nil, false, false},
		{"names not unique", set(allowA, allowA), set(allowA), nil, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns, everywhere, ok := AuthorizationChange(tc.a, tc.b)
			if ok != tc.ok || everywhere != tc.everywhere || len(ns) != len(tc.ns) {
				t.Fatalf("got %v, %v, %v; want %v, %v, %v", ns, everywhere, ok, tc.ns, tc.everywhere, tc.ok)
			}
			for _, n := range tc.ns {
				if !ns[n] {
					t.Fatalf("namespaces %v lack %q", ns, n)
				}
			}
		})
	}
}
