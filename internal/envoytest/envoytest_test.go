package envoytest

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshd/meshd/bootstrap"
)

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// webBootstrap is the web sidecar's bootstrap (as in bootstrap's golden
// envoy-web.yaml) with its CA file pointed at a real PEM.
func webBootstrap(t *testing.T, dir string) []byte {
	t.Helper()
	y, err := bootstrap.EnvoyYAML(bootstrap.EnvoyOptions{Service: "web", CAFile: WriteRootCA(t, dir, "root-cert.pem")})
	if err != nil {
		t.Fatal(err)
	}
	return y
}

func TestValidateAcceptsGoodBootstrap(t *testing.T) {
	dir := t.TempDir()
	Validate(t, writeFile(t, dir, "web.yaml", string(webBootstrap(t, dir))))
}

func TestValidateRejectsBadConfigs(t *testing.T) {
	bin := Binary(t)
	dir := t.TempDir()
	good := string(webBootstrap(t, dir))
	for _, c := range []struct {
		name, config, wantOutput string
	}{
		{
			name:       "missing CA file",
			config:     strings.Replace(good, filepath.Join(dir, "root-cert.pem"), filepath.Join(dir, "absent.pem"), 1),
			wantOutput: "absent.pem",
		},
		{
			name:       "unknown field",
			config:     strings.Replace(good, "connect_timeout: 1s", "connect_timeout: 1s\n    no_such_field: true", 1),
			wantOutput: "no_such_field",
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.config == good {
				t.Fatal("test bug: the replacement did not change the config")
			}
			path := writeFile(t, t.TempDir(), "bad.yaml", c.config)
			err := validate(bin, "", path)
			if err == nil {
				t.Fatalf("envoy --mode validate accepted:\n%s", c.config)
			}
			if !strings.Contains(err.Error(), c.wantOutput) {
				t.Errorf("error %q does not mention %q", err, c.wantOutput)
			}
		})
	}
}

// TestValidateRejectsUnknownTransportSocketName checks the case the brief
// names literally: a transport socket whose name and type Envoy does not
// know. It is built from proto so that the YAML edit above is not the only
// evidence.
func TestValidateRejectsUnknownTransportSocketName(t *testing.T) {
	bin := Binary(t)
	dir := t.TempDir()
	b, err := ParseBootstrapYAML(webBootstrap(t, dir))
	if err != nil {
		t.Fatal(err)
	}
	cl := b.GetStaticResources().GetClusters()[0]
	// A well-formed Any of a message type that is not a transport socket.
	notASocket, err := anypb.New(&tlsv3.TlsParameters{})
	if err != nil {
		t.Fatal(err)
	}
	cl.TransportSocket = &corev3.TransportSocket{
		Name:       "meshd.transport_sockets.nonexistent",
		ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: notASocket},
	}
	y, err := MarshalYAML(b)
	if err != nil {
		t.Fatal(err)
	}
	err = validate(bin, "", writeFile(t, dir, "bad.yaml", string(y)))
	if err == nil {
		t.Fatalf("envoy --mode validate accepted an unknown transport socket:\n%s", y)
	}
	if !strings.Contains(err.Error(), "meshd.transport_sockets.nonexistent") {
		t.Errorf("Envoy's error does not name the transport socket: %v", err)
	}
}

func TestDeepValidateDescendsIntoAny(t *testing.T) {
	dir := t.TempDir()
	b, err := ParseBootstrapYAML(webBootstrap(t, dir))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.ValidateAll(); err != nil {
		t.Fatal(err)
	}
	// Break the message inside the TLS Any: an SNI over 255 bytes violates
	// a PGV rule, which plain ValidateAll never sees.
	cl := b.GetStaticResources().GetClusters()[0]
	tc := &tlsv3.UpstreamTlsContext{}
	if err := cl.GetTransportSocket().GetTypedConfig().UnmarshalTo(tc); err != nil {
		t.Fatal(err)
	}
	tc.Sni = strings.Repeat("x", 300) // PGV: sni max_bytes 255
	a, err := anypb.New(tc)
	if err != nil {
		t.Fatal(err)
	}
	cl.GetTransportSocket().ConfigType = &corev3.TransportSocket_TypedConfig{TypedConfig: a}
	if err := b.ValidateAll(); err != nil {
		t.Fatalf("test premise: plain ValidateAll should not see inside Any, but said %v", err)
	}
	err = DeepValidate(b)
	if err == nil || !strings.Contains(err.Error(), "Sni") {
		t.Errorf("DeepValidate = %v, want an error about the SNI inside the Any", err)
	}

	// An Any of a type this package does not link in is reported, not skipped.
	cl.GetTransportSocket().ConfigType = &corev3.TransportSocket_TypedConfig{TypedConfig: &anypb.Any{TypeUrl: "type.googleapis.com/meshd.Nonexistent"}}
	if err := DeepValidate(b); err == nil || !strings.Contains(err.Error(), "meshd.Nonexistent") {
		t.Errorf("DeepValidate = %v, want an error naming the unresolvable type", err)
	}
}

const staticConfig = `
admin:
  address:
    socket_address: {address: 127.0.0.1, port_value: %d}
static_resources:
  listeners:
  - name: hello
    address:
      socket_address: {address: 127.0.0.1, port_value: %d}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: hello
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                direct_response:
                  status: 200
                  body: {inline_string: "hello from envoy"}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
`

