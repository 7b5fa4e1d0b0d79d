package snapshot

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/meshd/meshd/internal/metrics"
	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/xds"
)

const (
	strict     = mesh.MTLSStrict
	permissive = mesh.MTLSPermissive
	disable    = mesh.MTLSDisable
)

// Every transition of the migration state machine (migrate.go's table and
// docs/policy.md), one row each: from a state, with what the phase waits
// for, to the next state.
func TestMigrationTransitions(t *testing.T) {
	type state struct {
		server, caller mesh.MTLSMode
		plainCallers   bool
		phase          phase
	}
	cases := []struct {
		name    string
		envoy   bool
		from    state
		target  mesh.MTLSMode
		waiting []string
		forced  bool
		want    state
		changed bool
		// rendered: whether the next state's step is already in the
		// published configuration (no mode changed).
		rendered bool
	}{
		{"settled stays settled", true, state{strict, strict, false, phaseSettled}, strict, nil, false, state{strict, strict, false, phaseSettled}, false, true},
		{"tighten with caller change opens the server first", true, state{disable, disable, false, phaseSettled}, strict, nil, false, state{permissive, disable, false, phaseServerOpen}, true, false},
		{"loosen to DISABLE opens the server first", true, state{strict, strict, false, phaseSettled}, disable, nil, false, state{permissive, strict, false, phaseServerOpen}, true, false},
		{"server already PERMISSIVE: its ACK is waited for, nothing re-rendered", true, state{permissive, strict, false, phaseSettled}, disable, nil, false, state{permissive, strict, false, phaseServerOpen}, true, true},
		{"open server not yet ACKed: stay", true, state{permissive, strict, false, phaseServerOpen}, disable, []string{"api (Listener)"}, false, state{permissive, strict, false, phaseServerOpen}, false, false},
		{"open server ACKed (or gone): callers switch", true, state{permissive, strict, false, phaseServerOpen}, disable, nil, false, state{permissive, disable, false, phaseCallersMoved}, true, false},
		{"proxyless server: callers switch at once, no PERMISSIVE step", false, state{strict, strict, false, phaseSettled}, disable, nil, false, state{strict, disable, false, phaseCallersMoved}, true, false},
		{"callers not yet ACKed: stay", true, state{permissive, disable, false, phaseCallersMoved}, disable, []string{"web (Cluster)"}, false, state{permissive, disable, false, phaseCallersMoved}, false, false},
		{"callers ACKed (or gone): server to DISABLE", true, state{permissive, disable, false, phaseCallersMoved}, disable, nil, false, state{disable, disable, false, phaseSettled}, true, false},
		{"callers ACKed mTLS: server to STRICT", true, state{permissive, strict, false, phaseCallersMoved}, strict, nil, false, state{strict, strict, false, phaseSettled}, true, false},
		{"tighten without caller change waits for callers' current ACKs", true, state{permissive, strict, false, phaseSettled}, strict, nil, false, state{permissive, strict, false, phaseCallersMoved}, true, true},
		{"loosen to PERMISSIVE at once", true, state{strict, strict, false, phaseSettled}, permissive, nil, false, state{permissive, strict, false, phaseSettled}, true, false},
		{"policy reverted while the server is open", true, state{permissive, strict, false, phaseServerOpen}, strict, nil, false, state{permissive, strict, false, phaseCallersMoved}, true, true},
		{"policy reverted after callers moved", true, state{permissive, disable, false, phaseCallersMoved}, strict, nil, false, state{permissive, disable, false, phaseServerOpen}, true, true},
		{"reverted to PERMISSIVE after callers moved to plaintext: the plaintext chain is renamed", true, state{permissive, disable, false, phaseCallersMoved}, permissive, nil, false, state{permissive, disable, true, phaseServerOpen}, true, false},
		// DISABLE → PERMISSIVE: the callers' pooled plaintext connections
		// are drained once they have ACKed mTLS (soak defect 5).
		{"DISABLE to PERMISSIVE opens the server with the plaintext chain renamed", true, state{disable, disable, false, phaseSettled}, permissive, nil, false, state{permissive, disable, true, phaseServerOpen}, true, false},
		{"open server ACKed: plaintext callers move to mTLS", true, state{permissive, disable, true, phaseServerOpen}, permissive, nil, false, state{permissive, strict, true, phaseCallersMoved}, true, false},
		{"callers not yet ACKed mTLS: the plaintext chain keeps its migration name", true, state{permissive, strict, true, phaseCallersMoved}, permissive, []string{"web (Cluster)"}, false, state{permissive, strict, true, phaseCallersMoved}, false, false},
		{"callers ACKed mTLS: the plaintext chain's usual name drains their plaintext connections", true, state{permissive, strict, true, phaseCallersMoved}, permissive, nil, false, state{permissive, strict, false, phaseSettled}, true, false},
		{"reverted to DISABLE while callers move to mTLS: usual plaintext chain", true, state{permissive, strict, true, phaseCallersMoved}, disable, nil, false, state{permissive, strict, false, phaseServerOpen}, true, false},
		{"proxyless server: no plaintext chain to rename", false, state{disable, disable, false, phaseSettled}, strict, nil, false, state{disable, strict, false, phaseCallersMoved}, true, false},
		{"policy reverted to what is rendered: settles", true, state{permissive, strict, false, phaseServerOpen}, permissive, nil, false, state{permissive, strict, false, phaseSettled}, true, true},
		{"forced while waiting", true, state{permissive, strict, false, phaseServerOpen}, disable, []string{"api (Listener)"}, true, state{disable, disable, false, phaseSettled}, true, false},
		{"forced when settled: nothing", true, state{strict, strict, false, phaseSettled}, strict, nil, true, state{strict, strict, false, phaseSettled}, false, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			now := time.Unix(1000, 0)
			w := &workload{id: "api", envoy: c.envoy, applied: modes{c.from.server, c.from.caller, c.from.plainCallers}, target: targetOf(c.target),
				phase: c.from.phase, rendered: true, stepSince: now.Add(-time.Hour), reported: true}
			changed := w.step(c.waiting, c.forced, now)
			got := state{w.applied.server, w.applied.caller, w.applied.plainCallers, w.phase}
			if got != c.want || changed != c.changed {
				t.Fatalf("→ %+v (changed %v), want %+v (changed %v)", got, changed, c.want, c.changed)
			}
			if changed {
				if w.rendered != c.rendered || !w.stepSince.Equal(now) || w.reported {
					t.Errorf("a transition must start a new step: rendered %v (want %v), stepSince %v, reported %v", w.rendered, c.rendered, w.stepSince, w.reported)
				}
			} else if !w.stepSince.Equal(now.Add(-time.Hour)) {
				t.Error("staying restarted the step's clock")
			}
		})
	}
}

