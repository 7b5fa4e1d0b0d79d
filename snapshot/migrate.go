package snapshot

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"

	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/xds"
)

// Safe mTLS migration.
//
// Changing a workload's mTLS mode touches two sides that proxies update
// independently: the workload's own inbound listener (what it accepts) and
// its callers' clusters and endpoints (whether they send mTLS or
// plaintext). Applied at once, requests fail in between: a server gone
// STRICT before its callers send mTLS refuses them; callers sending
// plaintext before the server accepts it are refused. So each side changes
// in its own step, and a step that must not overtake the proxies waits
// until they have ACKed the previous one. Each workload runs this state
// machine (docs/policy.md has it as a table):
//
//	phase          condition (applied → target)             transition
//	any            forced                                   applied := target; settled
//	any            applied == target                        settled
//	settled, open  callers' transport changes, Envoy        server := PERMISSIVE, plaintext chain
//	  server       server, server not PERMISSIVE (or its      renamed iff callers send plaintext
//	               plaintext chain's name not yet that)       and the target is PERMISSIVE
//	                                                          (plainCallers); → serverOpen
//	serverOpen     waiting on the server's listener ACK     stay (reported when overdue)
//	any but        callers' transport changes, server       callers := target transport; → callersMoved
//	  callersMoved ready (ACKed, gone, or gRPC: no step)
//	any            same transport, target PERMISSIVE,       server := PERMISSIVE; settled
//	               no plainCallers
//	not            same transport, target STRICT/DISABLE,   → callersMoved (callers must ACK what
//	  callersMoved   or plainCallers                          they send now)
//	callersMoved   waiting on callers' ACKs                 stay (reported when overdue)
//	callersMoved   callers ready                            applied := target (server's mode; the
//	                                                          plaintext chain's usual name, so Envoy
//	                                                          drains the callers' plaintext
//	                                                          connections); settled
//
// "Waiting on" counts only proxies that exist in the catalog and have a
// stream open: a disconnected proxy gets the current configuration when it
// reconnects, and a step with nobody to wait for proceeds at once. The
// exception is a proxy whose last render failed: it keeps (and gets on
// reconnect) its last good snapshot, from before the step, so it is waited
// for, connected or not, until a render succeeds and it ACKs that. Every
// ACK, disconnect, catalog or policy change and publish re-evaluates the
// pending steps (the publisher's loop: drain and publish). A step waiting
// longer than Options.MigrationOverdue is reported (log, metric, /debug
// status) and can be forced (ForceMigration).

// modes is what is rendered for one workload: the server side and the
// callers' view (STRICT: callers send mTLS; DISABLE: plaintext).
// plainCallers is set while a sidecar's callers move from plaintext to
// mTLS: its PERMISSIVE plaintext chain is then rendered under its own name
// (xds.Overrides.PlaintextCallers), so that the step that ends the move,
// once the callers have ACKed mTLS, changes that chain and Envoy drains
// the plaintext connections they opened before (a caller's new transport
// applies only to new connections; its pooled plaintext ones would carry
// no principal for as long as they lived).
type modes struct {
	server, caller mesh.MTLSMode
	plainCallers   bool
}

func targetOf(m mesh.MTLSMode) modes { return modes{server: m, caller: callerView(m)} }

func callerView(m mesh.MTLSMode) mesh.MTLSMode {
	if m == mesh.MTLSDisable {
		return mesh.MTLSDisable
	}
	return mesh.MTLSStrict // "sends mTLS"
}

// phase is where a workload's migration is.
type phase uint8

const (
	phaseSettled phase = iota
	// phaseServerOpen: the server accepts both transports (PERMISSIVE)
	// while its callers switch; waits for its listener ACK first.
	phaseServerOpen
	// phaseCallersMoved: callers send the target transport; the server's
	// final mode waits for their cluster and endpoint ACKs.
	phaseCallersMoved
)

func (ph phase) String() string {
	switch ph {
	case phaseServerOpen:
		return "server-open"
	case phaseCallersMoved:
		return "callers-moved"
	}
	return "settled"
}

