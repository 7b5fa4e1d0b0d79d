// Package tracker observes meshd's xDS streams: who is connected, what
// each proxy was sent, acknowledged and rejected, and which trust-bundle
// roots it has ACKed. The stream loops (package server) feed it.
package tracker

import (
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshd/meshd/bootstrap"
	"github.com/meshd/meshd/internal/metrics"
	"github.com/meshd/meshd/xds"
)

// Tracker observes the xDS streams: which proxies are connected, and what
// each was sent, acknowledged and rejected, for /debug/status, the metrics
// and the CA's root rotation (which roots each proxy has ACKed). The stream
// loops (sotw.go, delta.go) feed it; it decides nothing about what is sent
// (the loops own the xDS protocol, NACK handling included) and calls
// nothing outside this package while holding its lock.
type Tracker struct {
	log *slog.Logger
	m   *metrics.Metrics
	// known reports whether a node id is in the published catalog (an
	// unknown node is logged once per stream, and forgotten a while after
	// it disconnects). Called without the lock.
	known func(nodeID string) bool
	// now is the clock (a fake one in tests).
	now func() time.Time

	mu      sync.Mutex
	streams map[StreamKey]*streamState
	nodes   map[string]*nodeState
	// nextSweep is when forget next looks for nodes to drop.
	nextSweep time.Time

	// bundles records the trust bundles proxies ACKed (bundle.go).
	bundles bundleAcks
}

// StreamKey identifies a stream. SotW and delta streams are numbered with
// separate counters, so an id alone is ambiguous.
type StreamKey struct {
	Delta bool
	ID    int64
}

type streamState struct {
	node   string
	flavor string
	// bundle: the stream subscribes to the trust bundle now, as its loop
	// last said (BundleSubscribed). The CA's root rotation waits only for
	// the nodes of such streams (bundle.go).
	bundle bool
}

type nodeState struct {
	flavor  string
	streams int
	// drainWarning says why this Envoy's drain settings are not meshd's
	// (drain.go); logged once per node, shown in /debug/status.
	drainWarning string
	// connected is when the node's current run of streams began (its
	// streams went from none to one).
	connected time.Time
	// meta is what the node's first request said about itself.
	meta NodeMeta
	// types holds the status of each response type the node was sent or
	// asked for, indexed by go-control-plane's response type: a fixed array
	// rather than a map per node (every proxy that ever connected has one).
	types [types.UnknownType]*TypeStatus
	seen  time.Time
}

// status returns the node's status of a type URL, nil if none yet or if
// meshd does not serve the type.
func (n *nodeState) status(typeURL string) *TypeStatus {
	if i := cachev3.GetResponseType(typeURL); i != types.UnknownType {
		return n.types[i]
	}
	return nil
}

// NodeMeta is what a proxy says about itself in its node (bootstrap).
type NodeMeta struct {
	// UserAgent is the client and its version (envoy 1.40.0, grpc-go 1.85.0).
	UserAgent string `json:"userAgent,omitempty"`
	// DrainTimeS and DrainStrategy are the drain flags the bootstrap asked
	// Envoy to be started with (xds.NodeMetaDrainTimeS; meshctl bootstrap
	// writes them); empty when the bootstrap did not say. Envoy does not
	// report its command line over xDS: these say what was asked for.
	DrainTimeS    string `json:"drainTimeS,omitempty"`
	DrainStrategy string `json:"drainStrategy,omitempty"`
}

func metaOf(n *corev3.Node) NodeMeta {
	m := NodeMeta{UserAgent: n.GetUserAgentName()}
	if v := n.GetUserAgentBuildVersion().GetVersion(); v != nil {
		m.UserAgent += fmt.Sprintf(" %d.%d.%d", v.GetMajorNumber(), v.GetMinorNumber(), v.GetPatch())
	} else if v := n.GetUserAgentVersion(); v != "" {
		m.UserAgent += " " + v
	}
	f := n.GetMetadata().GetFields()
	if v, ok := f[xds.NodeMetaDrainTimeS]; ok {
		m.DrainTimeS = strconv.FormatFloat(v.GetNumberValue(), 'f', -1, 64)
		if s := v.GetStringValue(); s != "" {
			m.DrainTimeS = s
		}
	}
	m.DrainStrategy = f[xds.NodeMetaDrainStrategy].GetStringValue()
	return m
}

