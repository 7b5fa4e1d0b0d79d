package server

import (
	"context"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
	"unique"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"

	"github.com/meshd/meshd/internal/metrics"
	"github.com/meshd/meshd/xds"
)

// Tracker implements go-control-plane's stream callbacks: it knows which
// proxies are connected, what each was sent, acknowledged and rejected, and
// it stops the NACK resend loop.
//
// A NACK carries the last *accepted* version: a server comparing it with the
// snapshot's (as go-control-plane does) immediately resends the rejected
// one, thousands of times a second. The tracker records the NACK and
// rewrites the request's version to the rejected one, so the SotW loop
// (sotw.go) waits for a genuinely new version instead.
type Tracker struct {
	log   *slog.Logger
	m     *metrics.Metrics
	known func(nodeID string) bool

	mu      sync.Mutex
	streams map[streamKey]*streamState
	nodes   map[string]*nodeState

	// ackHook is called after every ACK (acks.go).
	ackHook func()

	// bundles records the trust bundles proxies ACKed (auth_bundle.go).
	bundles bundleAcks
}

// streamKey identifies a stream. go-control-plane numbers SotW and delta
// streams with separate counters, so an id alone is ambiguous.
type streamKey struct {
	delta bool
	id    int64
}

type streamState struct {
	node   string
	flavor string
	delta  bool
	// sent is the last unanswered response of each type: its nonce and
	// version, in a fixed array indexed by response type rather than a map
	// per type, so a stream costs one small allocation however many
	// responses it gets (thousands of streams). A state-of-the-world
	// stream never has two responses of a type unanswered (go-control-plane
	// answers a type again only after the request that answers the last
	// response; requests with an older nonce are ignored).
	sent [types.UnknownType]sentResponse
	// older holds responses superseded while still unanswered: a delta
	// client may ask for more resources before answering a response, and is
	// then sent another. Rare, so allocated only then, and bounded.
	older []sentResponse
}

// sentResponse is one response of a stream: what a request carrying its
// nonce ACKs or NACKs.
type sentResponse struct {
	typ            types.ResponseType
	nonce, version string
}

// maxOlder bounds streamState.older: a client answers its responses in
// order, so only the last few can still be answered.
const maxOlder = 8

// take returns and forgets the response of a type with the given nonce.
func (s *streamState) take(typeURL, nonce string) (sentResponse, bool) {
	i := cachev3.GetResponseType(typeURL)
	if i == types.UnknownType {
		return sentResponse{}, false // a type meshd does not serve
	}
	if r := s.sent[i]; r.nonce == nonce {
		s.sent[i] = sentResponse{}
		return r, true
	}
	for j, r := range s.older {
		if r.typ == i && r.nonce == nonce {
			s.older = slices.Delete(s.older, j, j+1)
			return r, true
		}
	}
	return sentResponse{}, false
}

// put records a response sent.
func (s *streamState) put(typeURL, nonce, version string) {
	i := cachev3.GetResponseType(typeURL)
	if i == types.UnknownType {
		return
	}
	if prev := s.sent[i]; prev.nonce != "" {
		if len(s.older) == maxOlder {
			s.older = slices.Delete(s.older, 0, 1)
		}
		s.older = append(s.older, prev)
	}
	s.sent[i] = sentResponse{typ: i, nonce: nonce, version: version}
}

