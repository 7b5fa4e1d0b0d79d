package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"google.golang.org/grpc/codes"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/internal/consultest"
	"github.com/meshd/meshd/internal/envoytest"
)

// Consul as the only source of truth: services registered with Connect
// sidecars in a real Consul agent become meshd proxies; registering,
// failing a health check and deregistering reach real Envoy sidecars
// without restarts, and an unreachable Consul changes nothing that serves.
func TestConsulDiscoveryThroughEnvoy(t *testing.T) {
	envoytest.Binary(t)
	agent := consultest.Start(t, "")
	p := func() int { return int(envoytest.FreePort(t)) }
	api1App, api1Sidecar, api2App, api2Sidecar := p(), p(), p(), p()
	webApp, webSidecar, webToAPI := p(), p(), p()
	httpMeta := map[string]string{"meshd-protocol": "http"}
	agent.Register("api-1", "api", api1App, api1Sidecar, httpMeta)
	agent.Register("web-1", "web", webApp, webSidecar, httpMeta, api.Upstream{DestinationName: "api", LocalBindPort: webToAPI})

	m := startMeshd(t, "", "--consul-address", agent.Addr, "--consul-wait", "30s")
	startHTTPApp(t, "api-1", uint32(api1App))
	startHTTPApp(t, "api-2", uint32(api2App))
	startHTTPApp(t, "web", uint32(webApp))
	startSidecar(t, m, "api", "meshd-test/api-1-sidecar-proxy", envoytest.FreePort(t))
	web := startSidecar(t, m, "web", "meshd-test/web-1-sidecar-proxy", envoytest.FreePort(t))
	url := fmt.Sprintf("http://127.0.0.1:%d/", webToAPI)
	outer := t // sidecars started in a subtest must outlive it

	reached := func(want ...string) func() error {
		return func() error {
			seen := map[string]bool{}
			for range 12 {
				code, b, err := httpGet(url)
				if err != nil || code != 200 {
					return fmt.Errorf("%d %v %v", code, b, err)
				}
				seen[b["app"]] = true
			}
			for _, w := range want {
				if !seen[w] {
					return fmt.Errorf("reached %v, want %v", seen, want)
				}
			}
			if len(seen) != len(want) {
				return fmt.Errorf("reached %v, want only %v", seen, want)
			}
			return nil
		}
	}
	eventually(t, 20*time.Second, reached("api-1"))

	t.Run("a registered instance is added", func(t *testing.T) {
		agent.Register("api-2", "api", api2App, api2Sidecar, httpMeta)
		startSidecar(outer, m, "api", "meshd-test/api-2-sidecar-proxy", envoytest.FreePort(t))
		eventually(t, 20*time.Second, reached("api-1", "api-2"))
	})
	t.Run("a failing health check removes the endpoint, passing restores it", func(t *testing.T) {
		agent.SetTTL("api-2", api.HealthCritical)
		eventually(t, 20*time.Second, reached("api-1"))
		agent.SetTTL("api-2", api.HealthPassing)
		eventually(t, 20*time.Second, reached("api-1", "api-2"))
	})
	t.Run("deregistration removes the endpoint", func(t *testing.T) {
		agent.Deregister("api-2")
		eventually(t, 20*time.Second, reached("api-1"))
		if clusters := web.AdminGET(t, "/clusters"); strings.Contains(clusters, fmt.Sprintf(":%d::", api2Sidecar)) {
			t.Fatalf("web's Envoy still has the deregistered endpoint")
		}
	})
	t.Run("Consul unreachable: the last catalog keeps serving", func(t *testing.T) {
		agent.Stop()
		eventually(t, 20*time.Second, func() error {
			_, body := m.adminGET("/debug/status")
			if !strings.Contains(body, `"lastError": "`) || strings.Contains(body, `"lastError": ""`) {
				return fmt.Errorf("no Consul error in status yet")
			}
			return nil
		})
		if err := reached("api-1")(); err != nil {
			t.Fatalf("after Consul stopped: %v", err)
		}
		_, metrics := m.adminGET("/metrics")
		if !strings.Contains(metrics, "meshd_consul_errors_total") {
			t.Fatal("no Consul error metric")
		}
		m.assertAllACKed("meshd-test/web-1-sidecar-proxy", "meshd-test/api-1-sidecar-proxy")
	})
}

// Consul intentions enforced on proxyless gRPC: a deny intention flips an
// RPC from allowed to denied without restarts, an L7 permission denies one
// method only, and deleting the entry allows again.
func TestConsulIntentionsFlipGRPC(t *testing.T) {
	agent := consultest.Start(t, "")
	port := envoytest.FreePort(t)
	m := startMeshd(t, grpcPolicyCatalog(port), "--consul-address", agent.Addr, "--consul-wait", "30s",
		"--consul-default-intention", "allow")
	startProxylessServer(t, m, "greeter-1", port)
	web := newCaller(t, m, "web", "web", "default", "web-1")
	ops := newCaller(t, m, "ops", "ops", "default", "ops-1")
	ctx := context.Background()
	expect := func(c testgrpc.TestServiceClient, method string, allowed bool) func() error {
		return func() error {
			err := invoke(ctx, c, method, nil)
			if allowed && err != nil {
				return fmt.Errorf("%s denied: %v", method, err)
			}
			if !allowed && status.Code(err) != codes.PermissionDenied {
				return fmt.Errorf("%s: got %v, want PermissionDenied", method, err)
			}
			return nil
		}
	}
	eventually(t, 20*time.Second, expect(web, "UnaryCall", true))

	set := func(sources ...*api.SourceIntention) {
		t.Helper()
		if _, _, err := agent.Client.ConfigEntries().Set(&api.ServiceIntentionsConfigEntry{
			Kind: api.ServiceIntentions, Name: "greeter", Sources: sources}, nil); err != nil {
			t.Fatal(err)
		}
	}
	set(&api.SourceIntention{Name: "web", Action: api.IntentionActionDeny})
	eventually(t, 20*time.Second, expect(web, "UnaryCall", false))
	eventually(t, 5*time.Second, expect(ops, "UnaryCall", true))

	// Consul accepts L7 intentions only for services it knows speak HTTP.
	if _, _, err := agent.Client.ConfigEntries().Set(&api.ServiceConfigEntry{Kind: api.ServiceDefaults, Name: "greeter", Protocol: "grpc"}, nil); err != nil {
		t.Fatal(err)
	}
	set(&api.SourceIntention{Name: "web", Permissions: []*api.IntentionPermission{{
		Action: api.IntentionActionDeny, HTTP: &api.IntentionHTTPPermission{PathExact: "/grpc.testing.TestService/EmptyCall"},
	}}})
	eventually(t, 20*time.Second, expect(web, "UnaryCall", true))
	eventually(t, 5*time.Second, expect(web, "EmptyCall", false))

	if _, err := agent.Client.ConfigEntries().Delete(api.ServiceIntentions, "greeter", nil); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, expect(web, "EmptyCall", true))
	if _, body := m.adminGET("/debug/status"); !strings.Contains(body, `"consulIntentions"`) {
		t.Error("/debug/status does not show the intentions source")
	}
}
