package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/hashicorp/consul/api"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/meshd/meshd/internal/consultest"
	"github.com/meshd/meshd/internal/envoytest"
	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/sds"
	"github.com/meshd/meshd/xds"
)

// Two meshd replicas against one Consul, sharing one trust chain (an
// operator-supplied root and intermediate) with replica-consistent leaves:
// they serve identical configuration under identical versions, certificates
// included, and a proxy that moves from one to the other with delta xDS
// (telling the server what it has) is sent nothing again.
func TestTwoReplicasAgree(t *testing.T) {
	agent := consultest.Start(t, "")
	p := func() int { return int(envoytest.FreePort(t)) }
	agent.Register("api-1", "api", p(), p(), map[string]string{"meshd-protocol": "http"})
	agent.Register("web-1", "web", p(), p(), map[string]string{"meshd-protocol": "http"}, api.Upstream{DestinationName: "api", LocalBindPort: p()})

	// The shared CA: a root and intermediate as an operator would supply them.
	caDir := t.TempDir()
	if _, err := sds.LoadOrCreate(sds.Options{DataDir: caDir, TrustDomain: mesh.DefaultTrustDomain}); err != nil {
		t.Fatal(err)
	}
	gens, _ := filepath.Glob(filepath.Join(caDir, "ca", "gen-*"))
	if len(gens) != 1 {
		t.Fatalf("want one CA generation, got %v", gens)
	}
	caFlags := []string{"--consul-address", agent.Addr, "--consul-wait", "30s", "--deterministic-leaves",
		"--ca-root-cert", filepath.Join(gens[0], "root-cert.pem"),
		"--ca-intermediate-cert", filepath.Join(gens[0], "intermediate-cert.pem"),
		"--ca-intermediate-key", filepath.Join(gens[0], "intermediate-key.pem")}
	a := startMeshd(t, "", caFlags...)
	b := startMeshd(t, "", caFlags...)

	const web = "meshd-test/web-1-sidecar-proxy"
	versions := func(m *meshd) map[string]map[string]string {
		out := map[string]map[string]string{}
		for _, px := range m.status().Proxies {
			out[px.ID] = px.Versions
		}
		return out
	}
	// Consul registrations settle in steps (the sidecars' alias checks run
	// once after registering), so wait until the replicas agree on a state
	// that also holds still, before comparing what a proxy is sent.
	eventually(t, 30*time.Second, func() error {
		before := versions(a)
		time.Sleep(1500 * time.Millisecond)
		va, vb := versions(a), versions(b)
		if !reflect.DeepEqual(before, va) {
			return fmt.Errorf("replica a still changing")
		}
		if len(va) != 2 || va[web]["Secret"] == "" {
			return fmt.Errorf("replica a not rendered yet: %v", va)
		}
		if !reflect.DeepEqual(va, vb) {
			return fmt.Errorf("replicas disagree:\n a %v\n b %v", va, vb)
		}
		return nil
	})

	// web's sidecar, authenticated by a certificate of the shared chain.
	ca, err := sds.LoadOrCreate(sds.Options{DataDir: caDir, TrustDomain: mesh.DefaultTrustDomain})
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.IssueCredential(mesh.Identity{TrustDomain: mesh.DefaultTrustDomain, Namespace: "default", ServiceAccount: "web"}, []string{"web"})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(leaf.CertPEM, leaf.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca.RootCertPEM())
	dial := func(m *meshd) discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient {
		cc, err := grpc.NewClient(m.xdsAddr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
			RootCAs: roots, ServerName: "localhost", Certificates: []tls.Certificate{cert}})))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		t.Cleanup(cancel)
		s, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	node := &corev3.Node{Id: web, UserAgentName: "envoy"}
	subs := []struct {
		typ   string
		names []string
	}{
		{resourcev3.ClusterType, nil},
		{resourcev3.ListenerType, nil},
		{resourcev3.EndpointType, []string{"outbound|api.default"}},
		{resourcev3.SecretType, []string{xds.IdentitySecretName, xds.TrustBundleSecretName}},
	}
	// From replica a: everything, remembering each resource's version.
	have := map[string]map[string]string{}
	sa := dial(a)
	for _, sub := range subs {
		if err := sa.Send(&discoveryv3.DeltaDiscoveryRequest{Node: node, TypeUrl: sub.typ, ResourceNamesSubscribe: sub.names}); err != nil {
			t.Fatal(err)
		}
		resp, err := sa.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.GetResources()) == 0 {
			t.Fatalf("replica a sent no %s", sub.typ)
		}
		have[sub.typ] = map[string]string{}
		for _, r := range resp.GetResources() {
			have[sub.typ][r.GetName()] = r.GetVersion()
		}
		if err := sa.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: sub.typ, ResponseNonce: resp.GetNonce()}); err != nil {
			t.Fatal(err)
		}
	}
	// Moving to replica b, saying what it has: nothing is sent again.
	sb := dial(b)
	got := make(chan *discoveryv3.DeltaDiscoveryResponse, 8)
	go func() {
		for {
			r, err := sb.Recv()
			if err != nil {
				return
			}
			got <- r
		}
	}()
	for _, sub := range subs {
		if err := sb.Send(&discoveryv3.DeltaDiscoveryRequest{Node: node, TypeUrl: sub.typ, ResourceNamesSubscribe: sub.names,
			InitialResourceVersions: have[sub.typ]}); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.After(2 * time.Second)
	for {
		select {
		case r := <-got:
			t.Logf("b sent %s nonce %s: %d resources, sysversion %q", r.GetTypeUrl(), r.GetNonce(), len(r.GetResources()), r.GetSystemVersionInfo())
			if len(r.GetResources()) > 0 || len(r.GetRemovedResources()) > 0 {
				var sent []string
				for _, res := range r.GetResources() {
					sent = append(sent, res.GetName()+"@"+res.GetVersion())
				}
				t.Fatalf("replica b re-sent %s resources %v (removed %v) to a proxy that had %v from replica a",
					r.GetTypeUrl(), sent, r.GetRemovedResources(), have[r.GetTypeUrl()])
			}
		case <-deadline:
			return
		}
	}
}
