package bootstrap_test

import (
	"bytes"
	"flag"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/serviceconfig"
	grpcxds "google.golang.org/grpc/xds"
	"google.golang.org/protobuf/proto"

	"github.com/meshd/meshd/bootstrap"
	"github.com/meshd/meshd/internal/envoytest"
	"github.com/meshd/meshd/xds"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/ and delete stale ones")

// rootPEM is a fixed CA certificate (no key) so that inline-CA goldens are
// stable.
func rootPEM(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/root-ca.pem")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

type envoyCase struct {
	name string
	opts func(t *testing.T) bootstrap.EnvoyOptions
}

func envoyCases() []envoyCase {
	return []envoyCase{
		{"envoy-web", func(*testing.T) bootstrap.EnvoyOptions {
			return bootstrap.EnvoyOptions{Service: "web", CAFile: ".meshd/ca/root-cert.pem"}
		}},
		{"envoy-dns-inline-ca", func(t *testing.T) bootstrap.EnvoyOptions {
			return bootstrap.EnvoyOptions{
				NodeID: "api-1", Service: "api", Namespace: "shop",
				XDSAddress: "meshd.mesh.example:15012", AdminPort: 15002, CAPEM: rootPEM(t),
			}
		}},
		{"envoy-ipv6", func(*testing.T) bootstrap.EnvoyOptions {
			return bootstrap.EnvoyOptions{Service: "db", XDSAddress: "[::1]:15012", AdminPort: 15004, CAFile: "/etc/meshd/root-cert.pem"}
		}},
		{"envoy-delta-trust-domain", func(*testing.T) bootstrap.EnvoyOptions {
			return bootstrap.EnvoyOptions{Service: "cart", Namespace: "shop", XDSAddress: "127.0.0.1:15012", CAFile: "/etc/meshd/root-cert.pem",
				Delta: true, TrustDomain: "example.org", DrainTime: 45 * time.Second}
		}},
		{"envoy-gateway", func(*testing.T) bootstrap.EnvoyOptions {
			return bootstrap.EnvoyOptions{NodeID: "ingress-1", Service: "ingress", Namespace: "edge", XDSAddress: "10.0.0.2:15012",
				CAFile: "/etc/meshd/root-cert.pem", Gateway: true, MaxDownstreamConnections: 20000}
		}},
	}
}

type grpcCase struct {
	name string
	opts bootstrap.GRPCOptions
}

var grpcCases = []grpcCase{
	{"grpc-hello", bootstrap.GRPCOptions{Service: "hello", CAFile: ".meshd/ca/root-cert.pem", CertDir: ".meshd/certs/hello"}},
	{"grpc-custom", bootstrap.GRPCOptions{
		NodeID: "hello-client-7", Service: "hello-client", Namespace: "shop",
		XDSAddress: "meshd.mesh.example:15012", CAFile: "/etc/meshd/root.pem", CertDir: "/var/run/meshd/certs", RefreshInterval: "5m",
	}},
}

// TestGolden pins the rendered bootstraps. Run `go test ./bootstrap -update`
// after an intended change and review the diff of testdata/.
func TestGolden(t *testing.T) {
	want := map[string]bool{} // golden files this test owns
	for _, c := range envoyCases() {
		file := c.name + ".yaml"
		want[file] = true
		t.Run(c.name, func(t *testing.T) {
			got, err := bootstrap.EnvoyYAML(c.opts(t))
			if err != nil {
				t.Fatal(err)
			}
			checkGolden(t, file, got)
		})
	}
	for _, c := range grpcCases {
		file := c.name + ".json"
		want[file] = true
		t.Run(c.name, func(t *testing.T) {
			got, err := bootstrap.GRPC(c.opts)
			if err != nil {
				t.Fatal(err)
			}
			checkGolden(t, file, got)
		})
	}
	// Stale goldens (a renamed or removed case) would otherwise linger and
	// mislead reviewers.
	entries, err := os.ReadDir("testdata")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		ext := filepath.Ext(e.Name())
		if e.IsDir() || (ext != ".yaml" && ext != ".json") || want[e.Name()] {
			continue
		}
		if *update {
			if err := os.Remove(filepath.Join("testdata", e.Name())); err != nil {
				t.Fatal(err)
			}
			t.Logf("deleted stale golden testdata/%s", e.Name())
			continue
		}
		t.Errorf("testdata/%s belongs to no test case: run go test ./bootstrap -update to delete it", e.Name())
	}
}

func checkGolden(t *testing.T, file string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", file)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./bootstrap -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the generated output (run go test ./bootstrap -update and review the diff):\n--- got ---\n%s", path, got)
	}
}

