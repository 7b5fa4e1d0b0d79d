package snapshot

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"gopkg.in/yaml.v3"

	"github.com/meshd/meshd/internal/metrics"
	"github.com/meshd/meshd/internal/testwait"
	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/xds"
)

// fakeSecrets stands in for the CA: unit tests here are about publishing
// logic, not certificates (the CA and end-to-end tests cover those).
type fakeSecrets struct {
	mu      sync.Mutex
	serial  map[string]int
	failFor string
}

func (f *fakeSecrets) Identity(id mesh.Identity, _ []string) ([]byte, []byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failFor == id.SPIFFEID() {
		return nil, nil, fmt.Errorf("CA unavailable for %s", id)
	}
	if f.serial == nil {
		f.serial = map[string]int{}
	}
	n := f.serial[id.SPIFFEID()]
	return []byte(fmt.Sprintf("cert %s #%d", id, n)), []byte("key"), nil
}
func (f *fakeSecrets) rotate(id string)       { f.mu.Lock(); f.serial[id]++; f.mu.Unlock() }
func (f *fakeSecrets) Bundle() []byte         { return []byte("roots") }
func (f *fakeSecrets) NextRenewal() time.Time { return time.Time{} }

func quickstart(t testing.TB) (services []mesh.Service, proxies []mesh.Proxy) {
	t.Helper()
	data, err := os.ReadFile("../examples/quickstart/catalog.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var in struct {
		Services []mesh.Service `yaml:"services"`
		Proxies  []mesh.Proxy   `yaml:"proxies"`
	}
	if err := yaml.Unmarshal(data, &in); err != nil {
		t.Fatal(err)
	}
	return in.Services, in.Proxies
}

