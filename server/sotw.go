package server

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshd/meshd/server/auth"
	"github.com/meshd/meshd/server/tracker"
	"github.com/meshd/meshd/snapshot"
	"github.com/meshd/meshd/xds"
)

// Cache is go-control-plane's snapshot cache (keyed by node id) that also
// wakes meshd's xDS streams when a node's snapshot is set. The publisher
// writes to it; streams are served from it by sotwServer (state of the
// world and delta), fetch by go-control-plane.
type Cache struct {
	cachev3.SnapshotCache

	mu sync.Mutex
	// streams lists each node's open SotW streams (usually one), linked
	// through sotwStream.next: no slice per node.
	streams map[string]*sotwStream
	// names is the streams' shared subscribed-name lists.
	names nameLists
}

// NewCache returns an empty cache.
func NewCache() *Cache {
	return &Cache{SnapshotCache: cachev3.NewSnapshotCache(false, cachev3.IDHash{}, nil), streams: map[string]*sotwStream{}}
}

// SetSnapshot implements cachev3.SnapshotCache: it stores the snapshot and
// wakes the node's streams (SotW and delta).
func (c *Cache) SetSnapshot(ctx context.Context, node string, snap cachev3.ResourceSnapshot) error {
	err := c.SnapshotCache.SetSnapshot(ctx, node, snap)
	c.mu.Lock()
	for s := c.streams[node]; s != nil; s = s.next {
		s.notify()
	}
	c.mu.Unlock()
	return err
}

func (c *Cache) register(s *sotwStream) {
	c.mu.Lock()
	s.next = c.streams[s.node]
	c.streams[s.node] = s
	c.mu.Unlock()
}

func (c *Cache) unregister(s *sotwStream) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var prev *sotwStream
	for p := c.streams[s.node]; p != nil; prev, p = p, p.next {
		if p != s {
			continue
		}
		switch {
		case prev != nil:
			prev.next = s.next
		case s.next != nil:
			c.streams[s.node] = s.next
		default:
			delete(c.streams, s.node)
		}
		return
	}
}

// sotwServer serves state-of-the-world xDS (ADS and the per-type services)
// itself, delta too (delta.go), and leaves fetch to go-control-plane's
// server.
//
// Why not go-control-plane's SotW loop: for every stream it keeps a watch
// in the cache per type (each holding the stream's last request), a
// subscription with two maps per type, a response per type holding a map
// of what it returned, and it marshals every resource of every push again
// for every proxy. Measured at 1,000 proxies that was about 8 KiB of live
// heap per stream plus as much garbage per cold sync, interleaved with the
// long-lived objects so that the collector could not give the spans back.
// Here a stream is one small struct: per type what is subscribed, the
// version the proxy reported, the last nonce, and the resources last
// returned (shared with the snapshot when it is all of them); responses
// carry the encodings the publisher made once (xds.Resource.Wire).
//
// The protocol is the one go-control-plane implements (and Envoy and
// gRPC expect): one response per type in flight (the next is sent once the
// proxy answered the last); a request whose nonce is not the last one sent
// for its type is ignored; a response is sent when the snapshot's version
// differs from the version the proxy has, or when it newly subscribed to a
// resource not yet returned to it. The loop knows what each nonce carried,
// so an answer to it is an ACK or a NACK of exactly that version: a NACK
// carries the last version the proxy *accepted*, and a server comparing
// that with the snapshot would resend the rejected resources at once,
// thousands of times a second (go-control-plane does); here the rejected
// version counts as what the proxy has, so it is not resent until the
// snapshot changes.
//
// Pseudo-delta: a response of any type but Listener and Cluster carries
// only the subscribed resources the proxy does not have in their current
// content, which the xDS protocol allows ("grouping resources into
// responses": only LDS and CDS responses must hold the complete state of
// the world; Envoy and gRPC keep a route, endpoint set or secret a
// response does not mention). So one changed endpoint set costs each
// proxy one ClusterLoadAssignment, not every set it has (issue 14: 79 KiB
// per proxy at 200 services). The response's version_info is still the
// version of the whole type in the proxy's snapshot: what the proxy holds
// once it applies the response. What was sent counts as had, as in delta,
// so a NACKed resource is not resent until it changes; a resource whose
// parent goes (a cluster removed) goes with it in the proxy, which then
// unsubscribes from it, and the loop forgets it (subscribe).
type sotwServer struct {
	serverv3.Server // fetch
	cache           *Cache
	tracker         *tracker.Tracker
	events          Events
	ctx             context.Context
	ids             atomic.Int64 // SotW streams
	deltaIDs        atomic.Int64 // delta streams (the tracker keys them apart)
}