// Walking the machine from every pair of modes to every other, with nothing
// to wait for, always ends settled on the target in a few steps; with
// something to wait for, it never reaches the target's server mode for a
// STRICT or DISABLE target before the wait ends.
func TestMigrationsAlwaysSettle(t *testing.T) {
	all := []mesh.MTLSMode{strict, permissive, disable}
	for _, envoy := range []bool{true, false} {
		for _, from := range all {
			for _, to := range all {
				w := &workload{envoy: envoy, applied: targetOf(from), target: targetOf(to), rendered: true}
				n := 0
				for w.step(nil, false, time.Now()) {
					if n++; n > 4 {
						t.Fatalf("envoy=%v %s → %s: no end after %d steps (%+v)", envoy, from, to, n, w)
					}
				}
				if w.applied != w.target || w.phase != phaseSettled {
					t.Errorf("envoy=%v %s → %s: ended at %+v", envoy, from, to, w)
				}
				// Blocked: a server never goes STRICT before callers ACK mTLS,
				// nor DISABLE before they ACK plaintext.
				w = &workload{envoy: envoy, applied: targetOf(from), target: targetOf(to), rendered: true}
				for range 6 {
					w.step([]string{"someone"}, false, time.Now())
				}
				if from != to && to != permissive && w.applied.server == to {
					t.Errorf("envoy=%v %s → %s: server mode applied while callers had not ACKed (%+v)", envoy, from, to, w)
				}
			}
		}
	}
}

