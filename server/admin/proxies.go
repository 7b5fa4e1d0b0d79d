package admin

import (
	"fmt"
	"net/http"
	"sort"
	"strings"
	"time"

	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/server/tracker"
	"github.com/meshd/meshd/snapshot"
)

// Sync states of a resource type for one proxy, and of the proxy as a
// whole (its worst type), as meshctl status shows them.
const (
	// StateSynced: the proxy ACKed the version meshd serves now.
	StateSynced = "SYNCED"
	// StateStale: the proxy has not ACKed the version meshd serves now
	// (in flight, or waiting for the proxy); StaleSeconds says how long.
	StateStale = "STALE"
	// StateNotSent: nothing of this type was ever sent on the current
	// connection (the proxy has not asked for it).
	StateNotSent = "NOT SENT"
	// StateNacked: the proxy rejected the version meshd serves now, or a
	// later one it has not ACKed since (NackError says why).
	StateNacked = "NACKED"
	// StateDisconnected: the proxy has no stream open.
	StateDisconnected = "DISCONNECTED"
)

// typeOrder lists the types in the order proxies get them, with xDS's
// short names.
var typeOrder = []struct{ name, short, url string }{
	{"Listener", "LDS", resourcev3.ListenerType}, {"RouteConfiguration", "RDS", resourcev3.RouteType},
	{"Cluster", "CDS", resourcev3.ClusterType}, {"ClusterLoadAssignment", "EDS", resourcev3.EndpointType},
	{"Secret", "SDS", resourcev3.SecretType},
}

// TypeSync is one resource type of one proxy.
type TypeSync struct {
	// Type is the xDS type (Listener, RouteConfiguration, Cluster,
	// ClusterLoadAssignment, Secret), Short its service (LDS, RDS, CDS,
	// EDS, SDS).
	Type  string `json:"type"`
	Short string `json:"short"`
	// Version is what meshd serves the proxy now; Sent the last version
	// sent, Acked the last the proxy accepted.
	Version string    `json:"version"`
	Sent    string    `json:"sent,omitempty"`
	SentAt  time.Time `json:"sentAt,omitzero"`
	Acked   string    `json:"acked,omitempty"`
	State   string    `json:"state"`
	// Nacked is the version the proxy rejected, with Envoy's or gRPC's
	// error detail.
	Nacked    string    `json:"nacked,omitempty"`
	NackError string    `json:"nackError,omitempty"`
	NackAt    time.Time `json:"nackAt,omitzero"`
	// StaleSeconds is how long the proxy has been behind (STALE only).
	StaleSeconds float64 `json:"staleSeconds,omitempty"`
}

// ProxyState is one proxy as meshctl status shows it: catalog, connection,
// per-type sync state, mTLS migration.
type ProxyState struct {
	ID        string `json:"id"`
	Service   string `json:"service,omitempty"`
	Namespace string `json:"namespace,omitempty"`
	Identity  string `json:"identity,omitempty"`
	Flavor    string `json:"flavor"`
	// InCatalog is false for a node that connected with an id the catalog
	// does not have (it gets no configuration).
	InCatalog      bool             `json:"inCatalog"`
	Connected      bool             `json:"connected"`
	ConnectedSince time.Time        `json:"connectedSince,omitzero"`
	LastSeen       time.Time        `json:"lastSeen,omitzero"`
	Node           tracker.NodeMeta `json:"node"`
	// DrainWarning, for an Envoy, says why it may run without the drain
	// flags meshd relies on (tracker.DrainWarning); empty when its
	// bootstrap asks for them.
	DrainWarning string `json:"drainWarning,omitempty"`
	// State is the worst of Types' states (NACKED, STALE, NOT SENT,
	// SYNCED), or DISCONNECTED.
	State string     `json:"state"`
	Types []TypeSync `json:"types"`
	// RenderError is why meshd could not render the proxy's current
	// configuration (it keeps the last good one).
	RenderError string   `json:"renderError,omitempty"`
	Warnings    []string `json:"warnings,omitempty"`
	// Migration is the proxy's mTLS mode change in progress.
	Migration *snapshot.Transition `json:"migration,omitempty"`
}

// ProxiesReport is GET /proxies.
type ProxiesReport struct {
	Proxies []ProxyState `json:"proxies"`
	// Migrations are all mTLS mode changes in progress.
	Migrations []snapshot.Transition `json:"migrations,omitempty"`
}

