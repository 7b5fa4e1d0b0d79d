package e2e

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	xdscreds "google.golang.org/grpc/credentials/xds"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/xds"

	"github.com/meshd/meshd/internal/envoytest"
)

// Issue 14: in state of the world meshd sends a route, endpoint set or
// secret only when its content changed for the proxy (pseudo-delta), and
// Listener and Cluster responses stay complete. These tests check that the
// real clients read it that way: a response carrying one endpoint set
// leaves every other cluster's endpoints in place, and a removed
// cluster's endpoints go with it.

// pseudoDeltaMesh is web (an Envoy sidecar on SotW) calling api, greeter
// and db; only addresses matter, nothing is served.
type pseudoDeltaMesh struct {
	web                 sidecarPorts
	api, greeter, db    []uint32 // endpoint ports
	toAPI, toGRPC, toDB uint32
	withDB              bool // db is an upstream of web
}

// catalog is written in block style, so that meshd's watcher re-reads it
// incrementally and an endpoint edit is built from the last catalog
// (mesh.Catalog.WithEndpoints); TestPseudoDeltaProxylessGRPC's flow-style
// catalog takes the full parse.
func (e *pseudoDeltaMesh) catalog() string {
	var b strings.Builder
	b.WriteString("services:\n")
	fmt.Fprintf(&b, "  - name: web\n    protocol: http\n    endpoints:\n      - address: 127.0.0.1\n        port: %d\n", e.web.public)
	for _, s := range []struct {
		name, proto string
		ports       []uint32
	}{{"api", "http", e.api}, {"greeter", "grpc", e.greeter}, {"db", "tcp", e.db}} {
		fmt.Fprintf(&b, "  - name: %s\n    protocol: %s\n    endpoints:\n", s.name, s.proto)
		for _, p := range s.ports {
			fmt.Fprintf(&b, "      - address: 127.0.0.1\n        port: %d\n        locality:\n          region: local\n          zone: a\n", p)
		}
	}
	fmt.Fprintf(&b, "proxies:\n  - service: web\n    address: 127.0.0.1\n    publicPort: %d\n    appPort: %d\n    upstreams:\n", e.web.public, e.web.app)
	fmt.Fprintf(&b, "      - service: api\n        localPort: %d\n      - service: greeter\n        localPort: %d\n", e.toAPI, e.toGRPC)
	if e.withDB {
		fmt.Fprintf(&b, "      - service: db\n        localPort: %d\n", e.toDB)
	}
	return b.String()
}

var clusterHost = regexp.MustCompile(`(?m)^(outbound\|[^:]+)::127\.0\.0\.1:(\d+)::health_flags::`)

// envoyEndpoints reads Envoy's /clusters: the endpoint ports of every
// outbound cluster, sorted.
func envoyEndpoints(t *testing.T, e *envoytest.Envoy) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for _, m := range clusterHost.FindAllStringSubmatch(e.AdminGET(t, "/clusters"), -1) {
		out[m[1]] = append(out[m[1]], m[2])
	}
	for c := range out {
		slices.Sort(out[c])
	}
	return out
}

func portStrings(ps []uint32) []string {
	var out []string
	for _, p := range ps {
		out = append(out, fmt.Sprint(p))
	}
	slices.Sort(out)
	return out
}