// serverAccepts reports what api's inbound listener accepts.
func serverAccepts(t *testing.T, cache cachev3.SnapshotCache) string {
	t.Helper()
	s, _ := cache.GetSnapshot("api.default")
	l := s.GetResources(resourcev3.ListenerType)["inbound|15102"].(*listenerv3.Listener)
	switch {
	// PERMISSIVE's default chain is plaintext; STRICT's terminates mTLS
	// too (TLS without the mesh ALPN).
	case l.GetDefaultFilterChain() != nil && l.GetDefaultFilterChain().GetTransportSocket() == nil:
		return "both"
	case l.GetFilterChains()[0].GetTransportSocket() != nil:
		return "mtls"
	}
	return "plaintext"
}

// webSends reports whether web reaches api's endpoint in plaintext.
func webSends(t *testing.T, cache cachev3.SnapshotCache) string {
	t.Helper()
	s, _ := cache.GetSnapshot("web.default")
	cla := s.GetResources(resourcev3.EndpointType)["outbound|api.default"].(*endpointv3.ClusterLoadAssignment)
	if cla.GetEndpoints()[0].GetLbEndpoints()[0].GetMetadata() != nil {
		return "plaintext"
	}
	return "mtls"
}

// migration is a publisher on the quickstart with api's mode set by a
// PeerAuthentication, driven by fake stream events.
type migration struct {
	t     *testing.T
	pub   *Publisher
	cache cachev3.SnapshotCache
	m     *metrics.Metrics
}

func newMigration(t *testing.T, start mesh.MTLSMode, overdue time.Duration) *migration {
	svcs, pxs := quickstart(t)
	cache := cachev3.NewSnapshotCache(false, cachev3.IDHash{}, nil)
	m := metrics.New()
	pub := New(cache, &fakeSecrets{}, Options{Translate: xds.Options{TrustDomain: "cluster.local"}, Metrics: m, MigrationOverdue: overdue})
	g := &migration{t: t, pub: pub, cache: cache, m: m}
	pub.Update(Update{Catalog: mustCatalog(t, svcs, pxs), Policy: apiMode(start)})
	g.publish()
	return g
}

func apiMode(mode mesh.MTLSMode) *mesh.PolicySet {
	return &mesh.PolicySet{RootNamespace: "meshd-system", DefaultMode: mesh.MTLSPermissive,
		Peer: []mesh.PeerAuthentication{{Name: "api", Namespace: "default", Mode: mode, Selector: map[string]string{"version": "v1"}}}}
}

// set asks for mode on api and publishes.
func (g *migration) set(mode mesh.MTLSMode) {
	g.t.Helper()
	g.pub.Update(Update{Policy: apiMode(mode)})
	g.publish()
}

func (g *migration) publish() {
	g.t.Helper()
	if _, err := g.pub.Publish(); err != nil {
		g.t.Fatal(err)
	}
}

// ack makes node ACK everything it was last sent.
func (g *migration) ack(node string) {
	g.t.Helper()
	s, err := g.cache.GetSnapshot(node)
	if err != nil {
		g.t.Fatal(err)
	}
	for _, typ := range []string{resourcev3.ListenerType, resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.RouteType, resourcev3.SecretType} {
		g.pub.Acked(node, typ, s.GetVersion(typ))
	}
}

// connect opens a stream for each node, which ACKs what it was last sent.
func (g *migration) connect(nodes ...string) {
	g.t.Helper()
	for _, n := range nodes {
		g.pub.StreamOpened(n)
		g.ack(n)
	}
}

