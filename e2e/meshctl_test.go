package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/internal/envoytest"
	"github.com/meshd/meshd/internal/meshcheck"
	"github.com/meshd/meshd/internal/promtext"
	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/sds"
	"github.com/meshd/meshd/server/admin"
	"github.com/meshd/meshd/xds"
)

// meshctl against a running meshd with real Envoy sidecars (issue 15):
// status, config and check, in tables and as JSON checked field by field;
// check passes on a healthy mesh and fails on each seeded problem.

// meshctlCode runs meshctl and returns its output and exit status.
func (m *meshd) meshctlCode(args ...string) (string, string, int) {
	m.t.Helper()
	out, errOut, err := m.tryMeshctl(append(args, "--admin-address", m.adminAddr)...)
	var ee *exec.ExitError
	switch {
	case err == nil:
		return out, errOut, 0
	case errors.As(err, &ee):
		return out, errOut, ee.ExitCode()
	}
	m.t.Fatalf("meshctl %v: %v", args, err)
	return "", "", -1
}

// checkResults runs meshctl check -o json.
func (m *meshd) checkResults(args ...string) (map[string]meshcheck.Result, int) {
	m.t.Helper()
	out, errOut, code := m.meshctlCode(append([]string{"check", "-o", "json"}, args...)...)
	var rs []meshcheck.Result
	if err := json.Unmarshal([]byte(out), &rs); err != nil {
		m.t.Fatalf("meshctl check -o json: %v\n%s%s", err, out, errOut)
	}
	byName := map[string]meshcheck.Result{}
	for _, r := range rs {
		byName[r.Name] = r
	}
	return byName, code
}

// failing lists the checks that failed.
func failing(rs map[string]meshcheck.Result) []string {
	var out []string
	for n, r := range rs {
		if !r.OK {
			out = append(out, n)
		}
	}
	return out
}

