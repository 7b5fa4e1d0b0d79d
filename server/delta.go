package server

import (
	"slices"
	"strconv"
	"strings"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshd/meshd/server/auth"
	"github.com/meshd/meshd/server/tracker"
	"github.com/meshd/meshd/xds"
)

// Delta xDS, served by meshd like state of the world (sotw.go) and for the
// same reasons: go-control-plane's delta server kept a watch with the last
// request per type, a subscription with two maps, and marshalled every
// resource it sent per proxy. Here a stream keeps, per type, what is
// subscribed and which version of each resource the proxy has; responses
// carry the publisher's shared encodings.
//
// The protocol is go-control-plane's (and what Envoy expects): a response
// carries the subscribed resources whose version differs from the one the
// proxy has, and the names it has that the snapshot no longer holds; it is
// sent when there is any, or to the first request of a wildcard
// subscription even if empty (Envoy waits for it). Per-resource versions
// are the resources' content hashes (xds.Resource.Hash: go-control-plane's
// full SHA-256), so a proxy reconnecting with initial_resource_versions
// (to this or another replica) is sent nothing it has; when that is all of
// a type, the stream reports the version as held, as an ACK would (respond).
// What was sent counts as had, so a NACKed resource is not resent until it
// changes. After a
// response, the next one for the type waits for the proxy's next request.
// A client may ask for more before answering a response, and is then sent
// another: the loop remembers the last few unanswered responses of each
// type (nonce and system version), so an answer is an ACK or NACK of
// exactly what that response carried.

// DeltaAggregatedResources implements delta ADS.
func (s *sotwServer) DeltaAggregatedResources(st grpc.BidiStreamingServer[discoveryv3.DeltaDiscoveryRequest, discoveryv3.DeltaDiscoveryResponse]) error {
	return s.serveDelta(st, "")
}

// DeltaListeners implements delta LDS.
func (s *sotwServer) DeltaListeners(st grpc.BidiStreamingServer[discoveryv3.DeltaDiscoveryRequest, discoveryv3.DeltaDiscoveryResponse]) error {
	return s.serveDelta(st, resourcev3.ListenerType)
}

// DeltaClusters implements delta CDS.
func (s *sotwServer) DeltaClusters(st grpc.BidiStreamingServer[discoveryv3.DeltaDiscoveryRequest, discoveryv3.DeltaDiscoveryResponse]) error {
	return s.serveDelta(st, resourcev3.ClusterType)
}

// DeltaRoutes implements delta RDS.
func (s *sotwServer) DeltaRoutes(st grpc.BidiStreamingServer[discoveryv3.DeltaDiscoveryRequest, discoveryv3.DeltaDiscoveryResponse]) error {
	return s.serveDelta(st, resourcev3.RouteType)
}

// DeltaEndpoints implements delta EDS.
func (s *sotwServer) DeltaEndpoints(st grpc.BidiStreamingServer[discoveryv3.DeltaDiscoveryRequest, discoveryv3.DeltaDiscoveryResponse]) error {
	return s.serveDelta(st, resourcev3.EndpointType)
}

// DeltaSecrets implements delta SDS.
func (s *sotwServer) DeltaSecrets(st grpc.BidiStreamingServer[discoveryv3.DeltaDiscoveryRequest, discoveryv3.DeltaDiscoveryResponse]) error {
	return s.serveDelta(st, resourcev3.SecretType)
}

// deltaType is what a delta stream knows about one type.
type deltaType struct {
	subscribed bool
	// wildcard: every resource of the type (with names explicitly
	// subscribed besides). legacy: only empty subscriptions so far for a
	// type that allows wildcards, which means wildcard.
	wildcard, legacy bool
	pending          bool      // a response was sent and no request has come since
	answered         bool      // a response for the type was sent on this stream
	names            *nameList // explicitly subscribed, sorted, without "*" (shared)
	// declared: the stream's first request of the type declared what the
	// proxy has (initial_resource_versions). held is the last version
	// reported as held while nothing was sent (respond).
	declared bool
	held     string
	// have is what the proxy has, sorted by name, each resource at its
	// content hash (xds.Resource.Hash): what the last response considered,
	// usually the snapshot's own shared slice, so a proxy keeps no list of
	// its own (at 200 services a list of name and version per resource of
	// every type was 22 KiB per proxy). changes overrides it until the
	// next response: versions a reconnecting proxy declared, names
	// unsubscribed (gone) or to be told again (version "").
	have    []*xds.Resource
	changes []held
	// from is the snapshot's slice the last respond compared with, while
	// fromOK: nothing the answer depends on has changed since (names,
	// versions, what the proxy has), so the same slice gives the same
	// answer and a push skips the type without walking it (a change of
	// one endpoint set left the proxy's listeners, clusters, routes and
	// secrets to be compared again, and its own inbound listener encoded
	// again, on every push).
	from   []*xds.Resource
	fromOK bool
	// sent are the unanswered responses, oldest first (at most
	// maxUnanswered: answers come in order, so older ones never will).
	sent []sentResponse
}

