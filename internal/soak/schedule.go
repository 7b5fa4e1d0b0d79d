package soak

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/meshd/meshd/mesh"
)

// Kind is one kind of change the soak makes.
type Kind string

const (
	// KindMeshMode sets (or removes) the mesh-wide PeerAuthentication: an
	// mTLS migration of every workload without its own.
	KindMeshMode Kind = "mesh-mode"
	// KindWorkloadMode sets (or removes) one real server's workload
	// PeerAuthentication.
	KindWorkloadMode Kind = "workload-mode"
	// KindAuthzAdd adds an AuthorizationPolicy: a DENY for one caller, or
	// an ALLOW for some callers, on one server or mesh-wide.
	KindAuthzAdd Kind = "authz-add"
	// KindAuthzRemove removes one.
	KindAuthzRemove Kind = "authz-remove"
	// KindEndpointChurn adds, removes, or flaps the health of an endpoint
	// of a simulated fleet service.
	KindEndpointChurn Kind = "endpoint-churn"
	// KindReplicaToggle takes api's second replica out of the catalog, or
	// puts it back: catalog churn on a service real callers use.
	KindReplicaToggle Kind = "replica-toggle"
	// KindReconnectStorm drops the streams of part of the simulated fleet
	// at once; they reconnect and sync from nothing.
	KindReconnectStorm Kind = "reconnect-storm"
	// KindRotateIntermediate and KindRotateRoot start a CA rotation through
	// meshd's admin API (meshctl ca rotate-…), which reissues every leaf.
	KindRotateIntermediate Kind = "rotate-intermediate"
	KindRotateRoot         Kind = "rotate-root"
	// KindBurst makes several policy and catalog changes back to back,
	// tens of milliseconds apart, before anything settles.
	KindBurst Kind = "burst"
)

// AllKinds are every kind, in the order the documentation lists them.
var AllKinds = []Kind{KindMeshMode, KindWorkloadMode, KindAuthzAdd, KindAuthzRemove, KindEndpointChurn,
	KindReplicaToggle, KindReconnectStorm, KindRotateIntermediate, KindRotateRoot, KindBurst}

// weights make policy and catalog changes common and rotations and storms
// rarer (each rotation reissues every leaf of the mesh).
var weights = map[Kind]int{
	KindMeshMode: 2, KindWorkloadMode: 3, KindAuthzAdd: 3, KindAuthzRemove: 2, KindEndpointChurn: 3,
	KindReplicaToggle: 2, KindReconnectStorm: 1, KindRotateIntermediate: 1, KindRotateRoot: 1, KindBurst: 2,
}

// burstable kinds are input edits (policy file, catalog file) that can
// follow each other within a burst.
var burstable = []Kind{KindMeshMode, KindWorkloadMode, KindAuthzAdd, KindAuthzRemove, KindEndpointChurn, KindReplicaToggle}

// ParseKinds reads a comma-separated list of kinds ("all" for every one).
func ParseKinds(s string) ([]Kind, error) {
	if strings.TrimSpace(s) == "all" || strings.TrimSpace(s) == "" {
		return slices.Clone(AllKinds), nil
	}
	return parseList(s, AllKinds, strings.TrimSpace, "step kind")
}

// parseList reads a comma-separated list of values out of all (each item
// normalised by norm first), without repeats, in the order given.
func parseList[T ~string](s string, all []T, norm func(string) string, what string) ([]T, error) {
	var out []T
	for _, f := range strings.Split(s, ",") {
		v := T(norm(f))
		if v == "" {
			continue
		}
		if !slices.Contains(all, v) {
			names := make([]string, len(all))
			for i, a := range all {
				names[i] = string(a)
			}
			return nil, fmt.Errorf("unknown %s %q: use %s", what, strings.TrimSpace(f), strings.Join(names, ", "))
		}
		if !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no %s in %q", what, s)
	}
	return out, nil
}

// FleetChange is an edit of a simulated fleet service's endpoints.
type FleetChange struct {
	Service int    // index in the fleet's services
	Op      string // add, remove, unhealthy, healthy
}

// Step is one change of the schedule.
type Step struct {
	N    int // 1-based
	Kind Kind
	// Before and After are the mesh's policy state around the step (equal
	// for steps that do not change it).
	Before, After State
	// Parts of a burst, applied in order with Gaps between them.
	Parts []Step
	Gaps  []time.Duration
	Fleet FleetChange // endpoint-churn
	Storm []int       // reconnect-storm: indexes of the fleet proxies
	// Dwell is how long the soak lets callers run under the settled
	// result before the next step.
	Dwell time.Duration
	Desc  string
}

// States lists the states a step passes through: Before, each part's
// result, After.
func (s *Step) States() []State {
	out := []State{s.Before}
	for _, p := range s.Parts {
		out = append(out, p.After)
	}
	if len(s.Parts) == 0 {
		out = append(out, s.After)
	}
	return out
}