func TestPseudoDeltaEnvoy(t *testing.T) {
	envoytest.Binary(t)
	e := &pseudoDeltaMesh{web: ports(t), toAPI: envoytest.FreePort(t), toGRPC: envoytest.FreePort(t), toDB: envoytest.FreePort(t), withDB: true}
	for range 2 {
		e.api = append(e.api, envoytest.FreePort(t))
		e.greeter = append(e.greeter, envoytest.FreePort(t))
		e.db = append(e.db, envoytest.FreePort(t))
	}
	m := startMeshd(t, e.catalog())
	web := startSidecar(t, m, "web", "", e.web.admin)

	want := func() map[string][]string {
		w := map[string][]string{"outbound|api.default": portStrings(e.api), "outbound|greeter.default": portStrings(e.greeter)}
		if e.withDB {
			w["outbound|db.default"] = portStrings(e.db)
		}
		return w
	}
	converged := func(t *testing.T, what string) {
		t.Helper()
		eventually(t, 20*time.Second, func() error {
			got, w := envoyEndpoints(t, web), want()
			for c, ports := range w {
				if !slices.Equal(got[c], ports) {
					return fmt.Errorf("%s: Envoy's %s has endpoints %v, want %v", what, c, got[c], ports)
				}
			}
			for c := range got {
				if _, ok := w[c]; !ok {
					return fmt.Errorf("%s: Envoy still has cluster %s with endpoints %v", what, c, got[c])
				}
			}
			return nil
		})
		assertEnvoyAccepted(t, "web", web, 1+len(want()))
		m.assertAllACKed("web.default")
	}
	converged(t, "initial sync")
	// Envoy counts each EDS cluster's accepted updates: a cluster a
	// response does not mention is not updated at all.
	edsUpdates := func(svc string) int64 {
		// Outbound clusters' stats are named outbound.<service>.<namespace>.
		n, ok := web.Stat(t, "cluster.outbound."+svc+".default.update_success")
		if !ok {
			t.Fatalf("web's Envoy has no stat cluster.outbound.%s.default.update_success", svc)
		}
		return n
	}
	claBytes := func() float64 {
		return m.metric(t, `meshd_xds_push_resource_bytes_total{type="ClusterLoadAssignment"}`)
	}

	t.Run("an endpoint added reaches its cluster and leaves the others alone", func(t *testing.T) {
		greeterBefore, dbBefore, apiBefore, bytesBefore := edsUpdates("greeter"), edsUpdates("db"), edsUpdates("api"), claBytes()
		e.api = append(e.api, envoytest.FreePort(t))
		m.writeCatalog(e.catalog())
		converged(t, "api endpoint added")
		if n := edsUpdates("api"); n <= apiBefore {
			t.Errorf("api's endpoints updated %d times, before %d", n, apiBefore)
		}
		if g, d := edsUpdates("greeter"), edsUpdates("db"); g != greeterBefore || d != dbBefore {
			t.Errorf("clusters whose endpoints did not change were updated: greeter %d→%d, db %d→%d", greeterBefore, g, dbBefore, d)
		}
		// One endpoint set of three was sent: api's, now with 3 endpoints
		// (about 80 bytes each).
		if sent := claBytes() - bytesBefore; sent <= 0 || sent > 400 {
			t.Errorf("meshd sent %.0f bytes of endpoint sets for one changed set", sent)
		}
	})

	t.Run("a removed cluster's endpoints go with it", func(t *testing.T) {
		e.withDB = false
		m.writeCatalog(e.catalog())
		converged(t, "db dropped")
		// (Its listener may still be draining: connections end by
		// themselves.)
		for _, section := range []string{"dynamic_active_clusters", "dynamic_endpoint_configs"} {
			if dump := web.AdminGET(t, "/config_dump?include_eds&resource="+section); strings.Contains(dump, "outbound|db.default") {
				t.Fatalf("Envoy's %s still name outbound|db.default:\n%s", section, excerpt(dump, "outbound|db.default"))
			}
		}
	})

	t.Run("an endpoint changed while its cluster was gone comes back with it", func(t *testing.T) {
		e.db = e.db[:1]
		m.writeCatalog(e.catalog())
		// Nothing of web's changes; then db is an upstream again.
		e.withDB = true
		m.writeCatalog(e.catalog())
		converged(t, "db back")
	})
}

