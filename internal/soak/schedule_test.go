package soak

import (
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/meshd/meshd/mesh"
)

func planOptions() PlanOptions {
	return PlanOptions{Kinds: AllKinds, Callers: 2, FleetServices: 8, FleetProxies: 16,
		MinDwell: 100 * time.Millisecond, MaxDwell: time.Second}
}

func TestScheduleIsDeterminedBySeed(t *testing.T) {
	a, b, c := NewPlanner(42, planOptions()), NewPlanner(42, planOptions()), NewPlanner(43, planOptions())
	differs := false
	for range 200 {
		sa, sb, sc := a.Next(), b.Next(), c.Next()
		if !reflect.DeepEqual(sa, sb) {
			t.Fatalf("same seed, different step %d: %+v vs %+v", sa.N, sa, sb)
		}
		if sa.Desc != sc.Desc {
			differs = true
		}
	}
	if !differs {
		t.Error("seeds 42 and 43 gave the same 200 steps")
	}
}

func TestScheduleStartsWithEveryKind(t *testing.T) {
	for seed := range uint64(20) {
		p := NewPlanner(seed, planOptions())
		var got []Kind
		for range len(AllKinds) {
			// (authz-remove with nothing to remove adds instead, so
			// neither of the two is checked.)
			got = append(got, p.Next().Kind)
		}
		for _, k := range AllKinds {
			if k == KindAuthzRemove || k == KindAuthzAdd {
				continue
			}
			if !slices.Contains(got, k) {
				t.Errorf("seed %d: first %d steps %v lack %s", seed, len(AllKinds), got, k)
			}
		}
	}
}

// TestScheduleSteps checks each step's invariants over a long schedule:
// states chain, policies stay within bounds and are named uniquely, bursts
// are made of input edits, dwell within bounds, storms name distinct
// proxies of the fleet.
func TestScheduleSteps(t *testing.T) {
	o := planOptions()
	p := NewPlanner(1, o)
	prev := InitialState()
	kinds := map[Kind]int{}
	names := map[string]bool{}
	for range 1000 {
		st := p.Next()
		kinds[st.Kind]++
		if !reflect.DeepEqual(st.Before, prev) {
			t.Fatalf("step %d does not start from the previous step's state", st.N)
		}
		prev = st.After
		if st.Dwell < o.MinDwell || st.Dwell > o.MaxDwell {
			t.Errorf("step %d dwell %s outside [%s, %s]", st.N, st.Dwell, o.MinDwell, o.MaxDwell)
		}
		if len(st.After.Authz) > 6 {
			t.Errorf("step %d: %d policies in force", st.N, len(st.After.Authz))
		}
		for _, a := range st.After.Authz {
			if len(a.Callers) == 0 {
				t.Errorf("step %d: policy %s names no caller", st.N, a.Name)
			}
		}
		if st.Kind == KindAuthzAdd {
			a := st.After.Authz
			for _, x := range a {
				if !slices.ContainsFunc(st.Before.Authz, func(y Authz) bool { return y.Name == x.Name }) {
					if names[x.Name] {
						t.Errorf("step %d: policy name %s used again", st.N, x.Name)
					}
					names[x.Name] = true
				}
			}
		}
		switch st.Kind {
		case KindBurst:
			if len(st.Parts) < 2 || len(st.Gaps) != len(st.Parts)-1 {
				t.Errorf("burst step %d: %d parts, %d gaps", st.N, len(st.Parts), len(st.Gaps))
			}
			for _, part := range st.Parts {
				if !slices.Contains(burstable, part.Kind) {
					t.Errorf("burst step %d has a %s part", st.N, part.Kind)
				}
			}
			if s := st.States(); !reflect.DeepEqual(s[len(s)-1], st.After) {
				t.Errorf("burst step %d: last part does not end at After", st.N)
			}
		case KindReconnectStorm:
			if len(st.Storm) == 0 || len(st.Storm) > o.FleetProxies || !slices.IsSorted(st.Storm) || len(slices.Compact(slices.Clone(st.Storm))) != len(st.Storm) {
				t.Errorf("storm step %d: %v", st.N, st.Storm)
			}
		case KindEndpointChurn:
			if st.Fleet.Service < 0 || st.Fleet.Service >= o.FleetServices {
				t.Errorf("churn step %d: service %d", st.N, st.Fleet.Service)
			}
		}
	}
	for _, k := range AllKinds {
		if kinds[k] == 0 {
			t.Errorf("1000 steps and no %s", k)
		}
	}
}

func TestParseKinds(t *testing.T) {
	if k, err := ParseKinds("all"); err != nil || len(k) != len(AllKinds) {
		t.Errorf("all: %v %v", k, err)
	}
	if k, err := ParseKinds("mesh-mode, rotate-root,mesh-mode"); err != nil || !slices.Equal(k, []Kind{KindMeshMode, KindRotateRoot}) {
		t.Errorf("list: %v %v", k, err)
	}
	if _, err := ParseKinds("mesh-mode,rotate"); err == nil {
		t.Error("unknown kind accepted")
	}
}

func TestScheduleKeepsToModes(t *testing.T) {
	o := planOptions()
	o.Modes = []mesh.MTLSMode{mesh.MTLSStrict, mesh.MTLSPermissive}
	p := NewPlanner(9, o)
	for range 500 {
		st := p.Next()
		for _, s := range st.States() {
			for sv, m := range s.WorkloadModes {
				if m == mesh.MTLSDisable {
					t.Fatalf("step %d: %s DISABLE, outside %v", st.N, sv, o.Modes)
				}
			}
			if s.MeshMode == mesh.MTLSDisable {
				t.Fatalf("step %d: mesh DISABLE, outside %v", st.N, o.Modes)
			}
		}
	}
	if _, err := ParseModes("strict, permissive"); err != nil {
		t.Error(err)
	}
	if _, err := ParseModes("STRICT,OFF"); err == nil {
		t.Error("OFF accepted")
	}
}