// workload is one inbound workload's migration state.
type workload struct {
	id  string
	svc mesh.ServiceKey
	// endpoint names the workload's endpoint for xds.Overrides.CallerMode.
	endpoint string
	envoy    bool // a sidecar: can accept both transports (PERMISSIVE)
	applied  modes
	target   modes
	phase    phase
	// rendered: a publish has rendered the current step (set after each
	// publish, cleared by every transition that changes a mode).
	rendered bool
	from     mesh.MTLSMode // server mode when the migration began
	since    time.Time     // when the migration began
	// stepSince is when the current wait began; waiting what it waits for;
	// reported whether it was reported overdue.
	stepSince time.Time
	waiting   []string
	reported  bool
}

func (w *workload) pending() bool { return w.applied != w.target }

// step applies at most one transition (the table above) given what the
// current phase waits for, and reports whether it changed anything. It is
// the whole state machine: pure, and tested transition by transition.
func (w *workload) step(waiting []string, forced bool, now time.Time) bool {
	enter := func(ph phase, changedModes bool) {
		w.phase, w.stepSince, w.reported = ph, now, false
		w.rendered = !changedModes
	}
	switch {
	case forced && w.pending():
		w.applied = w.target
		enter(phaseSettled, true)
	case !w.pending():
		if w.phase == phaseSettled {
			return false
		}
		enter(phaseSettled, false)
	case w.applied.caller != w.target.caller:
		// Plaintext callers moving to mTLS for good (a STRICT server
		// closes plaintext connections anyway).
		moving := w.envoy && w.applied.caller == mesh.MTLSDisable && w.target.server == mesh.MTLSPermissive
		if w.envoy && (w.applied.server != mesh.MTLSPermissive || w.applied.plainCallers != moving) {
			w.applied.server, w.applied.plainCallers = mesh.MTLSPermissive, moving
			enter(phaseServerOpen, true)
			return true
		}
		if w.envoy && w.phase != phaseServerOpen {
			// Already PERMISSIVE: its ACK of that is what is waited for.
			enter(phaseServerOpen, false)
			return true
		}
		if w.envoy && len(waiting) > 0 {
			return false
		}
		w.applied.caller = w.target.caller
		enter(phaseCallersMoved, true)
	case w.target.server == mesh.MTLSPermissive && !w.applied.plainCallers:
		// Loosening to accept both transports is always safe.
		w.applied.server = w.target.server
		enter(phaseSettled, true)
	case w.phase != phaseCallersMoved:
		// STRICT or DISABLE: the callers must have ACKed the transport
		// they send now before the server accepts only that. PERMISSIVE
		// after plaintext callers: they must have ACKed mTLS before their
		// plaintext connections are drained, or they reconnect plaintext.
		enter(phaseCallersMoved, false)
	case len(waiting) > 0:
		return false
	default:
		// The server's target mode; its plaintext chain's usual name.
		w.applied = w.target
		enter(phaseSettled, true)
	}
	return true
}

// callersOf lists the proxies that call service k, in the catalog being
// published (the publisher's index).
func (p *Publisher) callersOf(k mesh.ServiceKey) []string { return p.idx.consumerIDs(k) }

// renderFailed marks a proxy in a step's waiting list whose last render
// failed (its status has the error).
const renderFailed = " (render failed)"

var (
	serverTypes = []types.ResponseType{types.Listener}
	callerTypes = []types.ResponseType{types.Cluster, types.Endpoint}
)

