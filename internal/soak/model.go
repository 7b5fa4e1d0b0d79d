package soak

import (
	"fmt"
	"slices"
	"strings"

	"github.com/meshd/meshd/mesh"
)

// The real mesh the soak runs: three services behind Envoy sidecars, one
// per protocol, and caller identities, each an Envoy sidecar with all three
// services as upstreams. api has two replicas; the second one's endpoint
// comes and goes (catalog churn on a service real traffic uses).
const (
	Namespace = "default"
	// RootNamespace is meshd's default --root-namespace: its policies
	// apply mesh-wide.
	RootNamespace = mesh.DefaultRootNamespace
	// DefaultMode is the --mtls-mode the soak starts meshd with: the mode
	// of a workload no PeerAuthentication covers.
	DefaultMode = mesh.MTLSPermissive

	// policyPrefix starts the name of every policy the soak writes, so that
	// markers can tell its rules from anything else in a configuration.
	policyPrefix = "soak-"
)

// Server is one service of the real mesh.
type Server struct {
	Name     string
	Protocol mesh.Protocol
	Replicas int
}

// Servers are the real mesh's services. Replica 0 of each is always in
// the catalog; api's replica 1 is toggled by the replica-toggle step.
var Servers = []Server{
	{Name: "api", Protocol: mesh.ProtocolHTTP, Replicas: 2},
	{Name: "greeter", Protocol: mesh.ProtocolGRPC, Replicas: 1},
	{Name: "db", Protocol: mesh.ProtocolTCP, Replicas: 1},
}

// toggledServer is the service whose second replica the replica-toggle
// step moves in and out of the catalog.
const toggledServer = "api"

// callerNames are the caller identities' service (and service account)
// names, in order; more callers than names get "caller-<i>".
var callerNames = []string{"web", "ops", "batch", "cron", "report", "search"}

// CallerName is the i-th caller identity's name.
func CallerName(i int) string {
	if i < len(callerNames) {
		return callerNames[i]
	}
	return fmt.Sprintf("caller-%d", i)
}

// ProxyID is the node id of a real server replica's sidecar.
func ProxyID(server string, replica int) string {
	return fmt.Sprintf("%s-%d.%s", server, replica, Namespace)
}

// principal is an identity as Istio's AuthorizationPolicy names it.
func principal(caller string) string {
	return mesh.DefaultTrustDomain + "/ns/" + Namespace + "/sa/" + caller
}

// Authz is one AuthorizationPolicy the soak keeps in force.
type Authz struct {
	Name string
	// Deny: a DENY policy for Callers; otherwise an ALLOW policy admitting
	// only Callers (when it is the only ALLOW policy of its workload).
	Deny bool
	// Target is the server it selects (by its app label); "" is a
	// mesh-wide policy (root namespace, no selector).
	Target  string
	Callers []string
}

func (a *Authz) namespace() string {
	if a.Target == "" {
		return RootNamespace
	}
	return Namespace
}

// RuleName is how meshd names the policy's one rule in Envoy's RBAC
// (`<ns>/<policy>/rule-<n>`, xds/names.go), which the soak looks for in
// rendered configuration.
func (a *Authz) RuleName() string { return a.namespace() + "/" + a.Name + "/rule-0" }

// State is the part of the mesh's inputs the schedule changes and the
// expectations depend on: every PeerAuthentication and AuthorizationPolicy
// the soak wrote, and whether the toggled replica is in the catalog. It is
// a value: every step makes a new one.
type State struct {
	// MeshMode is the mesh-wide PeerAuthentication's mode, "" for none.
	MeshMode mesh.MTLSMode
	// WorkloadModes holds each server's workload PeerAuthentication mode
	// (absent: none).
	WorkloadModes map[string]mesh.MTLSMode
	Authz         []Authz // sorted by name
	ReplicaIn     bool
	// NextID numbers new policies.
	NextID int
}