// proxyStates joins the publisher's view (what meshd serves each proxy)
// with the tracker's (what each proxy was sent and ACKed), at now.
func proxyStates(v *snapshot.View, nodes []tracker.NodeStatus, trustDomain string, now time.Time) ProxiesReport {
	byID := map[string]tracker.NodeStatus{}
	for _, n := range nodes {
		byID[n.ID] = n
	}
	migr := map[string]*snapshot.Transition{}
	for i := range v.Migrations {
		migr[v.Migrations[i].Proxy] = &v.Migrations[i]
	}
	r := ProxiesReport{Proxies: []ProxyState{}, Migrations: v.Migrations}
	for _, ps := range v.Status() {
		p := ProxyState{ID: ps.ID, InCatalog: true, RenderError: ps.Error, Warnings: ps.Warnings, Migration: migr[ps.ID], Flavor: "unknown"}
		if v.Catalog != nil {
			if px := v.Catalog.Proxy(ps.ID); px != nil {
				p.Service, p.Namespace, p.Flavor = px.Service, px.Namespace, string(px.Flavor)
				if s := v.Catalog.Service(px.ServiceKey()); s != nil {
					p.Identity = mesh.IdentityOf(trustDomain, s).SPIFFEID()
				}
			}
		}
		n, seen := byID[ps.ID]
		delete(byID, ps.ID)
		if seen {
			p.Connected, p.ConnectedSince, p.LastSeen, p.Node, p.DrainWarning = n.Connected, n.ConnectedSince, n.LastSeen, n.Meta, n.DrainWarning
		}
		snap := v.Snapshot(ps.ID)
		for _, t := range typeOrder {
			version, ok := ps.Versions[t.name]
			if !ok {
				continue
			}
			ts := TypeSync{Type: t.name, Short: t.short, Version: version}
			if st := n.Types[t.name]; seen && st != nil {
				ts.Sent, ts.SentAt, ts.Acked = st.Sent, st.SentAt, st.Acked
				ts.Nacked, ts.NackError, ts.NackAt = st.Nacked, st.NackError, st.NackAt
			}
			if ts.Sent == "" && ts.Acked == "" && (snap == nil || len(snap.GetResources(t.url)) == 0) {
				// Nothing of this type to serve (a server without
				// upstreams has no endpoints): nothing to be behind on.
				continue
			}
			switch {
			case ts.Nacked != "":
				ts.State = StateNacked
			case ts.Acked == ts.Version:
				ts.State = StateSynced
			case ts.Sent == "" && ts.Acked == "":
				ts.State = StateNotSent
			default:
				ts.State = StateStale
				// Waiting for the ACK of what was sent, or, if meshd has a
				// newer version than it sent, since that was published (or
				// the proxy connected, if later).
				since := ts.SentAt
				if ts.Sent != ts.Version {
					since = v.PublishedAt
					if p.ConnectedSince.After(since) {
						since = p.ConnectedSince
					}
				}
				if !since.IsZero() {
					ts.StaleSeconds = max(0, now.Sub(since).Seconds())
				}
			}
			p.Types = append(p.Types, ts)
		}
		p.State = overall(p)
		r.Proxies = append(r.Proxies, p)
	}
	// Nodes that connected with ids the catalog does not have.
	for _, n := range byID {
		if !n.Connected {
			continue
		}
		r.Proxies = append(r.Proxies, ProxyState{ID: n.ID, Flavor: n.Flavor, Connected: true, ConnectedSince: n.ConnectedSince,
			LastSeen: n.LastSeen, Node: n.Meta, State: StateNotSent, Types: []TypeSync{}})
	}
	sort.Slice(r.Proxies, func(i, j int) bool { return r.Proxies[i].ID < r.Proxies[j].ID })
	return r
}

// overall is a proxy's worst state.
func overall(p ProxyState) string {
	if !p.Connected {
		return StateDisconnected
	}
	rank := map[string]int{StateSynced: 0, StateNotSent: 1, StateStale: 2, StateNacked: 3}
	worst := StateSynced
	for _, t := range p.Types {
		if rank[t.State] > rank[worst] {
			worst = t.State
		}
	}
	return worst
}

// proxies serves GET /proxies and GET /proxies/{id}.
func (a *Admin) proxies(w http.ResponseWriter, r *http.Request) {
	rep := proxyStates(a.Publisher.View(), a.Tracker.Status(), a.TrustDomain, time.Now())
	id := r.PathValue("id")
	if id == "" {
		writeJSON(w, http.StatusOK, rep)
		return
	}
	for _, p := range rep.Proxies {
		if p.ID == id {
			writeJSON(w, http.StatusOK, p)
			return
		}
	}
	http.Error(w, fmt.Sprintf("no proxy %q: meshctl status lists the proxies", id), http.StatusNotFound)
}

// syncCollector exports the proxies' sync states: how many connected
// proxies are in each, and how long the proxy furthest behind has been.
type syncCollector struct {
	a      *Admin
	states *prometheus.Desc
	oldest *prometheus.Desc
}

// NewSyncCollector returns the collector of meshd_proxies and
// meshd_proxy_stale_seconds.
func NewSyncCollector(a *Admin) prometheus.Collector {
	return &syncCollector{a: a,
		states: prometheus.NewDesc("meshd_proxies",
			"Proxies of the catalog by sync state: synced, stale (has not ACKed what meshd serves), nacked (rejected it), not_sent, disconnected.", []string{"state"}, nil),
		oldest: prometheus.NewDesc("meshd_proxy_stale_seconds",
			"How long the connected proxy furthest behind has not ACKed what meshd serves it (0 when every proxy is synced).", nil, nil),
	}
}

func (c *syncCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.states
	ch <- c.oldest
}

func (c *syncCollector) Collect(ch chan<- prometheus.Metric) {
	rep := proxyStates(c.a.Publisher.View(), c.a.Tracker.Status(), c.a.TrustDomain, time.Now())
	counts := map[string]int{StateSynced: 0, StateStale: 0, StateNacked: 0, StateNotSent: 0, StateDisconnected: 0}
	oldest := 0.0
	for _, p := range rep.Proxies {
		if !p.InCatalog {
			continue
		}
		counts[p.State]++
		for _, t := range p.Types {
			if p.Connected && t.StaleSeconds > oldest {
				oldest = t.StaleSeconds
			}
		}
	}
	for s, n := range counts {
		ch <- prometheus.MustNewConstMetric(c.states, prometheus.GaugeValue, float64(n), labelOf(s))
	}
	ch <- prometheus.MustNewConstMetric(c.oldest, prometheus.GaugeValue, oldest)
}

// labelOf is a state as a Prometheus label value (not_sent).
func labelOf(state string) string { return strings.ReplaceAll(strings.ToLower(state), " ", "_") }