// TestEnvoyGoldensParseAndValidate reads every Envoy golden back as Envoy
// would (YAML → proto JSON), checks it deep-validates and equals the
// message Envoy() builds, so the YAML is a faithful rendering.
func TestEnvoyGoldensParseAndValidate(t *testing.T) {
	for _, c := range envoyCases() {
		t.Run(c.name, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join("testdata", c.name+".yaml"))
			if err != nil {
				t.Fatal(err)
			}
			parsed, err := envoytest.ParseBootstrapYAML(data)
			if err != nil {
				t.Fatal(err)
			}
			built, err := bootstrap.Envoy(c.opts(t))
			if err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(parsed, built) {
				t.Errorf("parsed golden differs from the built bootstrap")
			}
		})
	}
}

// TestEnvoyGoldensAcceptedByEnvoy runs Envoy's own validation on each golden,
// with its CA file pointed at a real root: validate mode loads trusted_ca.
func TestEnvoyGoldensAcceptedByEnvoy(t *testing.T) {
	envoytest.Binary(t) // fail (or skip) once, up front, if Envoy is missing
	for _, c := range envoyCases() {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			o := c.opts(t)
			if o.CAFile != "" {
				o.CAFile = envoytest.WriteRootCA(t, dir, "root-cert.pem")
			}
			y, err := bootstrap.EnvoyYAML(o)
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, "bootstrap.yaml")
			if err := os.WriteFile(path, y, 0o644); err != nil {
				t.Fatal(err)
			}
			envoytest.Validate(t, path)
		})
	}
}

func TestEnvoyDeterministic(t *testing.T) {
	o := envoyCases()[1].opts(t)
	first, err := bootstrap.EnvoyYAML(o)
	if err != nil {
		t.Fatal(err)
	}
	// protojson's whitespace randomization is per process, but Go map
	// iteration (node metadata, typed_extension_protocol_options) varies per
	// call; repeat to give any order dependence a chance to show.
	for range 20 {
		again, err := bootstrap.EnvoyYAML(o)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(first, again) {
			t.Fatalf("EnvoyYAML is not deterministic:\n%s\n---\n%s", first, again)
		}
	}
}