// proxylessChannel is a gRPC-Go channel to target configured by meshd
// through an xDS resolver for node client-1 (certificates of service
// client).
func proxylessChannel(t *testing.T, m *meshd, boot, target string) testgrpc.TestServiceClient {
	t.Helper()
	res, err := xds.NewXDSResolverWithConfigForTesting([]byte(boot))
	if err != nil {
		t.Fatal(err)
	}
	creds, err := xdscreds.NewClientCredentials(xdscreds.ClientOptions{FallbackCreds: insecure.NewCredentials()})
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient(target, grpc.WithResolvers(res), grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return testgrpc.NewTestServiceClient(cc)
}

// proxylessServerOf runs a proxyless greeter-type server for service svc
// as node id on port.
func proxylessServerOf(t *testing.T, m *meshd, svc, id string, port uint32) {
	t.Helper()
	certDir := filepath.Join(m.dir, "certs-"+id)
	m.meshctl("certs", "issue", "--service", svc, "--data-dir", m.dataDir, "--out", certDir)
	boot := m.meshctl("bootstrap", "--flavor", "grpc", "--service", svc, "--node-id", id,
		"--xds-address", m.xdsAddr, "--data-dir", m.dataDir, "--cert-dir", certDir)
	serving := make(chan error, 8)
	srv, err := newProxylessServer(boot, id, serving)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	timeout := time.After(20 * time.Second)
	for {
		select {
		case err := <-serving:
			if err == nil {
				return
			}
			t.Logf("%s: %v", id, err)
		case <-timeout:
			t.Fatalf("%s never reached SERVING with meshd's listener", id)
		}
	}
}

func TestPseudoDeltaProxylessGRPC(t *testing.T) {
	g1, g2, h1 := envoytest.FreePort(t), envoytest.FreePort(t), envoytest.FreePort(t)
	catalog := func(greeter []uint32, withHello bool) string {
		var b strings.Builder
		b.WriteString("services:\n  - name: greeter\n    protocol: grpc\n    endpoints:\n")
		for _, p := range greeter {
			fmt.Fprintf(&b, "      - {address: 127.0.0.1, port: %d, locality: {region: r1, zone: z1}}\n", p)
		}
		// hello's endpoint set is large (unhealthy endpoints that gRPC
		// does not use), so a response carrying it shows in the bytes.
		fmt.Fprintf(&b, "  - name: hello\n    protocol: grpc\n    endpoints:\n      - {address: 127.0.0.1, port: %d, locality: {region: r1, zone: z1}}\n", h1)
		for i := range 16 {
			fmt.Fprintf(&b, "      - {address: 127.0.1.%d, port: %d, health: unhealthy, locality: {region: r1, zone: z1}}\n", i+1, h1)
		}
		b.WriteString("  - name: client\n    protocol: grpc\nproxies:\n")
		ups := "{service: greeter}"
		if withHello {
			ups += ", {service: hello}"
		}
		fmt.Fprintf(&b, "  - {id: client-1, service: client, flavor: grpc, upstreams: [%s]}\n", ups)
		fmt.Fprintf(&b, "  - {id: greeter-1, service: greeter, flavor: grpc, address: 127.0.0.1, publicPort: %d}\n", g1)
		fmt.Fprintf(&b, "  - {id: greeter-2, service: greeter, flavor: grpc, address: 127.0.0.1, publicPort: %d}\n", g2)
		fmt.Fprintf(&b, "  - {id: hello-1, service: hello, flavor: grpc, address: 127.0.0.1, publicPort: %d}\n", h1)
		return b.String()
	}
	m := startMeshd(t, catalog([]uint32{g1}, true))
	proxylessServerOf(t, m, "greeter", "greeter-1", g1)
	proxylessServerOf(t, m, "greeter", "greeter-2", g2)
	proxylessServerOf(t, m, "hello", "hello-1", h1)
	certDir := filepath.Join(m.dir, "certs-client-1")
	m.meshctl("certs", "issue", "--service", "client", "--data-dir", m.dataDir, "--out", certDir)
	boot := m.meshctl("bootstrap", "--flavor", "grpc", "--service", "client", "--node-id", "client-1",
		"--xds-address", m.xdsAddr, "--data-dir", m.dataDir, "--cert-dir", certDir)
	// Both channels share the client's one xDS stream (gRPC pools xDS
	// clients by bootstrap): one EDS subscription with both names.
	greeter := proxylessChannel(t, m, boot, "xds:///greeter.default")
	hello := proxylessChannel(t, m, boot, "xds:///hello.default")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	answers := func(c testgrpc.TestServiceClient, n int) (map[string]bool, error) {
		seen := map[string]bool{}
		for range n {
			got, _, err := call(ctx, c)
			if err != nil {
				return seen, err
			}
			seen[strings.SplitN(got, "|", 2)[0]] = true
		}
		return seen, nil
	}
	eventually(t, 20*time.Second, func() error {
		if _, err := answers(greeter, 1); err != nil {
			return err
		}
		_, err := answers(hello, 1)
		return err
	})
	claBytes := func() float64 {
		return m.metric(t, `meshd_xds_push_resource_bytes_total{type="ClusterLoadAssignment"}`)
	}

	t.Run("an endpoint added reaches its channel and leaves the other alone", func(t *testing.T) {
		before := claBytes()
		m.writeCatalog(catalog([]uint32{g1, g2}, true))
		eventually(t, 20*time.Second, func() error {
			seen, err := answers(greeter, 20)
			if err != nil {
				return err
			}
			if !seen["greeter-2"] {
				return fmt.Errorf("greeter answered only by %v", seen)
			}
			return nil
		})
		// hello's endpoints, absent from that response, are still there.
		for range 20 {
			if seen, err := answers(hello, 1); err != nil || !seen["hello-1"] {
				t.Fatalf("hello after greeter's endpoints changed: %v %v", seen, err)
			}
		}
		if sent := claBytes() - before; sent <= 0 || sent > 400 {
			t.Errorf("meshd sent %.0f bytes of endpoint sets for one changed set", sent)
		}
		m.assertAllACKed("client-1")
	})

	t.Run("a removed cluster's endpoints go with it", func(t *testing.T) {
		m.writeCatalog(catalog([]uint32{g1, g2}, false))
		eventually(t, 20*time.Second, func() error {
			cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
			defer ccancel()
			if _, _, err := call(cctx, hello); err == nil {
				return fmt.Errorf("hello still answers after the client lost it as an upstream")
			}
			return nil
		})
		for range 10 {
			if _, err := answers(greeter, 1); err != nil {
				t.Fatalf("greeter after hello was dropped: %v", err)
			}
		}
		m.writeCatalog(catalog([]uint32{g1, g2}, true))
		eventually(t, 20*time.Second, func() error {
			_, err := answers(hello, 1)
			return err
		})
		m.assertAllACKed("client-1")
	})
}
