package loadgen

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"

	// Every extension a control plane may put inside an Any must be linked
	// in, or the client cannot unpack and validate it (and would NACK).
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"

	"github.com/meshd/meshd/internal/xdstest"
)

// ClientConfig configures the simulated fleet's connections.
type ClientConfig struct {
	// Address is the control plane's xDS gRPC address (host:port).
	Address string
	// TLS, when set, is used to reach the control plane (server
	// authentication only); nil means plaintext.
	TLS *tls.Config
	// Delta selects incremental xDS (DeltaAggregatedResources) instead of
	// state of the world.
	Delta bool
	// StreamsPerConn is how many proxies share one HTTP/2 connection. It must
	// stay within the server's MaxConcurrentStreams (meshd allows 64).
	StreamsPerConn int
	// SubscribeSDS makes proxies request the SDS secrets their listeners and
	// clusters name over ADS, as an Envoy sidecar of meshd does.
	SubscribeSDS bool
	// BufferSize is gRPC's per-connection read and write buffer.
	BufferSize int
	Logger     *slog.Logger
}

// NodeSpec is one simulated proxy's identity.
type NodeSpec struct {
	ID       string
	Cluster  string
	Metadata map[string]any
	// Token, if set, is sent as "authorization: Bearer <token>" gRPC
	// metadata on every stream, as Envoy does with the bootstrap token
	// meshctl puts in the xDS cluster's initial_metadata.
	Token string
}

// Fleet is a set of simulated proxies sharing a few connections.
type Fleet struct {
	cfg     ClientConfig
	conns   []*grpc.ClientConn
	Proxies []*Proxy
	byID    map[string]*Proxy
	cache   *resourceCache
	cancel  context.CancelFunc
	wg      sync.WaitGroup

	// Counters over the whole fleet, for cross-checks against the server.
	Responses, ACKs, NACKs, Bytes, StreamErrors atomic.Int64
}

// NewFleet prepares proxies and connections; Start opens the streams.
func NewFleet(cfg ClientConfig, nodes []NodeSpec) (*Fleet, error) {
	if cfg.StreamsPerConn <= 0 {
		cfg.StreamsPerConn = 1
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	creds := insecure.NewCredentials()
	if cfg.TLS != nil {
		creds = credentials.NewTLS(cfg.TLS)
	}
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		// Small buffers: a proxy's stream is idle almost all the time, and
		// the buffers are per connection, shared by its streams.
		grpc.WithReadBufferSize(cfg.BufferSize),
		grpc.WithWriteBufferSize(cfg.BufferSize),
		// Envoy's HTTP/2 windows for its xDS cluster default to 256 MiB per
		// stream and connection, so a server never waits for a window
		// update while it sends a cold proxy its configuration (300 KiB
		// when a sidecar sees 200 services). gRPC's 64 KiB would make
		// every cold sync several round trips that real proxies never ask
		// for; nothing is allocated for a window.
		grpc.WithInitialWindowSize(256 << 20),
		grpc.WithInitialConnWindowSize(256 << 20),
		// Reconnect quickly after a control-plane restart; gRPC's default
		// 1 s base and 120 s cap would measure our backoff, not the server.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
			MinConnectTimeout: 5 * time.Second,
		}),
		// A control plane that does not scope may send every cluster of the
		// mesh in one response; allow far more than gRPC's 4 MB default.
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(512<<20), grpc.ForceCodecV2(newResponseCodec())),
	}
	f := &Fleet{cfg: cfg, byID: map[string]*Proxy{}, cache: newResourceCache()}
	for i, n := range nodes {
		if i%cfg.StreamsPerConn == 0 {
			cc, err := grpc.NewClient("passthrough:///"+cfg.Address, opts...)
			if err != nil {
				f.closeConns()
				return nil, fmt.Errorf("xDS client for %s: %w", cfg.Address, err)
			}
			f.conns = append(f.conns, cc)
		}
		md, err := structpb.NewStruct(n.Metadata)
		if err != nil {
			f.closeConns()
			return nil, fmt.Errorf("node %s metadata: %w", n.ID, err)
		}
		p := &Proxy{
			ID: n.ID, f: f, conn: f.conns[len(f.conns)-1], token: n.Token,
			node: &corev3.Node{Id: n.ID, Cluster: n.Cluster, Metadata: md, UserAgentName: "envoy",
				UserAgentVersionType: &corev3.Node_UserAgentVersion{UserAgentVersion: "xds-load"}},
		}
		p.reset(time.Time{})
		f.Proxies = append(f.Proxies, p)
		f.byID[n.ID] = p
	}
	return f, nil
}