// Events receives what the stream loops learn that the publisher needs to
// move mTLS migrations on (snapshot.Publisher implements it). Its methods
// must never block: they are called from the stream loops.
type Events interface {
	StreamOpened(node string)
	StreamClosed(node string)
	Acked(node, typeURL, version string)
}

type noEvents struct{}

func (noEvents) StreamOpened(string)          {}
func (noEvents) StreamClosed(string)          {}
func (noEvents) Acked(string, string, string) {}

// identified binds a stream to the node its first request names: the
// cache wakes it on that node's snapshot changes, and the tracker and the
// publisher learn it is connected.
func (s *sotwServer) identified(k tracker.StreamKey, reg *sotwStream, node *corev3.Node) {
	if reg.node != "" || node.GetId() == "" {
		return
	}
	reg.node = node.GetId()
	s.cache.register(reg)
	s.tracker.Identified(k, node)
	s.events.StreamOpened(reg.node)
}

// ended undoes identified when the stream ends.
func (s *sotwServer) ended(k tracker.StreamKey, reg *sotwStream) {
	s.tracker.Closed(k)
	if reg.node != "" {
		s.cache.unregister(reg)
		s.events.StreamClosed(reg.node)
	}
}

// StreamAggregatedResources implements ADS (state of the world).
func (s *sotwServer) StreamAggregatedResources(st grpc.BidiStreamingServer[discoveryv3.DiscoveryRequest, discoveryv3.DiscoveryResponse]) error {
	return s.serve(st, "")
}

// StreamListeners implements LDS.
func (s *sotwServer) StreamListeners(st grpc.BidiStreamingServer[discoveryv3.DiscoveryRequest, discoveryv3.DiscoveryResponse]) error {
	return s.serve(st, resourcev3.ListenerType)
}

// StreamClusters implements CDS.
func (s *sotwServer) StreamClusters(st grpc.BidiStreamingServer[discoveryv3.DiscoveryRequest, discoveryv3.DiscoveryResponse]) error {
	return s.serve(st, resourcev3.ClusterType)
}

// StreamRoutes implements RDS.
func (s *sotwServer) StreamRoutes(st grpc.BidiStreamingServer[discoveryv3.DiscoveryRequest, discoveryv3.DiscoveryResponse]) error {
	return s.serve(st, resourcev3.RouteType)
}

// StreamEndpoints implements EDS.
func (s *sotwServer) StreamEndpoints(st grpc.BidiStreamingServer[discoveryv3.DiscoveryRequest, discoveryv3.DiscoveryResponse]) error {
	return s.serve(st, resourcev3.EndpointType)
}

// StreamSecrets implements SDS.
func (s *sotwServer) StreamSecrets(st grpc.BidiStreamingServer[discoveryv3.DiscoveryRequest, discoveryv3.DiscoveryResponse]) error {
	return s.serve(st, resourcev3.SecretType)
}

// pushOrder is the order in which types changed together are pushed:
// clusters before the endpoints and listeners that use them, listeners
// before their routes (Envoy's eventual-consistency guidance), secrets
// last (a new secret name is only asked for once a cluster or listener
// uses it).
var pushOrder = []types.ResponseType{types.Cluster, types.Endpoint, types.Listener, types.Route, types.Secret,
	types.ScopedRoute, types.VirtualHost, types.Runtime, types.ExtensionConfig, types.RateLimitConfig}

// sotwStream is one SotW stream's state.
type sotwStream struct {
	srv  *sotwServer
	st   grpc.BidiStreamingServer[discoveryv3.DiscoveryRequest, discoveryv3.DiscoveryResponse]
	id   int64
	node string
	// sess is the stream's hold on its credential (server/auth): its end
	// ends the stream, and every push checks it first.
	sess *auth.Session
	next *sotwStream // the node's next stream (Cache.streams)
	// wake is signalled (never blocking) when the node's snapshot changes.
	wake  chan struct{}
	nonce int64
	// types holds the state of each type the proxy has asked for (nil
	// until then): a proxy asks for five of the ten, and the rest would
	// cost every stream their size.
	types [types.UnknownType]*typeState
}