func mustCatalog(t testing.TB, s []mesh.Service, p []mesh.Proxy) *mesh.Catalog {
	t.Helper()
	c, err := mesh.NewCatalog(s, p)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func newTestPublisher(sec Secrets) (*Publisher, cachev3.SnapshotCache) {
	cache := cachev3.NewSnapshotCache(false, cachev3.IDHash{}, nil)
	return New(cache, sec, Options{Translate: xds.Options{TrustDomain: "cluster.local"}, Metrics: metrics.New()}), cache
}

func TestPublishQuickstart(t *testing.T) {
	svcs, pxs := quickstart(t)
	pub, cache := newTestPublisher(&fakeSecrets{})
	pub.Update(Update{Catalog: mustCatalog(t, svcs, pxs)})
	st, err := pub.Publish()
	if err != nil {
		t.Fatal(err)
	}
	if st.Rendered != len(pxs) || st.Pushed != len(pxs) {
		t.Fatalf("first publish: %+v, want %d rendered and pushed", st, len(pxs))
	}
	for _, p := range pxs {
		id := p.Service + ".default"
		snap, err := cache.GetSnapshot(id)
		if err != nil {
			t.Fatalf("%s: %v", id, err)
		}
		s := snap.(*Snapshot)
		if err := gcpSnapshot(t, s).Consistent(); err != nil {
			t.Errorf("%s: go-control-plane consistency: %v", id, err)
		}
		secrets := s.GetResources(resourcev3.SecretType)
		if p.Flavor == "grpc" {
			if len(secrets) != 0 {
				t.Errorf("%s: proxyless gRPC must get no SDS secrets, got %d", id, len(secrets))
			}
			continue
		}
		// Every proxy's identity secret has the same name; the content is
		// its own identity's.
		want := "spiffe://cluster.local/ns/default/sa/" + p.Service
		own, ok := secrets[xds.IdentitySecretName].(*tlsv3.Secret)
		if _, bundle := secrets[xds.TrustBundleSecretName]; !ok || !bundle || len(secrets) != 2 {
			t.Errorf("%s: secrets %v, want exactly %s and %s", id, keys(secrets), xds.IdentitySecretName, xds.TrustBundleSecretName)
		} else if got := string(own.GetTlsCertificate().GetCertificateChain().GetInlineBytes()); !strings.Contains(got, want+" ") {
			t.Errorf("%s: its identity secret holds %q, want the certificate of %s", id, got, want)
		}
		if !pub.Ready() {
			t.Error("publisher not ready after a publish")
		}
	}
	// Publishing the same catalog again renders nothing.
	pub.Update(Update{Catalog: mustCatalog(t, svcs, pxs)})
	st, err = pub.Publish()
	if err != nil || st.Rendered != 0 || st.Pushed != 0 || st.Skipped != len(pxs) {
		t.Fatalf("republish of identical catalog: %+v %v, want everything skipped", st, err)
	}
}

// gcpSnapshot is the same content as a go-control-plane snapshot, for its
// consistency check.
func gcpSnapshot(t testing.TB, s *Snapshot) *cachev3.Snapshot {
	t.Helper()
	byType := map[resourcev3.Type][]types.Resource{}
	for _, typ := range []string{resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.ListenerType, resourcev3.RouteType, resourcev3.SecretType} {
		sorted, _ := s.Resources(typ)
		for _, r := range sorted {
			byType[typ] = append(byType[typ], r.Message)
		}
	}
	out, err := cachev3.NewSnapshot("v", byType)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// A gateway is served its identity, the bundle and, for a listener whose
// certificate comes from files, the secret naming them (paths, no key).
func TestPublishGatewaySecrets(t *testing.T) {
	svcs := []mesh.Service{
		{Name: "ingress"},
		{Name: "api", Protocol: mesh.ProtocolHTTP, Endpoints: []mesh.Endpoint{{Address: "10.0.0.3", Port: 15006}}},
	}
	pxs := []mesh.Proxy{{ID: "gw", Service: "ingress", Flavor: mesh.FlavorGateway, Listeners: []mesh.GatewayListener{
		{Port: 8443, TLS: mesh.GatewayTLS{CertificateFile: "/etc/gw/tls.crt", KeyFile: "/etc/gw/tls.key"}, Routes: []mesh.GatewayRoute{{Service: "api"}}},
		{Port: 8080, Routes: []mesh.GatewayRoute{{Service: "api"}}},
	}}}
	pub, cache := newTestPublisher(&fakeSecrets{})
	pub.Update(Update{Catalog: mustCatalog(t, svcs, pxs)})
	if _, err := pub.Publish(); err != nil {
		t.Fatal(err)
	}
	snap, err := cache.GetSnapshot("gw")
	if err != nil {
		t.Fatal(err)
	}
	secrets := snap.(*Snapshot).GetResources(resourcev3.SecretType)
	want := []string{xds.IdentitySecretName, xds.TrustBundleSecretName, xds.GatewayTLSSecretName(8443)}
	if len(secrets) != len(want) {
		t.Fatalf("gateway secrets %v, want %v", keys(secrets), want)
	}
	for _, n := range want {
		if _, ok := secrets[n]; !ok {
			t.Errorf("gateway secrets %v lack %s", keys(secrets), n)
		}
	}
	files := secrets[xds.GatewayTLSSecretName(8443)].(*tlsv3.Secret).GetTlsCertificate()
	if files.GetCertificateChain().GetFilename() != "/etc/gw/tls.crt" || files.GetPrivateKey().GetFilename() != "/etc/gw/tls.key" || files.GetPrivateKey().GetInlineBytes() != nil {
		t.Errorf("certificate secret %v: want the two paths and no key material", files)
	}
}

func TestEndpointChangeRerendersOnlyDependents(t *testing.T) {
	svcs, pxs := quickstart(t)
	pub, cache := newTestPublisher(&fakeSecrets{})
	pub.Update(Update{Catalog: mustCatalog(t, svcs, pxs)})
	if _, err := pub.Publish(); err != nil {
		t.Fatal(err)
	}
	before, _ := cache.GetSnapshot("web.default")
	apiBefore, _ := cache.GetSnapshot("api.default")

	// Add an endpoint to api: only web (its one caller) must be re-rendered.
	for i := range svcs {
		if svcs[i].Name == "api" {
			svcs[i].Endpoints = append(svcs[i].Endpoints, mesh.Endpoint{Address: "127.0.0.9", Port: 15102})
		}
	}
	pub.Update(Update{Catalog: mustCatalog(t, svcs, pxs)})
	st, err := pub.Publish()
	if err != nil {
		t.Fatal(err)
	}
	// web (api's one caller) gets api's new endpoint set in place of the
	// old one, without a render; api (whose own endpoints changed) is
	// looked at and found unchanged; nothing else is even looked at.
	if st.Patched != 1 || st.Rendered != 0 || st.Pushed != 1 || st.Visited != 2 || st.Skipped != len(pxs)-1 {
		t.Fatalf("stats %+v: want web patched and pushed, api visited, nothing else", st)
	}
	// The patched snapshot is exactly what a render gives.
	want, err := xds.Translate(mustCatalog(t, svcs, pxs), "web.default", xds.Options{TrustDomain: "cluster.local"})
	if err != nil {
		t.Fatal(err)
	}
	patched, _ := cache.GetSnapshot("web.default")
	for typ, list := range want.ByType() {
		got := patched.GetVersionMap(typ)
		if len(got) != len(list) {
			t.Fatalf("%s: patched snapshot has %d resources, a render %d", typ, len(got), len(list))
		}
		for _, r := range list {
			if got[r.Name] != r.Hash {
				t.Errorf("%s %s: patched version %.12s, rendered %.12s", typ, r.Name, got[r.Name], r.Hash)
			}
		}
	}
	after, _ := cache.GetSnapshot("web.default")
	for _, typ := range []string{resourcev3.ListenerType, resourcev3.ClusterType, resourcev3.RouteType, resourcev3.SecretType} {
		if before.GetVersion(typ) != after.GetVersion(typ) {
			t.Errorf("%s version changed although only endpoints did", typ)
		}
	}
	if before.GetVersion(resourcev3.EndpointType) == after.GetVersion(resourcev3.EndpointType) {
		t.Error("endpoint version did not change")
	}
	apiAfter, _ := cache.GetSnapshot("api.default")
	if apiBefore != apiAfter {
		t.Error("api's own snapshot was replaced although its inputs did not change")
	}
	if got := testutil.ToFloat64(pub.m.ProxiesSkipped); got != float64(len(pxs)-1) {
		t.Errorf("skipped metric %v", got)
	}
}

func TestChangeWithoutEffectPushesNothing(t *testing.T) {
	svcs, pxs := quickstart(t)
	pub, _ := newTestPublisher(&fakeSecrets{})
	pub.Update(Update{Catalog: mustCatalog(t, svcs, pxs)})
	if _, err := pub.Publish(); err != nil {
		t.Fatal(err)
	}
	// Labels do not reach any xDS resource yet: web is re-rendered (its
	// upstream's inputs changed) but nothing is pushed.
	for i := range svcs {
		if svcs[i].Name == "api" {
			svcs[i].Endpoints[0].Labels = map[string]string{"version": "v2"}
		}
	}
	pub.Update(Update{Catalog: mustCatalog(t, svcs, pxs)})
	st, err := pub.Publish()
	if err != nil {
		t.Fatal(err)
	}
	if st.Pushed != 0 || st.Unchanged != 1 {
		t.Fatalf("stats %+v: want one unchanged render and no push", st)
	}
}

func TestVersionsAreContentHashes(t *testing.T) {
	svcs, pxs := quickstart(t)
	a, ca := newTestPublisher(&fakeSecrets{})
	b, cb := newTestPublisher(&fakeSecrets{})
	for _, p := range []*Publisher{a, b} {
		p.Update(Update{Catalog: mustCatalog(t, svcs, pxs)})
		if _, err := p.Publish(); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range []string{"web.default", "hello-client.default"} {
		sa, _ := ca.GetSnapshot(id)
		sb, _ := cb.GetSnapshot(id)
		for _, typ := range []string{resourcev3.ListenerType, resourcev3.ClusterType, resourcev3.RouteType, resourcev3.EndpointType, resourcev3.SecretType} {
			va, vb := sa.GetVersion(typ), sb.GetVersion(typ)
			if va != vb || va == "" {
				t.Errorf("%s %s: versions %q and %q differ between two publishers of the same input", id, typ, va, vb)
			}
		}
	}
}

func TestSecretRotationRepublishesOnlyThatIdentity(t *testing.T) {
	svcs, pxs := quickstart(t)
	sec := &fakeSecrets{}
	pub, cache := newTestPublisher(sec)
	pub.Update(Update{Catalog: mustCatalog(t, svcs, pxs)})
	if _, err := pub.Publish(); err != nil {
		t.Fatal(err)
	}
	before, _ := cache.GetSnapshot("api.default")
	sec.rotate("spiffe://cluster.local/ns/default/sa/api")
	// The CA tells the publisher (OnCAChange), or its renewal timer fires.
	pub.Republish()
	st, err := pub.Publish()
	if err != nil {
		t.Fatal(err)
	}
	if st.Pushed != 1 {
		t.Fatalf("stats %+v: want only api pushed", st)
	}
	after, _ := cache.GetSnapshot("api.default")
	if before.GetVersion(resourcev3.SecretType) == after.GetVersion(resourcev3.SecretType) {
		t.Error("secret version unchanged after rotation")
	}
	if before.GetVersion(resourcev3.ListenerType) != after.GetVersion(resourcev3.ListenerType) {
		t.Error("listener version changed on a secret rotation")
	}
}

func TestFailureKeepsLastGood(t *testing.T) {
	svcs, pxs := quickstart(t)
	sec := &fakeSecrets{}
	pub, cache := newTestPublisher(sec)
	pub.Update(Update{Catalog: mustCatalog(t, svcs, pxs)})
	if _, err := pub.Publish(); err != nil {
		t.Fatal(err)
	}
	good, _ := cache.GetSnapshot("api.default")
	sec.failFor = "spiffe://cluster.local/ns/default/sa/api"
	// Change api's callers' view and api itself so every proxy has work.
	for i := range svcs {
		if svcs[i].Name == "api" {
			svcs[i].Endpoints = append(svcs[i].Endpoints, mesh.Endpoint{Address: "127.0.0.9", Port: 15102})
		}
	}
	pub.Update(Update{Catalog: mustCatalog(t, svcs, pxs)})
	st, err := pub.Publish()
	if err == nil || !strings.Contains(err.Error(), "CA unavailable") {
		t.Fatalf("want the CA error reported, got %v", err)
	}
	if st.Failed != 1 || st.Pushed != 1 {
		t.Fatalf("stats %+v: want api failed and web still pushed", st)
	}
	still, _ := cache.GetSnapshot("api.default")
	if still != good {
		t.Error("api's last good snapshot was replaced")
	}
	var found bool
	for _, s := range pub.Status() {
		if s.ID == "api.default" {
			found = strings.Contains(s.Error, "CA unavailable")
		}
	}
	if !found {
		t.Errorf("status does not show the failure: %+v", pub.Status())
	}
	// Recovery: the next publish retries the failed proxy even though its
	// inputs did not change again.
	sec.failFor = ""
	st, err = pub.Publish()
	if err != nil || st.Rendered != 1 {
		t.Fatalf("after recovery: %+v %v", st, err)
	}
}

func TestRemovedProxyIsCleared(t *testing.T) {
	svcs, pxs := quickstart(t)
	pub, cache := newTestPublisher(&fakeSecrets{})
	pub.Update(Update{Catalog: mustCatalog(t, svcs, pxs)})
	if _, err := pub.Publish(); err != nil {
		t.Fatal(err)
	}
	var rest []mesh.Proxy
	for _, p := range pxs {
		if p.Service != "db" {
			rest = append(rest, p)
		}
	}
	pub.Update(Update{Catalog: mustCatalog(t, svcs, rest)})
	st, err := pub.Publish()
	if err != nil || st.Removed != 1 {
		t.Fatalf("%+v %v", st, err)
	}
	if _, err := cache.GetSnapshot("db.default"); err == nil {
		t.Error("snapshot of removed proxy still served")
	}
}

// runLoop starts a publisher's loop on the quickstart's publisher, with
// the given debounce; inside a synctest bubble its timers run on the
// bubble's clock. It stops when the test ends.
func runLoop(t *testing.T, holdoff, maxDelay time.Duration) (pub *Publisher, builds func() int, cat *mesh.Catalog) {
	t.Helper()
	svcs, pxs := quickstart(t)
	m := metrics.New()
	pub = New(cachev3.NewSnapshotCache(false, cachev3.IDHash{}, nil), &fakeSecrets{}, Options{
		Translate: xds.Options{TrustDomain: "cluster.local"}, Metrics: m, Logger: slog.New(slog.DiscardHandler),
		Holdoff: holdoff, MaxDelay: maxDelay,
	})
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go pub.Run(ctx)
	return pub, func() int { return int(testutil.ToFloat64(m.SnapshotBuilds)) }, mustCatalog(t, svcs, pxs)
}

// The debounce, on synctest's clock: time moves only when the loop waits,
// so every build is counted exactly, however loaded the machine.
func TestDebounce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const holdoff, maxDelay = 50 * time.Millisecond, 300 * time.Millisecond
		pub, builds, cat := runLoop(t, holdoff, maxDelay)
		expect := func(when string, want int) {
			t.Helper()
			synctest.Wait() // the loop has taken everything and waits
			if got := builds(); got != want {
				t.Fatalf("%s: %d builds, want %d", when, got, want)
			}
		}
		// A burst makes two builds: its first update at once (the
		// publisher was quiet), the rest together after the holdoff.
		pub.Update(Update{Catalog: cat})
		expect("first update after a quiet period", 1)
		for range 19 {
			pub.Update(Update{Catalog: cat})
		}
		expect("rest of the burst, at once", 1)
		time.Sleep(holdoff - time.Millisecond)
		expect("rest of the burst, just before the holdoff", 1)
		time.Sleep(2 * time.Millisecond)
		expect("rest of the burst, after the holdoff", 2)
		if !pub.Ready() {
			t.Fatal("not ready after a publish")
		}

		// A steady trickle faster than the holdoff (every 40 ms for 680
		// ms) still flushes by MaxDelay: at once (quiet before), then
		// MaxDelay after the first change that followed a publish (at 40 +
		// 300 ms, 360 + 300 ms), and its last change after the holdoff.
		time.Sleep(time.Second)
		before := builds()
		for i := range 18 {
			if i > 0 {
				time.Sleep(40 * time.Millisecond)
			}
			pub.Update(Update{Catalog: cat})
		}
		expect("during a 680 ms trickle with a 300 ms max delay", before+3)
		time.Sleep(holdoff + time.Millisecond)
		expect("after the trickle", before+4)
	})
}