// Conns is the number of gRPC connections the fleet uses.
func (f *Fleet) Conns() int { return len(f.conns) }

// Proxy returns the simulated proxy with the given node id, or nil.
func (f *Fleet) Proxy(id string) *Proxy { return f.byID[id] }

// Start opens every proxy's stream at once (a cold start of the fleet).
func (f *Fleet) Start(ctx context.Context) {
	ctx, f.cancel = context.WithCancel(ctx)
	for _, p := range f.Proxies {
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			p.run(ctx)
		}()
	}
}

// Stop ends every stream and closes the connections.
func (f *Fleet) Stop() {
	if f.cancel != nil {
		f.cancel()
	}
	f.wg.Wait()
	f.closeConns()
}

func (f *Fleet) closeConns() {
	for _, c := range f.conns {
		c.Close()
	}
}

// entry is one distinct resource (by type and serialized bytes), decoded and
// checked once however many proxies receive it: the control plane shares
// resources, and validating each copy would make the tool heavier than the
// server it measures.
type entry struct {
	// typeURL and value are the resource as received (the cache's key).
	typeURL string
	value   []byte
	name    string
	msg     proto.Message
	refs    []xdstest.Ref
	err     error
}

type resourceCache struct {
	seed   maphash.Seed
	shards [64]cacheShard
}

type cacheShard struct {
	mu sync.Mutex
	m  map[uint64][]*entry
}

func newResourceCache() *resourceCache {
	c := &resourceCache{seed: maphash.MakeSeed()}
	for i := range c.shards {
		c.shards[i].m = map[uint64][]*entry{}
	}
	return c
}

// get returns the entry of a resource by its type and bytes. It is keyed
// by a fast hash and confirmed by comparing the bytes (a hash of every
// resource the fleet receives would cost the tool more than meshd spends
// sending them), in shards so that thousands of proxies do not queue on
// one lock.
func (c *resourceCache) get(typeURL string, a *anypb.Any) *entry {
	var h maphash.Hash
	h.SetSeed(c.seed)
	h.WriteString(a.GetTypeUrl())
	h.WriteByte(0)
	h.Write(a.GetValue())
	key := h.Sum64()
	sh := &c.shards[key%uint64(len(c.shards))]
	sh.mu.Lock()
	for _, e := range sh.m[key] {
		if e.typeURL == a.GetTypeUrl() && bytes.Equal(e.value, a.GetValue()) {
			sh.mu.Unlock()
			return e
		}
	}
	sh.mu.Unlock()
	e := &entry{typeURL: a.GetTypeUrl(), value: bytes.Clone(a.GetValue())}
	switch msg, err := a.UnmarshalNew(); {
	case a.GetTypeUrl() != typeURL:
		e.err = fmt.Errorf("resource of type %s in a %s response", a.GetTypeUrl(), typeURL)
	case err != nil:
		e.err = fmt.Errorf("cannot decode %s: %w", typeURL, err)
	default:
		e.msg, e.name = msg, cachev3.GetResourceName(msg)
		refs, err := xdstest.Check(msg)
		if err != nil {
			e.err = fmt.Errorf("%s %q is invalid: %w", shortType(typeURL), e.name, err)
		}
		e.refs = refs
	}
	sh.mu.Lock()
	sh.m[key] = append(sh.m[key], e)
	sh.mu.Unlock()
	return e
}

// Proxy is one simulated Envoy. Its stream goroutine owns the protocol; the
// orchestrator reads its state and installs watches under mu.
type Proxy struct {
	ID    string
	f     *Fleet
	conn  *grpc.ClientConn
	node  *corev3.Node
	token string

	mu          sync.Mutex
	streams     int       // streams opened so far
	streamStart time.Time // when the current stream opened
	syncedAt    time.Time // when the current stream first became fully synced
	lastErr     error
	got         map[string]bool              // types answered on this stream
	state       map[string]map[string]*entry // type → name → resource
	acked       map[string]string            // SotW: type → last accepted version
	nonce       map[string]string            // type → last response nonce
	subs        map[string][]string          // type → names subscribed (sorted)
	responses   int64
	bytes       int64
	nacks       int64
	nackMsg     string
	watch       func(*Proxy) bool
	watchHit    time.Time
	// complete caches syncedLocked while completeKnown: a response that
	// only replaces endpoint sets or secrets of a complete proxy leaves it
	// complete, and walking every reference of 200 clusters and routes for
	// each such response was a fifth of the tool's CPU in churn at 1,000
	// proxies that see every service (on the cores meshd is measured on).
	complete, completeKnown bool
	// endStream cancels the current stream (Reconnect); nil between streams.
	endStream context.CancelFunc
}