type sentResponse struct{ nonce, version string }

const maxUnanswered = 8

// takeAnswer returns the response a nonce answers and forgets it and every
// older one.
func (t *deltaType) takeAnswer(nonce string) (sentResponse, bool) {
	for i, r := range t.sent {
		if r.nonce == nonce {
			t.sent = slices.Delete(t.sent, 0, i+1)
			if len(t.sent) == 0 {
				t.sent = nil
			}
			return r, true
		}
	}
	return sentResponse{}, false
}

// held overrides what the proxy has of one resource: the version it has,
// or gone (it has none).
type held struct {
	name, version string
	gone          bool
}

func byHeldName(h held, n string) int { return strings.Compare(h.name, n) }

// version returns the version of name the proxy has.
func (t *deltaType) version(name string) (string, bool) {
	if i, found := slices.BinarySearchFunc(t.changes, name, byHeldName); found {
		return t.changes[i].version, !t.changes[i].gone
	}
	if i, found := slices.BinarySearchFunc(t.have, name, byName); found {
		return t.have[i].Hash, true
	}
	return "", false
}

// cursor answers version for names asked in ascending order, walking
// t.changes and t.have once rather than searching both for every name: a
// proxy that sees 200 services has 200 endpoint sets compared on every
// push, and the searches were a third of meshd's CPU per endpoint change
// at 1,000 delta proxies (issue 14).
type cursor struct {
	t    *deltaType
	c, h int
}

func (k *cursor) version(name string) (string, bool) {
	t := k.t
	for k.c < len(t.changes) && t.changes[k.c].name < name {
		k.c++
	}
	if k.c < len(t.changes) && t.changes[k.c].name == name {
		return t.changes[k.c].version, !t.changes[k.c].gone
	}
	for k.h < len(t.have) && t.have[k.h].Name < name {
		k.h++
	}
	if k.h < len(t.have) && t.have[k.h].Name == name {
		return t.have[k.h].Hash, true
	}
	return "", false
}

func (t *deltaType) override(h held) {
	t.fromOK = false
	i, found := slices.BinarySearchFunc(t.changes, h.name, byHeldName)
	if found {
		t.changes[i] = h
		return
	}
	t.changes = slices.Insert(t.changes, i, h)
}

func (t *deltaType) setVersion(name, version string) { t.override(held{name: name, version: version}) }

func (t *deltaType) forget(name string) {
	if _, had := t.version(name); had {
		t.override(held{name: name, gone: true})
	}
}

// had calls f with every name the proxy has.
func (t *deltaType) had(f func(name string)) {
	for _, r := range t.have {
		if _, found := slices.BinarySearchFunc(t.changes, r.Name, byHeldName); !found {
			f(r.Name)
		}
	}
	for _, h := range t.changes {
		if !h.gone {
			f(h.name)
		}
	}
}

// setNames replaces the explicit subscriptions by the shared list of names.
func (t *deltaType) setNames(lists *nameLists, names []string) {
	t.names = lists.replace(t.names, names)
}

// deltaState is one delta stream.
type deltaState struct {
	srv   *sotwServer
	st    grpc.BidiStreamingServer[discoveryv3.DeltaDiscoveryRequest, discoveryv3.DeltaDiscoveryResponse]
	id    int64
	nonce int64
	types [types.UnknownType]*deltaType // nil until asked for (sotwStream.types)
	sotw  *sotwStream                   // the registration that wakes the stream (its wake channel)
}

func (s *sotwServer) serveDelta(st grpc.BidiStreamingServer[discoveryv3.DeltaDiscoveryRequest, discoveryv3.DeltaDiscoveryResponse], defaultType string) error {
	ds := &deltaState{srv: s, st: st, id: s.deltaIDs.Add(1), sotw: &sotwStream{wake: make(chan struct{}, 1), sess: auth.SessionFrom(st.Context())}}
	defer s.ended(ds.key(), ds.sotw)
	defer func() {
		for _, t := range ds.types {
			if t != nil {
				t.setNames(&s.cache.names, nil)
			}
		}
	}()
	reqs := receive(s.ctx, st)
	for {
		select {
		case <-s.ctx.Done():
			return nil
		case <-ds.sotw.sess.Done():
			return ds.sotw.sess.Err() // as in serve (sotw.go)
		case <-ds.sotw.wake:
			if err := ds.push(); err != nil {
				return err
			}
		case req, ok := <-reqs:
			if !ok {
				return nil
			}
			if err := ds.request(req, defaultType); err != nil {
				return err
			}
		}
	}
}