// InitialState is the state the soak starts from: no policies, every
// replica in the catalog.
func InitialState() State {
	return State{WorkloadModes: map[string]mesh.MTLSMode{}, ReplicaIn: true, NextID: 1}
}

// clone copies s deeply, for a step to change.
func (s State) clone() State {
	c := s
	c.WorkloadModes = make(map[string]mesh.MTLSMode, len(s.WorkloadModes))
	for k, v := range s.WorkloadModes {
		c.WorkloadModes[k] = v
	}
	c.Authz = make([]Authz, len(s.Authz))
	for i, a := range s.Authz {
		a.Callers = slices.Clone(a.Callers)
		c.Authz[i] = a
	}
	return c
}

// InRotation lists the replicas of server that are in the catalog.
func (s *State) InRotation(server string) []int {
	for _, sv := range Servers {
		if sv.Name != server {
			continue
		}
		n := sv.Replicas
		if server == toggledServer && !s.ReplicaIn {
			n = 1
		}
		out := make([]int, n)
		for i := range out {
			out[i] = i
		}
		return out
	}
	return nil
}

// labeled says whether a replica's workload has its app label: a proxy's
// labels are those of its endpoint in the catalog (mesh.Catalog.WorkloadOf),
// so the toggled replica loses them while its endpoint is out.
func (s *State) labeled(server string, replica int) bool {
	return !(server == toggledServer && replica > 0 && !s.ReplicaIn)
}

// Mode is the mTLS mode meshd should settle on for a replica's workload:
// Istio's precedence (workload > mesh-wide > meshd's default; the soak
// writes no namespace-wide PeerAuthentication).
func (s *State) Mode(server string, replica int) mesh.MTLSMode {
	if m, ok := s.WorkloadModes[server]; ok && s.labeled(server, replica) {
		return m
	}
	if s.MeshMode != "" {
		return s.MeshMode
	}
	return DefaultMode
}

// MTLS says whether callers reach the replica over mTLS once settled: meshd
// sends plaintext only to DISABLE workloads (auto mTLS).
func (s *State) MTLS(server string, replica int) bool {
	return s.Mode(server, replica) != mesh.MTLSDisable
}

// Applying lists the soak's policies that select a replica's workload.
func (s *State) Applying(server string, replica int) []*Authz {
	var out []*Authz
	for i := range s.Authz {
		a := &s.Authz[i]
		if a.Target == "" || (a.Target == server && s.labeled(server, replica)) {
			out = append(out, a)
		}
	}
	return out
}

// Allowed decides, with Istio's semantics, whether caller's request to a
// replica is allowed when it arrives over mTLS (mtls) or in plaintext,
// where no principal is known and no principal rule can match: denied if a
// DENY policy names the caller; else allowed if no ALLOW policy applies;
// else allowed only if an ALLOW policy names it.
func (s *State) Allowed(caller, server string, replica int, mtls bool) bool {
	who := ""
	if mtls {
		who = caller
	}
	var allows []*Authz
	for _, a := range s.Applying(server, replica) {
		if a.Deny {
			if who != "" && slices.Contains(a.Callers, who) {
				return false
			}
			continue
		}
		allows = append(allows, a)
	}
	if len(allows) == 0 {
		return true
	}
	for _, a := range allows {
		if who != "" && slices.Contains(a.Callers, who) {
			return true
		}
	}
	return false
}

// Verdicts is a set of possible outcomes of a call: allowed, denied or
// both (while a change is being applied).
type Verdicts uint8

const (
	MayAllow Verdicts = 1 << iota
	MayDeny
)

func (v Verdicts) String() string {
	switch v {
	case MayAllow:
		return "allowed"
	case MayDeny:
		return "denied"
	case MayAllow | MayDeny:
		return "allowed or denied"
	}
	return "nothing"
}