// openedThenCallers finishes api's move to DISABLE from the step where it
// accepts both and waits for its listener ACK: it ACKs, web is switched to
// plaintext and waited for, then api goes DISABLE.
func (g *migration) openedThenCallers() {
	g.t.Helper()
	g.ack("api.default")
	g.publish()
	g.expect("server ACKed PERMISSIVE", "both", "plaintext")
	if w := g.waitingOn(); len(w) != 1 || !strings.HasPrefix(w[0], "web.default (") {
		g.t.Fatalf("waiting on %v, want web", w)
	}
	g.ack("web.default")
	g.publish()
	g.expect("web ACKed plaintext", "plaintext", "plaintext")
	g.done("disable")
}

func (g *migration) expect(step, server, caller string) {
	g.t.Helper()
	if got := serverAccepts(g.t, g.cache); got != server {
		g.t.Fatalf("%s: api accepts %s, want %s (migrations %+v)", step, got, server, g.pub.Transitions())
	}
	if got := webSends(g.t, g.cache); got != caller {
		g.t.Fatalf("%s: web sends %s, want %s (migrations %+v)", step, got, caller, g.pub.Transitions())
	}
}

func (g *migration) waitingOn() []string {
	tr := g.pub.Transitions()
	if len(tr) != 1 || tr[0].Proxy != "api.default" {
		g.t.Fatalf("migrations %+v, want api.default's", tr)
	}
	return tr[0].WaitingOn
}

func (g *migration) done(step string) {
	g.t.Helper()
	if tr := g.pub.Transitions(); len(tr) != 0 {
		g.t.Fatalf("%s: migration not finished: %+v", step, tr)
	}
}

// With connected proxies that ACK, each step waits for exactly the ACKs it
// needs, in both directions.
func TestMigrationWaitsForConnectedProxies(t *testing.T) {
	g := newMigration(t, permissive, time.Minute)
	g.connect("api.default", "web.default")
	g.publish()
	g.expect("start", "both", "mtls")

	// PERMISSIVE → STRICT waits for web to have ACKed config sending mTLS
	// (it has: the step proceeds in the same publish).
	g.set(strict)
	g.expect("strict, web had ACKed mTLS", "mtls", "mtls")
	g.done("strict")

	// STRICT → DISABLE: server accepts both first, then callers go
	// plaintext, then the server stops accepting mTLS.
	g.set(disable)
	g.expect("disable requested", "both", "mtls")
	if w := g.waitingOn(); !slices.Equal(w, []string{"api.default (Listener)"}) {
		t.Fatalf("waiting on %v, want api's listener", w)
	}
	g.publish()
	g.expect("server has not ACKed", "both", "mtls")
	g.openedThenCallers()
}

// A server nobody calls and nobody serves (no stream open) completes STRICT
// → DISABLE → STRICT in one publish each (issue 11: it used to wait
// forever for "callers to ACK").
func TestMigrationWithNoCallersCompletesAtOnce(t *testing.T) {
	for _, connected := range []bool{false, true} {
		g := newMigration(t, strict, time.Minute)
		if connected {
			// The server itself connected and ACKing; web disconnected.
			g.connect("api.default")
		}
		for _, to := range []mesh.MTLSMode{disable, strict} {
			g.set(to)
			if connected {
				g.ack("api.default")
				g.publish()
			}
			want := map[mesh.MTLSMode]string{disable: "plaintext", strict: "mtls"}[to]
			g.expect(string(to), want, want)
			g.done(string(to))
		}
	}
}

// A caller that disconnects mid-step stops holding it back: the disconnect
// alone re-evaluates the step.
func TestMigrationCallerDisconnectsMidStep(t *testing.T) {
	g := newMigration(t, strict, time.Minute)
	g.connect("web.default")
	g.set(disable)
	g.expect("server not connected: callers switch at once", "both", "plaintext")
	if w := g.waitingOn(); len(w) != 1 || !strings.HasPrefix(w[0], "web.default") {
		t.Fatalf("waiting on %v, want web", w)
	}
	g.pub.StreamClosed("web.default")
	g.publish()
	g.expect("web disconnected", "plaintext", "plaintext")
	g.done("after disconnect")
}