// ProxyView is a copy of a proxy's counters and timestamps.
type ProxyView struct {
	ID                    string
	Streams               int
	StreamStart, SyncedAt time.Time
	Responses, Bytes      int64
	NACKs                 int64
	NACKMessage           string
	LastErr               error
	WatchHit              time.Time
}

// View returns the proxy's current counters.
func (p *Proxy) View() ProxyView {
	p.mu.Lock()
	defer p.mu.Unlock()
	return ProxyView{ID: p.ID, Streams: p.streams, StreamStart: p.streamStart, SyncedAt: p.syncedAt,
		Responses: p.responses, Bytes: p.bytes, NACKs: p.nacks, NACKMessage: p.nackMsg, LastErr: p.lastErr, WatchHit: p.watchHit}
}

// Watch installs a condition; the time of the first ACK after which it
// holds is recorded (WatchHit). A nil condition clears the watch.
func (p *Proxy) Watch(cond func(*Proxy) bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.watch, p.watchHit = cond, time.Time{}
}

// inspect runs f with the proxy's lock held.
func (p *Proxy) inspect(f func(*Proxy) string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return f(p)
}

// Resource returns the resource of the given type and name the proxy holds
// (nil if none). Call it only from a watch condition (mu held).
func (p *Proxy) Resource(typeURL, name string) proto.Message {
	if e := p.state[typeURL][name]; e != nil {
		return e.msg
	}
	return nil
}

// Synced reports whether the proxy holds a complete, consistent
// configuration. Call it only from a watch condition (mu held).
func (p *Proxy) Synced() bool { return p.syncedLocked() }

func (p *Proxy) reset(now time.Time) {
	p.streamStart, p.syncedAt = now, time.Time{}
	p.got = map[string]bool{}
	p.state = map[string]map[string]*entry{}
	p.acked = map[string]string{}
	p.nonce = map[string]string{}
	p.subs = map[string][]string{}
	p.completeKnown = false
}

func (p *Proxy) run(ctx context.Context) {
	wait := 100 * time.Millisecond
	for {
		err := p.runStream(ctx)
		if ctx.Err() != nil {
			return
		}
		p.f.StreamErrors.Add(1)
		p.mu.Lock()
		p.lastErr = err
		synced := !p.syncedAt.IsZero()
		p.mu.Unlock()
		if synced {
			wait = 100 * time.Millisecond
		}
		// Jittered so a restarted control plane is not hit in lock step
		// (Envoy jitters its retries too).
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait/2 + rand.N(wait)):
		}
		wait = min(2*wait, 2*time.Second)
	}
}

// wildcardTypes are subscribed to without names, as Envoy does; the named
// types follow what those contain.
var wildcardTypes = []string{resourcev3.ClusterType, resourcev3.ListenerType}

// Reconnect ends the proxy's current stream as a dropped connection would;
// the proxy opens a new one after its usual back-off, with empty state (a
// restarted Envoy), and must sync again. A reconnect storm is this on many
// proxies at once.
func (p *Proxy) Reconnect() {
	p.mu.Lock()
	end := p.endStream
	p.mu.Unlock()
	if end != nil {
		end()
	}
}