// TypeStatus is the xDS state of one resource type for one proxy.
type TypeStatus struct {
	Sent      string    `json:"sent,omitempty"`
	SentAt    time.Time `json:"sentAt,omitzero"`
	Acked     string    `json:"acked,omitempty"`
	Nacked    string    `json:"nacked,omitempty"`
	NackError string    `json:"nackError,omitempty"`
	NackAt    time.Time `json:"nackAt,omitzero"`
	Pushes    int       `json:"pushes"`
}

// NewTracker returns a tracker; known reports whether a node id is in the
// current catalog (an unknown node is logged once per stream, and
// forgotten ForgetAfter after it disconnects). With known nil, no node
// counts as in the catalog.
func NewTracker(log *slog.Logger, m *metrics.Metrics, known func(string) bool) *Tracker {
	return &Tracker{log: log, m: m, known: known, now: time.Now, streams: map[StreamKey]*streamState{}, nodes: map[string]*nodeState{}}
}

// ForgetAfter is how long the tracker remembers a proxy that has no stream
// open and whose node id is not in the catalog: /debug/status lists it as
// disconnected (under unknownNodes) that long, then drops it. Without this
// the tracker would keep every node id it ever saw, and some change on
// every deploy (Consul instance ids), so its memory would grow without
// bound. A proxy of the catalog is kept however long it has been gone
// (the catalog bounds those), and so is a connected one.
const ForgetAfter = 10 * time.Minute

// sweepEvery is how often, at most, the tracker looks for nodes to forget.
// It looks when a stream names its node (the only way the map grows) and
// when its status is read, so a node is forgotten between ForgetAfter and
// ForgetAfter+sweepEvery after its last stream closed: the tracker holds
// the catalog's proxies, the connected ones, and those that disconnected
// within the last ForgetAfter+sweepEvery.
const sweepEvery = time.Minute

// forget drops the nodes that have had no stream open for ForgetAfter and
// are not in the catalog, with the trust bundles they ACKed and the
// mesh-agents that stopped fetching. At most once per sweepEvery; the
// catalog is asked without the lock held (it reads the publisher's
// immutable view).
func (t *Tracker) forget() {
	now := t.now()
	cutoff := now.Add(-ForgetAfter)
	idle := func(n *nodeState) bool { return n.streams == 0 && n.seen.Before(cutoff) }
	t.mu.Lock()
	if now.Before(t.nextSweep) {
		t.mu.Unlock()
		return
	}
	t.nextSweep = now.Add(sweepEvery)
	var stale []string
	for id, n := range t.nodes {
		if idle(n) {
			stale = append(stale, id)
		}
	}
	t.mu.Unlock()
	gone := stale[:0]
	for _, id := range stale {
		if t.known == nil || !t.known(id) {
			gone = append(gone, id)
		}
	}
	t.mu.Lock()
	// Checked again: a node may have reconnected meanwhile.
	forgotten := gone[:0]
	for _, id := range gone {
		if n := t.nodes[id]; n != nil && idle(n) {
			delete(t.nodes, id)
			forgotten = append(forgotten, id)
		}
	}
	// Still under t.mu (the one place the two locks nest, in this order):
	// a forgotten node that reconnects cannot have its new ACK dropped.
	t.bundles.forget(forgotten, now)
	t.mu.Unlock()
	if len(forgotten) > 0 {
		t.log.Debug("forgot proxies that disconnected long ago and are not in the catalog", "nodes", len(forgotten), "after", ForgetAfter)
	}
}

func flavorOf(n *corev3.Node) string {
	if f := n.GetMetadata().GetFields()[xds.NodeMetaFlavor].GetStringValue(); f == "envoy" || f == "grpc" || f == "gateway" {
		return f
	}
	ua := strings.ToLower(n.GetUserAgentName())
	switch {
	case strings.Contains(ua, "envoy"):
		return "envoy"
	case strings.Contains(ua, "grpc"):
		return "grpc"
	}
	return "unknown"
}

