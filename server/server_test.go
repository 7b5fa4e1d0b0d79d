package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"gopkg.in/yaml.v3"

	"github.com/meshd/meshd/internal/metrics"
	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/sds"
	"github.com/meshd/meshd/server/tracker"
	"github.com/meshd/meshd/snapshot"
	"github.com/meshd/meshd/xds"
)

type fixture struct {
	addr    string
	ca      *sds.Authority
	tracker *tracker.Tracker
	metrics *metrics.Metrics
	pub     *snapshot.Publisher
	cache   *Cache
	cat     *mesh.Catalog
}

// publishQuickstart publishes the quickstart catalog with the real CA,
// translation and go-control-plane cache, and returns what a server needs.
func publishQuickstart(t testing.TB, ca *sds.Authority, log *slog.Logger) (*mesh.Catalog, *Cache, *snapshot.Publisher, *metrics.Metrics, *tracker.Tracker) {
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
	cat, err := mesh.NewCatalog(in.Services, in.Proxies)
	if err != nil {
		t.Fatal(err)
	}
	m := metrics.New()
	cache := NewCache()
	pub := snapshot.New(cache, ca, snapshot.Options{Translate: xds.Options{TrustDomain: "cluster.local"}, Metrics: m, Logger: log})
	pub.Update(snapshot.Update{Catalog: cat})
	if _, err := pub.Publish(); err != nil {
		t.Fatal(err)
	}
	tr := tracker.NewTracker(log, m, func(id string) bool { return cat.Proxy(id) != nil })
	return cat, cache, pub, m, tr
}

// startServer runs the real xDS server (TLS, go-control-plane, tracker,
// publisher, which it tells of stream events as meshd does) on loopback
// with the quickstart catalog. The test publishes (Publisher.Publish).
func startServer(t testing.TB) *fixture {
	t.Helper()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ca, err := sds.LoadOrCreate(sds.Options{DataDir: t.TempDir(), TrustDomain: "cluster.local", Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	cat, cache, pub, m, tr := publishQuickstart(t, ca, log)
	tlsConf, err := ca.ServerTLSConfig(nil)
	if err != nil {
		t.Fatal(err)
	}
	xs, err := NewXDS(cache, Options{TLS: tlsConf, Logger: log, Tracker: tr, Events: pub})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go xs.Serve(lis)
	t.Cleanup(func() { xs.Stop(2 * time.Second) })
	return &fixture{addr: lis.Addr().String(), ca: ca, tracker: tr, metrics: m, pub: pub, cache: cache, cat: cat}
}

// publishAPIEndpointAdded publishes the fixture's catalog with one more api
// endpoint: the endpoint sets of api's callers (web) change, nothing else.
func (f *fixture) publishAPIEndpointAdded(t testing.TB) {
	t.Helper()
	var svcs []mesh.Service
	for _, s := range f.cat.Services() {
		c := *s
		if c.Name == "api" {
			c.Endpoints = append(slices.Clone(c.Endpoints), mesh.Endpoint{Address: "127.0.0.2", Port: c.Endpoints[0].Port})
		}
		svcs = append(svcs, c)
	}
	var pxs []mesh.Proxy
	for _, p := range f.cat.Proxies() {
		pxs = append(pxs, *p)
	}
	cat, err := mesh.NewCatalog(svcs, pxs)
	if err != nil {
		t.Fatal(err)
	}
	f.pub.Update(snapshot.Update{Catalog: cat})
	if _, err := f.pub.Publish(); err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) dial(t testing.TB) *grpc.ClientConn {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(f.ca.RootCertPEM())
	cc, err := grpc.NewClient(f.addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "localhost"})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// TestNACKIsRecordedAndNotResent drives a raw ADS stream: it NACKs the
// cluster response and checks the rejected version is recorded and that the
// server does not resend it (go-control-plane alone would, in a tight loop).
func TestNACKIsRecordedAndNotResent(t *testing.T) {
	f := startServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(f.dial(t)).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	node := &corev3.Node{Id: "web.default", UserAgentName: "envoy"}
	if err := stream.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resourcev3.ClusterType}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetResources()) == 0 || resp.GetVersionInfo() == "" {
		t.Fatalf("empty first response: %v", resp)
	}
	rejected := resp.GetVersionInfo()
	if err := stream.Send(&discoveryv3.DiscoveryRequest{
		Node: node, TypeUrl: resourcev3.ClusterType, ResponseNonce: resp.GetNonce(),
		ErrorDetail: &statuspb.Status{Code: 3, Message: "test: cluster rejected"},
	}); err != nil {
		t.Fatal(err)
	}
	// Any response within a second would be a resend of the same version.
	got := make(chan *discoveryv3.DiscoveryResponse, 1)
	go func() {
		if r, err := stream.Recv(); err == nil {
			got <- r
		}
	}()
	select {
	case r := <-got:
		t.Fatalf("server resent after a NACK: version %q (rejected %q)", r.GetVersionInfo(), rejected)
	case <-time.After(time.Second):
	}
	st, ok := f.tracker.Node("web.default")
	if !ok {
		t.Fatal("node not tracked")
	}
	cl := st.Types["Cluster"]
	if cl == nil || cl.Nacked != rejected || !strings.Contains(cl.NackError, "test: cluster rejected") || cl.Pushes != 1 {
		t.Fatalf("cluster status %+v, want NACK of %q recorded after one push", cl, rejected)
	}
	if n := testutil.ToFloat64(f.metrics.NACKs.WithLabelValues("Cluster")); n != 1 {
		t.Fatalf("nack metric %v", n)
	}
	if n := testutil.ToFloat64(f.metrics.ConnectedProxies.WithLabelValues("envoy")); n != 1 {
		t.Fatalf("connected proxies metric %v", n)
	}
}

