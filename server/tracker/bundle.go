package tracker

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"slices"
	"sort"
	"sync"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshd/meshd/xds"
)

// bundleAcks knows which trust-bundle roots each proxy has acknowledged, for
// the CA's root rotation (sds.BundleGate). It reads the ROOTCA secret out of
// the SDS responses the server actually sent and records its roots when the
// proxy ACKs that response, so it needs nothing from the snapshot layer.
type bundleAcks struct {
	mu sync.Mutex
	// inflight: stream → the unanswered SDS responses carrying a ROOTCA,
	// oldest first, with the root fingerprints each carried. Usually one
	// (a SotW stream has one response per type in flight), at most
	// maxInflight+1.
	inflight map[StreamKey][]bundleSent
	// last caches the fingerprints of the last ROOTCA seen, by its wire
	// bytes: every proxy is sent the same bundle, so it is parsed once per
	// bundle rather than once per response, and every stream shares one
	// fingerprint slice.
	last struct {
		value []byte
		roots []string
	}
	// acked: node → root fingerprints of the last bundle it ACKed.
	acked map[string][]string
	// agents: node → the bundle its mesh-agent last fetched from the CA
	// service. An agent serves its Envoy's SDS, so meshd never sees that
	// Envoy's secret ACKs; the agent's fetch stands in for them.
	agents map[string]agentBundle
}

type bundleSent struct {
	nonce string
	roots []string
}

type agentBundle struct {
	roots []string
	seen  time.Time
}

// maxInflight bounds the unanswered bundle responses kept per stream: a
// client answers its responses in order, so only the last few can still be
// answered.
const maxInflight = 8

// agentWindow is how long an agent counts as present after its last fetch
// (agents poll every 30 s by default).
const agentWindow = 2 * time.Minute

// AgentFetchedBundle records that node's mesh-agent fetched bundlePEM.
func (t *Tracker) AgentFetchedBundle(node string, bundlePEM []byte) {
	fps := pemFingerprints(bundlePEM)
	t.bundles.mu.Lock()
	defer t.bundles.mu.Unlock()
	if t.bundles.agents == nil {
		t.bundles.agents = map[string]agentBundle{}
	}
	t.bundles.agents[node] = agentBundle{roots: fps, seen: t.now()}
}

// forget drops what the tracker's forget dropped nodes ACKed, and the
// agents that have not fetched for agentWindow (they no longer count).
func (b *bundleAcks) forget(nodes []string, now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, id := range nodes {
		delete(b.acked, id)
	}
	for id, a := range b.agents {
		if now.Sub(a.seen) >= agentWindow {
			delete(b.agents, id)
		}
	}
}

// rootsOf returns the fingerprints of the roots in a ROOTCA secret, or nil
// if the resource is not the trust bundle.
func rootsOf(a *anypb.Any) ([]string, bool) {
	var s tlsv3.Secret
	if a == nil || a.UnmarshalTo(&s) != nil || s.GetName() != xds.TrustBundleSecretName {
		return nil, false
	}
	return pemFingerprints(s.GetValidationContext().GetTrustedCa().GetInlineBytes()), true
}

// pemFingerprints returns the sorted SHA-256 fingerprints of the
// certificates in a PEM bundle.
func pemFingerprints(rest []byte) []string {
	var fps []string
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if c, err := x509.ParseCertificate(b.Bytes); err == nil {
			sum := sha256.Sum256(c.Raw)
			fps = append(fps, hex.EncodeToString(sum[:]))
		}
	}
	sort.Strings(fps)
	return fps
}

// sent records the roots of the trust bundle in an SDS response, if it
// carries one.
func (b *bundleAcks) sent(stream StreamKey, nonce string, resources []*anypb.Any) {
	var roots []string
	found := false
	for _, r := range resources {
		if roots, found = b.rootsOf(r); found {
			break
		}
	}
	if !found {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.inflight == nil {
		b.inflight = map[StreamKey][]bundleSent{}
	}
	l := b.inflight[stream]
	if len(l) > maxInflight {
		l = slices.Delete(l, 0, 1)
	}
	b.inflight[stream] = append(l, bundleSent{nonce: nonce, roots: roots})
}

// rootsOf is the package's rootsOf behind the one-bundle cache.
func (b *bundleAcks) rootsOf(a *anypb.Any) ([]string, bool) {
	b.mu.Lock()
	if a != nil && b.last.value != nil && bytes.Equal(a.GetValue(), b.last.value) {
		roots := b.last.roots
		b.mu.Unlock()
		return roots, true
	}
	b.mu.Unlock()
	roots, ok := rootsOf(a)
	if ok {
		b.mu.Lock()
		b.last.value, b.last.roots = bytes.Clone(a.GetValue()), roots
		b.mu.Unlock()
	}
	return roots, ok
}

// replied handles a request answering nonce: an ACK makes the roots sent
// with that nonce the node's; a NACK leaves the node's bundle as it was.
func (b *bundleAcks) replied(stream StreamKey, node, typeURL, nonce string, nack bool) {
	if typeURL != resourcev3.SecretType || nonce == "" || node == "" {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	l := b.inflight[stream]
	i := slices.IndexFunc(l, func(s bundleSent) bool { return s.nonce == nonce })
	if i < 0 {
		return
	}
	roots := l[i].roots
	// Answered, and so is everything sent before it (answers come in order).
	if l = slices.Delete(l, 0, i+1); len(l) == 0 {
		delete(b.inflight, stream)
	} else {
		b.inflight[stream] = l
	}
	if nack {
		return
	}
	if b.acked == nil {
		b.acked = map[string][]string{}
	}
	b.acked[node] = roots
}

func (b *bundleAcks) closed(stream StreamKey) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.inflight, stream)
}

func (b *bundleAcks) has(node, fp string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Contains(b.acked[node], fp)
}

// BundleAcked implements sds.BundleGate: every proxy with a stream that
// subscribes to the trust bundle now must have ACKed a bundle containing
// the root with this fingerprint. A proxy that subscribes to no bundle is
// not waited for: it validates no peer, so it can trust no old root, and
// when it subscribes again it is sent the bundle of that moment and is
// waited for from then on. That covers proxyless gRPC apps (no SDS: they
// read the bundle from files) and an Envoy whose configuration references
// no validation context (a server-only sidecar under DISABLE: Envoy drops
// its SDS subscriptions), which would otherwise hold a rotation forever.
func (t *Tracker) BundleAcked(rootFingerprint string) (bool, []string) {
	t.mu.Lock()
	nodes := map[string]struct{}{} // a node may have several such streams
	for _, s := range t.streams {
		if s.bundle {
			nodes[s.node] = struct{}{}
		}
	}
	t.mu.Unlock()
	var pending []string
	for id := range nodes {
		if !t.bundles.has(id, rootFingerprint) {
			pending = append(pending, id)
		}
	}
	now := t.now()
	t.bundles.mu.Lock()
	for id, a := range t.bundles.agents {
		if now.Sub(a.seen) < agentWindow && !slices.Contains(a.roots, rootFingerprint) && !slices.Contains(pending, id) {
			pending = append(pending, id+" (mesh-agent)")
		}
	}
	t.bundles.mu.Unlock()
	sort.Strings(pending)
	return len(pending) == 0, pending
}