// VerdictsOver is what a call from caller to server may meet while the
// mesh passes through states (in order; one state: settled). Under each
// state, each replica in rotation in it may answer, over any transport some
// state gives that replica: during an mTLS migration a caller's transport
// and the server's policies change at different moments. A replica out of
// rotation in a state is not asked under it: traffic sent to a workload
// whose policies are not (or no longer) in place is exactly what must not
// happen.
func VerdictsOver(states []State, caller, server string) Verdicts {
	transports := map[int][]bool{}
	for i := range states {
		for _, r := range states[i].InRotation(server) {
			if m := states[i].MTLS(server, r); !slices.Contains(transports[r], m) {
				transports[r] = append(transports[r], m)
			}
		}
	}
	var v Verdicts
	for i := range states {
		for _, r := range states[i].InRotation(server) {
			for _, m := range transports[r] {
				if states[i].Allowed(caller, server, r, m) {
					v |= MayAllow
				} else {
					v |= MayDeny
				}
			}
		}
	}
	return v
}

// PolicyYAML renders the state's policies as the one file the soak keeps in
// meshd's policy directory; empty when there are none (the soak then
// removes the file: a policy file without documents is refused).
func (s *State) PolicyYAML() []byte {
	var docs []string
	if s.MeshMode != "" {
		docs = append(docs, peerAuthYAML(policyPrefix+"mesh", RootNamespace, "", s.MeshMode))
	}
	servers := make([]string, 0, len(s.WorkloadModes))
	for sv := range s.WorkloadModes {
		servers = append(servers, sv)
	}
	slices.Sort(servers)
	for _, sv := range servers {
		docs = append(docs, peerAuthYAML(policyPrefix+"mode-"+sv, Namespace, sv, s.WorkloadModes[sv]))
	}
	for i := range s.Authz {
		docs = append(docs, authzYAML(&s.Authz[i]))
	}
	if len(docs) == 0 {
		return nil
	}
	return []byte("# Written by meshd-soak; rewritten at every policy step.\n" + strings.Join(docs, "---\n"))
}

func peerAuthYAML(name, ns, app string, mode mesh.MTLSMode) string {
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: %s, namespace: %s}\nspec:\n", name, ns)
	if app != "" {
		fmt.Fprintf(&b, "  selector: {matchLabels: {app: %s}}\n", app)
	}
	fmt.Fprintf(&b, "  mtls: {mode: %s}\n", mode)
	return b.String()
}

func authzYAML(a *Authz) string {
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: %s, namespace: %s}\nspec:\n", a.Name, a.namespace())
	if a.Target != "" {
		fmt.Fprintf(&b, "  selector: {matchLabels: {app: %s}}\n", a.Target)
	}
	action := "ALLOW"
	if a.Deny {
		action = "DENY"
	}
	ps := make([]string, len(a.Callers))
	for i, c := range a.Callers {
		ps[i] = fmt.Sprintf("%q", principal(c))
	}
	fmt.Fprintf(&b, "  action: %s\n  rules:\n  - from:\n    - source: {principals: [%s]}\n", action, strings.Join(ps, ", "))
	return b.String()
}

// Describe says what the state is, in one line, for logs and dumps.
func (s *State) Describe() string {
	var parts []string
	mm := string(s.MeshMode)
	if mm == "" {
		mm = "none (" + string(DefaultMode) + ")"
	}
	parts = append(parts, "mesh mode "+mm)
	servers := make([]string, 0, len(s.WorkloadModes))
	for sv := range s.WorkloadModes {
		servers = append(servers, sv)
	}
	slices.Sort(servers)
	for _, sv := range servers {
		parts = append(parts, fmt.Sprintf("%s %s", sv, s.WorkloadModes[sv]))
	}
	for _, a := range s.Authz {
		action := "ALLOW only"
		if a.Deny {
			action = "DENY"
		}
		t := a.Target
		if t == "" {
			t = "mesh"
		}
		parts = append(parts, fmt.Sprintf("%s: %s %s %v", a.Name, t, action, a.Callers))
	}
	if !s.ReplicaIn {
		parts = append(parts, toggledServer+"-1 out")
	}
	return strings.Join(parts, "; ")
}