// typeState is what a stream knows about one type.
type typeState struct {
	subscribed bool // a request for the type arrived
	// wildcard: every resource of the type. legacy: the client has only
	// ever sent empty name lists for a type that allows wildcards (LDS,
	// CDS), which means wildcard until it names something.
	wildcard, legacy bool
	pending          bool      // a response was sent and not yet answered
	names            *nameList // subscribed names, sorted, without "*" (shared)
	// known is the version the proxy has: what it declared on a new stream,
	// then what it ACKed — or rejected, so a NACKed version is not resent.
	known string
	nonce string // of the last response
	sent  string // the version the last response carried
	// returned are the subscribed resources the proxy has, sorted by name:
	// those of the last response for LDS and CDS, and for the pseudo-delta
	// types everything sent and still subscribed (the snapshot's own slice
	// when that is all of them, so a proxy holds no list of its own).
	returned []*xds.Resource
	// resubscribed: the subscription changed since the last response was
	// considered, so an unchanged version may still call for one.
	resubscribed bool
}

// pseudoDelta reports whether a SotW response of the type may carry only
// what changed (see sotwServer).
func pseudoDelta(typ string) bool {
	return typ != resourcev3.ListenerType && typ != resourcev3.ClusterType
}

func (s *sotwStream) notify() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *sotwServer) serve(st grpc.BidiStreamingServer[discoveryv3.DiscoveryRequest, discoveryv3.DiscoveryResponse], defaultType string) error {
	ss := &sotwStream{srv: s, st: st, id: s.ids.Add(1), wake: make(chan struct{}, 1), sess: auth.SessionFrom(st.Context())}
	defer s.ended(ss.key(), ss)
	defer func() {
		for _, ts := range ss.types {
			if ts != nil {
				s.cache.names.release(ts.names)
				ts.names = nil
			}
		}
	}()
	reqs := receive(s.ctx, st)
	for {
		select {
		case <-s.ctx.Done():
			return nil
		case <-ss.sess.Done():
			// The credential was revoked or expired: meshd ends the stream
			// itself, without waiting for the proxy's next request.
			return ss.sess.Err()
		case <-ss.wake:
			if err := ss.push(); err != nil {
				return err
			}
		case req, ok := <-reqs:
			if !ok {
				return nil // the stream ended (an auth violation is the interceptor's to report)
			}
			// Only the first request has to carry the node (identified).
			if err := ss.request(req, defaultType); err != nil {
				return err
			}
		}
	}
}

func (s *sotwStream) key() tracker.StreamKey { return tracker.StreamKey{ID: s.id} }

// request handles one request: identification, the answer it carries (ACK
// or NACK of the last response of its type), the subscription, and the
// response it calls for.
func (s *sotwStream) request(req *discoveryv3.DiscoveryRequest, defaultType string) error {
	typ, err := streamType(req.GetTypeUrl(), defaultType)
	if err != nil {
		return err
	}
	s.srv.identified(s.key(), s, req.GetNode())
	i := cachev3.GetResponseType(typ)
	if i == types.UnknownType {
		return nil // nothing meshd serves: never answered, as a watch that never fires
	}
	typ = canonicalType(typ)
	ts := s.types[i]
	if ts == nil {
		ts = &typeState{}
		s.types[i] = ts
	}
	nonce := req.GetResponseNonce()
	switch {
	case ts.nonce == "":
		// The stream's first request of the type: a proxy reconnecting
		// declares the version it has.
		ts.known = req.GetVersionInfo()
	case nonce != ts.nonce:
		// Stale: an answer to an older response, overtaken by a newer one
		// the proxy will answer (xDS protocol, "resource updates").
		return nil
	case ts.pending && req.GetErrorDetail() != nil:
		// NACK: the proxy keeps what it had, and the rejected version
		// counts as known so that it is not resent (the request's own
		// version is the last one it accepted).
		ts.known = ts.sent
		s.srv.tracker.Nacked(s.key(), typ, nonce, ts.sent, req.GetErrorDetail().GetMessage())
	case ts.pending:
		ts.known = ts.sent // the snapshot's string, not the request's copy
		s.srv.tracker.Acked(s.key(), typ, nonce, ts.sent)
		s.srv.events.Acked(s.node, typ, ts.sent)
	}
	ts.pending = false
	ts.subscribe(&s.srv.cache.names, typ, req.GetResourceNames())
	s.srv.bundleSubscription(s.key(), typ, ts.wildcard, ts.names)
	return s.respond(typ, ts)
}

// bundleSubscription tells the tracker, after an SDS request, whether the
// stream subscribes to the trust bundle: a CA root rotation waits only for
// proxies that do (tracker.BundleAcked).
func (s *sotwServer) bundleSubscription(k tracker.StreamKey, typ string, wildcard bool, names *nameList) {
	if typ == resourcev3.SecretType {
		s.tracker.BundleSubscribed(k, wildcard || names.contains(xds.TrustBundleSecretName))
	}
}