// TestLeadingEdge: after a quiet period a change is published at once, not
// after the holdoff; and a catalog with its policy is one change. On
// synctest's clock: "at once" is no time at all, and the debounced change
// is published exactly at the holdoff.
func TestLeadingEdge(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const holdoff = 3 * time.Second
		pub, builds, cat := runLoop(t, holdoff, 10*time.Second)
		start := time.Now()
		// The catalog and a policy arrive as one change, published once and
		// with both.
		strictPolicy := &mesh.PolicySet{DefaultMode: mesh.MTLSStrict}
		pub.Update(Update{Catalog: cat, Policy: strictPolicy})
		synctest.Wait()
		if took := time.Since(start); !pub.Ready() || took != 0 {
			t.Fatalf("first change after a quiet period: ready %v after %v, want published at once", pub.Ready(), took)
		}
		if got := builds(); got != 1 || pub.View().Policy != strictPolicy {
			t.Fatalf("a catalog with its policy made %v builds (policy %v), want 1 with the policy", got, pub.View().Policy)
		}
		// A second change right after is debounced: published once the
		// holdoff has passed, not before.
		pub.Update(Update{Catalog: cat})
		time.Sleep(holdoff - time.Millisecond)
		synctest.Wait()
		if got := builds(); got != 1 {
			t.Fatalf("a change %v after a publish was not debounced (%v builds)", holdoff-time.Millisecond, got)
		}
		time.Sleep(2 * time.Millisecond)
		synctest.Wait()
		if got := builds(); got != 2 {
			t.Fatalf("a debounced change not published after the holdoff (%v builds)", got)
		}
	})
}

