package soak

import (
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/meshd/meshd/mesh"
)

// meshdStatus is the part of meshd's /debug/status the soak reads
// (docs/operations.md).
type meshdStatus struct {
	Ready   bool `json:"ready"`
	Catalog *struct {
		SHA256    string `json:"sha256"`
		LastError string `json:"lastError"`
	} `json:"catalog"`
	Policy *struct {
		SHA256    string `json:"sha256"`
		LastError string `json:"lastError"`
	} `json:"policy"`
	Migrations []struct {
		Proxy      string   `json:"proxy"`
		From       string   `json:"from"`
		To         string   `json:"to"`
		Phase      string   `json:"phase"`
		WaitingFor string   `json:"waitingFor"`
		WaitingOn  []string `json:"waitingOn"`
		Overdue    bool     `json:"overdue"`
	} `json:"migrations"`
	Proxies []struct {
		ID       string            `json:"id"`
		Versions map[string]string `json:"versions"`
		Error    string            `json:"error"`
		XDS      *nodeStatus       `json:"xds"`
	} `json:"proxies"`
	Unknown []nodeStatus `json:"unknownNodes"`
}

type nodeStatus struct {
	ID        string `json:"id"`
	Streams   int    `json:"streams"`
	Connected bool   `json:"connected"`
	Types     map[string]struct {
		Sent      string `json:"sent"`
		Acked     string `json:"acked"`
		Nacked    string `json:"nacked"`
		NackError string `json:"nackError"`
	} `json:"types"`
}

// statusCheck is what one /debug/status says about convergence.
type statusCheck struct {
	// Faults end the soak at once: NACKs, render errors, a refused input
	// file, an overdue migration.
	Faults []string
	// Pending says why the mesh has not converged yet: proxies not
	// connected or not having ACKed what meshd serves them, migrations in
	// progress. Empty: converged.
	Pending []string
	// Lagging maps "proxy type" to the version meshd serves that the
	// proxy has not ACKed (for the stream-progress watchdog).
	Lagging map[string]string
	// Idle are the lagging "proxy type"s with no response in flight: the
	// proxy ACKed the last one sent and meshd sent nothing newer. Either
	// the proxy no longer subscribes to the type (an Envoy whose inbound
	// listener became plaintext drops its SDS subscription; meshd's status
	// keeps the type) or a push is stuck; the caller tells which.
	Idle map[string]bool
	// Disconnected are the real sidecars without an xDS stream. meshd
	// ends streams on purpose (--xds-max-connection-age: GOAWAY, then the
	// streams after the grace), and Envoy reconnects after a back-off, so
	// this is pending; the watchdog bounds how long it may last.
	Disconnected []string
	Connected    int
}