// waitingFor lists what w's current phase waits for: each connected proxy
// concerned that has not ACKed the configuration carrying the step, as
// "node (Type, Type)", and each proxy concerned whose last render failed,
// connected or not, as "node (render failed)".
func (p *Publisher) waitingFor(w *workload) []string {
	var nodes []string
	var typs []types.ResponseType
	switch w.phase {
	case phaseServerOpen:
		nodes, typs = []string{w.id}, serverTypes
	case phaseCallersMoved:
		nodes, typs = p.callersOf(w.svc), callerTypes
	default:
		return nil
	}
	var out []string
	for _, id := range nodes {
		var snap *Snapshot
		st := p.proxies[id]
		if st != nil {
			snap = st.snap
		}
		if snap != nil && st.status.Error != "" {
			// Its last render failed, so it keeps (and is served on
			// reconnect) its last good snapshot, from before the step:
			// an ACK of that says nothing about the step. Waiting also
			// when disconnected, since a reconnect gets that snapshot.
			out = append(out, id+renderFailed)
			continue
		}
		n := p.nodes[id]
		if n == nil || n.streams <= 0 {
			continue // not connected: gets the current configuration on connect
		}
		if snap == nil && w.rendered {
			continue // has nothing to ACK yet
		}
		var missing []string
		for _, t := range typs {
			typ, _ := cachev3.GetResponseTypeURL(t)
			if !w.rendered || n.acked[t] != snap.GetVersion(typ) {
				missing = append(missing, shortType(typ))
			}
		}
		if len(missing) > 0 {
			out = append(out, id+" ("+strings.Join(missing, ", ")+")")
		}
	}
	return out
}

// evaluate runs w's machine until it waits or settles; it reports whether
// a rendered mode changed.
func (p *Publisher) evaluate(w *workload, now time.Time) bool {
	forced := p.forced[w.id]
	delete(p.forced, w.id)
	changed := false
	before := w.applied
	for range 6 {
		w.waiting = p.waitingFor(w)
		if !w.step(w.waiting, forced, now) {
			break
		}
		forced = false
	}
	w.waiting = p.waitingFor(w)
	if w.pending() && w.since.IsZero() {
		w.since = now
	}
	if !w.pending() {
		w.since, w.waiting = time.Time{}, nil
	}
	if w.applied != before {
		changed = true
	}
	p.track(w)
	return changed
}

// plan updates the workloads' targets from the policy, runs their
// machines and returns the modes to render. Only what a publish may have
// changed is looked at: every inbound proxy when all is set (a policy
// change, the first publish), otherwise the proxies diff names, the
// proxies of services that changed (their endpoints' labels select
// policies), and the migrations in progress. The overrides hold only
// workloads whose rendered modes differ from their policy's (those in
// progress): for the others translation's own reading of the policy is
// the same. It also returns what differs from the previous plan's
// overrides: proxies whose server mode changed and services whose
// endpoints' caller mode changed. Loop only, at the start of a publish.
func (p *Publisher) plan(cat *mesh.Catalog, ps *mesh.PolicySet, all bool, d catalogDiff) (*xds.Overrides, map[string]bool, map[mesh.ServiceKey]bool) {
	if ps == nil {
		ps = &mesh.PolicySet{RootNamespace: mesh.DefaultRootNamespace}
	}
	// Node lookups (waitingFor) use the catalog being planned.
	prev := p.current
	p.current = cat
	defer func() { p.current = prev }()
	now := time.Now()
	consider := func(s *mesh.Proxy) {
		if s == nil || !s.Inbound() {
			if s != nil {
				p.dropWorkload(s.ID)
			}
			return
		}
		target := targetOf(ps.MTLSModeFor(cat.WorkloadOf(s)))
		w := p.workloads[s.ID]
		if w == nil {
			// A new workload: nothing to migrate from.
			w = &workload{id: s.ID, applied: target, target: target, rendered: true}
			p.workloads[s.ID] = w
		}
		w.svc, w.envoy = s.ServiceKey(), s.Flavor == mesh.FlavorEnvoy
		w.endpoint = xds.EndpointKey(s.ServiceKey(), &mesh.Endpoint{Address: s.Address, Port: s.PublicPort})
		if w.target != target {
			if !w.pending() {
				w.from = w.applied.server
				p.log.Info("mTLS mode change in progress", "proxy", s.ID, "from", w.applied.server, "to", target.server)
			}
			w.target = target
		}
		p.evaluate(w, now)
	}
	if all {
		for _, s := range cat.Proxies() {
			consider(s)
		}
		for id := range p.workloads {
			if s := cat.Proxy(id); s == nil || !s.Inbound() {
				p.dropWorkload(id)
			}
		}
	} else {
		for _, id := range d.removed {
			p.dropWorkload(id)
		}
		for _, id := range d.proxies {
			consider(cat.Proxy(id))
		}
		for _, k := range d.services {
			for _, s := range p.idx.membersOf(k) {
				consider(s)
			}
		}
		for _, w := range p.migrating {
			p.evaluate(w, now)
		}
	}
	ov := &xds.Overrides{ServerMode: map[string]mesh.MTLSMode{}, CallerMode: map[string]mesh.MTLSMode{}, PlaintextCallers: map[string]bool{}}
	serviceOf := map[string]mesh.ServiceKey{}
	for _, w := range p.migrating {
		if w.pending() {
			ov.ServerMode[w.id] = w.applied.server
			if w.applied.plainCallers {
				ov.PlaintextCallers[w.id] = true
			}
			ov.CallerMode[w.endpoint] = w.applied.caller
			serviceOf[w.endpoint] = w.svc
		}
	}
	proxies, services := map[string]bool{}, map[mesh.ServiceKey]bool{}
	last := p.lastPlan
	if last.ov == nil {
		last.ov = &xds.Overrides{}
	}
	for id, m := range ov.ServerMode {
		if old, ok := last.ov.ServerMode[id]; !ok || old != m || last.ov.PlaintextCallers[id] != ov.PlaintextCallers[id] {
			proxies[id] = true
		}
	}
	for id := range last.ov.ServerMode {
		if _, ok := ov.ServerMode[id]; !ok {
			proxies[id] = true
		}
	}
	for ep, m := range ov.CallerMode {
		if old, ok := last.ov.CallerMode[ep]; !ok || old != m {
			services[serviceOf[ep]] = true
		}
	}
	for ep := range last.ov.CallerMode {
		if _, ok := ov.CallerMode[ep]; !ok {
			services[last.serviceOf[ep]] = true
		}
	}
	p.lastPlan = planned{ov: ov, serviceOf: serviceOf}
	return ov, proxies, services
}