func (p *Proxy) runStream(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	p.mu.Lock()
	p.endStream = cancel
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		p.endStream = nil
		p.mu.Unlock()
	}()
	if p.token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+p.token)
	}
	// Raw streams rather than the generated client's, so that a response
	// is read into a received value (codec.go) and its buffer released
	// once handled.
	streams := discoverygrpc.AggregatedDiscoveryService_ServiceDesc.Streams
	if p.f.cfg.Delta {
		st, err := p.conn.NewStream(ctx, &streams[1], "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources", grpc.WaitForReady(true))
		if err != nil {
			return fmt.Errorf("opening delta ADS stream: %w", err)
		}
		p.opened()
		for i, t := range wildcardTypes {
			req := &discoverygrpc.DeltaDiscoveryRequest{TypeUrl: t}
			if i == 0 {
				req.Node = p.node
			}
			if err := st.SendMsg(req); err != nil {
				return fmt.Errorf("subscribing to %s: %w", shortType(t), err)
			}
		}
		r := &received{delta: &discoverygrpc.DeltaDiscoveryResponse{}}
		defer r.release()
		for {
			if err := st.RecvMsg(r); err != nil {
				return fmt.Errorf("delta ADS stream: %w", err)
			}
			reqs := p.handleDelta(r.delta)
			r.release()
			for _, req := range reqs {
				if err := st.SendMsg(req); err != nil {
					return fmt.Errorf("delta ADS send: %w", err)
				}
			}
		}
	}
	st, err := p.conn.NewStream(ctx, &streams[0], "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources", grpc.WaitForReady(true))
	if err != nil {
		return fmt.Errorf("opening ADS stream: %w", err)
	}
	p.opened()
	for i, t := range wildcardTypes {
		req := &discoverygrpc.DiscoveryRequest{TypeUrl: t}
		if i == 0 {
			req.Node = p.node
		}
		if err := st.SendMsg(req); err != nil {
			return fmt.Errorf("subscribing to %s: %w", shortType(t), err)
		}
	}
	r := &received{sotw: &discoverygrpc.DiscoveryResponse{}}
	defer r.release()
	for {
		if err := st.RecvMsg(r); err != nil {
			return fmt.Errorf("ADS stream: %w", err)
		}
		reqs := p.handleSotW(r.sotw)
		r.release()
		for _, req := range reqs {
			if err := st.SendMsg(req); err != nil {
				return fmt.Errorf("ADS send: %w", err)
			}
		}
	}
}

// opened starts a new stream with empty state: a reconnecting proxy is
// treated as a cold one (a restarted Envoy fleet), so a reconnect storm
// makes the control plane send everything again.
func (p *Proxy) opened() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.streams++
	p.reset(time.Now())
}

func (p *Proxy) decode(typeURL string, anys []*anypb.Any) ([]*entry, error) {
	out := make([]*entry, 0, len(anys))
	var errs []error
	for _, a := range anys {
		e := p.f.cache.get(typeURL, a)
		if e.err != nil {
			errs = append(errs, e.err)
			continue
		}
		out = append(out, e)
	}
	return out, errors.Join(errs...)
}

func nackDetail(err error) *statuspb.Status {
	msg := err.Error()
	if len(msg) > 4096 {
		msg = msg[:4096] + "…"
	}
	return &statuspb.Status{Code: int32(codes.InvalidArgument), Message: msg}
}

