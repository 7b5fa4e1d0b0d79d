package main

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strings"
	"time"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbachttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	rbacnetv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"sigs.k8s.io/yaml"

	"github.com/meshd/meshd/internal/adminclient"
	"github.com/meshd/meshd/internal/suggest"
	"github.com/meshd/meshd/xds"
)

const configDescription = `
Show what meshd serves one proxy (GET /debug/config_dump?proxy=PROXY), by
kind: listeners, routes, clusters, endpoints, secrets, or all. Tables
summarise each resource; -o json or -o yaml print the resources in full,
as Envoy would see them. Private keys never leave meshd (the dump carries
"[redacted]"); secrets are shown by identity, serial, expiry and chain.

This is meshd's side: meshctl status says whether the proxy has ACKed it.`

const configExamples = `
  meshctl config web.default listeners
  meshctl config api.default routes -o yaml
  meshctl config web.default secrets
  meshctl config web.default all -o json > web.json`

var configKinds = []string{"listeners", "routes", "clusters", "endpoints", "secrets", "all"}

func newConfigCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "config PROXY [listeners|routes|clusters|endpoints|secrets|all]",
		Short:   "what meshd serves a proxy: listeners, routes, clusters, endpoints, secrets (never keys)",
		Long:    strings.TrimSpace(configDescription),
		Example: strings.Trim(configExamples, "\n"),
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 || len(args) > 2 {
				return usageErrorf("give a proxy and optionally a kind: meshctl config PROXY [%s]", strings.Join(configKinds, "|"))
			}
			if len(args) == 2 && !slices.Contains(configKinds, args[1]) {
				msg := fmt.Sprintf("unknown kind %q: use %s", args[1], strings.Join(configKinds, ", "))
				if s := suggest.Closest(args[1], configKinds); s != "" {
					msg += fmt.Sprintf("; did you mean %q?", s)
				}
				return usageErrorf("%s", msg)
			}
			return nil
		},
		ValidArgsFunction: func(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
			if len(args) == 1 {
				return configKinds, cobra.ShellCompDirectiveNoFileComp
			}
			return completeProxies(cmd, args, toComplete)
		},
	}
	output := addOutputFlag(cmd, formatTable, formatJSON, formatYAML)
	return withAdmin(cmd, func(cmd *cobra.Command, c *adminclient.Client, args []string) error {
		kind := "all"
		if len(args) == 2 {
			kind = args[1]
		}
		body, err := c.Do(cmd.Context(), "GET", "/debug/config_dump", url.Values{"proxy": {args[0]}})
		if err != nil {
			return err
		}
		dump := &adminv3.ConfigDump{}
		if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(body, dump); err != nil {
			return fmt.Errorf("decoding meshd's config dump: %w", err)
		}
		cfg, err := parseDump(dump)
		if err != nil {
			return err
		}
		w := cmd.OutOrStdout()
		if output.value != formatTable {
			return printResources(w, output.value, kind, body, cfg)
		}
		return printConfigTables(w, kind, cfg)
	})
}

// proxyConfig is a dump's resources by kind.
type proxyConfig struct {
	listeners []*listenerv3.Listener
	routes    []*routev3.RouteConfiguration
	clusters  []*clusterv3.Cluster
	endpoints []*endpointv3.ClusterLoadAssignment
	secrets   []*tlsv3.Secret
}