func TestEnvoyShape(t *testing.T) {
	b, err := bootstrap.Envoy(bootstrap.EnvoyOptions{Service: "web", CAFile: "ca.pem"})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := b.GetNode().GetId(), "web.default"; got != want {
		t.Errorf("node id = %q, want %q", got, want)
	}
	md := b.GetNode().GetMetadata().GetFields()
	for k, want := range map[string]string{xds.NodeMetaNamespace: "default", xds.NodeMetaService: "web", xds.NodeMetaFlavor: "envoy", xds.NodeMetaDrainStrategy: "immediate"} {
		if got := md[k].GetStringValue(); got != want {
			t.Errorf("node metadata %s = %q, want %q", k, got, want)
		}
	}
	if got := md[xds.NodeMetaDrainTimeS].GetNumberValue(); got != 5 {
		t.Errorf("node metadata %s = %v, want the default 5", xds.NodeMetaDrainTimeS, got)
	}
	if got := b.GetAdmin().GetAddress().GetSocketAddress(); got.GetAddress() != "127.0.0.1" || got.GetPortValue() != bootstrap.DefaultAdminPort {
		t.Errorf("admin address = %v, want 127.0.0.1:%d", got, bootstrap.DefaultAdminPort)
	}
	cl := onlyCluster(t, b.GetStaticResources().GetClusters())
	if cl.GetType() != clusterv3.Cluster_STATIC {
		t.Errorf("cluster type = %v for an IP address, want STATIC", cl.GetType())
	}
	if sni := upstreamTLS(t, cl).GetSni(); sni != "" {
		t.Errorf("SNI = %q for an IP address, want none", sni)
	}
	if got := cl.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress(); got.GetAddress() != "127.0.0.1" || got.GetPortValue() != 15012 {
		t.Errorf("xDS endpoint = %v, want the default %s", got, bootstrap.DefaultXDSAddress)
	}
	if got := upstreamTLS(t, cl).GetCommonTlsContext().GetValidationContext().GetTrustedCa().GetFilename(); got != "ca.pem" {
		t.Errorf("trusted_ca filename = %q, want ca.pem", got)
	}
	if got := b.GetDynamicResources().GetAdsConfig().GetGrpcServices()[0].GetEnvoyGrpc().GetClusterName(); got != xds.XDSClusterName {
		t.Errorf("ADS cluster = %q, want %q", got, xds.XDSClusterName)
	}

	b, err = bootstrap.Envoy(bootstrap.EnvoyOptions{Service: "web", XDSAddress: "meshd.local:443", CAPEM: []byte("pem")})
	if err != nil {
		t.Fatal(err)
	}
	cl = onlyCluster(t, b.GetStaticResources().GetClusters())
	if cl.GetType() != clusterv3.Cluster_STRICT_DNS {
		t.Errorf("cluster type = %v for a DNS name, want STRICT_DNS", cl.GetType())
	}
	tc := upstreamTLS(t, cl)
	if tc.GetSni() != "meshd.local" {
		t.Errorf("SNI = %q, want meshd.local", tc.GetSni())
	}
	if got := string(tc.GetCommonTlsContext().GetValidationContext().GetTrustedCa().GetInlineBytes()); got != "pem" {
		t.Errorf("trusted_ca inline = %q, want the given PEM", got)
	}
}

func onlyCluster(t *testing.T, cls []*clusterv3.Cluster) *clusterv3.Cluster {
	t.Helper()
	if len(cls) != 1 || cls[0].GetName() != xds.XDSClusterName {
		t.Fatalf("static clusters = %v, want exactly %s", cls, xds.XDSClusterName)
	}
	return cls[0]
}

func upstreamTLS(t *testing.T, cl *clusterv3.Cluster) *tlsv3.UpstreamTlsContext {
	t.Helper()
	tc := &tlsv3.UpstreamTlsContext{}
	if err := cl.GetTransportSocket().GetTypedConfig().UnmarshalTo(tc); err != nil {
		t.Fatalf("xDS cluster transport socket: %v", err)
	}
	if !slices.Equal(tc.GetCommonTlsContext().GetAlpnProtocols(), []string{"h2"}) {
		t.Errorf("ALPN = %v, want [h2]", tc.GetCommonTlsContext().GetAlpnProtocols())
	}
	return tc
}