// subscribe applies a request's resource names (xDS protocol, "how the
// client specifies what resources to return").
func (ts *typeState) subscribe(lists *nameLists, typ string, names []string) {
	if !ts.subscribed {
		ts.subscribed, ts.resubscribed = true, true
		ts.legacy = typ == resourcev3.ListenerType || typ == resourcev3.ClusterType
	}
	if ts.legacy {
		if len(names) == 0 {
			ts.wildcard = true
			return
		}
		ts.legacy, ts.resubscribed = false, true // a name, or "*": empty lists from now on subscribe to nothing
	}
	if w := slices.Contains(names, "*"); w != ts.wildcard {
		ts.wildcard, ts.resubscribed = w, true
	}
	switch {
	case ts.wildcard || len(names) == 0:
		if ts.names != nil {
			lists.release(ts.names)
			ts.names, ts.resubscribed = nil, true
		}
	case !slices.Equal(ts.names.list(), names):
		// Every ACK repeats the names: only a real change allocates.
		sorted := slices.Compact(slices.Sorted(slices.Values(names)))
		if !slices.Equal(ts.names.list(), sorted) {
			ts.names, ts.resubscribed = lists.replace(ts.names, sorted), true
		}
	}
	if ts.wildcard {
		return
	}
	// Forget returned resources no longer subscribed, so that subscribing
	// to one again gets it even at the same version. (returned may be the
	// snapshot's shared slice: never modified in place.)
	unsubscribed := func(r *xds.Resource) bool {
		return !ts.names.contains(r.Name)
	}
	if slices.ContainsFunc(ts.returned, unsubscribed) {
		ts.returned = slices.DeleteFunc(slices.Clone(ts.returned), unsubscribed)
	}
}

// push answers every type the proxy subscribed to and is not waiting on,
// in pushOrder, after a snapshot change.
func (s *sotwStream) push() error {
	for _, i := range pushOrder {
		ts := s.types[i]
		if ts == nil || !ts.subscribed || ts.pending {
			continue
		}
		typ, _ := cachev3.GetResponseTypeURL(i)
		if err := s.respond(typ, ts); err != nil {
			return err
		}
	}
	return nil
}

// respond sends the type's resources if the proxy's snapshot has something
// it does not have.
func (s *sotwStream) respond(typ string, ts *typeState) error {
	if s.node == "" || (!ts.wildcard && ts.names == nil) {
		return nil // no snapshot to look up, or subscribed to nothing
	}
	snap, err := s.srv.cache.GetSnapshot(s.node)
	if err != nil {
		return nil // none yet: SetSnapshot wakes the stream
	}
	version := snap.GetVersion(typ)
	if version == "" || (version == ts.known && !ts.resubscribed) {
		// Nothing, or nothing new: the proxy has this version of every
		// resource it subscribed to (an ACK, the common request).
		return nil
	}
	ts.resubscribed = false
	all := resourcesOf(snap, typ, version)
	pick := all
	if !ts.wildcard {
		pick = subscribedOf(all, ts.names.list())
	}
	if version == ts.known && covers(ts.returned, pick) {
		return nil // the proxy has all of it
	}
	if err := checkSession(s.sess, typ); err != nil {
		return err
	}
	send := pick
	if pseudoDelta(typ) {
		// Possibly none: the version moved without a subscribed resource
		// changing (one was removed, or an unsubscribed one changed). The
		// empty response still tells the proxy the version it now holds,
		// which its ACK confirms (status, mTLS migration steps).
		send = changedSince(ts.returned, pick)
	}
	anys := make([]*anypb.Any, 0, len(send))
	size := 0
	for _, r := range send {
		w := r.Wire
		if w == nil {
			// A resource only this proxy has (its inbound listener) is not
			// kept encoded: encode it now, as go-control-plane would.
			b, err := cachev3.MarshalResource(r.Message)
			if err != nil {
				return status.Errorf(codes.Internal, "encoding %s %q: %v", typ, r.Name, err)
			}
			w = &anypb.Any{TypeUrl: typ, Value: b}
		}
		anys = append(anys, w)
		size += len(w.GetValue())
	}
	s.nonce++
	resp := &discoveryv3.DiscoveryResponse{VersionInfo: version, Resources: anys, TypeUrl: typ, Nonce: strconv.FormatInt(s.nonce, 10)}
	ts.nonce, ts.sent, ts.pending, ts.returned = resp.Nonce, version, true, pick
	s.srv.tracker.Sent(s.key(), typ, resp.Nonce, version, size, anys)
	return s.st.Send(resp)
}