// A caller that never ACKs holds its step back; past the bound the step is
// reported (status, metric) and an operator can force it (through the
// running loop, as the admin endpoint does). On synctest's clock, so the
// bound is met exactly.
func TestMigrationCallerNeverACKsIsReportedAndForced(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const overdue = 50 * time.Millisecond
		g := newMigration(t, strict, overdue)
		g.connect("web.default")
		g.pub.Update(Update{Policy: apiMode(disable)})
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go g.pub.Run(ctx)
		synctest.Wait() // published at once (leading edge): the step waits for web
		time.Sleep(overdue - time.Millisecond)
		synctest.Wait()
		if tr := g.pub.Transitions(); len(tr) != 1 || tr[0].CallerMode != disable || tr[0].Overdue {
			t.Fatalf("before the bound: %+v, want api's migration waiting, not overdue", tr)
		}
		time.Sleep(time.Millisecond)
		synctest.Wait()
		tr := g.pub.Transitions()
		if len(tr) != 1 || !tr[0].Overdue || tr[0].Phase != "callers-moved" || len(tr[0].WaitingOn) != 1 ||
			!strings.HasPrefix(tr[0].WaitingOn[0], "web.default (") || tr[0].PendingSeconds != overdue.Seconds() {
			t.Fatalf("at the bound: %+v, want api's migration overdue, waiting on web", tr)
		}
		if got := testutil.ToFloat64(g.m.MigrationsPending); got != 1 {
			t.Errorf("meshd_mtls_migrations_in_progress = %v, want 1", got)
		}
		if since := g.m.MigrationWaitingSince.Load(); since == 0 || time.Since(time.Unix(0, since)) != overdue {
			t.Errorf("meshd_mtls_migration_pending_seconds source = %v, want the step's start", since)
		}
		if err := g.pub.ForceMigration(ctx, "db.default"); !errors.Is(err, ErrNoMigration) {
			t.Errorf("forcing a proxy with no migration: %v", err)
		}
		if err := g.pub.ForceMigration(ctx, "api.default"); err != nil {
			t.Fatal(err)
		}
		g.expect("forced", "plaintext", "plaintext")
		g.done("forced")
		if got := g.m.MigrationWaitingSince.Load(); got != 0 {
			t.Error("pending age still exported after the migration finished")
		}
	})
}

// A policy reverted mid-migration goes back without passing through the
// abandoned target, and without waiting for what no longer matters.
func TestMigrationPolicyRevertedMidway(t *testing.T) {
	g := newMigration(t, strict, time.Minute)
	g.connect("api.default", "web.default")
	g.set(disable)
	g.expect("disable requested", "both", "mtls")
	// Back to STRICT before the server ACKed PERMISSIVE: web still sends
	// mTLS and has ACKed that, so the server goes back to STRICT at once.
	g.set(strict)
	g.expect("reverted", "mtls", "mtls")
	g.done("reverted")

	// Reverted after the callers moved to plaintext: they move back first,
	// with the server still accepting both.
	g.set(disable)
	g.ack("api.default")
	g.publish()
	g.expect("callers moved", "both", "plaintext")
	g.set(strict)
	g.expect("reverted after callers moved", "both", "mtls")
	g.ack("web.default")
	g.publish()
	g.expect("web ACKed mTLS again", "mtls", "mtls")
	g.done("reverted twice")
}

