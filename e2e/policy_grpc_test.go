package e2e

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/xds"

	"github.com/meshd/meshd/internal/envoytest"
)

// grpcPolicyCatalog: a proxyless greeter server and three proxyless callers
// with different identities (two namespaces).
func grpcPolicyCatalog(port uint32) string {
	return fmt.Sprintf(`services:
  - {name: greeter, protocol: grpc, endpoints: [{address: 127.0.0.1, port: %d, labels: {app: greeter}}]}
  - {name: web, protocol: grpc}
  - {name: ops, protocol: grpc}
  - {name: batch, namespace: batch, protocol: grpc}
proxies:
  - {id: greeter-1, service: greeter, flavor: grpc, address: 127.0.0.1, publicPort: %d}
  - {id: web-1, service: web, flavor: grpc, upstreams: [{service: greeter}]}
  - {id: ops-1, service: ops, flavor: grpc, upstreams: [{service: greeter}]}
  - {id: batch-1, service: batch, namespace: batch, flavor: grpc, upstreams: [{service: greeter, namespace: default}]}
`, port, port)
}

const grpcPeer = `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: greeter, namespace: default}
spec:
  selector: {matchLabels: {app: greeter}}
  mtls: {mode: %s}
`

// The policy phases of the matrix. Each is a set of Istio documents and an
// independent statement of Istio's semantics for it (allowed()).
var grpcPhases = []struct {
	name    string
	docs    string
	allowed func(caller, method string, hdr map[string]string) bool
}{
	{"no policy: allow", "", func(string, string, map[string]string) bool { return true }},
	{"full policy set", `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: greeter-deny, namespace: default}
spec:
  selector: {matchLabels: {app: greeter}}
  action: DENY
  rules:
    - from: [{source: {notNamespaces: ["default"]}}]
      to: [{operation: {paths: ["/grpc.testing.TestService/EmptyCall"]}}]
    - when: [{key: "request.headers[x-block]", values: ["*"]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: greeter-allow, namespace: default}
spec:
  selector: {matchLabels: {app: greeter}}
  action: ALLOW
  rules:
    - from: [{source: {principals: ["cluster.local/ns/default/sa/web"]}}]
      to: [{operation: {paths: ["/grpc.testing.TestService/*"]}}]
    - from: [{source: {namespaces: ["batch"]}}]
      to: [{operation: {paths: ["*/EmptyCall", "*/UnaryCall"], notPaths: ["*/EmptyCall"]}}]
    - from: [{source: {principals: ["cluster.local/ns/default/sa/ops"]}}]
      when: [{key: "request.headers[x-role]", values: ["admin"]}]
`, func(caller, method string, hdr map[string]string) bool {
		// DENY first.
		if caller == "batch" && method == "EmptyCall" {
			return false
		}
		if _, ok := hdr["x-block"]; ok {
			return false
		}
		// Then any ALLOW rule.
		switch caller {
		case "web":
			return true
		case "batch":
			return method == "UnaryCall"
		case "ops":
			return hdr["x-role"] == "admin"
		}
		return false
	}},
	{"empty ALLOW denies all", `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: lockdown, namespace: default}
spec:
  selector: {matchLabels: {app: greeter}}
`, func(string, string, map[string]string) bool { return false }},
	{"rules [{}] with a namespace DENY", `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: everyone, namespace: default}
spec:
  selector: {matchLabels: {app: greeter}}
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-batch, namespace: meshd-system}
spec:
  action: DENY
  rules:
    - from: [{source: {namespaces: ["batch"]}}]
      to: [{operation: {notPaths: ["*/UnaryCall"]}}]
`, func(caller, method string, _ map[string]string) bool {
		return !(caller == "batch" && method != "UnaryCall")
	}},
}

type grpcCaller struct {
	name, service, namespace string
	client                   testgrpc.TestServiceClient
}