func parseDump(d *adminv3.ConfigDump) (*proxyConfig, error) {
	cfg := &proxyConfig{}
	for _, a := range d.GetConfigs() {
		m, err := a.UnmarshalNew()
		if err != nil {
			return nil, fmt.Errorf("config dump: %w", err)
		}
		switch x := m.(type) {
		case *adminv3.ListenersConfigDump:
			for _, l := range x.GetDynamicListeners() {
				if err := appendAs(&cfg.listeners, l.GetActiveState().GetListener()); err != nil {
					return nil, err
				}
			}
		case *adminv3.RoutesConfigDump:
			for _, r := range x.GetDynamicRouteConfigs() {
				if err := appendAs(&cfg.routes, r.GetRouteConfig()); err != nil {
					return nil, err
				}
			}
		case *adminv3.ClustersConfigDump:
			for _, c := range x.GetDynamicActiveClusters() {
				if err := appendAs(&cfg.clusters, c.GetCluster()); err != nil {
					return nil, err
				}
			}
		case *adminv3.EndpointsConfigDump:
			for _, e := range x.GetDynamicEndpointConfigs() {
				if err := appendAs(&cfg.endpoints, e.GetEndpointConfig()); err != nil {
					return nil, err
				}
			}
		case *adminv3.SecretsConfigDump:
			for _, s := range x.GetDynamicActiveSecrets() {
				if err := appendAs(&cfg.secrets, s.GetSecret()); err != nil {
					return nil, err
				}
			}
		}
	}
	return cfg, nil
}

// appendAs unpacks a into a new T and appends it.
func appendAs[T proto.Message](list *[]T, a *anypb.Any) error {
	if a == nil {
		return nil
	}
	m, err := a.UnmarshalNew()
	if err != nil {
		return fmt.Errorf("config dump: %w", err)
	}
	t, ok := m.(T)
	if !ok {
		return fmt.Errorf("config dump: unexpected %T", m)
	}
	*list = append(*list, t)
	return nil
}

// printResources prints the resources of kind in full: JSON (Envoy's
// field names) or YAML; for "all", meshd's dump as it came.
func printResources(w io.Writer, format, kind string, dump []byte, cfg *proxyConfig) error {
	var js []byte
	if kind == "all" {
		js = dump
	} else {
		var msgs []proto.Message
		switch kind {
		case "listeners":
			msgs = asMessages(cfg.listeners)
		case "routes":
			msgs = asMessages(cfg.routes)
		case "clusters":
			msgs = asMessages(cfg.clusters)
		case "endpoints":
			msgs = asMessages(cfg.endpoints)
		case "secrets":
			msgs = asMessages(cfg.secrets)
		}
		var parts []json.RawMessage
		for _, m := range msgs {
			b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
			if err != nil {
				return err
			}
			parts = append(parts, b)
		}
		if parts == nil {
			parts = []json.RawMessage{}
		}
		var err error
		if js, err = json.Marshal(parts); err != nil {
			return err
		}
	}
	if format == formatYAML {
		y, err := yaml.JSONToYAML(js)
		if err != nil {
			return err
		}
		_, err = w.Write(y)
		return err
	}
	var buf bytes.Buffer
	if err := json.Indent(&buf, js, "", "  "); err != nil {
		return err
	}
	buf.WriteByte('\n')
	_, err := w.Write(buf.Bytes())
	return err
}

func asMessages[T proto.Message](l []T) []proto.Message {
	out := make([]proto.Message, len(l))
	for i, m := range l {
		out[i] = m
	}
	return out
}

func printConfigTables(w io.Writer, kind string, cfg *proxyConfig) error {
	sections := []struct {
		kind  string
		print func(io.Writer, *proxyConfig) error
	}{
		{"listeners", printListeners}, {"routes", printRoutes}, {"clusters", printClusters},
		{"endpoints", printEndpoints}, {"secrets", printSecrets},
	}
	first := true
	for _, s := range sections {
		if kind != "all" && kind != s.kind {
			continue
		}
		if kind == "all" {
			if !first {
				fmt.Fprintln(w)
			}
			fmt.Fprintf(w, "%s:\n", strings.ToUpper(s.kind[:1])+s.kind[1:])
		}
		first = false
		if err := s.print(w, cfg); err != nil {
			return err
		}
	}
	return nil
}