// checkStatus reads a status against the proxies that must be connected
// (real: the soak's own sidecars, which must reconnect within a bound;
// fleet: simulated proxies, which reconnect storms disconnect on purpose).
func checkStatus(st *meshdStatus, real, fleet []string) statusCheck {
	var c statusCheck
	c.Lagging, c.Idle = map[string]string{}, map[string]bool{}
	if !st.Ready {
		c.Pending = append(c.Pending, "meshd not ready")
	}
	if st.Catalog != nil && st.Catalog.LastError != "" {
		c.Faults = append(c.Faults, "catalog refused: "+st.Catalog.LastError)
	}
	if st.Policy != nil && st.Policy.LastError != "" {
		c.Faults = append(c.Faults, "policy directory refused: "+st.Policy.LastError)
	}
	for _, m := range st.Migrations {
		w := fmt.Sprintf("migration of %s %s→%s (%s) waits: %s %v", m.Proxy, m.From, m.To, m.Phase, m.WaitingFor, m.WaitingOn)
		if m.Overdue {
			c.Faults = append(c.Faults, "overdue "+w)
		} else {
			c.Pending = append(c.Pending, w)
		}
	}
	want := map[string]bool{}
	isReal := map[string]bool{}
	for _, id := range real {
		want[id], isReal[id] = true, true
	}
	for _, id := range fleet {
		want[id] = true
	}
	seen := map[string]bool{}
	for _, p := range st.Proxies {
		if p.Error != "" {
			c.Faults = append(c.Faults, fmt.Sprintf("proxy %s could not be rendered: %s", p.ID, p.Error))
		}
		if p.XDS == nil || !p.XDS.Connected {
			continue
		}
		c.Connected++
		seen[p.ID] = true
		types := make([]string, 0, len(p.XDS.Types))
		for t := range p.XDS.Types {
			types = append(types, t)
		}
		sort.Strings(types)
		for _, t := range types {
			ts := p.XDS.Types[t]
			if ts.Nacked != "" || ts.NackError != "" {
				c.Faults = append(c.Faults, fmt.Sprintf("NACK: %s rejected %s version %s: %s", p.ID, t, ts.Nacked, ts.NackError))
			}
			v, ok := p.Versions[t]
			if !ok || ts.Acked == v {
				continue
			}
			c.Lagging[p.ID+" "+t] = v
			if ts.Sent == ts.Acked {
				c.Idle[p.ID+" "+t] = true
			}
			c.Pending = append(c.Pending, lagText(p.ID, t, v, ts.Acked, ts.Sent))
		}
	}
	for _, n := range st.Unknown {
		if n.Connected && want[n.ID] {
			c.Faults = append(c.Faults, fmt.Sprintf("proxy %s is connected but not in meshd's catalog", n.ID))
		}
	}
	var missing []string
	for id := range want {
		if !seen[id] {
			if isReal[id] {
				c.Disconnected = append(c.Disconnected, id)
				c.Pending = append(c.Pending, "real sidecar "+id+" has no xDS stream (reconnecting)")
			} else {
				missing = append(missing, id)
			}
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		c.Pending = append(c.Pending, fmt.Sprintf("%d fleet proxies not connected, e.g. %s", len(missing), missing[0]))
	}
	sort.Strings(c.Faults)
	sort.Strings(c.Disconnected)
	return c
}

// goneTracker bounds how long a real sidecar may be without its xDS
// stream.
type goneTracker struct {
	bound time.Duration
	since map[string]time.Time
}

func newGoneTracker(bound time.Duration) *goneTracker {
	return &goneTracker{bound: bound, since: map[string]time.Time{}}
}

// observe records the sidecars disconnected at now and returns those
// disconnected for longer than the bound, with how long.
func (g *goneTracker) observe(disconnected []string, now time.Time) []string {
	gone := map[string]bool{}
	var long []string
	for _, id := range disconnected {
		gone[id] = true
		t, ok := g.since[id]
		if !ok {
			g.since[id] = now
			continue
		}
		if d := now.Sub(t); d > g.bound {
			long = append(long, fmt.Sprintf("real sidecar %s has had no xDS stream for %s", id, d.Round(time.Second)))
		}
	}
	for id := range g.since {
		if !gone[id] {
			delete(g.since, id)
		}
	}
	return long
}

// lagText is how a lagging type reads in pending lists; resolveIdle
// recognises it.
func lagText(id, typ, served, acked, sent string) string {
	return fmt.Sprintf("%s has not ACKed %s %s (acked %q, sent %q)", id, typ, served, acked, sent)
}

// dropResolved removes from a status check the idle lags that resolved
// says are not lags (the proxy does not subscribe to the type).
func (c *statusCheck) dropResolved(resolved map[string]bool) {
	if len(resolved) == 0 {
		return
	}
	for k := range resolved {
		delete(c.Lagging, k)
		delete(c.Idle, k)
	}
	c.Pending = slices.DeleteFunc(c.Pending, func(p string) bool {
		id, rest, _ := strings.Cut(p, " has not ACKed ")
		typ, _, _ := strings.Cut(rest, " ")
		return resolved[id+" "+typ]
	})
}

// lagTracker is the stream-progress watchdog: a proxy that has not ACKed
// a version meshd serves it for longer than the bound is stuck, even while
// meshd keeps publishing other changes.
type lagTracker struct {
	bound time.Duration
	since map[string]lagEntry
}

type lagEntry struct {
	version string
	since   time.Time
}

func newLagTracker(bound time.Duration) *lagTracker {
	return &lagTracker{bound: bound, since: map[string]lagEntry{}}
}

// observe records one status's lagging proxies at now and returns those
// stuck on the same version for longer than the bound.
func (l *lagTracker) observe(lagging map[string]string, now time.Time) []string {
	for k := range l.since {
		if _, ok := lagging[k]; !ok {
			delete(l.since, k)
		}
	}
	var stuck []string
	for k, v := range lagging {
		e, ok := l.since[k]
		if !ok || e.version != v {
			l.since[k] = lagEntry{version: v, since: now}
			continue
		}
		if d := now.Sub(e.since); d > l.bound {
			stuck = append(stuck, fmt.Sprintf("%s: version %s served for %s without an ACK", k, v, d.Round(time.Second)))
		}
	}
	sort.Strings(stuck)
	return stuck
}

// ruleRE finds the soak's rule names in rendered configuration.
var ruleRE = regexp.MustCompile(`(?:` + regexp.QuoteMeta(Namespace) + `|` + regexp.QuoteMeta(RootNamespace) + `)/` + policyPrefix + `[0-9]+/rule-[0-9]+`)

// configDump is meshd's /debug/config_dump answer, split per type.
type configDump struct {
	Configs []json.RawMessage `json:"configs"`
}

// dumpSection returns the part of a config dump of the given kind
// ("ListenersConfigDump", …).
func dumpSection(raw []byte, kind string) (string, error) {
	var d configDump
	if err := json.Unmarshal(raw, &d); err != nil {
		return "", fmt.Errorf("config dump: %w", err)
	}
	for _, c := range d.Configs {
		var h struct {
			Type string `json:"@type"`
		}
		if json.Unmarshal(c, &h) == nil && strings.HasSuffix(h.Type, "."+kind) {
			return string(c), nil
		}
	}
	return "", nil
}

// checkServerDump says what a real server replica's configuration, as
// meshd serves it, lacks for the state: the soak's rules that apply to it
// (and no others), and the inbound listener of its settled mTLS mode.
func checkServerDump(raw []byte, s *State, server string, replica int) []string {
	var problems []string
	want := map[string]bool{}
	for _, a := range s.Applying(server, replica) {
		want[a.RuleName()] = true
	}
	got := map[string]bool{}
	for _, m := range ruleRE.FindAllString(string(raw), -1) {
		got[m] = true
	}
	id := ProxyID(server, replica)
	for r := range want {
		if !got[r] {
			problems = append(problems, fmt.Sprintf("%s lacks rule %s", id, r))
		}
	}
	for r := range got {
		if !want[r] {
			problems = append(problems, fmt.Sprintf("%s still has rule %s", id, r))
		}
	}
	lds, err := dumpSection(raw, "ListenersConfigDump")
	if err != nil {
		return append(problems, err.Error())
	}
	mode := s.Mode(server, replica)
	hasMTLS := strings.Contains(lds, `"inbound_mtls.`)
	hasPlain := strings.Contains(lds, `"inbound_plaintext.`)
	wantMTLS := mode == mesh.MTLSStrict || mode == mesh.MTLSPermissive
	wantPlain := mode == mesh.MTLSPermissive || mode == mesh.MTLSDisable
	if hasMTLS != wantMTLS || hasPlain != wantPlain {
		problems = append(problems, fmt.Sprintf("%s's inbound listener is not %s (mTLS chain %v, plaintext chain %v)", id, mode, hasMTLS, hasPlain))
	}
	sort.Strings(problems)
	return problems
}

// endpointsOf lists the endpoints (address:port and health) of one cluster
// in a config dump.
func endpointsOf(raw []byte, cluster string) (map[string]string, error) {
	eds, err := dumpSection(raw, "EndpointsConfigDump")
	if err != nil || eds == "" {
		return nil, err
	}
	var d struct {
		Dynamic []struct {
			Config struct {
				ClusterName string `json:"clusterName"`
				Endpoints   []struct {
					LB []struct {
						Endpoint struct {
							Address struct {
								Socket struct {
									Address string `json:"address"`
									Port    uint32 `json:"portValue"`
								} `json:"socketAddress"`
							} `json:"address"`
						} `json:"endpoint"`
						Health string `json:"healthStatus"`
					} `json:"lbEndpoints"`
				} `json:"endpoints"`
			} `json:"endpointConfig"`
		} `json:"dynamicEndpointConfigs"`
	}
	if err := json.Unmarshal([]byte(eds), &d); err != nil {
		return nil, fmt.Errorf("endpoints dump: %w", err)
	}
	out := map[string]string{}
	for _, c := range d.Dynamic {
		if c.Config.ClusterName != cluster {
			continue
		}
		for _, l := range c.Config.Endpoints {
			for _, e := range l.LB {
				h := e.Health
				if h == "" {
					h = "UNKNOWN"
				}
				out[fmt.Sprintf("%s:%d", e.Endpoint.Address.Socket.Address, e.Endpoint.Address.Socket.Port)] = h
			}
		}
	}
	return out, nil
}