// subscribedOf returns the resources of all (sorted by name) that names
// (sorted) subscribes to: all itself when that is every one of them (a
// proxy that sees every service names every endpoint set), so the common
// answer allocates nothing; a list of its own otherwise.
func subscribedOf(all []*xds.Resource, names []string) []*xds.Resource {
	var pick []*xds.Resource
	shared := true // pick is all[:k] so far
	k := 0
	for i, j := 0, 0; i < len(names) && j < len(all); {
		switch c := strings.Compare(names[i], all[j].Name); {
		case c < 0: // a name the snapshot does not have
			i++
		case c > 0: // a resource not subscribed to
			if shared {
				shared, pick = false, append(make([]*xds.Resource, 0, len(names)), all[:k]...)
			}
			j++
		default:
			if shared && k == j {
				k++
			} else {
				if shared {
					shared, pick = false, append(make([]*xds.Resource, 0, len(names)), all[:k]...)
				}
				pick = append(pick, all[j])
			}
			i, j = i+1, j+1
		}
	}
	if shared {
		return all[:k]
	}
	return pick
}

// changedSince returns the resources of want (sorted by name) that have
// (sorted by name) lacks or holds with other content. Resources the
// publisher shares are compared by pointer first, then by content hash;
// resources of a snapshot built elsewhere carry no hash and always count
// as changed.
func changedSince(have, want []*xds.Resource) []*xds.Resource {
	if len(have) == len(want) && len(want) > 0 && &have[0] == &want[0] {
		return nil // the same shared slice
	}
	var out []*xds.Resource
	j := 0
	for _, r := range want {
		for j < len(have) && have[j].Name < r.Name {
			j++
		}
		if j < len(have) && have[j].Name == r.Name && (have[j] == r || (r.Hash != "" && have[j].Hash == r.Hash)) {
			continue
		}
		out = append(out, r)
	}
	return out
}

// checkSession says whether a stream may still be sent a response of typ:
// nothing goes to a stream whose credential is no longer valid. Secrets
// (private keys) get a fresh look at the revocation list; other types the
// session's state, an atomic load.
func checkSession(s *auth.Session, typ string) error {
	if typ == resourcev3.SecretType {
		return s.Check()
	}
	return s.Err()
}

// covers reports whether every resource of want is in have (both by name).
func covers(have, want []*xds.Resource) bool {
	if len(want) == 0 {
		return true
	}
	if len(have) > 0 && &have[0] == &want[0] && len(have) >= len(want) {
		return true // the same shared slice
	}
	for _, r := range want {
		if _, found := slices.BinarySearchFunc(have, r.Name, byName); !found {
			return false
		}
	}
	return true
}

// resourcesOf returns a snapshot's resources of a type sorted by name: the
// publisher's shared, pre-encoded ones, or for any other snapshot its
// resources wrapped (not encoded).
func resourcesOf(snap cachev3.ResourceSnapshot, typ, version string) []*xds.Resource {
	if own, ok := snap.(*snapshot.Snapshot); ok {
		if sorted, v := own.Resources(typ); v == version {
			return sorted
		}
	}
	items := snap.GetResourcesAndTTL(typ)
	out := make([]*xds.Resource, 0, len(items))
	for name, r := range items {
		out = append(out, &xds.Resource{Name: name, Message: r.Resource})
	}
	slices.SortFunc(out, func(a, b *xds.Resource) int { return strings.Compare(a.Name, b.Name) })
	return out
}

func byName(r *xds.Resource, name string) int { return strings.Compare(r.Name, name) }

// receive reads a stream's requests on a goroutine of their own, so that the
// stream's loop can wait for a request and a snapshot change at once. The
// channel closes when the stream ends.
func receive[Req any](ctx context.Context, st interface {
	Recv() (*Req, error)
	Context() context.Context
}) <-chan *Req {
	reqs := make(chan *Req)
	go func() {
		defer close(reqs)
		for {
			req, err := st.Recv()
			if err != nil {
				return
			}
			select {
			case reqs <- req:
			case <-st.Context().Done():
				return
			case <-ctx.Done():
				return
			}
		}
	}()
	return reqs
}

// streamType is the type URL a request is for: its own, or the one a
// per-type stream serves; ADS requests must name it.
func streamType(typ, defaultType string) (string, error) {
	switch {
	case typ == "" && defaultType == "":
		return "", status.Error(codes.InvalidArgument, "type URL is required for ADS")
	case typ == "":
		return defaultType, nil
	case defaultType != "" && typ != defaultType:
		return "", status.Errorf(codes.InvalidArgument, "this stream serves %s, not %s (use ADS to mix types)", defaultType, typ)
	}
	return typ, nil
}