func printListeners(w io.Writer, cfg *proxyConfig) error {
	t := newTable(w, "LISTENER", "ADDRESS", "CHAIN", "MATCH", "FILTERS")
	for _, l := range cfg.listeners {
		addr := addressText(l.GetAddress())
		if l.GetApiListener() != nil {
			t.row(l.GetName(), "(gRPC client)", "", "", "api_listener")
			continue
		}
		chains := append([]*listenerv3.FilterChain(nil), l.GetFilterChains()...)
		if d := l.GetDefaultFilterChain(); d != nil {
			chains = append(chains, d)
		}
		for _, c := range chains {
			match := "default"
			if c != l.GetDefaultFilterChain() {
				match = chainMatch(c.GetFilterChainMatch())
			}
			name := c.GetName()
			if c.GetTransportSocket() != nil {
				name += " (mTLS)"
			}
			t.row(l.GetName(), addr, name, match, filtersText(c.GetFilters()))
		}
	}
	return t.flush()
}

func addressText(a *corev3.Address) string {
	if sa := a.GetSocketAddress(); sa != nil {
		return fmt.Sprintf("%s:%d", sa.GetAddress(), sa.GetPortValue())
	}
	return ""
}

func chainMatch(m *listenerv3.FilterChainMatch) string {
	var parts []string
	if m.GetTransportProtocol() != "" {
		parts = append(parts, m.GetTransportProtocol())
	}
	if len(m.GetApplicationProtocols()) > 0 {
		parts = append(parts, "alpn="+strings.Join(m.GetApplicationProtocols(), ","))
	}
	if len(parts) == 0 {
		return "any"
	}
	return strings.Join(parts, " ")
}

// filtersText summarises a chain's network filters.
func filtersText(fs []*listenerv3.Filter) string {
	var parts []string
	for _, f := range fs {
		m, err := f.GetTypedConfig().UnmarshalNew()
		if err != nil {
			parts = append(parts, f.GetName())
			continue
		}
		switch x := m.(type) {
		case *hcmv3.HttpConnectionManager:
			s := "http"
			if r := x.GetRds().GetRouteConfigName(); r != "" {
				s += " route=" + r
			}
			var rbac []string
			for _, hf := range x.GetHttpFilters() {
				if strings.Contains(hf.GetName(), "rbac") {
					rbac = append(rbac, strings.TrimPrefix(hf.GetName(), "envoy.filters.http.rbac."))
				}
			}
			if len(rbac) > 0 {
				s += " rbac=" + strings.Join(rbac, ",")
			}
			parts = append(parts, s)
		case *tcpproxyv3.TcpProxy:
			parts = append(parts, "tcp→"+x.GetCluster())
		case *rbacnetv3.RBAC:
			parts = append(parts, fmt.Sprintf("rbac %s(%d)", strings.ToLower(x.GetRules().GetAction().String()), len(x.GetRules().GetPolicies())))
		default:
			parts = append(parts, f.GetName())
		}
	}
	return strings.Join(parts, "; ")
}

func printRoutes(w io.Writer, cfg *proxyConfig) error {
	t := newTable(w, "ROUTE CONFIG", "DOMAINS", "MATCH", "ACTION", "POLICIES")
	for _, rc := range cfg.routes {
		for _, vh := range rc.GetVirtualHosts() {
			for _, r := range vh.GetRoutes() {
				t.row(rc.GetName(), strings.Join(vh.GetDomains(), ","), routeMatch(r.GetMatch()), routeAction(r), perRoutePolicies(r))
			}
		}
	}
	return t.flush()
}

func routeMatch(m *routev3.RouteMatch) string {
	switch {
	case m.GetPrefix() != "":
		return "prefix " + m.GetPrefix()
	case m.GetPath() != "":
		return "path " + m.GetPath()
	case m.GetSafeRegex() != nil:
		return "regex " + m.GetSafeRegex().GetRegex()
	}
	return "any"
}