// planned is what the last plan rendered.
type planned struct {
	ov        *xds.Overrides
	serviceOf map[string]mesh.ServiceKey // endpoint key → service
}

// dropWorkload forgets a workload that is no longer inbound.
func (p *Publisher) dropWorkload(id string) {
	delete(p.workloads, id)
	delete(p.migrating, id)
	delete(p.forced, id)
}

// track keeps the set of workloads a migration is in (anything but
// settled with nothing pending), the only ones that ACKs, publishes and
// status reports look at.
func (p *Publisher) track(w *workload) {
	if w.pending() || w.phase != phaseSettled {
		p.migrating[w.id] = w
	} else {
		delete(p.migrating, w.id)
	}
}

// renderedMigrations records that a publish rendered every current step.
func (p *Publisher) renderedMigrations() {
	for _, w := range p.migrating {
		w.rendered = true
	}
}

// advanceMigrations re-evaluates the pending migrations (after ACKs,
// disconnects or a publish) and reports whether a mode to render changed.
func (p *Publisher) advanceMigrations() bool {
	if p.current == nil {
		return false
	}
	now := time.Now()
	changed := false
	for _, w := range p.migrating {
		if p.evaluate(w, now) {
			changed = true
		}
	}
	return changed
}

// forceMigration marks a pending migration to be completed at the next
// evaluation; false if the proxy has none.
func (p *Publisher) forceMigration(id string) bool {
	w := p.workloads[id]
	if w == nil || !w.pending() {
		return false
	}
	p.log.Warn("mTLS migration forced by an operator: its remaining steps are applied without waiting for ACKs",
		"proxy", id, "from", w.from, "to", w.target.server, "phase", w.phase.String(), "was_waiting_for", w.waiting)
	p.forced[id] = true
	return true
}

// Transition is an mTLS mode change in progress, for status pages.
type Transition struct {
	Proxy      string        `json:"proxy"`
	From       mesh.MTLSMode `json:"from"`
	To         mesh.MTLSMode `json:"to"`
	ServerMode mesh.MTLSMode `json:"serverMode"`
	CallerMode mesh.MTLSMode `json:"callerMode"`
	// Phase is the migration's state (docs/policy.md).
	Phase string `json:"phase"`
	// WaitingFor says what the current step waits for; WaitingOn lists
	// exactly which connected proxies have not ACKed which types.
	WaitingFor string    `json:"waitingFor"`
	WaitingOn  []string  `json:"waitingOn,omitempty"`
	Since      time.Time `json:"since"`
	// StepSince is when the current step began to wait; PendingSeconds its
	// age; Overdue is set once that reaches the reporting bound (when it
	// is logged).
	StepSince      time.Time `json:"stepSince"`
	PendingSeconds float64   `json:"pendingSeconds"`
	Overdue        bool      `json:"overdue"`
}