// Identified binds a stream to its node (the stream's first request that
// names one).
func (t *Tracker) Identified(k StreamKey, node *corev3.Node) {
	id, flavor := node.GetId(), flavorOf(node)
	if id == "" {
		return
	}
	drain := ""
	if flavor == "envoy" || flavor == "gateway" {
		drain = DrainWarning(node)
	}
	t.mu.Lock()
	if s := t.streams[k]; s != nil {
		t.mu.Unlock()
		return // already bound
	}
	t.streams[k] = &streamState{node: id, flavor: flavor}
	n := t.nodes[id]
	if n == nil {
		n = &nodeState{}
		t.nodes[id] = n
	}
	n.flavor = flavor
	now := t.now()
	if n.streams == 0 {
		n.connected = now
	}
	n.streams++
	n.seen = now
	warnDrain := drain != "" && n.drainWarning != drain
	n.drainWarning = drain
	n.meta = metaOf(node)
	t.mu.Unlock()
	t.m.ConnectedProxies.WithLabelValues(flavor).Inc()
	if t.known != nil && !t.known(id) {
		t.log.Warn("proxy connected with a node id that is not in the catalog; it gets no configuration until one is added",
			"node", id, "flavor", flavor, "stream", k.ID)
	} else {
		t.log.Info("proxy connected", "node", id, "flavor", flavor, "stream", k.ID, "delta", k.Delta)
	}
	if warnDrain {
		t.log.Warn("Envoy sidecar may run without meshd's drain settings: an mTLS mode or tcp policy change can take up to Envoy's default 600 s to reach its open connections",
			"node", id, "reason", drain, "envoy_command", bootstrap.EnvoyCommand("FILE", 0))
	}
	t.forget()
}

// Probe takes and releases the tracker's locks: the liveness check's way to
// tell that no caller holds them for good.
func (t *Tracker) Probe() {
	t.mu.Lock()
	t.mu.Unlock()
	t.bundles.mu.Lock()
	t.bundles.mu.Unlock()
}

// Closed records that a stream ended.
func (t *Tracker) Closed(k StreamKey) {
	t.bundles.closed(k)
	t.mu.Lock()
	s := t.streams[k]
	delete(t.streams, k)
	if s != nil {
		if n := t.nodes[s.node]; n != nil {
			n.streams--
			n.seen = t.now()
		}
	}
	t.mu.Unlock()
	if s == nil {
		return
	}
	t.m.ConnectedProxies.WithLabelValues(s.flavor).Dec()
	t.log.Info("proxy disconnected", "node", s.node, "stream", k.ID, "delta", k.Delta)
}

// typeStatus returns the status record of a stream's node for a type, or
// nil for a stream that never named its node or a type meshd does not
// serve. Called with t.mu held.
func (t *Tracker) typeStatus(k StreamKey, typeURL string) (string, *TypeStatus) {
	s := t.streams[k]
	if s == nil {
		return "", nil
	}
	n := t.nodes[s.node]
	i := cachev3.GetResponseType(typeURL)
	if n == nil || i == types.UnknownType {
		return s.node, nil
	}
	if n.types[i] == nil {
		n.types[i] = &TypeStatus{}
	}
	return s.node, n.types[i]
}

// BundleSubscribed records whether a stream subscribes to the trust bundle
// (xds.TrustBundleSecretName) after its latest SDS request. The stream
// loop owns the subscription; this is the tracker's copy of one fact of
// it, for the rotation gate. A stream that never named its node is ignored.
func (t *Tracker) BundleSubscribed(k StreamKey, subscribed bool) {
	t.mu.Lock()
	if s := t.streams[k]; s != nil {
		s.bundle = subscribed
	}
	t.mu.Unlock()
}

// Sent records a response: its nonce, the version it carried, the bytes of
// its resources, and for SDS its secrets (a trust bundle's roots are
// remembered until the proxy answers).
func (t *Tracker) Sent(k StreamKey, typeURL, nonce, version string, size int, secrets []*anypb.Any) {
	t.mu.Lock()
	if _, ts := t.typeStatus(k, typeURL); ts != nil {
		ts.Sent, ts.SentAt = version, t.now()
		ts.Pushes++
	}
	t.mu.Unlock()
	short := shortType(typeURL)
	t.m.Pushes.WithLabelValues(short).Inc()
	t.m.PushBytes.WithLabelValues(short).Add(float64(size))
	if typeURL == resourcev3.SecretType {
		t.bundles.sent(k, nonce, secrets)
	}
}