func TestMeshctlAgainstRunningMesh(t *testing.T) {
	e := startEnforceMeshWith(t, "STRICT", "")
	e.waitConfiguredPlain(t)
	m := e.m

	// meshctl status: every proxy SYNCED, JSON field by field.
	var rep admin.ProxiesReport
	eventually(t, 30*time.Second, func() error {
		out, errOut, code := m.meshctlCode("status", "-o", "json")
		if code != 0 {
			t.Fatalf("meshctl status: %d %s", code, errOut)
		}
		rep = admin.ProxiesReport{}
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			t.Fatalf("meshctl status -o json: %v\n%s", err, out)
		}
		for _, p := range rep.Proxies {
			if p.State != admin.StateSynced {
				return fmt.Errorf("%s is %s", p.ID, p.State)
			}
		}
		return nil
	})
	if len(rep.Proxies) != 5 {
		t.Fatalf("%d proxies, want api, db, greeter, ops and web: %+v", len(rep.Proxies), rep.Proxies)
	}
	for _, p := range rep.Proxies {
		svc := strings.TrimSuffix(p.ID, ".default")
		if !p.InCatalog || !p.Connected || p.Flavor != "envoy" || p.Service != svc || p.Namespace != "default" ||
			p.Identity != "spiffe://cluster.local/ns/default/sa/"+svc || p.ConnectedSince.IsZero() || time.Since(p.ConnectedSince) > 5*time.Minute ||
			p.Node.DrainTimeS != "5" || p.Node.DrainStrategy != "immediate" || !strings.HasPrefix(p.Node.UserAgent, "envoy 1.40") ||
			p.Migration != nil || p.RenderError != "" {
			t.Errorf("status of %s: %+v", p.ID, p)
		}
		var shorts []string
		for _, ts := range p.Types {
			shorts = append(shorts, ts.Short)
			if ts.State != admin.StateSynced || ts.Version == "" || ts.Acked != ts.Version || ts.Sent != ts.Version || ts.SentAt.IsZero() || ts.NackError != "" {
				t.Errorf("%s %s: %+v", p.ID, ts.Short, ts)
			}
		}
		// Servers without upstreams have no endpoints to be sent.
		want := map[string]string{"web": "LDS,RDS,CDS,EDS,SDS", "ops": "LDS,RDS,CDS,EDS,SDS", "db": "LDS,CDS,SDS"}[svc] // tcp: no routes
		if want == "" {
			want = "LDS,RDS,CDS,SDS"
		}
		if strings.Join(shorts, ",") != want {
			t.Errorf("%s types %v, want %s", p.ID, shorts, want)
		}
	}
	table, _, _ := m.meshctlCode("status")
	t.Logf("meshctl status:\n%s", table)
	checkTableRow(t, table, []string{"NAME", "FLAVOR", "IDENTITY", "CONNECTED", "LDS", "RDS", "CDS", "EDS", "SDS", "MIGRATION"})
	for _, svc := range []string{"api", "db", "greeter", "ops", "web"} {
		rds, eds := "SYNCED", "SYNCED"
		if svc != "web" && svc != "ops" {
			eds = "-"
		}
		if svc == "db" {
			rds = "-"
		}
		re := regexp.MustCompile(`(?m)^` + svc + `\.default\s{2,}envoy\s{2,}spiffe://cluster\.local/ns/default/sa/` + svc + `\s{2,}\d+[hms0-9]*\s{2,}SYNCED\s{2,}` + rds + `\s{2,}SYNCED\s{2,}` + eds + `\s{2,}SYNCED\s{2,}-\s*$`)
		if !re.MatchString(table) {
			t.Errorf("meshctl status has no SYNCED row for %s", svc)
		}
	}
	one, _, code := m.meshctlCode("status", "api.default")
	if code != 0 || !strings.Contains(one, "--drain-time-s 5 --drain-strategy immediate") || !strings.Contains(one, "spiffe://cluster.local/ns/default/sa/api") {
		t.Errorf("meshctl status api.default (%d):\n%s", code, one)
	}
	if _, errOut, code := m.meshctlCode("status", "nobody"); code != 1 || !strings.Contains(errOut, `no proxy "nobody"`) {
		t.Errorf("meshctl status nobody: %d %s", code, errOut)
	}

	// meshctl config: summaries and full resources.
	out, errOut, code := m.meshctlCode("config", "api.default", "listeners", "-o", "json")
	var listeners []struct {
		Name    string `json:"name"`
		Address struct {
			SocketAddress struct {
				Address   string `json:"address"`
				PortValue uint32 `json:"port_value"`
			} `json:"socket_address"`
		} `json:"address"`
		FilterChains []struct {
			Name string `json:"name"`
		} `json:"filter_chains"`
	}
	if err := json.Unmarshal([]byte(out), &listeners); err != nil || code != 0 {
		t.Fatalf("meshctl config api.default listeners -o json (%d): %v\n%s%s", code, err, out, errOut)
	}
	if len(listeners) != 1 || listeners[0].Name != fmt.Sprintf("inbound|%d", e.api.public) || listeners[0].Address.SocketAddress.PortValue != e.api.public ||
		len(listeners[0].FilterChains) != 1 || listeners[0].FilterChains[0].Name != "mtls" {
		t.Errorf("api's listeners: %+v", listeners)
	}
	table, _, _ = m.meshctlCode("config", "api.default", "listeners")
	checkTableRow(t, table, []string{fmt.Sprintf("inbound|%d", e.api.public), fmt.Sprintf("127.0.0.1:%d", e.api.public), "mtls (mTLS)", "tls alpn=meshd"})
	table, _, _ = m.meshctlCode("config", "web.default", "clusters")
	checkTableRow(t, table, []string{"outbound|api.default", "eds"})
	if !strings.Contains(table, "mTLS to spiffe://cluster.local/ns/default/sa/api") {
		t.Errorf("web's clusters do not say they verify api's identity:\n%s", table)
	}
	table, _, _ = m.meshctlCode("config", "web.default", "endpoints")
	checkTableRow(t, table, []string{"outbound|api.default", fmt.Sprintf("127.0.0.1:%d", e.api.public)})
	// Secrets: identity, serial and expiry as meshd's CA reports them;
	// never a key, in any format.
	var certs []certRowJSON
	if err := json.Unmarshal([]byte(m.runMeshctl("certs", "list", "-o", "json", "--admin-address", m.adminAddr)), &certs); err != nil {
		t.Fatal(err)
	}
	var webCert certRowJSON
	for _, c := range certs {
		if c.SPIFFEID == "spiffe://cluster.local/ns/default/sa/web" {
			webCert = c
		}
	}
	table, _, _ = m.meshctlCode("config", "web.default", "secrets")
	t.Logf("meshctl config web.default secrets:\n%s", table)
	checkTableRow(t, table, []string{xds.IdentitySecretName, "identity", "spiffe://cluster.local/ns/default/sa/web",
		webCert.Serial, webCert.NotAfter.UTC().Format(time.RFC3339)})
	checkTableRow(t, table, []string{"ROOTCA", "trusted root"})
	for _, format := range []string{"table", "json", "yaml"} {
		out, _, _ := m.meshctlCode("config", "web.default", "all", "-o", format)
		if strings.Contains(out, "PRIVATE KEY") || !strings.Contains(out, "spiffe://cluster.local/ns/default/sa/api") {
			t.Errorf("meshctl config web.default all -o %s shows a key or nothing", format)
		}
	}
	if _, errOut, code := m.meshctlCode("config", "web.default", "listner"); code != 2 || !strings.Contains(errOut, `did you mean "listeners"?`) {
		t.Errorf("meshctl config web.default listner: %d %s", code, errOut)
	}

	// meshctl check: all passed, exit 0.
	out, _, code = m.meshctlCode("check")
	t.Logf("meshctl check:\n%s", out)
	if code != 0 || !strings.Contains(out, "all 10 checks passed") || strings.Contains(out, "✗") {
		t.Errorf("meshctl check on a healthy mesh: exit %d\n%s", code, out)
	}
	rs, code := m.checkResults()
	if code != 0 || len(rs) != 10 || len(failing(rs)) != 0 {
		t.Errorf("meshctl check -o json: exit %d, failing %v", code, failing(rs))
	}

	// Seeded: a proxy that stops ACKing (its Envoy is stopped) while its
	// configuration changes is STALE, and check fails on it alone.
	t.Run("stale proxy", func(t *testing.T) {
		pid := e.apiEnvoy.PID()
		if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		resumed := false
		resume := func() {
			if !resumed {
				syscall.Kill(pid, syscall.SIGCONT)
				resumed = true
			}
		}
		defer resume()
		e.writePolicy(t, "STRICT", denyWeb("api")) // a route change for api
		eventually(t, 30*time.Second, func() error {
			rs, code := m.checkResults("--stale-after", "1s")
			name := "every connected proxy has ACKed its configuration"
			if code != 1 || rs[name].OK || len(failing(rs)) != 1 || !strings.Contains(strings.Join(rs[name].Problems, "\n"), "api.default has not ACKed RDS") {
				return fmt.Errorf("check: exit %d, failing %v, %+v", code, failing(rs), rs[name])
			}
			return nil
		})
		out, _, _ := m.meshctlCode("status")
		if !regexp.MustCompile(`(?m)^api\.default\s.*STALE`).MatchString(out) {
			t.Errorf("meshctl status does not show api STALE:\n%s", out)
		}
		resume()
		eventually(t, 30*time.Second, func() error {
			if rs, code := m.checkResults("--stale-after", "1s"); code != 0 {
				return fmt.Errorf("still failing %v", failing(rs))
			}
			return nil
		})
	})
}