func newCaller(t *testing.T, m *meshd, name, service, namespace, nodeID string) testgrpc.TestServiceClient {
	t.Helper()
	certDir := filepath.Join(m.dir, "certs-"+nodeID)
	m.meshctl("certs", "issue", "--service", service, "--namespace", namespace, "--data-dir", m.dataDir, "--out", certDir)
	boot := m.meshctl("bootstrap", "--flavor", "grpc", "--service", service, "--namespace", namespace, "--node-id", nodeID,
		"--xds-address", m.xdsAddr, "--data-dir", m.dataDir, "--cert-dir", certDir, "--refresh-interval", "1s")
	res, err := xds.NewXDSResolverWithConfigForTesting([]byte(boot))
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient("xds:///greeter.default", grpc.WithResolvers(res), grpc.WithTransportCredentials(mustClientCreds(t)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return testgrpc.NewTestServiceClient(cc)
}

func invoke(ctx context.Context, c testgrpc.TestServiceClient, method string, hdr map[string]string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var kv []string
	for k, v := range hdr {
		kv = append(kv, k, v)
	}
	ctx = metadata.AppendToOutgoingContext(ctx, kv...)
	var err error
	if method == "EmptyCall" {
		_, err = c.EmptyCall(ctx, &testgrpc.Empty{})
	} else {
		_, err = c.UnaryCall(ctx, &testgrpc.SimpleRequest{})
	}
	return err
}

func writeGRPCPolicies(t *testing.T, dir, mode, docs string) {
	t.Helper()
	content := fmt.Sprintf(grpcPeer, mode)
	if docs != "" {
		content += "---\n" + docs
	}
	writePolicyFile(t, dir, content)
}

func TestGRPCPolicyMatrix(t *testing.T) {
	port := envoytest.FreePort(t)
	policyDir := t.TempDir()
	writeGRPCPolicies(t, policyDir, "STRICT", "")
	m := startMeshd(t, grpcPolicyCatalog(port), "--policy-dir", policyDir)
	startProxylessServer(t, m, "greeter-1", port)
	callers := []grpcCaller{
		{name: "web", client: newCaller(t, m, "web", "web", "default", "web-1")},
		{name: "ops", client: newCaller(t, m, "ops", "ops", "default", "ops-1")},
		{name: "batch", client: newCaller(t, m, "batch", "batch", "batch", "batch-1")},
	}
	ctx := context.Background()
	headers := []map[string]string{{}, {"x-role": "admin"}, {"x-block": "1"}}

	// web's UnaryCall is allowed in phases 0, 1 and 3: it runs throughout
	// those switches and must never fail.
	// A phase is in force once every caller, method and header gets the
	// outcome the phase gives it.
	inForce := func(i int) {
		t.Helper()
		ph := grpcPhases[i]
		eventually(t, 15*time.Second, func() error {
			for _, c := range callers {
				for _, method := range []string{"EmptyCall", "UnaryCall"} {
					for _, h := range headers {
						err := invoke(ctx, c.client, method, h)
						if want := ph.allowed(c.name, method, h); (err == nil) != want {
							return fmt.Errorf("phase %d (%s) not in force yet: %s %s %v → %v", i, ph.name, c.name, method, h, err)
						}
					}
				}
			}
			return nil
		})
	}
	cases := 0
	for i, ph := range grpcPhases {
		writeGRPCPolicies(t, policyDir, "STRICT", ph.docs)
		inForce(i)
		for _, c := range callers {
			for _, method := range []string{"EmptyCall", "UnaryCall"} {
				for _, h := range headers {
					cases++
					err := invoke(ctx, c.client, method, h)
					want := ph.allowed(c.name, method, h)
					if want && err != nil {
						t.Errorf("phase %q: %s %s %v denied: %v", ph.name, c.name, method, h, err)
					}
					if !want && status.Code(err) != codes.PermissionDenied {
						t.Errorf("phase %q: %s %s %v: got %v, want PermissionDenied", ph.name, c.name, method, h, err)
					}
				}
			}
		}
	}
	if cases < 40 {
		t.Fatalf("only %d cases", cases)
	}
	t.Logf("%d matrix cases over %d policy phases", cases, len(grpcPhases))

	t.Run("policy changes do not fail allowed RPCs", func(t *testing.T) {
		f := startFlow(5*time.Millisecond, func() error { return invoke(ctx, callers[0].client, "UnaryCall", nil) })
		for _, i := range []int{0, 1, 3, 1, 0} {
			writeGRPCPolicies(t, policyDir, "STRICT", grpcPhases[i].docs)
			inForce(i)
			f.waitMore(t, 10) // some calls in each phase, not only across the switch
		}
		f.stop(t, 50)
	})

	plaintext := func() error {
		cc, err := grpc.NewClient(fmt.Sprintf("127.0.0.1:%d", port), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return err
		}
		defer cc.Close()
		return invoke(ctx, testgrpc.NewTestServiceClient(cc), "UnaryCall", nil)
	}
	t.Run("STRICT refuses plaintext", func(t *testing.T) {
		if err := plaintext(); err == nil {
			t.Fatal("plaintext RPC accepted under STRICT")
		}
	})
	t.Run("DISABLE accepts plaintext and callers follow", func(t *testing.T) {
		writeGRPCPolicies(t, policyDir, "DISABLE", "")
		eventually(t, 20*time.Second, func() error { return plaintext() })
		eventually(t, 20*time.Second, func() error { return invoke(ctx, callers[0].client, "UnaryCall", nil) })
		var st statusDoc = m.status()
		for _, p := range st.Proxies {
			if p.ID == "greeter-1" && len(p.Versions) == 0 {
				t.Fatalf("greeter has no versions: %+v", p)
			}
		}
	})
	t.Run("PERMISSIVE on a proxyless server is reported", func(t *testing.T) {
		writeGRPCPolicies(t, policyDir, "PERMISSIVE", "")
		eventually(t, 10*time.Second, func() error {
			_, body := m.adminGET("/debug/status")
			if !strings.Contains(body, "PERMISSIVE is not supported by proxyless gRPC servers") {
				return fmt.Errorf("no warning in status")
			}
			return nil
		})
		// Served as STRICT: mTLS callers work, plaintext is refused.
		eventually(t, 20*time.Second, func() error { return invoke(ctx, callers[0].client, "UnaryCall", nil) })
		eventually(t, 20*time.Second, func() error {
			if plaintext() == nil {
				return fmt.Errorf("plaintext still accepted")
			}
			return nil
		})
	})
	_ = net.IPv4len
}