func TestValidateInDirResolvesRelativePaths(t *testing.T) {
	dir := t.TempDir()
	WriteRootCA(t, dir, "ca/root.pem")
	y, err := bootstrap.EnvoyYAML(bootstrap.EnvoyOptions{Service: "web", CAFile: "ca/root.pem"})
	if err != nil {
		t.Fatal(err)
	}
	path := writeFile(t, dir, "web.yaml", string(y))
	ValidateInDir(t, dir, path)
	// From the test's own directory the relative CA path does not exist.
	if err := validate(Binary(t), "", path); err == nil {
		t.Error("validate accepted a config whose relative trusted_ca path does not exist from the working directory")
	}
}

// Envoy binds port 0 for its admin and its listener; the test reads both
// back (no port reserved).
func TestStartServesTraffic(t *testing.T) {
	dir := t.TempDir()
	path := writeFile(t, dir, "static.yaml", fmt.Sprintf(staticConfig, 0, 0))
	Validate(t, path)

	e := Start(t, path, 0)
	e.WaitReady(t, 30*time.Second)
	var listeners struct {
		ListenerStatuses []struct {
			Name         string `json:"name"`
			LocalAddress struct {
				SocketAddress struct {
					Address   string `json:"address"`
					PortValue int    `json:"port_value"`
				} `json:"socket_address"`
			} `json:"local_address"`
		} `json:"listener_statuses"`
	}
	if err := json.Unmarshal([]byte(e.AdminGET(t, "/listeners?format=json")), &listeners); err != nil {
		t.Fatal(err)
	}
	if len(listeners.ListenerStatuses) != 1 || listeners.ListenerStatuses[0].LocalAddress.SocketAddress.PortValue == 0 {
		t.Fatalf("/listeners: %+v, want listener hello on its bound port", listeners)
	}
	listen := listeners.ListenerStatuses[0].LocalAddress.SocketAddress.PortValue

	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/anything", listen))
	if err != nil {
		t.Fatalf("request through Envoy: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "hello from envoy" {
		t.Fatalf("response = %d %q, want 200 %q", resp.StatusCode, body, "hello from envoy")
	}

	if n, ok := e.Stat(t, "http.hello.downstream_rq_2xx"); !ok || n != 1 {
		t.Errorf("stat http.hello.downstream_rq_2xx = %d (found %v), want 1", n, ok)
	}
	if _, ok := e.Stat(t, "http.hello.no_such_stat"); ok {
		t.Error("Stat found a stat that does not exist")
	}
	if dump := e.AdminGET(t, "/config_dump"); !strings.Contains(dump, "hello from envoy") {
		t.Errorf("/config_dump does not contain the static listener:\n%.2000s", dump)
	}
	if done, err := e.Exited(); done {
		t.Fatalf("Envoy exited early: %v", err)
	}
}

func TestWaitReadyFailsWhenEnvoyExits(t *testing.T) {
	// A config that validates syntactically but cannot start: the admin
	// port is already taken.
	taken := FreePort(t)
	l, err := listenTCP(taken)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	path := writeFile(t, t.TempDir(), "static.yaml", fmt.Sprintf(staticConfig, taken, FreePort(t)))

	ft := &fakeT{TB: t}
	e := Start(t, path, taken)
	func() {
		defer func() { _ = recover() }() // fakeT.Fatalf panics to stop WaitReady
		e.WaitReady(ft, 30*time.Second)
	}()
	if !ft.failed {
		t.Fatal("WaitReady did not fail although Envoy could not bind its admin port")
	}
	t.Logf("WaitReady said: %.300s", ft.msg)
	if !strings.Contains(ft.msg, "exited") {
		t.Errorf("WaitReady failure %q does not say Envoy exited", ft.msg)
	}
}

func TestBinaryHonoursEnvBin(t *testing.T) {
	t.Setenv(EnvBin, filepath.Join(t.TempDir(), "no-such-envoy"))
	if _, err := findBinary(); err == nil || !strings.Contains(err.Error(), EnvBin) {
		t.Errorf("findBinary with a missing $%s = %v, want an error naming it", EnvBin, err)
	}
	t.Setenv(EnvAllowNoEnvoy, "")
	ft := &fakeT{TB: t}
	func() {
		defer func() { _ = recover() }()
		Binary(ft)
	}()
	if !ft.failed || !strings.Contains(ft.msg, "scripts/test.sh") {
		t.Errorf("Binary with a missing Envoy: failed=%v msg=%q, want a failure with the install hint", ft.failed, ft.msg)
	}
	t.Setenv(EnvAllowNoEnvoy, "1")
	ft = &fakeT{TB: t}
	func() {
		defer func() { _ = recover() }()
		Binary(ft)
	}()
	if !ft.skipped || ft.failed {
		t.Errorf("Binary with a missing Envoy and %s=1: skipped=%v failed=%v, want a skip", EnvAllowNoEnvoy, ft.skipped, ft.failed)
	}
}

func TestRepoRoot(t *testing.T) {
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "internal", "envoytest")); err != nil {
		t.Errorf("RepoRoot() = %s, which does not contain this package: %v", root, err)
	}
}

// fakeT records a failure or skip and stops the function under test by
// panicking (the real testing.T uses runtime.Goexit, which would end the
// test itself).
type fakeT struct {
	testing.TB
	failed, skipped bool
	msg             string
}

func (f *fakeT) Helper() {}
func (f *fakeT) Fatalf(format string, args ...any) {
	f.failed, f.msg = true, fmt.Sprintf(format, args...)
	panic("fakeT.Fatalf")
}
func (f *fakeT) Fatal(args ...any) {
	f.failed, f.msg = true, fmt.Sprint(args...)
	panic("fakeT.Fatal")
}
func (f *fakeT) Skipf(format string, args ...any) {
	f.skipped, f.msg = true, fmt.Sprintf(format, args...)
	panic("fakeT.Skipf")
}

func listenTCP(port uint32) (net.Listener, error) {
	return net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
}