func TestEnvoyErrors(t *testing.T) {
	ok := bootstrap.EnvoyOptions{Service: "web", CAFile: "ca.pem"}
	for _, c := range []struct {
		name    string
		mutate  func(*bootstrap.EnvoyOptions)
		wantErr string
	}{
		{"no service", func(o *bootstrap.EnvoyOptions) { o.Service = "" }, "service is required"},
		{"bad service", func(o *bootstrap.EnvoyOptions) { o.Service = "Web" }, "not a valid name"},
		{"bad namespace", func(o *bootstrap.EnvoyOptions) { o.Namespace = "a_b" }, "namespace"},
		{"no CA", func(o *bootstrap.EnvoyOptions) { o.CAFile = "" }, "exactly one of CA file and inline CA"},
		{"both CAs", func(o *bootstrap.EnvoyOptions) { o.CAPEM = []byte("x") }, "exactly one of CA file and inline CA"},
		{"no port", func(o *bootstrap.EnvoyOptions) { o.XDSAddress = "127.0.0.1" }, "want HOST:PORT"},
		{"empty host", func(o *bootstrap.EnvoyOptions) { o.XDSAddress = ":15012" }, "has no host"},
		{"port zero", func(o *bootstrap.EnvoyOptions) { o.XDSAddress = "127.0.0.1:0" }, "1 to 65535"},
		{"port too big", func(o *bootstrap.EnvoyOptions) { o.XDSAddress = "127.0.0.1:70000" }, "1 to 65535"},
		{"admin port too big", func(o *bootstrap.EnvoyOptions) { o.AdminPort = 70000 }, "admin port"},
		{"ipv6 zone", func(o *bootstrap.EnvoyOptions) { o.XDSAddress = "[fe80::1%eth0]:15012" }, "zones"},
		{"drain time below a second", func(o *bootstrap.EnvoyOptions) { o.DrainTime = 500 * time.Millisecond }, "whole seconds, at least 1s"},
		{"drain time not whole seconds", func(o *bootstrap.EnvoyOptions) { o.DrainTime = 2500 * time.Millisecond }, "whole seconds"},
		{"negative drain time", func(o *bootstrap.EnvoyOptions) { o.DrainTime = -time.Second }, "whole seconds"},
	} {
		t.Run(c.name, func(t *testing.T) {
			o := ok
			c.mutate(&o)
			_, err := bootstrap.EnvoyYAML(o)
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("error = %v, want one containing %q", err, c.wantErr)
			}
		})
	}
}

// TestGRPCGoldensAcceptedByGRPC hands each gRPC golden to grpc-go's own
// bootstrap parser, which also parses every certificate provider's config
// with its plugin.
func TestGRPCGoldensAcceptedByGRPC(t *testing.T) {
	for _, c := range grpcCases {
		t.Run(c.name, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join("testdata", c.name+".json"))
			if err != nil {
				t.Fatal(err)
			}
			if err := parseWithGRPC(data); err != nil {
				t.Fatalf("grpc-go rejects the bootstrap: %v", err)
			}
		})
	}
	// The check above can fail: gRPC rejects a refresh_interval that is not
	// in protobuf JSON form, which is why GRPC normalizes "5m" to "300s".
	bad := strings.Replace(string(mustGRPC(t, grpcCases[0].opts)), `"refresh_interval": "60s"`, `"refresh_interval": "1m"`, 1)
	if !strings.Contains(bad, `"1m"`) {
		t.Fatal("test bug: refresh_interval not found in the gRPC bootstrap")
	}
	if err := parseWithGRPC([]byte(bad)); err == nil || !strings.Contains(err.Error(), "refresh_interval") && !strings.Contains(err.Error(), "pemfile") {
		t.Errorf("grpc-go's verdict on refresh_interval \"1m\" = %v, want a pemfile parse error; the check above proves nothing", err)
	}
}

// parseWithGRPC makes grpc-go parse a bootstrap. In grpc v1.85,
// NewXDSResolverWithConfigForTesting only stores the JSON; it is parsed when
// the resolver is built, so build one (with a stub ClientConn) and close it
// at once. Building also starts an xDS client, which dials server_uri in the
// background; closing stops it before it matters.
func parseWithGRPC(bootstrapJSON []byte) error {
	builder, err := grpcxds.NewXDSResolverWithConfigForTesting(bootstrapJSON)
	if err != nil {
		return err
	}
	u, err := url.Parse("xds:///hello.default")
	if err != nil {
		return err
	}
	r, err := builder.Build(resolver.Target{URL: *u}, stubClientConn{}, resolver.BuildOptions{})
	if err != nil {
		return err
	}
	r.Close()
	return nil
}