// Updates sent concurrently from several goroutines are applied in the
// order they were sent: a catalog is never rendered with a policy older
// than the one it was sent with, versions never go backwards, and the last
// publish has the last catalog and the last policy.
func TestConcurrentUpdatesApplyInOrder(t *testing.T) {
	svcs, pxs := quickstart(t)
	cache := cachev3.NewSnapshotCache(false, cachev3.IDHash{}, nil)
	pub := New(cache, &fakeSecrets{}, Options{Translate: xds.Options{TrustDomain: "cluster.local"}, Metrics: metrics.New(),
		Holdoff: time.Millisecond, MaxDelay: 5 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	genOf := func(cat *mesh.Catalog) int {
		for _, s := range cat.Services() {
			var n int
			if _, err := fmt.Sscanf(s.Name, "gen-%d", &n); err == nil {
				return n
			}
		}
		return -1
	}
	policyGen := func(ps *mesh.PolicySet) int {
		if ps == nil || len(ps.Authorizations) == 0 {
			return -1
		}
		var n int
		fmt.Sscanf(ps.Authorizations[0].Name, "gen-%d", &n)
		return n
	}
	var mu sync.Mutex
	var bad []string
	lastCat, lastPol := -1, -1
	// policyWith[c] is the policy in force when catalog c was sent.
	policyWith := map[int]int{}
	pub.rendered = func(cat *mesh.Catalog, ps *mesh.PolicySet) {
		c, p := genOf(cat), policyGen(ps)
		mu.Lock()
		defer mu.Unlock()
		if want, ok := policyWith[c]; !ok || p < want {
			bad = append(bad, fmt.Sprintf("catalog %d (sent with policy %d) rendered with policy %d", c, want, p))
		}
		if c < lastCat || p < lastPol {
			bad = append(bad, fmt.Sprintf("went backwards: catalog %d after %d, policy %d after %d", c, lastCat, p, lastPol))
		}
		lastCat, lastPol = c, p
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go pub.Run(ctx)
	catalogAt := func(n int) *mesh.Catalog {
		return mustCatalog(t, append(slices.Clone(svcs), mesh.Service{Name: fmt.Sprintf("gen-%d", n), Protocol: mesh.ProtocolHTTP}), pxs)
	}
	policyAt := func(n int) *mesh.PolicySet {
		return &mesh.PolicySet{RootNamespace: "meshd-system", Authorizations: []mesh.AuthorizationPolicy{
			{Name: fmt.Sprintf("gen-%d", n), Namespace: "other", Action: mesh.ActionAllow}}}
	}
	// Generations are handed out under a lock and sent under it, as the
	// inputs combiner (one goroutine) sends them; writers race for it.
	var seqMu sync.Mutex
	gen, sentCat, sentPol := 0, -1, -1
	var lastSeq uint64
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				seqMu.Lock()
				gen++
				mu.Lock()
				switch (w + i) % 3 {
				case 0: // a catalog with the policy mapped from it
					sentCat, sentPol = gen, gen
					policyWith[gen] = gen
					mu.Unlock()
					lastSeq = pub.Update(Update{Catalog: catalogAt(gen), Policy: policyAt(gen)})
				case 1: // a policy change alone
					sentPol = gen
					mu.Unlock()
					lastSeq = pub.Update(Update{Policy: policyAt(gen)})
				default: // a catalog change with the policy unchanged
					sentCat = gen
					policyWith[gen] = sentPol
					mu.Unlock()
					lastSeq = pub.Update(Update{Catalog: catalogAt(gen)})
				}
				seqMu.Unlock()
			}
		}()
	}
	wg.Wait()
	testwait.For(t, testwait.Timeout, "the last update to be published", func() bool { return pub.View().Seq == lastSeq })
	mu.Lock()
	defer mu.Unlock()
	if len(bad) > 0 {
		t.Fatalf("%d out-of-order renders, e.g. %s", len(bad), bad[0])
	}
	v := pub.View()
	// The last catalog and the last policy sent are the ones in force.
	if c, p := genOf(v.Catalog), policyGen(v.Policy); c != sentCat || p != sentPol || lastCat != sentCat || lastPol != sentPol {
		t.Fatalf("final view has catalog %d policy %d, last rendered %d/%d; last sent %d/%d", c, p, lastCat, lastPol, sentCat, sentPol)
	}
}