// certRowJSON is meshctl certs list -o json's row (cmd/meshctl certRow).
type certRowJSON struct {
	SPIFFEID string    `json:"spiffeId"`
	Serial   string    `json:"serial"`
	NotAfter time.Time `json:"notAfter"`
}

// TestMeshctlCheckFailsOnNACK: a proxy whose listener Envoy rejects.
func TestMeshctlCheckFailsOnNACK(t *testing.T) {
	envoytest.Binary(t)
	public, app, adminPort := envoytest.FreePort(t), envoytest.FreePort(t), envoytest.FreePort(t)
	catalog := fmt.Sprintf("services:\n  - {name: api, protocol: http, endpoints: [{address: 127.0.0.1, port: %d}]}\nproxies:\n  - {service: api, address: 127.0.0.1, publicPort: %d, appPort: %d}\n", public, public, app)
	m := startMeshd(t, catalog)
	taken, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", public)) // Envoy cannot bind its listener: NACK
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	startSidecar(t, m, "api", "", adminPort)
	name := "no proxy rejected its configuration (NACK)"
	eventually(t, 30*time.Second, func() error {
		rs, code := m.checkResults()
		if code != 1 || rs[name].OK || !strings.Contains(strings.Join(rs[name].Problems, "\n"), "api.default rejected LDS") ||
			!strings.Contains(strings.Join(rs[name].Problems, "\n"), "Address already in use") {
			return fmt.Errorf("check: exit %d, %+v", code, rs[name])
		}
		return nil
	})
	out, _, code := m.meshctlCode("check")
	if code != 1 || !strings.Contains(out, "✗ "+name) || !strings.Contains(out, "hint: the proxy keeps its previous configuration") {
		t.Errorf("meshctl check: exit %d\n%s", code, out)
	}
	status, _, _ := m.meshctlCode("status")
	if !regexp.MustCompile(`(?m)^api\.default\s.*NACKED`).MatchString(status) || !strings.Contains(status, "Address already in use") {
		t.Errorf("meshctl status does not show the NACK:\n%s", status)
	}
}