func routeAction(r *routev3.Route) string {
	switch {
	case r.GetRoute() != nil:
		return "→ " + r.GetRoute().GetCluster()
	case r.GetNonForwardingAction() != nil:
		return "serve (gRPC server)"
	case r.GetDirectResponse() != nil:
		return fmt.Sprintf("answer %d", r.GetDirectResponse().GetStatus())
	}
	return ""
}

// perRoutePolicies names the RBAC rules a route carries (an Envoy
// sidecar's HTTP policies are per-route overrides).
func perRoutePolicies(r *routev3.Route) string {
	var parts []string
	for _, name := range []string{xds.RBACFilterDeny, xds.RBACFilterAllow, xds.RBACFilterAudit} {
		a := r.GetTypedPerFilterConfig()[name]
		if a == nil {
			continue
		}
		var pr rbachttpv3.RBACPerRoute
		if err := a.UnmarshalTo(&pr); err != nil {
			continue
		}
		rules := pr.GetRbac().GetRules()
		if rules == nil {
			rules = pr.GetRbac().GetShadowRules()
		}
		if rules == nil {
			continue
		}
		names := make([]string, 0, len(rules.GetPolicies()))
		for n := range rules.GetPolicies() {
			names = append(names, n)
		}
		slices.Sort(names)
		label := strings.TrimPrefix(name, "envoy.filters.http.rbac.")
		if len(names) == 0 {
			names = []string{"(none: nothing matches)"}
		}
		parts = append(parts, label+": "+strings.Join(names, " "))
	}
	return strings.Join(parts, "; ")
}

func printClusters(w io.Writer, cfg *proxyConfig) error {
	t := newTable(w, "CLUSTER", "TYPE", "PROTOCOL", "TRANSPORT")
	for _, c := range cfg.clusters {
		typ := strings.ToLower(c.GetType().String())
		proto := "http/1.1 or tcp"
		if c.GetTypedExtensionProtocolOptions()["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"] != nil {
			proto = "h2"
		}
		t.row(c.GetName(), typ, proto, clusterTransport(c))
	}
	return t.flush()
}

// clusterTransport says how a cluster reaches its endpoints: mTLS to which
// identity, and plaintext to endpoints marked DISABLE.
func clusterTransport(c *clusterv3.Cluster) string {
	var parts []string
	if ts := c.GetTransportSocket(); ts != nil {
		parts = append(parts, tlsText(ts))
	}
	for _, m := range c.GetTransportSocketMatches() {
		if m.GetTransportSocket().GetTypedConfig() == nil || m.GetTransportSocket().GetName() != "envoy.transport_sockets.tls" {
			parts = append(parts, "plaintext to "+matchText(m.GetMatch().AsMap()))
			continue
		}
		parts = append(parts, tlsText(m.GetTransportSocket()))
	}
	if len(parts) == 0 {
		return "plaintext"
	}
	return strings.Join(parts, "; ")
}

func matchText(m map[string]any) string {
	var parts []string
	for k, v := range m {
		parts = append(parts, fmt.Sprintf("%s=%v", k, v))
	}
	slices.Sort(parts)
	if len(parts) == 0 {
		return "the rest"
	}
	return strings.Join(parts, ",")
}

func tlsText(ts *corev3.TransportSocket) string {
	var up tlsv3.UpstreamTlsContext
	if err := ts.GetTypedConfig().UnmarshalTo(&up); err != nil {
		return ts.GetName()
	}
	var sans []string
	vc := up.GetCommonTlsContext().GetCombinedValidationContext().GetDefaultValidationContext()
	if vc == nil {
		vc = up.GetCommonTlsContext().GetValidationContext()
	}
	for _, m := range vc.GetMatchTypedSubjectAltNames() {
		sans = append(sans, m.GetMatcher().GetExact()+m.GetMatcher().GetPrefix())
	}
	s := "mTLS"
	if len(sans) > 0 {
		s += " to " + strings.Join(sans, ",")
	}
	return s
}