// renewingSecrets has a leaf due for reissue right away.
type renewingSecrets struct{ fakeSecrets }

func (r *renewingSecrets) NextRenewal() time.Time { return time.Now() }

// The renewal timer runs from the loop's start, also when the first publish
// was made before Run (as meshd publishes its first catalog before serving):
// leaves due are reissued without any other change, no more often than
// once a second (the floor that keeps a failing renewal from spinning).
func TestRenewalTimerStartsWithTheLoop(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		svcs, pxs := quickstart(t)
		cache := cachev3.NewSnapshotCache(false, cachev3.IDHash{}, nil)
		m := metrics.New()
		pub := New(cache, &renewingSecrets{}, Options{Translate: xds.Options{TrustDomain: "cluster.local"}, Metrics: m, Logger: slog.New(slog.DiscardHandler)})
		pub.Update(Update{Catalog: mustCatalog(t, svcs, pxs)})
		if _, err := pub.Publish(); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go pub.Run(ctx)
		builds := func() float64 { return testutil.ToFloat64(m.SnapshotBuilds) }
		time.Sleep(time.Second - time.Millisecond)
		synctest.Wait()
		if got := builds(); got != 1 {
			t.Fatalf("%v builds before the renewal floor of 1s, want 1", got)
		}
		time.Sleep(2 * time.Millisecond)
		synctest.Wait()
		if got := builds(); got != 2 {
			t.Fatalf("%v builds once the due leaf's timer fired, want 2", got)
		}
	})
}

