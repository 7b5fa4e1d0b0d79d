package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"

	"github.com/meshd/meshd/internal/envoytest"
	"github.com/meshd/meshd/xds"
)

// Issue 11: "Migrations always finish". STRICT → DISABLE → STRICT on a
// server with no callers, with a caller that is in the catalog but not
// connected, and with a caller that is connected and never ACKs: the first
// two complete by themselves; the third is reported (overdue, with what it
// waits on) and completes when forced. For a real Envoy sidecar and for
// gRPC-Go's proxyless xDS server.

// migrationCase is one flavor's server, its policy and how to tell which
// transport it serves.
type migrationCase struct {
	server    string // node id of the server
	selector  string // its app label
	catalog   func(withCaller bool) string
	start     func(t *testing.T, m *meshd)
	plaintext func() error // a plaintext call; nil error when served
}

func writePeerAuth(t *testing.T, dir, app, mode string) {
	t.Helper()
	doc := fmt.Sprintf("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: %s, namespace: default}\nspec:\n  selector: {matchLabels: {app: %s}}\n  mtls: {mode: %s}\n", app, app, mode)
	tmp := filepath.Join(dir, ".peer.tmp")
	if err := os.WriteFile(tmp, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "peer.yaml")); err != nil {
		t.Fatal(err)
	}
}

// neverACKs subscribes as node to clusters and endpoints with a token of
// service and never answers a response, as a wedged proxy would.
func neverACKs(t *testing.T, m *meshd, service, node string) {
	t.Helper()
	_, tok := m.token(t, service, "1h")
	ctx, cancel := context.WithCancel(metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+tok))
	t.Cleanup(cancel)
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(xdsClient(t, m, false)).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	n := &corev3.Node{Id: node}
	for _, typ := range []string{resourcev3.ClusterType, resourcev3.ListenerType} {
		if err := stream.Send(&discoveryv3.DiscoveryRequest{Node: n, TypeUrl: typ}); err != nil {
			t.Fatal(err)
		}
	}
	// Read (so the stream is not flow-controlled) and never reply.
	go func() {
		for {
			if _, err := stream.Recv(); err != nil {
				return
			}
		}
	}()
}

func runMigrations(t *testing.T, c migrationCase) {
	policyDir := t.TempDir()
	writePeerAuth(t, policyDir, c.selector, "STRICT")
	m := startMeshd(t, c.catalog(false), "--policy-dir", policyDir, "--mtls-migration-overdue", "2s")
	c.start(t, m)
	served := func(want bool) func() error {
		return func() error {
			err := c.plaintext()
			switch {
			case want && err != nil:
				return fmt.Errorf("plaintext refused: %v", err)
			case !want && err == nil:
				return fmt.Errorf("plaintext served")
			}
			return nil
		}
	}
	eventually(t, 20*time.Second, served(false))
	// settled waits until the server's migration to mode is done: meshd
	// lists no migration of it, serves it a listener of mode (and of no
	// step on the way: plaintext is served from PERMISSIVE on, so served
	// alone does not tell DISABLE's last step happened), and the server
	// has ACKed that listener. An empty migrations list alone would also
	// pass before the migration began.
	settled := func(step, mode string) {
		t.Helper()
		eventually(t, 15*time.Second, func() error {
			s := m.status()
			for _, mg := range s.Migrations {
				if mg.Proxy == c.server {
					return fmt.Errorf("%s: %s's migration in progress: %+v", step, c.server, mg)
				}
			}
			if got := m.servedMTLSMode(t, c.server); got != mode {
				return fmt.Errorf("%s: meshd serves %s a %s listener, want %s", step, c.server, got, mode)
			}
			for _, p := range s.Proxies {
				if p.ID == c.server && p.XDS != nil {
					if ts := p.XDS.Types["Listener"]; ts.Acked != p.Versions["Listener"] {
						return fmt.Errorf("%s: %s ACKed listener version %q, meshd serves %q", step, c.server, ts.Acked, p.Versions["Listener"])
					}
					return nil
				}
			}
			return fmt.Errorf("%s: %s not connected", step, c.server)
		})
	}
	flip := func(step string) {
		t.Helper()
		writePeerAuth(t, policyDir, c.selector, "DISABLE")
		eventually(t, 20*time.Second, served(true))
		settled(step+": DISABLE", "DISABLE")
		writePeerAuth(t, policyDir, c.selector, "STRICT")
		eventually(t, 20*time.Second, served(false))
		settled(step+": STRICT", "STRICT")
	}

	// No callers at all.
	flip("no callers")

	// A caller in the catalog that is not connected does not hold a step.
	m.writeCatalog(c.catalog(true))
	eventually(t, 10*time.Second, func() error {
		if len(m.status().Proxies) < 2 {
			return fmt.Errorf("caller not in the catalog yet")
		}
		return nil
	})
	flip("disconnected caller")

	// A connected caller that never ACKs: reported, then forced.
	neverACKs(t, m, "web", "web-1")
	eventually(t, 10*time.Second, func() error {
		if st := m.status(); !connected(st, "web-1") {
			return fmt.Errorf("web-1 not connected")
		}
		return nil
	})
	writePeerAuth(t, policyDir, c.selector, "DISABLE")
	eventually(t, 20*time.Second, func() error {
		for _, mg := range m.status().Migrations {
			if mg.Proxy == c.server && mg.Overdue && len(mg.WaitingOn) == 1 && strings.HasPrefix(mg.WaitingOn[0], "web-1 (") {
				return nil
			}
		}
		return fmt.Errorf("no overdue migration waiting on web-1: %+v", m.status().Migrations)
	})
	if v := m.metric(t, "meshd_mtls_migration_pending_seconds"); v < 2 {
		t.Errorf("meshd_mtls_migration_pending_seconds = %v while a step is overdue", v)
	}
	if code, body := m.adminPOST("/migrations/force?proxy=" + c.server); code != http.StatusOK {
		t.Fatalf("force: HTTP %d %s", code, body)
	}
	eventually(t, 20*time.Second, served(true))
	settled("forced", "DISABLE")
}