func printEndpoints(w io.Writer, cfg *proxyConfig) error {
	t := newTable(w, "CLUSTER", "ENDPOINT", "LOCALITY", "WEIGHT", "HEALTH", "TRANSPORT")
	for _, cla := range cfg.endpoints {
		for _, le := range cla.GetEndpoints() {
			loc := strings.Trim(strings.Join([]string{le.GetLocality().GetRegion(), le.GetLocality().GetZone(), le.GetLocality().GetSubZone()}, "/"), "/")
			for _, e := range le.GetLbEndpoints() {
				transport := "mTLS"
				if md := e.GetMetadata().GetFilterMetadata()["envoy.transport_socket_match"]; md != nil {
					if md.GetFields()[xds.TransportSocketMatchKey].GetStringValue() == xds.TransportSocketMatchDisabled {
						transport = "plaintext (DISABLE)"
					}
				}
				weight := le.GetLoadBalancingWeight().GetValue()
				t.row(cla.GetClusterName(), addressText(e.GetEndpoint().GetAddress()), loc, weight,
					strings.ToLower(e.GetHealthStatus().String()), transport)
			}
		}
	}
	return t.flush()
}

// secretRow is one secret as meshctl config shows it.
type secretRow struct {
	name, kind, identity, serial, notAfter, chain string
}

func printSecrets(w io.Writer, cfg *proxyConfig) error {
	t := newTable(w, "SECRET", "KIND", "IDENTITY", "SERIAL", "NOT AFTER", "CHAIN")
	for _, s := range cfg.secrets {
		for _, r := range secretRows(s) {
			t.row(r.name, r.kind, r.identity, r.serial, r.notAfter, r.chain)
		}
	}
	return t.flush()
}

// secretRows reads a secret's certificates (never its key, which meshd's
// dump does not carry anyway): an identity's leaf with its chain, or each
// root of the trust bundle.
func secretRows(s *tlsv3.Secret) []secretRow {
	if tc := s.GetTlsCertificate(); tc != nil {
		certs := parseCerts(dataBytes(tc.GetCertificateChain()))
		r := secretRow{name: s.GetName(), kind: "identity"}
		if len(certs) > 0 {
			leaf := certs[0]
			for _, u := range leaf.URIs {
				r.identity = u.String()
			}
			r.serial = leaf.SerialNumber.Text(16)
			r.notAfter = leaf.NotAfter.UTC().Format(time.RFC3339)
			var chain []string
			for _, c := range certs[1:] {
				chain = append(chain, c.Subject.CommonName)
			}
			r.chain = strings.Join(chain, " → ")
		}
		return []secretRow{r}
	}
	if vc := s.GetValidationContext(); vc != nil {
		var rows []secretRow
		for _, c := range parseCerts(dataBytes(vc.GetTrustedCa())) {
			rows = append(rows, secretRow{name: s.GetName(), kind: "trusted root", identity: c.Subject.CommonName,
				serial: c.SerialNumber.Text(16), notAfter: c.NotAfter.UTC().Format(time.RFC3339), chain: "(self-signed)"})
		}
		if rows == nil {
			rows = []secretRow{{name: s.GetName(), kind: "trust bundle"}}
		}
		return rows
	}
	return []secretRow{{name: s.GetName(), kind: "other"}}
}

func dataBytes(d *corev3.DataSource) []byte {
	if b := d.GetInlineBytes(); len(b) > 0 {
		return b
	}
	return []byte(d.GetInlineString())
}

func parseCerts(pemData []byte) []*x509.Certificate {
	var out []*x509.Certificate
	for {
		var b *pem.Block
		b, pemData = pem.Decode(pemData)
		if b == nil {
			return out
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		if c, err := x509.ParseCertificate(b.Bytes); err == nil {
			out = append(out, c)
		}
	}
}