// TestPlaintextRefused checks the xDS port speaks TLS only.
func TestPlaintextRefused(t *testing.T) {
	f := startServer(t)
	cc, err := grpc.NewClient(f.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
	if err == nil {
		err = stream.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "web.default"}, TypeUrl: resourcev3.ClusterType})
		if err == nil {
			_, err = stream.Recv()
		}
	}
	if err == nil {
		t.Fatal("plaintext xDS client got a response")
	}
}

// TestDeltaNACKNotResent does the same over delta xDS.
func TestDeltaNACKNotResent(t *testing.T) {
	f := startServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(f.dial(t)).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	node := &corev3.Node{Id: "web.default", UserAgentName: "envoy"}
	if err := stream.Send(&discoveryv3.DeltaDiscoveryRequest{Node: node, TypeUrl: resourcev3.ListenerType}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetResources()) != 4 {
		t.Fatalf("web should get 4 listeners (1 inbound, 3 outbound), got %d", len(resp.GetResources()))
	}
	if err := stream.Send(&discoveryv3.DeltaDiscoveryRequest{Node: node, TypeUrl: resourcev3.ListenerType, ResponseNonce: resp.GetNonce(),
		ErrorDetail: &statuspb.Status{Code: 3, Message: "test: listener rejected"}}); err != nil {
		t.Fatal(err)
	}
	got := make(chan struct{}, 1)
	go func() {
		if _, err := stream.Recv(); err == nil {
			got <- struct{}{}
		}
	}()
	select {
	case <-got:
		t.Fatal("server resent after a delta NACK")
	case <-time.After(time.Second):
	}
	st, _ := f.tracker.Node("web.default")
	if l := st.Types["Listener"]; l == nil || !strings.Contains(l.NackError, "listener rejected") {
		t.Fatalf("delta NACK not recorded: %+v", st.Types)
	}
}

// TestEmptySubscriptionIsNotAnswered reproduces the loop Envoy and
// go-control-plane fall into after a rejected listener: requests for routes
// or secrets that name nothing must not be answered with everything.
func TestEmptySubscriptionIsNotAnswered(t *testing.T) {
	f := startServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(f.dial(t)).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	node := &corev3.Node{Id: "api.default", UserAgentName: "envoy"}
	// Identify the stream first, as Envoy does with its CDS request.
	if err := stream.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resourcev3.ClusterType}); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	for _, typ := range []string{resourcev3.SecretType, resourcev3.RouteType} {
		if err := stream.Send(&discoveryv3.DiscoveryRequest{TypeUrl: typ}); err != nil {
			t.Fatal(err)
		}
	}
	got := make(chan *discoveryv3.DiscoveryResponse, 1)
	go func() {
		if r, err := stream.Recv(); err == nil {
			got <- r
		}
	}()
	select {
	case r := <-got:
		t.Fatalf("answered a request naming no %s with %d resources", r.GetTypeUrl(), len(r.GetResources()))
	case <-time.After(time.Second):
	}
	// A named subscription is still answered.
	if err := stream.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.SecretType, ResourceNames: []string{"ROOTCA"}}); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-got:
		if len(r.GetResources()) != 1 {
			t.Fatalf("named secret request answered with %d resources", len(r.GetResources()))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("named secret request not answered")
	}
}

// endpointNames is the sorted names of the endpoint sets in node's
// snapshot.
func endpointNames(t *testing.T, cache *Cache, node string) []string {
	t.Helper()
	snap, err := cache.GetSnapshot(node)
	if err != nil {
		t.Fatal(err)
	}
	var eds []string
	for n := range snap.GetResources(resourcev3.EndpointType) {
		eds = append(eds, n)
	}
	slices.Sort(eds)
	return eds
}