// servedMTLSMode is the mTLS mode of the inbound listener meshd serves
// proxy now, from its filter chains (xds/names.go): DISABLE has only the
// plaintext chain, STRICT only mTLS chains, PERMISSIVE both.
func (m *meshd) servedMTLSMode(t *testing.T, proxy string) string {
	t.Helper()
	code, body := m.adminGET("/debug/config_dump?proxy=" + proxy)
	if code != 200 {
		t.Fatalf("config_dump of %s: %d %s", proxy, code, body)
	}
	type chain struct {
		Name            string          `json:"name"`
		TransportSocket json.RawMessage `json:"transportSocket"`
	}
	var dump struct {
		Configs []struct {
			DynamicListeners []struct {
				ActiveState struct {
					Listener struct {
						FilterChains       []chain `json:"filterChains"`
						DefaultFilterChain *chain  `json:"defaultFilterChain"`
					} `json:"listener"`
				} `json:"activeState"`
			} `json:"dynamicListeners"`
		} `json:"configs"`
	}
	if err := json.Unmarshal([]byte(body), &dump); err != nil {
		t.Fatalf("config_dump of %s: %v", proxy, err)
	}
	plain, mtls := false, false
	for _, c := range dump.Configs {
		for _, dl := range c.DynamicListeners {
			l := dl.ActiveState.Listener
			chains := l.FilterChains
			if l.DefaultFilterChain != nil {
				chains = append(chains, *l.DefaultFilterChain)
			}
			for _, ch := range chains {
				switch {
				case ch.Name == xds.FilterChainPlaintext && ch.TransportSocket == nil:
					plain = true
				case (ch.Name == xds.FilterChainMTLS || ch.Name == xds.FilterChainMTLSDefault) && ch.TransportSocket != nil:
					mtls = true
				}
			}
		}
	}
	switch {
	case plain && mtls:
		return "PERMISSIVE"
	case plain:
		return "DISABLE"
	case mtls:
		return "STRICT"
	}
	return "none"
}

func connected(st statusDoc, id string) bool {
	for _, p := range st.Proxies {
		if p.ID == id && p.XDS != nil && p.XDS.Connected {
			return true
		}
	}
	return false
}

func TestMigrationsFinishEnvoy(t *testing.T) {
	envoytest.Binary(t)
	api := ports(t)
	webToAPI := envoytest.FreePort(t)
	runMigrations(t, migrationCase{
		server: "api-1", selector: "api",
		catalog: func(withCaller bool) string {
			s := fmt.Sprintf(`services:
  - {name: api, protocol: http, endpoints: [{address: 127.0.0.1, port: %d, labels: {app: api}}]}
  - {name: web, protocol: http}
proxies:
  - {id: api-1, service: api, address: 127.0.0.1, publicPort: %d, appPort: %d}
`, api.public, api.public, api.app)
			if withCaller {
				s += fmt.Sprintf("  - {id: web-1, service: web, upstreams: [{service: api, localPort: %d}]}\n", webToAPI)
			}
			return s
		},
		start: func(t *testing.T, m *meshd) {
			startHTTPApp(t, "api", api.app)
			startSidecar(t, m, "api", "api-1", api.admin)
		},
		plaintext: func() error {
			code, body, err := httpGet(fmt.Sprintf("http://127.0.0.1:%d/", api.public))
			if err == nil && (code != 200 || body["app"] != "api") {
				err = fmt.Errorf("HTTP %d %v", code, body)
			}
			return err
		},
	})
}

func TestMigrationsFinishProxylessGRPC(t *testing.T) {
	envoytest.Binary(t) // the e2e suite's precondition; gRPC needs no Envoy
	port := envoytest.FreePort(t)
	runMigrations(t, migrationCase{
		server: "greeter-1", selector: "greeter",
		catalog: func(withCaller bool) string {
			s := fmt.Sprintf(`services:
  - {name: greeter, protocol: grpc, endpoints: [{address: 127.0.0.1, port: %d, labels: {app: greeter}}]}
  - {name: web, protocol: grpc}
proxies:
  - {id: greeter-1, service: greeter, flavor: grpc, address: 127.0.0.1, publicPort: %d}
`, port, port)
			if withCaller {
				s += "  - {id: web-1, service: web, flavor: grpc, upstreams: [{service: greeter}]}\n"
			}
			return s
		},
		start: func(t *testing.T, m *meshd) { startProxylessServer(t, m, "greeter-1", port) },
		plaintext: func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			cc, err := grpc.NewClient(fmt.Sprintf("127.0.0.1:%d", port), grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				return err
			}
			defer cc.Close()
			_, err = testgrpc.NewTestServiceClient(cc).EmptyCall(ctx, &testgrpc.Empty{}, grpc.WaitForReady(false))
			return err
		},
	})
}