// PlanOptions shape a schedule.
type PlanOptions struct {
	Kinds         []Kind
	Callers       int // caller identities
	FleetServices int // services of the simulated fleet (endpoint churn)
	FleetProxies  int // proxies of the simulated fleet (storms)
	MinDwell      time.Duration
	MaxDwell      time.Duration
	// MaxPolicies bounds the AuthorizationPolicies in force at once.
	MaxPolicies int
	// Modes are the mTLS modes PeerAuthentications are set to (besides
	// removing them); nil: STRICT, PERMISSIVE and DISABLE.
	Modes []mesh.MTLSMode
}

// AllModes are the mTLS modes a schedule uses by default.
var AllModes = []mesh.MTLSMode{mesh.MTLSStrict, mesh.MTLSPermissive, mesh.MTLSDisable}

// ParseModes reads a comma-separated list of mTLS modes.
func ParseModes(s string) ([]mesh.MTLSMode, error) {
	return parseList(s, AllModes, func(f string) string { return strings.ToUpper(strings.TrimSpace(f)) }, "mTLS mode")
}

// Planner makes a randomized schedule that a seed fully determines: the
// same seed and options give the same steps, whatever happens at run time
// (a refused rotation changes nothing in it), so a failing run can be
// repeated. The first steps make every enabled kind once, in a random
// order, so that even a short run covers them all.
type Planner struct {
	rng            *rand.Rand
	o              PlanOptions
	state          State
	n              int
	first          []Kind
	fleetAdded     map[int]bool
	fleetUnhealthy map[int]bool
}

// NewPlanner starts a schedule from InitialState.
func NewPlanner(seed uint64, o PlanOptions) *Planner {
	if o.MaxPolicies <= 0 {
		o.MaxPolicies = 6
	}
	if o.MaxDwell < o.MinDwell {
		o.MaxDwell = o.MinDwell
	}
	if len(o.Modes) == 0 {
		o.Modes = AllModes
	}
	p := &Planner{rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), o: o, state: InitialState(),
		fleetAdded: map[int]bool{}, fleetUnhealthy: map[int]bool{}}
	p.first = slices.Clone(o.Kinds)
	p.rng.Shuffle(len(p.first), func(i, j int) { p.first[i], p.first[j] = p.first[j], p.first[i] })
	return p
}

// State is the state after the steps made so far.
func (p *Planner) State() State { return p.state }

// Next makes the next step.
func (p *Planner) Next() Step {
	p.n++
	var k Kind
	if len(p.first) > 0 {
		k, p.first = p.first[0], p.first[1:]
	} else {
		k = p.pick(p.o.Kinds)
	}
	var st Step
	if k == KindBurst {
		st = p.burst()
	} else {
		st = p.one(k)
	}
	st.N = p.n
	st.Dwell = p.o.MinDwell
	if d := p.o.MaxDwell - p.o.MinDwell; d > 0 {
		st.Dwell += time.Duration(p.rng.Int64N(int64(d)))
	}
	return st
}

func (p *Planner) pick(kinds []Kind) Kind {
	total := 0
	for _, k := range kinds {
		total += weights[k]
	}
	n := p.rng.IntN(total)
	for _, k := range kinds {
		if n < weights[k] {
			return k
		}
		n -= weights[k]
	}
	return kinds[len(kinds)-1]
}

func (p *Planner) burst() Step {
	var kinds []Kind
	for _, k := range burstable {
		if slices.Contains(p.o.Kinds, k) {
			kinds = append(kinds, k)
		}
	}
	if len(kinds) == 0 {
		kinds = []Kind{KindAuthzAdd, KindMeshMode}
	}
	st := Step{Kind: KindBurst, Before: p.state}
	n := 2 + p.rng.IntN(3)
	var descs []string
	for i := range n {
		part := p.one(p.pick(kinds))
		st.Parts = append(st.Parts, part)
		descs = append(descs, part.Desc)
		if i > 0 {
			st.Gaps = append(st.Gaps, time.Duration(20+p.rng.IntN(280))*time.Millisecond)
		}
	}
	st.After = p.state
	st.Desc = strings.Join(descs, "; then ")
	return st
}

