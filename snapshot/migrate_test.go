package snapshot

import (
	"strings"
	"testing"

	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/meshd/meshd/mesh"
)

// fakeAcks lets the test decide what each proxy has acknowledged.
type fakeAcks struct {
	acked        map[string]string // node|type → version
	disconnected map[string]bool
}

func (f *fakeAcks) Acked(node, typ string) (string, bool) {
	return f.acked[node+"|"+typ], !f.disconnected[node]
}

// ackAll makes node ACK everything it was last sent.
func (f *fakeAcks) ackAll(t *testing.T, cache cachev3.SnapshotCache, node string) {
	t.Helper()
	s, err := cache.GetSnapshot(node)
	if err != nil {
		t.Fatal(err)
	}
	for _, typ := range []string{resourcev3.ListenerType, resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.RouteType, resourcev3.SecretType} {
		f.acked[node+"|"+typ] = s.GetVersion(typ)
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

func TestSafeMTLSMigration(t *testing.T) {
	svcs, pxs := quickstart(t)
	pub, cache := newTestPublisher(&fakeSecrets{})
	acks := &fakeAcks{acked: map[string]string{}, disconnected: map[string]bool{}}
	pub.SetAckSource(acks)
	cat := mustCatalog(t, svcs, pxs)
	policy := func(mode mesh.MTLSMode) *mesh.PolicySet {
		return &mesh.PolicySet{RootNamespace: "meshd-system", DefaultMode: mesh.MTLSPermissive,
			Peer: []mesh.PeerAuthentication{{Name: "api", Namespace: "default", Mode: mode, Selector: map[string]string{"version": "v1"}}}}
	}
	publish := func() {
		t.Helper()
		if _, err := pub.Publish(); err != nil {
			t.Fatal(err)
		}
	}
	expect := func(step, server, caller string) {
		t.Helper()
		if got := serverAccepts(t, cache); got != server {
			t.Fatalf("%s: api accepts %s, want %s (transitions %+v)", step, got, server, pub.Transitions())
		}
		if got := webSends(t, cache); got != caller {
			t.Fatalf("%s: web sends %s, want %s (transitions %+v)", step, got, caller, pub.Transitions())
		}
	}
	pub.Update(cat)
	pub.UpdatePolicy(policy(mesh.MTLSPermissive))
	publish()
	expect("start", "both", "mtls")

	// PERMISSIVE → STRICT waits for web to have ACKed config sending mTLS.
	pub.UpdatePolicy(policy(mesh.MTLSStrict))
	publish()
	expect("strict requested, web not ACKed", "both", "mtls")
	tr := pub.Transitions()
	if len(tr) != 1 || tr[0].Proxy != "api.default" || tr[0].To != mesh.MTLSStrict || !strings.Contains(tr[0].WaitingFor, "web.default") {
		t.Fatalf("transitions %+v", tr)
	}
	acks.ackAll(t, cache, "web.default")
	publish()
	expect("web ACKed", "mtls", "mtls")
	if tr := pub.Transitions(); len(tr) != 0 {
		t.Fatalf("transition not finished: %+v", tr)
	}

	// STRICT → DISABLE: server accepts both first, then callers go
	// plaintext, then the server stops accepting mTLS.
	pub.UpdatePolicy(policy(mesh.MTLSDisable))
	publish()
	expect("disable requested", "both", "mtls")
	publish()
	expect("server has not ACKed", "both", "mtls")
	acks.ackAll(t, cache, "api.default")
	publish()
	expect("server ACKed PERMISSIVE", "both", "plaintext")
	publish()
	expect("web has not ACKed plaintext", "both", "plaintext")
	acks.ackAll(t, cache, "web.default")
	publish()
	expect("web ACKed", "plaintext", "plaintext")

	// DISABLE → STRICT with web disconnected: it does not hold steps back.
	acks.disconnected["web.default"] = true
	pub.UpdatePolicy(policy(mesh.MTLSStrict))
	publish()
	expect("strict requested", "both", "plaintext")
	acks.ackAll(t, cache, "api.default")
	publish()
	expect("server ACKed", "both", "mtls")
	publish()
	expect("disconnected caller", "mtls", "mtls")
	if tr := pub.Transitions(); len(tr) != 0 {
		t.Fatalf("transition not finished: %+v", tr)
	}
}