func (d *deltaState) key() tracker.StreamKey { return tracker.StreamKey{Delta: true, ID: d.id} }

func (d *deltaState) request(req *discoveryv3.DeltaDiscoveryRequest, defaultType string) error {
	typ, err := streamType(req.GetTypeUrl(), defaultType)
	if err != nil {
		return err
	}
	d.srv.identified(d.key(), d.sotw, req.GetNode())
	i := cachev3.GetResponseType(typ)
	if i == types.UnknownType {
		return nil
	}
	typ = canonicalType(typ)
	t := d.types[i]
	if t == nil {
		t = &deltaType{}
		d.types[i] = t
	}
	if nonce := req.GetResponseNonce(); nonce != "" {
		if r, ok := t.takeAnswer(nonce); ok {
			if detail := req.GetErrorDetail(); detail != nil {
				d.srv.tracker.Nacked(d.key(), typ, nonce, r.version, detail.GetMessage())
			} else {
				d.srv.tracker.Acked(d.key(), typ, nonce, r.version)
				d.srv.events.Acked(d.sotw.node, typ, r.version)
			}
		}
	}
	internNames(req.ResourceNamesSubscribe)
	t.pending = false
	t.subscribe(&d.srv.cache.names, typ, req)
	d.srv.bundleSubscription(d.key(), typ, t.wildcard, t.names)
	return d.respond(typ, t)
}

// subscribe applies a request's subscriptions (xDS protocol, "how the
// client specifies what resources to return", delta variant).
func (t *deltaType) subscribe(lists *nameLists, typ string, req *discoveryv3.DeltaDiscoveryRequest) {
	sub, unsub := req.GetResourceNamesSubscribe(), req.GetResourceNamesUnsubscribe()
	t.fromOK = false
	if !t.subscribed {
		t.subscribed = true
		t.legacy = typ == resourcev3.ListenerType || typ == resourcev3.ClusterType
		t.wildcard = len(sub) == 0 && t.legacy
		for name, v := range req.GetInitialResourceVersions() {
			t.setVersion(name, v)
			t.declared = true
		}
	}
	if t.legacy {
		if len(sub) == 0 {
			return // still wildcard; unsubscriptions do not end legacy wildcard
		}
		t.legacy = false
	}
	names := t.names.list()
	changed := false
	for _, n := range sub {
		if n == "*" {
			t.wildcard = true
			continue
		}
		if i, found := slices.BinarySearch(names, n); !found {
			if !changed {
				names, changed = slices.Clone(names), true // the old list is shared
			}
			names = slices.Insert(names, i, n)
		}
	}
	for _, n := range unsub {
		if n == "*" {
			t.wildcard = false
			continue
		}
		i, found := slices.BinarySearch(names, n)
		if found && t.wildcard {
			// Still wanted through the wildcard: the proxy is told again
			// whether it exists (sent anew, or removed).
			t.setVersion(n, "")
		} else {
			t.forget(n)
		}
		if found {
			if !changed {
				names, changed = slices.Clone(names), true
			}
			names = slices.Delete(names, i, i+1)
		}
	}
	if changed {
		t.setNames(lists, names)
	}
}

// push answers every subscribed type not waiting on the proxy after a
// snapshot change, in pushOrder.
func (d *deltaState) push() error {
	for _, i := range pushOrder {
		t := d.types[i]
		if t == nil || !t.subscribed || t.pending {
			continue
		}
		typ, _ := cachev3.GetResponseTypeURL(i)
		if err := d.respond(typ, t); err != nil {
			return err
		}
	}
	return nil
}