type nodeState struct {
	flavor  string
	streams int
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

// TypeStatus is the xDS state of one resource type for one proxy.
type TypeStatus struct {
	Sent      string    `json:"sent,omitempty"`
	Acked     string    `json:"acked,omitempty"`
	Nacked    string    `json:"nacked,omitempty"`
	NackError string    `json:"nackError,omitempty"`
	NackAt    time.Time `json:"nackAt,omitzero"`
	Pushes    int       `json:"pushes"`
}

// NewTracker returns a tracker; known reports whether a node id is in the
// current catalog (an unknown node is logged once per stream).
func NewTracker(log *slog.Logger, m *metrics.Metrics, known func(string) bool) *Tracker {
	return &Tracker{log: log, m: m, known: known, streams: map[streamKey]*streamState{}, nodes: map[string]*nodeState{}}
}

func flavorOf(n *corev3.Node) string {
	if f := n.GetMetadata().GetFields()[xds.NodeMetaFlavor].GetStringValue(); f == "envoy" || f == "grpc" {
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

func (t *Tracker) open(id streamKey) {
	t.mu.Lock()
	t.streams[id] = &streamState{delta: id.delta}
	t.mu.Unlock()
}

func (t *Tracker) closed(id streamKey) {
	t.bundles.closed(id)
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.streams[id]
	delete(t.streams, id)
	if s == nil || s.node == "" {
		return
	}
	t.m.ConnectedProxies.WithLabelValues(s.flavor).Dec()
	if n := t.nodes[s.node]; n != nil {
		n.streams--
		n.seen = time.Now()
	}
	t.log.Info("proxy disconnected", "node", s.node, "stream", id.id, "delta", id.delta)
}

// identify binds a stream to its node on the first request that carries one.
func (t *Tracker) identify(id streamKey, node *corev3.Node) *streamState {
	s := t.streams[id]
	if s == nil {
		s = &streamState{delta: id.delta}
		t.streams[id] = s
	}
	if s.node != "" || node.GetId() == "" {
		return s
	}
	s.node, s.flavor = node.GetId(), flavorOf(node)
	n := t.nodes[s.node]
	if n == nil {
		n = &nodeState{}
		t.nodes[s.node] = n
	}
	n.flavor = s.flavor
	n.streams++
	n.seen = time.Now()
	t.m.ConnectedProxies.WithLabelValues(s.flavor).Inc()
	if t.known != nil && !t.known(s.node) {
		t.log.Warn("proxy connected with a node id that is not in the catalog; it gets no configuration until one is added",
			"node", s.node, "flavor", s.flavor, "stream", id.id)
	} else {
		t.log.Info("proxy connected", "node", s.node, "flavor", s.flavor, "stream", id.id, "delta", s.delta)
	}
	return s
}

func (t *Tracker) typeStatus(node, typeURL string) *TypeStatus {
	n := t.nodes[node]
	if n == nil {
		return &TypeStatus{} // detached: the stream never identified itself
	}
	i := cachev3.GetResponseType(typeURL)
	if i == types.UnknownType {
		return &TypeStatus{} // a type meshd does not serve: nothing to record
	}
	if n.types[i] == nil {
		n.types[i] = &TypeStatus{}
	}
	return n.types[i]
}

// request handles one SotW or delta request. It returns the version the
// NACKed response carried ("" if this is not a NACK or it is unknown), and
// for an ACK the version acknowledged.
func (t *Tracker) request(id streamKey, node *corev3.Node, typeURL, nonce string, errDetail interface{ GetMessage() string }, isNack bool) (nacked, acked string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.identify(id, node)
	if nonce == "" {
		return "", "" // initial subscription, not a reply to anything
	}
	// Forgotten once answered: a repeated reply to the same nonce is not a
	// second ACK.
	sent, ok := s.take(typeURL, nonce)
	version := sent.version
	short := shortType(typeURL)
	ts := t.typeStatus(s.node, typeURL)
	if isNack {
		ts.Nacked, ts.NackError, ts.NackAt = version, errDetail.GetMessage(), time.Now()
		t.m.NACKs.WithLabelValues(short).Inc()
		t.log.Warn("proxy rejected configuration (NACK); it keeps its previous config and the rejected version will not be resent",
			"node", s.node, "type", short, "version", version, "error", errDetail.GetMessage())
		return version, ""
	}
	if ok {
		ts.Acked = version
		// Accepting any later version supersedes an earlier rejection.
		ts.Nacked, ts.NackError = "", ""
		t.m.ACKs.WithLabelValues(short).Inc()
		return "", version
	}
	return "", ""
}

func (t *Tracker) response(id streamKey, typeURL, nonce, version string, resources int, bytes int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.streams[id]
	if s == nil {
		return
	}
	s.put(typeURL, nonce, version)
	ts := t.typeStatus(s.node, typeURL)
	ts.Sent = version
	ts.Pushes++
	short := shortType(typeURL)
	t.m.Pushes.WithLabelValues(short).Inc()
	t.m.PushBytes.WithLabelValues(short).Add(float64(bytes))
}

// OnStreamOpen implements sotw.Callbacks.
func (t *Tracker) OnStreamOpen(_ context.Context, id int64, _ string) error {
	t.open(streamKey{id: id})
	return nil
}

// OnStreamClosed implements sotw.Callbacks.
func (t *Tracker) OnStreamClosed(id int64, _ *corev3.Node) { t.closed(streamKey{id: id}) }

// OnStreamRequest implements sotw.Callbacks. On a NACK it rewrites the
// request's version to the rejected one (see Tracker).
func (t *Tracker) OnStreamRequest(id int64, req *discoveryv3.DiscoveryRequest) error {
	nacked, acked := t.request(streamKey{id: id}, req.GetNode(), req.GetTypeUrl(), req.GetResponseNonce(), req.GetErrorDetail(), req.GetErrorDetail() != nil)
	switch {
	case nacked != "":
		req.VersionInfo = nacked
	case acked != "" && req.GetVersionInfo() == acked:
		// The same value, but the string the snapshot holds rather than
		// the request's own copy: the stream keeps the version each proxy
		// reported.
		req.VersionInfo = acked
	}
	req.TypeUrl = canonicalType(req.GetTypeUrl())
	internNames(req.ResourceNames)
	t.acked(req.GetErrorDetail() != nil, req.GetResponseNonce())
	t.bundleReply(streamKey{id: id}, req.GetTypeUrl(), req.GetResponseNonce(), req.GetErrorDetail() != nil)
	return nil
}

// OnStreamResponse implements sotw.Callbacks.
func (t *Tracker) OnStreamResponse(_ context.Context, id int64, _ *discoveryv3.DiscoveryRequest, resp *discoveryv3.DiscoveryResponse) {
	n := 0
	for _, r := range resp.GetResources() {
		n += len(r.GetValue())
	}
	t.response(streamKey{id: id}, resp.GetTypeUrl(), resp.GetNonce(), resp.GetVersionInfo(), len(resp.GetResources()), n)
	t.bundles.sentSotW(streamKey{id: id}, resp)
}

// OnDeltaStreamOpen implements delta.Callbacks.
func (t *Tracker) OnDeltaStreamOpen(_ context.Context, id int64, _ string) error {
	t.open(streamKey{delta: true, id: id})
	return nil
}

// OnDeltaStreamClosed implements delta.Callbacks.
func (t *Tracker) OnDeltaStreamClosed(id int64, _ *corev3.Node) {
	t.closed(streamKey{delta: true, id: id})
}

// OnStreamDeltaRequest implements delta.Callbacks. Delta needs no rewrite:
// the server tracks per-resource versions it sent, so it does not resend a
// NACKed resource until its content changes.
func (t *Tracker) OnStreamDeltaRequest(id int64, req *discoveryv3.DeltaDiscoveryRequest) error {
	t.request(streamKey{delta: true, id: id}, req.GetNode(), req.GetTypeUrl(), req.GetResponseNonce(), req.GetErrorDetail(), req.GetErrorDetail() != nil)
	req.TypeUrl = canonicalType(req.GetTypeUrl())
	internNames(req.ResourceNamesSubscribe)
	t.acked(req.GetErrorDetail() != nil, req.GetResponseNonce())
	t.bundleReply(streamKey{delta: true, id: id}, req.GetTypeUrl(), req.GetResponseNonce(), req.GetErrorDetail() != nil)
	return nil
}

// OnStreamDeltaResponse implements delta.Callbacks.
func (t *Tracker) OnStreamDeltaResponse(id int64, _ *discoveryv3.DeltaDiscoveryRequest, resp *discoveryv3.DeltaDiscoveryResponse) {
	n := 0
	for _, r := range resp.GetResources() {
		n += len(r.GetResource().GetValue())
	}
	t.response(streamKey{delta: true, id: id}, resp.GetTypeUrl(), resp.GetNonce(), resp.GetSystemVersionInfo(), len(resp.GetResources()), n)
	t.bundles.sentDelta(streamKey{delta: true, id: id}, resp)
}

// OnFetchRequest implements rest.Callbacks (REST xDS is not served).
func (t *Tracker) OnFetchRequest(context.Context, *discoveryv3.DiscoveryRequest) error { return nil }

// OnFetchResponse implements rest.Callbacks.
func (t *Tracker) OnFetchResponse(*discoveryv3.DiscoveryRequest, *discoveryv3.DiscoveryResponse) {}

// NodeStatus is the connection and ACK state of one proxy.
type NodeStatus struct {
	ID        string                 `json:"id"`
	Flavor    string                 `json:"flavor"`
	Streams   int                    `json:"streams"`
	Connected bool                   `json:"connected"`
	LastSeen  time.Time              `json:"lastSeen"`
	Types     map[string]*TypeStatus `json:"types"`
}

// Status returns every proxy that has connected since meshd started.
func (t *Tracker) Status() []NodeStatus {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]NodeStatus, 0, len(t.nodes))
	for id, n := range t.nodes {
		ns := NodeStatus{ID: id, Flavor: n.flavor, Streams: n.streams, Connected: n.streams > 0, LastSeen: n.seen, Types: map[string]*TypeStatus{}}
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

// canonicalType returns go-control-plane's constant for a type URL meshd
// serves. go-control-plane keeps every stream's latest request of each type
// (with its watch), so each would otherwise hold its own copy of the
// string, decoded from the wire.
func canonicalType(typeURL string) string {
	if i := cachev3.GetResponseType(typeURL); i != types.UnknownType {
		if u, err := cachev3.GetResponseTypeURL(i); err == nil && u == typeURL {
			return u
		}
	}
	return typeURL
}

// internNames replaces requested resource names by canonical copies: every
// caller of a service names the same clusters, routes and secrets, and
// go-control-plane keeps each stream's requested names (in the request it
// holds and in the subscription's set).
func internNames(names []string) {
	for i, n := range names {
		names[i] = unique.Make(n).Value()
	}
}

func shortType(typeURL string) string {
	if i := strings.LastIndexByte(typeURL, '.'); i >= 0 {
		return typeURL[i+1:]
	}
	return typeURL
}