// A node's stream events between two turns of the loop take a fixed size
// however many arrive, and lose nothing: an ACK followed by any churn of
// another stream of the same proxy (opened and closed again and again)
// still counts, and the churn leaves nothing queued.
func TestStreamEventChurnKeepsACKs(t *testing.T) {
	g := newMigration(t, strict, time.Minute)
	g.connect("api.default", "web.default")
	g.set(disable)
	g.expect("disable requested", "both", "mtls")
	// api ACKs its PERMISSIVE listener, then a second stream of its own
	// comes and goes 10,000 times before the publisher takes the events
	// (the old queue dropped the oldest ACK past 64 events).
	g.ack("api.default")
	for i := range 10_000 {
		g.pub.StreamOpened("api.default")
		g.pub.Acked("api.default", resourcev3.ClusterType, fmt.Sprintf("churn-%d", i))
		g.pub.StreamClosed("api.default")
	}
	g.pub.in.mu.Lock()
	e := *g.pub.in.events["api.default"]
	g.pub.in.mu.Unlock()
	if e.opens != 0 || e.closes != 0 {
		t.Fatalf("10,000 open/close pairs left %d closes and %d opens queued, want none", e.closes, e.opens)
	}
	g.publish()
	g.expect("api ACKed PERMISSIVE, then churned", "both", "plaintext")
	if n := g.pub.nodes["api.default"]; n == nil || n.streams != 1 || n.acked[types.Cluster] != "churn-9999" {
		t.Fatalf("api after the churn: %+v, want its one stream and the last ACK of each type", n)
	}

	// web reconnects 10,000 times (its one stream closed and opened
	// again): each reconnect forgets what it ACKed before, so only an ACK
	// after the last one counts.
	for range 10_000 {
		g.ack("web.default")
		g.pub.StreamClosed("web.default")
		g.pub.StreamOpened("web.default")
	}
	g.publish()
	g.expect("web reconnected without ACKing since", "both", "plaintext")
	if w := g.waitingOn(); len(w) != 1 || !strings.HasPrefix(w[0], "web.default (") {
		t.Fatalf("waiting on %v, want web", w)
	}
	g.ack("web.default")
	g.publish()
	g.expect("web ACKed plaintext", "plaintext", "plaintext")
	g.done("after churn")
}