// Acked records that the proxy accepted the response with nonce, which
// carried version.
func (t *Tracker) Acked(k StreamKey, typeURL, nonce, version string) {
	node := t.holds(k, typeURL, version)
	t.m.ACKs.WithLabelValues(shortType(typeURL)).Inc()
	t.bundles.replied(k, node, typeURL, nonce, false)
}

// Holds records that the proxy holds version, as an ACK does, without a
// response or an answer on the wire: a delta proxy whose new stream
// declared every subscribed resource at the version served (it is sent
// nothing, so it has nothing to ACK). Not counted as an ACK.
func (t *Tracker) Holds(k StreamKey, typeURL, version string) { t.holds(k, typeURL, version) }

func (t *Tracker) holds(k StreamKey, typeURL, version string) (node string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	node, ts := t.typeStatus(k, typeURL)
	if ts != nil {
		ts.Acked = version
		// Accepting any later version supersedes an earlier rejection.
		ts.Nacked, ts.NackError = "", ""
	}
	return node
}

// Nacked records that the proxy rejected the response with nonce, which
// carried version, with detail. The stream loop will not resend it.
func (t *Tracker) Nacked(k StreamKey, typeURL, nonce, version, detail string) {
	t.mu.Lock()
	node, ts := t.typeStatus(k, typeURL)
	if ts != nil {
		ts.Nacked, ts.NackError, ts.NackAt = version, detail, t.now()
	}
	t.mu.Unlock()
	short := shortType(typeURL)
	t.m.NACKs.WithLabelValues(short).Inc()
	t.log.Warn("proxy rejected configuration (NACK); it keeps its previous config and the rejected version will not be resent",
		"node", node, "type", short, "version", version, "error", detail)
	t.bundles.replied(k, node, typeURL, nonce, true)
}

// NodeStatus is the connection and ACK state of one proxy.
type NodeStatus struct {
	ID        string `json:"id"`
	Flavor    string `json:"flavor"`
	Streams   int    `json:"streams"`
	Connected bool   `json:"connected"`
	// ConnectedSince is when its current streams began (zero when not
	// connected).
	ConnectedSince time.Time              `json:"connectedSince,omitzero"`
	LastSeen       time.Time              `json:"lastSeen"`
	Meta           NodeMeta               `json:"node"`
	Types          map[string]*TypeStatus `json:"types"`
	// DrainWarning, for an Envoy, says why it may run without meshd's
	// drain settings (DrainWarning); empty when its bootstrap records them.
	DrainWarning string `json:"drainWarning,omitempty"`
}

// Status returns every proxy connected now, every proxy of the catalog that
// connected since meshd started, and the others whose last stream closed
// less than ForgetAfter (up to ForgetAfter+sweepEvery) ago.
func (t *Tracker) Status() []NodeStatus {
	t.forget()
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]NodeStatus, 0, len(t.nodes))
	for id, n := range t.nodes {
		ns := NodeStatus{ID: id, Flavor: n.flavor, Streams: n.streams, Connected: n.streams > 0, LastSeen: n.seen, Meta: n.meta, Types: map[string]*TypeStatus{},
			DrainWarning: n.drainWarning}
		if ns.Connected {
			ns.ConnectedSince = n.connected
		}
		for i, ts := range n.types {
			if ts == nil {
				continue
			}
			typ, _ := cachev3.GetResponseTypeURL(types.ResponseType(i))
			c := *ts
			ns.Types[shortType(typ)] = &c
		}
		out = append(out, ns)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Node returns one proxy's status.
func (t *Tracker) Node(id string) (NodeStatus, bool) {
	for _, n := range t.Status() {
		if n.ID == id {
			return n, true
		}
	}
	return NodeStatus{}, false
}

func shortType(typeURL string) string {
	if i := strings.LastIndexByte(typeURL, '.'); i >= 0 {
		return typeURL[i+1:]
	}
	return typeURL
}
