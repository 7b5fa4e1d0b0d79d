package soak

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/policy"
)

// TestModelAgreesWithMeshd renders the states of a long schedule as the
// policy file, reads it with meshd's own policy package, and checks that
// the model selects the same policies and the same mTLS mode for every
// real workload as meshd does — the expectations are only as good as this
// agreement.
func TestModelAgreesWithMeshd(t *testing.T) {
	p := NewPlanner(7, PlanOptions{Kinds: AllKinds, Callers: 3, FleetServices: 10, FleetProxies: 20})
	seen := map[mesh.MTLSMode]int{}
	policies := 0
	for range 400 {
		st := p.Next()
		s := st.After
		set := meshdSet(t, &s)
		for _, sv := range Servers {
			for r := range sv.Replicas {
				w := workload(&s, sv.Name, r)
				if got, want := set.MTLSModeFor(w), s.Mode(sv.Name, r); got != want {
					t.Fatalf("step %d (%s), %s replica %d: meshd's mode %s, the model's %s\n%s", st.N, st.Desc, sv.Name, r, got, want, s.PolicyYAML())
				}
				seen[s.Mode(sv.Name, r)]++
				var got, want []string
				for _, a := range set.AuthorizationsFor(w) {
					got = append(got, a.Name)
				}
				for _, a := range s.Applying(sv.Name, r) {
					want = append(want, a.Name)
				}
				slices.Sort(got)
				slices.Sort(want)
				if !slices.Equal(got, want) {
					t.Fatalf("step %d, %s replica %d: meshd applies %v, the model %v", st.N, sv.Name, r, got, want)
				}
				policies += len(want)
			}
		}
	}
	for _, m := range []mesh.MTLSMode{mesh.MTLSStrict, mesh.MTLSPermissive, mesh.MTLSDisable} {
		if seen[m] == 0 {
			t.Errorf("no workload was ever %s: the schedule does not exercise it", m)
		}
	}
	if policies == 0 {
		t.Error("no policy ever applied")
	}
}

// meshdSet reads the state's policy file the way meshd does.
func meshdSet(t *testing.T, s *State) *mesh.PolicySet {
	t.Helper()
	dir := t.TempDir()
	if y := s.PolicyYAML(); y != nil {
		if err := os.WriteFile(filepath.Join(dir, "soak.yaml"), y, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ps, err := policy.LoadDir(dir, 1<<20)
	if err != nil {
		t.Fatalf("meshd refuses the soak's policy file: %v\n%s", err, s.PolicyYAML())
	}
	return ps.Set(RootNamespace, DefaultMode)
}

// workload is the workload meshd sees for a replica: the labels of its
// endpoint, none while the endpoint is out of the catalog.
func workload(s *State, server string, replica int) mesh.Workload {
	w := mesh.Workload{Service: server, Namespace: Namespace, Port: 8080}
	if s.labeled(server, replica) {
		w.Labels = map[string]string{"app": server}
	}
	return w
}

func TestAllowed(t *testing.T) {
	s := InitialState()
	s.Authz = []Authz{
		{Name: "soak-1", Deny: true, Target: "api", Callers: []string{"web"}},
		{Name: "soak-2", Target: "greeter", Callers: []string{"ops"}},
		{Name: "soak-3", Deny: true, Callers: []string{"batch"}}, // mesh-wide
	}
	cases := []struct {
		caller, server string
		replica        int
		mtls           bool
		want           bool
	}{
		{"web", "api", 0, true, false},     // DENY names it
		{"web", "api", 0, false, true},     // plaintext: no principal to match
		{"ops", "api", 0, true, true},      // no policy against it
		{"ops", "greeter", 0, true, true},  // ALLOW names it
		{"web", "greeter", 0, true, false}, // ALLOW does not
		{"ops", "greeter", 0, false, false},
		{"batch", "db", 0, true, false},  // mesh-wide DENY
		{"batch", "db", 0, false, true},  // … which needs a principal
		{"batch", "api", 1, true, false}, // mesh-wide applies to every replica
	}
	for _, c := range cases {
		if got := s.Allowed(c.caller, c.server, c.replica, c.mtls); got != c.want {
			t.Errorf("Allowed(%s → %s-%d, mtls %v) = %v, want %v", c.caller, c.server, c.replica, c.mtls, got, c.want)
		}
	}
	s.ReplicaIn = false
	if !s.Allowed("web", "api", 1, true) {
		t.Error("the unlabeled replica is still selected by api's DENY")
	}
}

func TestVerdictsOver(t *testing.T) {
	before := InitialState()
	after := before.clone()
	after.Authz = []Authz{{Name: "soak-1", Deny: true, Target: "api", Callers: []string{"web"}}}
	if v := VerdictsOver([]State{before}, "web", "api"); v != MayAllow {
		t.Errorf("before: %s", v)
	}
	if v := VerdictsOver([]State{after}, "web", "api"); v != MayDeny {
		t.Errorf("after: %s", v)
	}
	if v := VerdictsOver([]State{before, after}, "web", "api"); v != MayAllow|MayDeny {
		t.Errorf("while changing: %s", v)
	}
	if v := VerdictsOver([]State{before, after}, "ops", "api"); v != MayAllow {
		t.Errorf("a caller the change does not concern: %s", v)
	}
	// A DENY that stays, while the server moves to DISABLE: in plaintext
	// the principal is unknown, so the call may pass during the
	// migration, and passes once settled.
	dis := after.clone()
	dis.WorkloadModes["api"] = mesh.MTLSDisable
	if v := VerdictsOver([]State{after, dis}, "web", "api"); v != MayAllow|MayDeny {
		t.Errorf("DENY during a move to DISABLE: %s", v)
	}
	if v := VerdictsOver([]State{dis}, "web", "api"); v != MayAllow {
		t.Errorf("DENY under DISABLE: %s", v)
	}
	// Taking the replica out while a DENY stays: the replica without its
	// labels must not be reached, so the call stays denied throughout.
	out := after.clone()
	out.ReplicaIn = false
	if v := VerdictsOver([]State{after, out}, "web", "api"); v != MayDeny {
		t.Errorf("replica out under a DENY: %s", v)
	}
}

func TestPolicyYAMLEmptyWithoutPolicies(t *testing.T) {
	s := InitialState()
	if y := s.PolicyYAML(); y != nil {
		t.Errorf("no policies, yet a file:\n%s", y)
	}
	s.MeshMode = mesh.MTLSStrict
	if set := meshdSet(t, &s); len(set.Peer) != 1 || set.Peer[0].Name != "soak-mesh" {
		t.Errorf("mesh mode STRICT gives %+v", set.Peer)
	}
}