func (p *Proxy) handleSotW(resp *discoverygrpc.DiscoveryResponse) []*discoverygrpc.DiscoveryRequest {
	t := resp.GetTypeUrl()
	size := int64(proto.Size(resp))
	entries, err := p.decode(t, resp.GetResources())
	if err == nil {
		err = duplicateNames(entries)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.count(size)
	p.nonce[t] = resp.GetNonce()
	if err != nil {
		p.nack(err)
		return []*discoverygrpc.DiscoveryRequest{{TypeUrl: t, VersionInfo: p.acked[t], ResponseNonce: resp.GetNonce(),
			ResourceNames: p.subs[t], ErrorDetail: nackDetail(err)}}
	}
	m := p.state[t]
	if !slices.Contains(wildcardTypes, t) {
		if m == nil {
			m = make(map[string]*entry, len(entries))
		}
		// Routes, endpoints and secrets: a response may carry only what
		// changed ("grouping resources into responses" in the xDS
		// protocol; meshd's pseudo-delta SotW). Like Envoy, keep what it
		// does not mention; a resource goes when nothing refers to it any
		// more (unsubscribed below).
		for _, e := range entries {
			if _, ok := slices.BinarySearch(p.subs[t], e.name); ok {
				m[e.name] = e
			}
		}
	} else {
		m = make(map[string]*entry, len(entries))
		for _, e := range entries {
			m[e.name] = e
		}
	}
	p.state[t], p.got[t], p.acked[t] = m, true, resp.GetVersionInfo()
	p.f.ACKs.Add(1)
	removed := false
	reqs := []*discoverygrpc.DiscoveryRequest{{TypeUrl: t, VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce(), ResourceNames: p.subs[t]}}
	for typ, names := range p.wantedAfter(t) {
		if slices.Equal(names, p.subs[typ]) {
			continue
		}
		for _, n := range p.subs[typ] {
			if _, ok := slices.BinarySearch(names, n); !ok {
				delete(p.state[typ], n) // its cluster or listener went
				removed = true
			}
		}
		p.subs[typ] = names
		if len(names) == 0 {
			// An empty name list means "everything" in SotW; keep the old
			// resources rather than subscribing to the whole mesh.
			continue
		}
		reqs = append(reqs, &discoverygrpc.DiscoveryRequest{TypeUrl: typ, VersionInfo: p.acked[typ], ResponseNonce: p.nonce[typ], ResourceNames: names})
	}
	if !p.stillComplete(t, removed) {
		p.completeKnown = false
	}
	p.updated()
	return reqs
}

func (p *Proxy) handleDelta(resp *discoverygrpc.DeltaDiscoveryResponse) []*discoverygrpc.DeltaDiscoveryRequest {
	t := resp.GetTypeUrl()
	size := int64(proto.Size(resp))
	anys := make([]*anypb.Any, 0, len(resp.GetResources()))
	for _, r := range resp.GetResources() {
		anys = append(anys, r.GetResource())
	}
	entries, err := p.decode(t, anys)
	if err == nil {
		err = duplicateNames(entries)
	}
	if err == nil {
		for i, r := range resp.GetResources() {
			if r.GetName() != entries[i].name {
				err = fmt.Errorf("delta resource named %q carries %s %q", r.GetName(), shortType(t), entries[i].name)
				break
			}
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.count(size)
	p.nonce[t] = resp.GetNonce()
	if err != nil {
		p.nack(err)
		return []*discoverygrpc.DeltaDiscoveryRequest{{TypeUrl: t, ResponseNonce: resp.GetNonce(), ErrorDetail: nackDetail(err)}}
	}
	m := p.state[t]
	if m == nil {
		m = map[string]*entry{}
		p.state[t] = m
	}
	for _, e := range entries {
		m[e.name] = e
	}
	for _, n := range resp.GetRemovedResources() {
		delete(m, n)
	}
	removed := len(resp.GetRemovedResources()) > 0
	p.got[t] = true
	p.f.ACKs.Add(1)
	reqs := []*discoverygrpc.DeltaDiscoveryRequest{{TypeUrl: t, ResponseNonce: resp.GetNonce()}}
	for typ, names := range p.wantedAfter(t) {
		old := p.subs[typ]
		var add, drop []string
		for _, n := range names {
			if _, ok := slices.BinarySearch(old, n); !ok {
				add = append(add, n)
			}
		}
		for _, n := range old {
			if _, ok := slices.BinarySearch(names, n); !ok {
				drop = append(drop, n)
				delete(p.state[typ], n)
				removed = true
			}
		}
		if len(add)+len(drop) == 0 {
			continue
		}
		p.subs[typ] = names
		reqs = append(reqs, &discoverygrpc.DeltaDiscoveryRequest{TypeUrl: typ, ResourceNamesSubscribe: add, ResourceNamesUnsubscribe: drop})
	}
	if !p.stillComplete(t, removed) {
		p.completeKnown = false
	}
	p.updated()
	return reqs
}

func duplicateNames(entries []*entry) error {
	seen := make(map[string]bool, len(entries))
	for _, e := range entries {
		if seen[e.name] {
			return fmt.Errorf("resource %q appears twice in one response", e.name)
		}
		seen[e.name] = true
	}
	return nil
}

func (p *Proxy) count(size int64) {
	p.responses++
	p.bytes += size
	p.f.Responses.Add(1)
	p.f.Bytes.Add(size)
}

func (p *Proxy) nack(err error) {
	p.nacks++
	p.f.NACKs.Add(1)
	// Logged once per distinct error: a server that resends a rejected
	// version (go-control-plane does, without meshd's tracker) would flood
	// the log; the count still shows it.
	if msg := err.Error(); msg != p.nackMsg {
		p.nackMsg = msg
		p.f.cfg.Logger.Warn("NACK", "proxy", p.ID, "err", err)
	}
}

// wantedAfter is wanted after a response of type t: only listeners and
// clusters name other resources, so after any other response the
// subscriptions stand (as in Envoy, where an endpoint update subscribes to
// nothing), and working them out again for every endpoint push would make
// the tool, not the server, the cost of a change.
func (p *Proxy) wantedAfter(t string) map[string][]string {
	if !slices.Contains(wildcardTypes, t) {
		return nil
	}
	return p.wanted()
}

// wanted derives the named subscriptions from what the proxy holds, as
// Envoy does: RDS from listeners, EDS from clusters, SDS from both.
func (p *Proxy) wanted() map[string][]string {
	// Lists sorted and compacted at the end, not sets: a proxy that sees
	// every service names 600 resources, and map inserts for them on every
	// listener and cluster response were a tenth of the tool's CPU in a
	// cold sync.
	out := map[string][]string{resourcev3.RouteType: nil, resourcev3.EndpointType: nil}
	if p.f.cfg.SubscribeSDS {
		out[resourcev3.SecretType] = nil
	}
	n := 0
	for _, t := range wildcardTypes {
		for _, e := range p.state[t] {
			n += len(e.refs)
		}
	}
	for t := range out {
		out[t] = make([]string, 0, n)
	}
	for _, t := range wildcardTypes {
		for _, e := range p.state[t] {
			for _, r := range e.refs {
				if names, ok := out[r.TypeURL]; ok && (r.TypeURL != resourcev3.RouteType || t == resourcev3.ListenerType) {
					out[r.TypeURL] = append(names, r.Name)
				}
			}
		}
	}
	for t, names := range out {
		slices.Sort(names)
		out[t] = slices.Clip(slices.Compact(names))
	}
	return out
}

// syncedLocked: listeners and clusters received, and every name they (and
// the routes) refer to present, so Envoy could activate everything.
func (p *Proxy) syncedLocked() bool {
	if !p.completeKnown {
		p.complete, p.completeKnown = p.references(), true
	}
	return p.complete
}

// stillComplete reports whether a response of type t that replaced or
// added resources, and removed none, keeps the proxy's completeness as it
// was: endpoint sets and secrets refer to nothing, so replacing them
// cannot make a complete proxy lack anything.
func (p *Proxy) stillComplete(t string, removed bool) bool {
	return p.completeKnown && p.complete && !removed && (t == resourcev3.EndpointType || t == resourcev3.SecretType)
}

// references reports whether the proxy has listeners and clusters and
// every resource they and its routes refer to.
func (p *Proxy) references() bool {
	for _, t := range wildcardTypes {
		if !p.got[t] {
			return false
		}
	}
	for _, t := range []string{resourcev3.ListenerType, resourcev3.ClusterType, resourcev3.RouteType} {
		for _, e := range p.state[t] {
			for _, r := range e.refs {
				if r.TypeURL == resourcev3.SecretType && !p.f.cfg.SubscribeSDS {
					continue
				}
				if p.state[r.TypeURL][r.Name] == nil {
					return false
				}
			}
		}
	}
	return true
}

func (p *Proxy) updated() {
	now := time.Now()
	if p.syncedAt.IsZero() && p.syncedLocked() {
		p.syncedAt = now
	}
	if p.watch != nil && p.watchHit.IsZero() && p.watch(p) {
		p.watchHit = now
	}
}

// MissingRefs lists, for a proxy that is not synced, what it still lacks
// (for error messages).
func (p *Proxy) MissingRefs() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for _, t := range wildcardTypes {
		if !p.got[t] {
			out = append(out, "no "+shortType(t)+" response")
		}
	}
	for _, t := range []string{resourcev3.ListenerType, resourcev3.ClusterType, resourcev3.RouteType} {
		for name, e := range p.state[t] {
			for _, r := range e.refs {
				if r.TypeURL == resourcev3.SecretType && !p.f.cfg.SubscribeSDS {
					continue
				}
				if p.state[r.TypeURL][r.Name] == nil {
					out = append(out, fmt.Sprintf("%s %q → missing %s %q", shortType(t), name, shortType(r.TypeURL), r.Name))
				}
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func shortType(typeURL string) string {
	for i := len(typeURL) - 1; i >= 0; i-- {
		if typeURL[i] == '.' {
			return typeURL[i+1:]
		}
	}
	return typeURL
}