// stubClientConn is the least a resolver needs to be built; the embedded
// nil interface panics if the resolver calls anything else, which would show
// up as a test failure rather than silently passing.
type stubClientConn struct{ resolver.ClientConn }

func (stubClientConn) UpdateState(resolver.State) error { return nil }
func (stubClientConn) ReportError(error)                {}
func (stubClientConn) ParseServiceConfig(string) *serviceconfig.ParseResult {
	return &serviceconfig.ParseResult{}
}

func mustGRPC(t *testing.T, o bootstrap.GRPCOptions) []byte {
	t.Helper()
	b, err := bootstrap.GRPC(o)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestGRPCShape(t *testing.T) {
	got := string(mustGRPC(t, grpcCases[1].opts))
	for _, want := range []string{
		`"refresh_interval": "300s"`,
		`"server_listener_resource_name_template": "` + xds.GRPCServerListenerTemplate + `"`,
		`"` + xds.CertProviderInstance + `": {`,
		`"` + xds.NodeMetaFlavor + `": "grpc"`,
		`"certificate_file": "/var/run/meshd/certs/cert.pem"`,
		`"server_uri": "meshd.mesh.example:15012"`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("gRPC bootstrap lacks %s:\n%s", want, got)
		}
	}
}

func TestGRPCErrors(t *testing.T) {
	ok := grpcCases[0].opts
	for _, c := range []struct {
		name    string
		mutate  func(*bootstrap.GRPCOptions)
		wantErr string
	}{
		{"no service", func(o *bootstrap.GRPCOptions) { o.Service = "" }, "service is required"},
		{"no CA", func(o *bootstrap.GRPCOptions) { o.CAFile = "" }, "CA file is required"},
		{"no cert dir", func(o *bootstrap.GRPCOptions) { o.CertDir = "" }, "certificate directory is required"},
		{"bad refresh", func(o *bootstrap.GRPCOptions) { o.RefreshInterval = "soon" }, "refresh interval"},
		{"negative refresh", func(o *bootstrap.GRPCOptions) { o.RefreshInterval = "-1s" }, "must be positive"},
		{"bad address", func(o *bootstrap.GRPCOptions) { o.XDSAddress = "meshd" }, "want HOST:PORT"},
	} {
		t.Run(c.name, func(t *testing.T) {
			o := ok
			c.mutate(&o)
			_, err := bootstrap.GRPC(o)
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("error = %v, want one containing %q", err, c.wantErr)
			}
		})
	}
}

// The drain settings are Envoy command-line flags: the bootstrap states
// them in its first lines, and EnvoyDrainArgs is what every documented
// start command and the test harness pass.
func TestEnvoyDrainSettings(t *testing.T) {
	if got, want := strings.Join(bootstrap.EnvoyDrainArgs(0), " "), "--drain-time-s 5 --drain-strategy immediate"; got != want {
		t.Errorf("EnvoyDrainArgs(default) = %q, want %q", got, want)
	}
	if got, want := bootstrap.EnvoyCommand("web.yaml", 45*time.Second), "envoy -c web.yaml --drain-time-s 45 --drain-strategy immediate"; got != want {
		t.Errorf("EnvoyCommand = %q, want %q", got, want)
	}
	y, err := bootstrap.EnvoyYAML(bootstrap.EnvoyOptions{Service: "web", CAFile: "ca.pem", DrainTime: 45 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(y), "#   envoy -c FILE --drain-time-s 45 --drain-strategy immediate\n") {
		t.Errorf("bootstrap does not say how to start Envoy:\n%s", y)
	}
	b, err := bootstrap.Envoy(bootstrap.EnvoyOptions{Service: "web", CAFile: "ca.pem", DrainTime: 45 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if got := b.GetNode().GetMetadata().GetFields()[xds.NodeMetaDrainTimeS].GetNumberValue(); got != 45 {
		t.Errorf("node metadata %s = %v, want 45", xds.NodeMetaDrainTimeS, got)
	}
}