// one makes a step of kind k (not a burst) and moves the planner's state.
func (p *Planner) one(k Kind) Step {
	before := p.state
	next := before.clone()
	st := Step{Kind: k, Before: before}
	switch k {
	case KindMeshMode:
		next.MeshMode = p.otherMode(before.MeshMode)
		st.Desc = "mesh-wide PeerAuthentication " + modeText(before.MeshMode) + " → " + modeText(next.MeshMode)
	case KindWorkloadMode:
		sv := Servers[p.rng.IntN(len(Servers))].Name
		cur := before.WorkloadModes[sv]
		m := p.otherMode(cur)
		if m == "" {
			delete(next.WorkloadModes, sv)
		} else {
			next.WorkloadModes[sv] = m
		}
		st.Desc = sv + " PeerAuthentication " + modeText(cur) + " → " + modeText(m)
	case KindAuthzAdd, KindAuthzRemove:
		if k == KindAuthzAdd && len(before.Authz) >= p.o.MaxPolicies {
			k = KindAuthzRemove
		}
		if k == KindAuthzRemove && len(before.Authz) == 0 {
			k = KindAuthzAdd
		}
		st.Kind = k
		if k == KindAuthzAdd {
			a := p.newAuthz(&next)
			next.Authz = append(next.Authz, a)
			slices.SortFunc(next.Authz, func(x, y Authz) int { return strings.Compare(x.Name, y.Name) })
			st.Desc = "add " + describeAuthz(&a)
		} else {
			i := p.rng.IntN(len(next.Authz))
			st.Desc = "remove " + describeAuthz(&next.Authz[i])
			next.Authz = slices.Delete(next.Authz, i, i+1)
		}
	case KindReplicaToggle:
		next.ReplicaIn = !before.ReplicaIn
		st.Desc = toggledServer + "-1 endpoint " + map[bool]string{true: "back into", false: "out of"}[next.ReplicaIn] + " the catalog"
	case KindEndpointChurn:
		st.Fleet = p.fleetChange()
		st.Desc = fmt.Sprintf("fleet service %d: endpoint %s", st.Fleet.Service, st.Fleet.Op)
	case KindReconnectStorm:
		n := p.o.FleetProxies
		if n > 0 {
			k := max(1, n/4+p.rng.IntN(n-n/4+1))
			st.Storm = p.rng.Perm(n)[:min(k, n)]
			slices.Sort(st.Storm)
		}
		st.Desc = fmt.Sprintf("reconnect storm: %d of %d fleet streams dropped", len(st.Storm), n)
	case KindRotateIntermediate:
		st.Desc = "intermediate CA rotation"
	case KindRotateRoot:
		st.Desc = "root CA rotation"
	}
	st.After = next
	p.state = next
	return st
}

func (p *Planner) otherMode(cur mesh.MTLSMode) mesh.MTLSMode {
	all := append([]mesh.MTLSMode{""}, p.o.Modes...)
	all = slices.DeleteFunc(all, func(m mesh.MTLSMode) bool { return m == cur })
	return all[p.rng.IntN(len(all))]
}

func modeText(m mesh.MTLSMode) string {
	if m == "" {
		return "none"
	}
	return string(m)
}

func (p *Planner) newAuthz(s *State) Authz {
	a := Authz{Name: fmt.Sprintf("%s%d", policyPrefix, s.NextID)}
	s.NextID++
	if p.rng.IntN(5) > 0 {
		a.Target = Servers[p.rng.IntN(len(Servers))].Name
	}
	callers := make([]string, p.o.Callers)
	for i := range callers {
		callers[i] = CallerName(i)
	}
	if p.rng.IntN(5) < 3 {
		a.Deny = true
		a.Callers = []string{callers[p.rng.IntN(len(callers))]}
		return a
	}
	p.rng.Shuffle(len(callers), func(i, j int) { callers[i], callers[j] = callers[j], callers[i] })
	a.Callers = callers[:1+p.rng.IntN(len(callers))]
	slices.Sort(a.Callers)
	return a
}

func describeAuthz(a *Authz) string {
	t := "mesh-wide"
	if a.Target != "" {
		t = "on " + a.Target
	}
	if a.Deny {
		return fmt.Sprintf("%s: DENY %s %s", a.Name, strings.Join(a.Callers, ","), t)
	}
	return fmt.Sprintf("%s: ALLOW only %s %s", a.Name, strings.Join(a.Callers, ","), t)
}

func (p *Planner) fleetChange() FleetChange {
	if p.o.FleetServices <= 0 {
		return FleetChange{Service: -1}
	}
	i := p.rng.IntN(p.o.FleetServices)
	var ops []string
	if p.fleetAdded[i] {
		ops = append(ops, "remove")
	} else {
		ops = append(ops, "add")
	}
	if p.fleetUnhealthy[i] {
		ops = append(ops, "healthy")
	} else {
		ops = append(ops, "unhealthy")
	}
	op := ops[p.rng.IntN(len(ops))]
	switch op {
	case "add":
		p.fleetAdded[i] = true
	case "remove":
		p.fleetAdded[i] = false
	case "unhealthy":
		p.fleetUnhealthy[i] = true
	case "healthy":
		p.fleetUnhealthy[i] = false
	}
	return FleetChange{Service: i, Op: op}
}
