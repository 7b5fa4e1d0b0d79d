package bootstrap_test

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"

	"github.com/meshd/meshd/bootstrap"
	"github.com/meshd/meshd/internal/envoytest"
	"github.com/meshd/meshd/internal/promtext"
	"github.com/meshd/meshd/internal/testwait"
	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/xds"
)

// TestStatsTagsWithRealEnvoy runs Envoy on a generated bootstrap, with
// static listeners and clusters named as meshd names them (xds/names.go),
// sends traffic, and reads /stats/prometheus: no metric name holds a
// service or namespace, and the series carry them as labels.
func TestStatsTagsWithRealEnvoy(t *testing.T) {
	dir := t.TempDir()
	b, err := bootstrap.Envoy(bootstrap.EnvoyOptions{Service: "web", CAFile: envoytest.WriteRootCA(t, dir, "root-cert.pem")})
	if err != nil {
		t.Fatal(err)
	}
	b.DynamicResources = nil // no meshd here: the static resources below stand in for its
	b.Admin.Address.GetSocketAddress().PortSpecifier = &corev3.SocketAddress_PortValue{PortValue: 0}
	api := mesh.ServiceKey{Namespace: "shop", Name: "api"}
	db := mesh.ServiceKey{Namespace: "shop", Name: "db"}
	httpPort, tcpPort, upPort := envoytest.FreePort(t), envoytest.FreePort(t), envoytest.FreePort(t)
	rule := "shop/deny-web/rule-0"
	tcpRule := "shop/no-web/rule-1"
	listeners := fmt.Sprintf(`
- name: inbound
  address: {socket_address: {address: 127.0.0.1, port_value: %d}}
  filter_chains:
  - filters:
    - name: envoy.filters.network.http_connection_manager
      typed_config:
        '@type': type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
        stat_prefix: %q
        route_config:
          virtual_hosts:
          - name: all
            domains: ['*']
            routes:
            - match: {prefix: /denied}
              direct_response: {status: 200}
              typed_per_filter_config:
                %s:
                  '@type': type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute
                  rbac:
                    rules_stat_prefix: %s
                    track_per_rule_stats: true
                    rules: {action: DENY, policies: {%q: {permissions: [{any: true}], principals: [{any: true}]}}}
            - match: {prefix: /}
              route: {cluster: %q}
        http_filters:
        - name: %s
          typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC, rules_stat_prefix: %s}
        - name: envoy.filters.http.router
          typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
- name: tcp
  address: {socket_address: {address: 127.0.0.1, port_value: %d}}
  filter_chains:
  - filters:
    - name: envoy.filters.network.rbac
      typed_config:
        '@type': type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC
        stat_prefix: %q
        rules: {action: DENY, policies: {%q: {permissions: [{any: true}], principals: [{any: true}]}}}
    - name: envoy.filters.network.tcp_proxy
      typed_config:
        '@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
        stat_prefix: %q
        cluster: %q
`, httpPort, xds.InboundStatPrefix(api, true), xds.RBACFilterDeny, xds.RBACStatDeny, rule, xds.OutboundClusterName(api),
		xds.RBACFilterDeny, xds.RBACStatDeny,
		tcpPort, xds.NetworkRBACStatPrefix(xds.InboundStatPrefix(db, true), xds.RBACStatDeny, tcpRule), tcpRule,
		xds.InboundStatPrefix(db, true), xds.LocalAppClusterName(db))
	for _, y := range splitYAMLList(listeners) {
		var l listenerv3.Listener
		if err := envoytest.UnmarshalYAML([]byte(y), &l); err != nil {
			t.Fatalf("%v\n%s", err, y)
		}
		b.StaticResources.Listeners = append(b.StaticResources.Listeners, &l)
	}
	for _, name := range []string{xds.OutboundClusterName(api), xds.LocalAppClusterName(db)} {
		var c clusterv3.Cluster
		y := fmt.Sprintf(`{name: %q, alt_stat_name: %q, type: STATIC, connect_timeout: 1s, load_assignment: {cluster_name: %q, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: %d}}}}]}]}}`,
			name, xds.ClusterStatName(name), name, upPort)
		if err := envoytest.UnmarshalYAML([]byte(y), &c); err != nil {
			t.Fatal(err)
		}
		b.StaticResources.Clusters = append(b.StaticResources.Clusters, &c)
	}
	// The upstream: answers 200 to HTTP, closes tcp at once.
	up, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", upPort))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") })}
	go srv.Serve(up)
	defer srv.Close()

	y, err := envoytest.MarshalYAML(b)
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "envoy.yaml")
	if err := os.WriteFile(cfg, y, 0o600); err != nil {
		t.Fatal(err)
	}
	e := envoytest.Start(t, cfg, 0)
	e.WaitReady(t, testwait.Timeout)
	for _, path := range []string{"/ok", "/denied"} {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d%s", httpPort, path))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	// The network DENY rule closes the connection once it sees data.
	if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", tcpPort)); err == nil {
		c.Write([]byte("hello"))
		io.Copy(io.Discard, c)
		c.Close()
	}

	var prom string
	testwait.Until(t, testwait.Timeout, func() error {
		prom = e.AdminGET(t, "/stats/prometheus")
		if !strings.Contains(prom, `envoy_tcp_downstream_cx_total{`) || !regexp.MustCompile(`envoy_inbound_mtls_deny_policy_rbac_denied\{[^}]*\} 1`).MatchString(prom) {
			return fmt.Errorf("the tcp denial is not counted yet")
		}
		return nil
	})
	for _, sample := range promtext.Samples(prom) {
		for _, leak := range []string{"_api_", "_db_", "_shop_", "_deny_web_", "_no_web_"} {
			if strings.Contains(sample.Name+"_", leak) {
				t.Errorf("metric name %s holds a service, namespace or rule: %v", sample.Name, sample.Labels)
			}
		}
	}
	tags := func(svc, ns string, kv ...string) map[string]string {
		m := map[string]string{bootstrap.TagService: svc, bootstrap.TagNamespace: ns}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	for _, want := range []struct {
		name   string
		labels map[string]string
		value  string
	}{
		{"envoy_http_downstream_rq_xx", tags("api", "shop", "envoy_response_code_class", "2", "envoy_http_conn_manager_prefix", "inbound_mtls"), "1"},
		{"envoy_http_downstream_rq_xx", tags("api", "shop", "envoy_response_code_class", "4", "envoy_http_conn_manager_prefix", "inbound_mtls"), "1"},
		{"envoy_http_rbac_deny_policy_denied", tags("api", "shop", bootstrap.TagRBACRule, rule, "envoy_http_conn_manager_prefix", "inbound_mtls"), "1"},
		{"envoy_http_rbac_deny_denied", tags("api", "shop", "envoy_http_conn_manager_prefix", "inbound_mtls"), "1"},
		{"envoy_cluster_upstream_rq_total", tags("api", "shop", "envoy_cluster_name", "outbound"), "1"},
		{"envoy_inbound_mtls_deny_policy_rbac_denied", tags("db", "shop", bootstrap.TagRBACRule, tcpRule), "1"},
		{"envoy_tcp_downstream_cx_total", tags("db", "shop", "envoy_tcp_prefix", "inbound_mtls"), "1"},
	} {
		if got, ok := promtext.Find(prom, want.name, want.labels); !ok || got != want.value {
			t.Errorf("/stats/prometheus: %s%v = %q (found %v), want %s", want.name, want.labels, got, ok, want.value)
		}
	}
	if t.Failed() {
		t.Logf("meshd-related series:\n%s", grepLines(prom, "meshd_|_rbac_"))
	}
}

func splitYAMLList(s string) []string {
	var out []string
	for _, item := range strings.Split(strings.TrimSpace(s), "\n- ")[0:] {
		item = strings.TrimPrefix(item, "- ")
		// Items were indented by two under "- ".
		lines := strings.Split(item, "\n")
		for i := 1; i < len(lines); i++ {
			lines[i] = strings.TrimPrefix(lines[i], "  ")
		}
		out = append(out, strings.Join(lines, "\n"))
	}
	return out
}

func grepLines(s, pattern string) string {
	re := regexp.MustCompile(pattern)
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if re.MatchString(l) && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