// A proxy whose render fails keeps its last good snapshot, so its ACK of
// that (older) configuration says nothing about the step: it counts as
// waiting ("render failed") until a render succeeds and it ACKs that. Here
// the CA cannot issue api's certificate when api goes STRICT → DISABLE: api
// keeps its STRICT listener, so web must keep sending mTLS.
func TestMigrationWaitsWhileARenderFails(t *testing.T) {
	g := newMigration(t, strict, time.Minute)
	sec := g.pub.secrets.(*fakeSecrets)
	g.connect("api.default", "web.default")
	g.publish()
	g.expect("start", "mtls", "mtls")

	sec.mu.Lock()
	sec.failFor = "spiffe://cluster.local/ns/default/sa/api"
	sec.mu.Unlock()
	g.pub.Update(Update{Policy: apiMode(disable)})
	for i := range 3 {
		// Every publish retries api and fails again; ACKs of what api and
		// web were last sent must not move the step either.
		if _, err := g.pub.Publish(); err == nil || !strings.Contains(err.Error(), "CA unavailable") {
			t.Fatalf("publish %d with the CA failing for api: %v, want its error", i, err)
		}
		g.ack("api.default")
		g.ack("web.default")
		g.expect("api's render fails", "mtls", "mtls")
		if w := g.waitingOn(); !slices.Equal(w, []string{"api.default (render failed)"}) {
			t.Fatalf("waiting on %v, want api's failed render", w)
		}
	}
	tr := g.pub.Transitions()[0]
	if tr.Phase != "server-open" || tr.ServerMode != permissive || tr.CallerMode != strict || !strings.Contains(tr.WaitingFor, "render failed") {
		t.Fatalf("migration %+v, want api opening (PERMISSIVE) with web still on mTLS", tr)
	}

	// The CA recovers: api is rendered PERMISSIVE, ACKs it, and the
	// migration runs to its end as usual.
	sec.mu.Lock()
	sec.failFor = ""
	sec.mu.Unlock()
	g.publish()
	g.expect("CA recovered", "both", "mtls")
	if w := g.waitingOn(); !slices.Equal(w, []string{"api.default (Listener)"}) {
		t.Fatalf("waiting on %v, want api's new listener", w)
	}
	g.openedThenCallers()
}

// plaintextChain is the name of api's PERMISSIVE plaintext (default) chain.
func plaintextChain(t *testing.T, cache cachev3.SnapshotCache) string {
	t.Helper()
	s, _ := cache.GetSnapshot("api.default")
	return s.GetResources(resourcev3.ListenerType)["inbound|15102"].(*listenerv3.Listener).GetDefaultFilterChain().GetName()
}

// DISABLE → PERMISSIVE (soak defect 5): web's pooled plaintext connections
// outlive its move to mTLS unless api's plaintext chain changes once web
// has ACKed mTLS. The chain has its own name while web moves and its usual
// name after, so Envoy drains the plaintext connections then.
func TestMigrationToPermissiveDrainsPlaintextCallers(t *testing.T) {
	g := newMigration(t, disable, time.Minute)
	g.connect("api.default", "web.default")
	g.set(permissive)
	g.expect("permissive requested", "both", "plaintext")
	if got := plaintextChain(t, g.cache); got != xds.FilterChainPlaintextCallers {
		t.Fatalf("server open: plaintext chain %q, want %q", got, xds.FilterChainPlaintextCallers)
	}
	g.ack("api.default")
	g.publish()
	g.expect("server ACKed PERMISSIVE", "both", "mtls")
	if got := plaintextChain(t, g.cache); got != xds.FilterChainPlaintextCallers {
		t.Fatalf("callers moved: plaintext chain %q, want %q until web ACKs mTLS", got, xds.FilterChainPlaintextCallers)
	}
	if w := g.waitingOn(); len(w) != 1 || !strings.HasPrefix(w[0], "web.default (") {
		t.Fatalf("waiting on %v, want web", w)
	}
	if tr := g.pub.Transitions()[0]; !strings.Contains(tr.WaitingFor, "drains their plaintext connections") {
		t.Errorf("waiting for %q", tr.WaitingFor)
	}
	g.publish()
	g.expect("web has not ACKed", "both", "mtls")
	g.ack("web.default")
	g.publish()
	g.expect("web ACKed mTLS", "both", "mtls")
	if got := plaintextChain(t, g.cache); got != xds.FilterChainPlaintext {
		t.Fatalf("settled: plaintext chain %q, want %q", got, xds.FilterChainPlaintext)
	}
	g.done("permissive")
}