// respond sends what the proxy lacks of the type, if anything, or an empty
// response when a wildcard subscription has had no answer yet on this
// stream (Envoy waits for one to finish initialising).
func (d *deltaState) respond(typ string, t *deltaType) error {
	if d.sotw.node == "" {
		return nil
	}
	snap, err := d.srv.cache.GetSnapshot(d.sotw.node)
	if err != nil {
		return nil // none yet: SetSnapshot wakes the stream
	}
	version := snap.GetVersion(typ)
	all := resourcesOf(snap, typ, version)
	if t.fromOK && t.answered && len(t.changes) == 0 && sameSlice(t.from, all) {
		return nil
	}
	var out []*discoveryv3.Resource
	var removed []string
	// next is what the proxy will have: all, or a subsequence of it, in
	// name order. It is all itself (nothing allocated) until it departs
	// from it.
	var next []*xds.Resource
	shared := true
	// Resources are considered in name order (all is sorted, and so are
	// the subscribed names), so what the proxy has is walked alongside.
	had := cursor{t: t}
	consider := func(r *xds.Resource) error {
		v, w := r.Hash, r.Wire
		if v == "" || w == nil {
			// Not shared by the publisher (a proxy's own inbound listener,
			// or a snapshot built elsewhere): encode it, as go-control-plane
			// would, and take the version from those bytes.
			b, err := cachev3.MarshalResource(r.Message)
			if err != nil {
				return status.Errorf(codes.Internal, "encoding %s %q: %v", typ, r.Name, err)
			}
			if v == "" {
				v = cachev3.HashResource(b)
			}
			w = &anypb.Any{TypeUrl: typ, Value: b}
		}
		if have, found := had.version(r.Name); !found || have != v {
			out = append(out, &discoveryv3.Resource{Name: r.Name, Version: v, Resource: w})
		}
		k := len(next)
		if shared && (r.Hash == "" || k >= len(all) || all[k] != r) {
			// Departs from all: from here on a list of its own.
			shared = false
			next = append(make([]*xds.Resource, 0, len(all)), all[:k]...)
		}
		if r.Hash == "" {
			// Remember the version computed from the bytes.
			r = &xds.Resource{Name: r.Name, Message: r.Message, Hash: v, Wire: w}
		}
		if shared {
			next = all[:k+1]
		} else {
			next = append(next, r)
		}
		return nil
	}
	if t.wildcard {
		for _, r := range all {
			if err := consider(r); err != nil {
				return err
			}
		}
		t.had(func(name string) {
			if _, found := slices.BinarySearchFunc(all, name, byName); !found {
				removed = append(removed, name)
			}
		})
		slices.Sort(removed)
	} else {
		i := 0
		for _, n := range t.names.list() {
			for i < len(all) && all[i].Name < n {
				i++
			}
			if i < len(all) && all[i].Name == n {
				if err := consider(all[i]); err != nil {
					return err
				}
			} else if _, was := had.version(n); was {
				removed = append(removed, n)
			}
		}
	}
	if len(out) == 0 && len(removed) == 0 && !(t.wildcard && !t.answered) {
		if len(t.changes) == 0 {
			t.from, t.fromOK = all, true
		}
		if t.declared && !t.answered && t.held != version {
			// A reconnecting proxy declared every subscribed resource at
			// the version served: it holds this version but, sent
			// nothing, will ACK nothing. Report it as its ACK would be
			// (the publisher forgot the node's ACKs when its last stream
			// closed, and an mTLS migration step may wait for this one).
			// Only before any response: after one, what was sent counts
			// as had even when NACKed.
			t.held = version
			d.srv.tracker.Holds(d.key(), typ, version)
			d.srv.events.Acked(d.sotw.node, typ, version)
		}
		return nil
	}
	if err := checkSession(d.sotw.sess, typ); err != nil {
		return err
	}
	d.nonce++
	resp := &discoveryv3.DeltaDiscoveryResponse{SystemVersionInfo: version, Resources: out, RemovedResources: removed,
		TypeUrl: typ, Nonce: strconv.FormatInt(d.nonce, 10)}
	// next is in name order: built from sorted resources or sorted names.
	t.have, t.changes, t.pending, t.answered = next, nil, true, true
	t.from, t.fromOK = all, true
	if len(t.sent) == maxUnanswered {
		t.sent = slices.Delete(t.sent, 0, 1)
	}
	t.sent = append(t.sent, sentResponse{resp.Nonce, version})
	size := 0
	var secrets []*anypb.Any // the tracker reads the trust bundle's roots
	for _, r := range out {
		size += len(r.GetResource().GetValue())
		if typ == resourcev3.SecretType {
			secrets = append(secrets, r.GetResource())
		}
	}
	d.srv.tracker.Sent(d.key(), typ, resp.Nonce, version, size, secrets)
	return d.st.Send(resp)
}

// sameSlice reports whether a and b are the same slice of the same array.
func sameSlice(a, b []*xds.Resource) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}