// TestMeshctlCheckFailsOnExpiringCA: an intermediate that expires in ten
// days.
func TestMeshctlCheckFailsOnExpiringCA(t *testing.T) {
	dataDir := filepath.Join(t.TempDir(), "data")
	ca, err := sds.LoadOrCreate(sds.Options{DataDir: dataDir, TrustDomain: mesh.DefaultTrustDomain, IntermediateTTL: 10 * 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ca.Close() // its lock: the data directory is meshd's now
	m := startMeshd(t, "services:\n  - {name: api, protocol: http, endpoints: [{address: 127.0.0.1, port: 15001}]}\n", "--data-dir", dataDir)
	rs, code := m.checkResults()
	name := "CA certificates stay valid for 30 days or more"
	if code != 1 || rs[name].OK || len(failing(rs)) != 1 || !strings.Contains(strings.Join(rs[name].Problems, "\n"), "signing intermediate") ||
		!strings.Contains(rs[name].Hint, "meshctl ca rotate-intermediate") {
		t.Errorf("check: exit %d, failing %v, %+v", code, failing(rs), rs[name])
	}
	if rs, code := m.checkResults("--ca-min-validity", "168h"); code != 0 {
		t.Errorf("with --ca-min-validity 168h: exit %d, failing %v", code, failing(rs))
	}
}

// TestMeshctlCheckFailsOnStuckMigration: DISABLE → STRICT for every
// workload while web's sidecar is stopped, so the step that waits for the
// callers to ACK mTLS never ends: check reports it overdue, and plaintext
// that still reaches api (PERMISSIVE meanwhile, STRICT by policy) is counted
// as plaintext in STRICT.
func TestMeshctlCheckFailsOnStuckMigration(t *testing.T) {
	e := startEnforceMeshWith(t, "DISABLE", "", "--mtls-migration-overdue", "1s")
	e.waitConfiguredPlain(t)
	m := e.m
	pid := e.webEnvoy.PID()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(pid, syscall.SIGCONT)
	e.writePolicy(t, "STRICT", "")
	name := "no mTLS migration is stuck"
	eventually(t, 30*time.Second, func() error {
		rs, code := m.checkResults("--stale-after", "1h")
		if code != 1 || rs[name].OK || !strings.Contains(strings.Join(rs[name].Problems, "\n"), "DISABLE→STRICT") {
			return fmt.Errorf("check: exit %d, failing %v, %+v", code, failing(rs), rs[name])
		}
		return nil
	})
	if rs, _ := m.checkResults("--stale-after", "1h"); len(failing(rs)) != 1 {
		t.Errorf("failing %v, want only %q", failing(rs), name)
	}
	status, _, _ := m.meshctlCode("status")
	if !strings.Contains(status, "DISABLE→STRICT") || !strings.Contains(status, "OVERDUE") {
		t.Errorf("meshctl status does not show the overdue migration:\n%s", status)
	}
	// api is still PERMISSIVE (its callers are not all on mTLS): plaintext
	// reaches it, and that is what the plaintext-in-STRICT alert is for.
	eventually(t, 30*time.Second, func() error {
		code, _, err := httpGet(fmt.Sprintf("http://127.0.0.1:%d/hello", e.api.public))
		if err != nil || code != 200 {
			return fmt.Errorf("plaintext to api: %d %v", code, err)
		}
		_, metrics := m.adminGET("/metrics")
		if v, ok := promtext.Find(metrics, "meshd_mesh_plaintext_in_strict_total", map[string]string{"destination_service": "api", "destination_namespace": "default"}); !ok || v == "0" {
			return fmt.Errorf("meshd_mesh_plaintext_in_strict_total for api: %q", v)
		}
		return nil
	})
}

const authzPolicies = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: api-callers, namespace: default}
spec:
  selector: {matchLabels: {app: api}}
  action: ALLOW
  rules:
    - from: [{source: {principals: ["cluster.local/ns/default/sa/web", "cluster.local/ns/default/sa/ops"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ops-no-admin, namespace: default}
spec:
  selector: {matchLabels: {app: api}}
  action: DENY
  rules:
    - from: [{source: {principals: ["cluster.local/ns/default/sa/ops"]}}]
      to: [{operation: {paths: ["/admin*"]}}]
---
` + greeterDenyPolicy + `---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: db-no-ops, namespace: default}
spec:
  selector: {matchLabels: {app: db}}
  action: DENY
  rules:
    - from: [{source: {principals: ["cluster.local/ns/default/sa/ops"]}}]
`

// TestMeshctlAuthzMatchesEnvoy: meshctl authz check predicts, for HTTP,
// gRPC and tcp callers, what the real sidecars then do with the request,
// rule included; meshctl describe shows the policies, the mode and why,
// and the callers' fate.
func TestMeshctlAuthzMatchesEnvoy(t *testing.T) {
	e := startEnforceMeshWith(t, "STRICT", authzPolicies)
	e.waitConfiguredPlain(t)
	m := e.m
	for _, svc := range []struct {
		envoy *envoytest.Envoy
		rule  string
	}{{e.apiEnvoy, "default/ops-no-admin/rule-0"}, {e.greeterEnvoy, "default/greeter-deny/rule-0"}, {e.dbEnvoy, "default/db-no-ops/rule-0"}} {
		eventually(t, 30*time.Second, func() error {
			if !strings.Contains(svc.envoy.AdminGET(t, "/config_dump"), svc.rule) {
				return fmt.Errorf("rule %s not served yet", svc.rule)
			}
			return nil
		})
	}
	client := &http.Client{Timeout: 10 * time.Second}
	httpStatus := func(port uint32, path string) int {
		resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d%s", port, path))
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	grpcCode := func(port uint32, empty bool) codes.Code {
		cc, err := grpc.NewClient(fmt.Sprintf("127.0.0.1:%d", port), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c := testgrpc.NewTestServiceClient(cc)
		if empty {
			_, err = c.EmptyCall(ctx, &testgrpc.Empty{})
		} else {
			_, err = c.UnaryCall(ctx, &testgrpc.SimpleRequest{})
		}
		return status.Code(err)
	}
	tcpEcho := func(port uint32) bool {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 5*time.Second)
		if err != nil {
			return false
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintln(c, "ping")
		line, err := bufio.NewReader(c).ReadString('\n')
		return err == nil && line == "db:ping\n"
	}
	for _, c := range []struct {
		name, source, dest string
		args               []string
		allowed            bool
		rule               string
		real               func() bool // the request through the real sidecars was allowed
	}{
		{"http allowed", "web", "api", []string{"--path", "/hello"}, true, "default/api-callers/rule-0", func() bool { return httpStatus(e.webAPI, "/hello") == 200 }},
		{"http denied by a DENY rule", "ops", "api", []string{"--path", "/admin/x"}, false, "default/ops-no-admin/rule-0", func() bool { return httpStatus(e.opsAPI, "/admin/x") == 200 }},
		{"the DENY rule is for ops only", "web", "api", []string{"--path", "/admin/x"}, true, "default/api-callers/rule-0", func() bool { return httpStatus(e.webAPI, "/admin/x") == 200 }},
		{"grpc denied", "web", "greeter", []string{"--path", "/grpc.testing.TestService/EmptyCall"}, false, "default/greeter-deny/rule-0", func() bool { return grpcCode(e.webGreeter, true) == codes.OK }},
		{"grpc allowed", "web", "greeter", []string{"--path", "/grpc.testing.TestService/UnaryCall"}, true, "", func() bool { return grpcCode(e.webGreeter, false) == codes.OK }},
		{"tcp denied", "ops", "db", nil, false, "default/db-no-ops/rule-0", func() bool { return tcpEcho(e.opsDB) }},
		{"tcp allowed", "web", "db", nil, true, "", func() bool { return tcpEcho(e.webDB) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			out, errOut, code := m.meshctlCode(append([]string{"authz", "check", c.source, c.dest, "-o", "json"}, c.args...)...)
			var r admin.AuthzReport
			if err := json.Unmarshal([]byte(out), &r); err != nil {
				t.Fatalf("meshctl authz check -o json: %v\n%s%s", err, out, errOut)
			}
			if len(r.Results) != 1 || r.Source.Identity != "spiffe://cluster.local/ns/default/sa/"+c.source || !r.Source.MTLS || r.Destination != c.dest+".default" {
				t.Fatalf("report %+v", r)
			}
			got := r.Results[0]
			if got.Proxy != c.dest+".default" || got.Allowed != c.allowed || got.Error != "" || (!c.allowed && got.DeniedBy != c.rule) || (c.allowed && got.AllowedBy != c.rule) {
				t.Errorf("prediction %+v; want allowed=%v by %q", got, c.allowed, c.rule)
			}
			if (code == 0) != c.allowed {
				t.Errorf("exit status %d for allowed=%v", code, c.allowed)
			}
			if real := c.real(); real != c.allowed {
				t.Errorf("meshctl said allowed=%v, the real sidecars allowed=%v", c.allowed, real)
			}
		})
	}
	// Plaintext to a STRICT workload: refused, as the real one is.
	out, _, code := m.meshctlCode("authz", "check", "plaintext", "api")
	if code != 1 || !strings.Contains(out, "REFUSED") {
		t.Errorf("meshctl authz check plaintext api: %d\n%s", code, out)
	}
	if httpStatus(e.api.public, "/hello") != 0 {
		t.Error("a plaintext request reached STRICT api")
	}
	table, _, _ := m.meshctlCode("authz", "check", "ops", "api", "--path", "/admin/users")
	checkTableRow(t, table, []string{"api.default", "DENY", "default/ops-no-admin/rule-0", "denied by DENY rule default/ops-no-admin/rule-0"})

	// meshctl describe.
	out, _, code = m.meshctlCode("describe", "api", "-o", "json")
	var d admin.Description
	if err := json.Unmarshal([]byte(out), &d); err != nil || code != 0 {
		t.Fatalf("meshctl describe api -o json: %d %v\n%s", code, err, out)
	}
	if d.Service != "api.default" || d.Protocol != "http" || d.Identity != "spiffe://cluster.local/ns/default/sa/api" || len(d.Proxies) != 1 {
		t.Fatalf("describe %+v", d)
	}
	p := d.Proxies[0]
	if p.Proxy != "api.default" || p.MTLS.Policy != "STRICT" || p.MTLS.Served != "STRICT" || !strings.Contains(p.MTLS.DecidedBy, "PeerAuthentication meshd-system/default (mesh-wide") ||
		p.Labels["app"] != "api" || len(p.Policies) != 2 {
		t.Errorf("describe api proxy %+v", p)
	}
	pol := map[string]admin.PolicyRef{}
	for _, ap := range p.Policies {
		pol[ap.Name] = ap
	}
	if a := pol["api-callers"]; a.Action != "ALLOW" || len(a.Rules) != 1 || a.Rules[0] != "default/api-callers/rule-0" {
		t.Errorf("api-callers %+v", a)
	}
	if a := pol["ops-no-admin"]; a.Action != "DENY" || len(a.Rules) != 1 || a.Rules[0] != "default/ops-no-admin/rule-0" {
		t.Errorf("ops-no-admin %+v", a)
	}
	callers := map[string]admin.CallerAccess{}
	for _, c := range p.Callers {
		callers[c.Caller] = c
	}
	if c := callers["web.default"]; !c.Allowed || c.AllowedBy != "default/api-callers/rule-0" || c.Identity != "spiffe://cluster.local/ns/default/sa/web" {
		t.Errorf("caller web %+v", c)
	}
	if c := callers["ops.default"]; !c.Allowed {
		t.Errorf("caller ops (GET /) %+v", c)
	}
	if c := callers["plaintext"]; c.Allowed || !c.Refused {
		t.Errorf("plaintext caller %+v", c)
	}
	table, _, _ = m.meshctlCode("describe", "api")
	t.Logf("meshctl describe api:\n%s", table)
	for _, want := range []string{"mTLS: STRICT, decided by PeerAuthentication meshd-system/default", "default/ops-no-admin", "web.default (spiffe://cluster.local/ns/default/sa/web)"} {
		if !strings.Contains(table, want) {
			t.Errorf("meshctl describe api lacks %q", want)
		}
	}
}