// The coalesced events (nodeEvents) have the effect of the same events
// applied one by one, from any state, for random sequences.
func TestNodeEventsSameAsOneByOne(t *testing.T) {
	type state struct {
		streams int
		acked   [3]string
	}
	// oneByOne is the definition: an open adds a stream, a close removes
	// one and the last forgets the node's ACKs, an ACK counts only while
	// a stream is open.
	oneByOne := func(s state, evs []func(*state)) state {
		for _, ev := range evs {
			ev(&s)
		}
		return s
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 50_000 {
		var start state
		start.streams = rng.IntN(4)
		var n *nodeAcks
		if start.streams > 0 {
			n = &nodeAcks{streams: start.streams}
			for typ := range start.acked {
				start.acked[typ] = fmt.Sprint("old", typ)
				n.acked[typ] = start.acked[typ]
			}
		}
		var evs []func(*state)
		var desc []string
		coalesced := &nodeEvents{}
		for j := range rng.IntN(24) {
			switch k := rng.IntN(3); k {
			case 0:
				evs = append(evs, func(s *state) { s.streams++ })
				coalesced.open()
				desc = append(desc, "open")
			case 1:
				evs = append(evs, func(s *state) {
					if s.streams--; s.streams <= 0 {
						*s = state{}
					}
				})
				coalesced.close()
				desc = append(desc, "close")
			default:
				typ, v := rng.IntN(3), fmt.Sprint("v", j)
				evs = append(evs, func(s *state) {
					if s.streams > 0 {
						s.acked[typ] = v
					}
				})
				coalesced.ack(types.ResponseType(typ), v)
				desc = append(desc, fmt.Sprintf("ack %d %s", typ, v))
			}
		}
		want := oneByOne(start, evs)
		var got state
		if n = coalesced.apply(n); n != nil {
			got.streams = n.streams
			copy(got.acked[:], n.acked[:3])
		}
		if got != want {
			t.Fatalf("case %d: from %+v, events %v: coalesced %+v, one by one %+v", i, start, desc, got, want)
		}
	}
}