func (w *workload) waitingFor() string {
	failed := 0
	for _, s := range w.waiting {
		if strings.HasSuffix(s, renderFailed) {
			failed++
		}
	}
	switch {
	case len(w.waiting) == 0:
		return "nothing: proceeds at the next publish"
	case failed > 0:
		return fmt.Sprintf("%d proxies whose render failed (their status has the error) to be rendered and to ACK the step, and %d others to ACK it, before %s goes on to %s",
			failed, len(w.waiting)-failed, w.id, w.target.server)
	case w.phase == phaseServerOpen:
		return fmt.Sprintf("server %s to ACK its PERMISSIVE listener before callers switch transport", w.id)
	case w.phase == phaseCallersMoved && w.applied.plainCallers && w.target.server == mesh.MTLSPermissive:
		return fmt.Sprintf("callers to ACK mTLS (%d waiting) before %s drains their plaintext connections", len(w.waiting), w.id)
	case w.phase == phaseCallersMoved && w.applied.caller == w.target.caller && w.applied.caller != callerView(w.from):
		return fmt.Sprintf("callers to ACK their new transport (%d waiting) before %s goes %s", len(w.waiting), w.id, w.target.server)
	default:
		return fmt.Sprintf("callers to ACK the transport they send (%d waiting) before %s goes %s", len(w.waiting), w.id, w.target.server)
	}
}

// transitions lists the pending migrations and updates the metrics.
func (p *Publisher) transitions() []Transition {
	now := time.Now()
	var out []Transition
	oldest := time.Time{}
	for _, w := range p.migrating {
		if !w.pending() {
			continue
		}
		age := now.Sub(w.stepSince)
		out = append(out, Transition{Proxy: w.id, From: w.from, To: w.target.server,
			ServerMode: w.applied.server, CallerMode: w.applied.caller, Phase: w.phase.String(),
			WaitingFor: w.waitingFor(), WaitingOn: slices.Clone(w.waiting), Since: w.since,
			StepSince: w.stepSince, PendingSeconds: age.Seconds(), Overdue: age >= p.opts.MigrationOverdue})
		if len(w.waiting) > 0 && (oldest.IsZero() || w.stepSince.Before(oldest)) {
			oldest = w.stepSince
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Proxy < out[j].Proxy })
	p.m.MigrationsPending.Set(float64(len(out)))
	if oldest.IsZero() {
		p.m.MigrationWaitingSince.Store(0)
	} else {
		p.m.MigrationWaitingSince.Store(oldest.UnixNano())
	}
	return out
}

// nextOverdue is when the next waiting step becomes overdue (zero: none).
func (p *Publisher) nextOverdue() time.Time {
	var next time.Time
	for _, w := range p.migrating {
		if w.pending() && len(w.waiting) > 0 && !w.reported {
			at := w.stepSince.Add(p.opts.MigrationOverdue)
			if next.IsZero() || at.Before(next) {
				next = at
			}
		}
	}
	return next
}

// reportOverdue logs each step that has waited longer than the bound, once.
func (p *Publisher) reportOverdue() {
	now := time.Now()
	for _, w := range p.migrating {
		if w.pending() && len(w.waiting) > 0 && !w.reported && now.Sub(w.stepSince) >= p.opts.MigrationOverdue {
			w.reported = true
			p.log.Warn("mTLS migration step overdue: still waiting for proxies to ACK; check them in /debug/status, or force it with POST /migrations/force?proxy=<id>",
				"proxy", w.id, "from", w.from, "to", w.target.server, "phase", w.phase.String(),
				"waiting_on", w.waiting, "for", now.Sub(w.stepSince).Round(time.Second))
		}
	}
}
