package snapshot

import (
	"fmt"
	"sort"
	"time"

	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/xds"
)

// Safe mTLS migration.
//
// Changing a workload's mTLS mode touches two sides that proxies update
// independently: the workload's own inbound listener (what it accepts) and
// its callers' clusters (whether they send mTLS or plaintext). Applied at
// once, requests fail in between: a server gone STRICT before its callers
// send mTLS refuses them; callers sending plaintext before the server
// accepts it are refused. So each side changes in its own step, and the
// next step waits until the proxies concerned have ACKed the previous one:
//
//   - callers switch between mTLS and plaintext only while the server
//     accepts both (PERMISSIVE), which it has ACKed first;
//   - a server becomes STRICT only after every connected caller has ACKed
//     configuration that sends it mTLS;
//   - loosening a server (STRICT → PERMISSIVE) is applied at once.
//
// Disconnected proxies do not hold a step back: they receive the current
// configuration when they reconnect.

// AckSource reports what proxies have acknowledged; the xDS server's
// tracker implements it.
type AckSource interface {
	// Acked returns the version of typeURL the node last ACKed and whether
	// the node has an open stream.
	Acked(node, typeURL string) (version string, connected bool)
}

// modes is what is rendered for one workload: the server side and the
// callers' view.
type modes struct{ server, caller mesh.MTLSMode }

// Transition is a mode change in progress, for status pages.
type Transition struct {
	Proxy      string        `json:"proxy"`
	From       mesh.MTLSMode `json:"from"`
	To         mesh.MTLSMode `json:"to"`
	ServerMode mesh.MTLSMode `json:"serverMode"`
	CallerMode mesh.MTLSMode `json:"callerMode"`
	WaitingFor string        `json:"waitingFor"`
	Since      time.Time     `json:"since"`
}

type migration struct {
	from  mesh.MTLSMode
	since time.Time
	wait  string
}

// SetAckSource enables safe migration; without it modes apply at once.
func (p *Publisher) SetAckSource(a AckSource) {
	p.mu.Lock()
	p.acks = a
	p.mu.Unlock()
}

// Acked tells the publisher a proxy acknowledged something; it re-evaluates
// pending migrations (debounced like any other change).
func (p *Publisher) Acked() {
	p.mu.Lock()
	pending := len(p.migrations) > 0
	p.mu.Unlock()
	if pending {
		select {
		case p.kick <- struct{}{}:
		default:
		}
	}
}

// Transitions lists mode changes in progress, sorted by proxy.
func (p *Publisher) Transitions() []Transition {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]Transition, 0, len(p.migrations))
	for id, mg := range p.migrations {
		a := p.applied[id]
		out = append(out, Transition{Proxy: id, From: mg.from, To: p.desired[id], ServerMode: a.server, CallerMode: a.caller, WaitingFor: mg.wait, Since: mg.since})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Proxy < out[j].Proxy })
	return out
}

func callerView(m mesh.MTLSMode) mesh.MTLSMode {
	if m == mesh.MTLSDisable {
		return mesh.MTLSDisable
	}
	return mesh.MTLSStrict // "sends mTLS"
}

// plan advances every workload's migration by at most one step and returns
// the overrides to render with. Called with p.mu held, before rendering.
func (p *Publisher) plan(cat *mesh.Catalog, ps *mesh.PolicySet) *xds.Overrides {
	ov := &xds.Overrides{ServerMode: map[string]mesh.MTLSMode{}, CallerMode: map[string]mesh.MTLSMode{}}
	if ps == nil {
		ps = &mesh.PolicySet{RootNamespace: mesh.DefaultRootNamespace}
	}
	seen := map[string]bool{}
	for _, s := range cat.Proxies() {
		if !s.Inbound() {
			continue
		}
		seen[s.ID] = true
		want := ps.MTLSModeFor(cat.WorkloadOf(s))
		p.desired[s.ID] = want
		cur, known := p.applied[s.ID]
		target := modes{server: want, caller: callerView(want)}
		switch {
		case !known || p.acks == nil:
			// A new workload (or no ACK feedback): nothing to migrate from.
			cur = target
		case cur == target:
		case cur.caller != target.caller:
			// Callers must change transport: only while the server accepts
			// both, and only once it has ACKed that.
			if cur.server != mesh.MTLSPermissive && s.Flavor == mesh.FlavorEnvoy {
				cur.server = mesh.MTLSPermissive
				p.waiting(s.ID, cur, "server to ACK PERMISSIVE")
			} else if wait := p.serverConverged(s.ID); wait != "" && s.Flavor == mesh.FlavorEnvoy {
				p.waiting(s.ID, cur, wait)
			} else {
				cur.caller = target.caller
				p.waiting(s.ID, cur, "callers to ACK their new transport")
			}
		case target.server == mesh.MTLSStrict:
			// Tightening: every connected caller must already send mTLS.
			if wait := p.callersConverged(cat, s); wait != "" {
				p.waiting(s.ID, cur, wait)
			} else {
				cur.server = target.server
			}
		default:
			// Loosening (or DISABLE once callers went plaintext) is safe.
			if cur.caller == target.caller && target.server == mesh.MTLSDisable {
				if wait := p.callersConverged(cat, s); wait != "" {
					p.waiting(s.ID, cur, wait)
					break
				}
			}
			cur.server = target.server
		}
		if cur == target {
			delete(p.migrations, s.ID)
		}
		p.applied[s.ID] = cur
		ov.ServerMode[s.ID] = cur.server
		ov.CallerMode[xds.EndpointKey(s.ServiceKey(), &mesh.Endpoint{Address: s.Address, Port: s.PublicPort})] = cur.caller
	}
	for id := range p.applied {
		if !seen[id] {
			delete(p.applied, id)
			delete(p.desired, id)
			delete(p.migrations, id)
		}
	}
	return ov
}

func (p *Publisher) waiting(id string, cur modes, why string) {
	mg := p.migrations[id]
	if mg == nil {
		mg = &migration{from: p.applied[id].server, since: time.Now()}
		p.migrations[id] = mg
		p.log.Info("mTLS mode change in progress", "proxy", id, "from", mg.from, "to", p.desired[id])
	}
	mg.wait = why
	_ = cur
}

// serverConverged returns "" when the server proxy has ACKed its current
// listeners (or is not connected), else what is awaited.
func (p *Publisher) serverConverged(id string) string {
	st := p.proxies[id]
	if st == nil || st.snap == nil {
		return ""
	}
	v, connected := p.acks.Acked(id, resourcev3.ListenerType)
	if connected && v != st.snap.GetVersion(resourcev3.ListenerType) {
		return "server " + id + " to ACK its listener"
	}
	return ""
}

// callersConverged returns "" when every connected proxy calling s's
// service has ACKed its current clusters and endpoints.
func (p *Publisher) callersConverged(cat *mesh.Catalog, s *mesh.Proxy) string {
	for _, c := range cat.Proxies() {
		calls := false
		for i := range c.Upstreams {
			calls = calls || c.Upstreams[i].Key() == s.ServiceKey()
		}
		if !calls {
			continue
		}
		st := p.proxies[c.ID]
		if st == nil || st.snap == nil {
			continue
		}
		for _, typ := range []string{resourcev3.ClusterType, resourcev3.EndpointType} {
			v, connected := p.acks.Acked(c.ID, typ)
			if connected && v != st.snap.GetVersion(typ) {
				return fmt.Sprintf("caller %s to ACK its %s", c.ID, shortType(typ))
			}
		}
	}
	return ""
}
