package xds

import (
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/meshd/meshd/mesh"
)

// Every name meshd gives an Envoy or gRPC resource, secret, stat prefix or
// bootstrap entry is decided here and nowhere else, so that translation,
// bootstraps, tests and docs cannot drift apart.

const (
	// XDSClusterName is the static cluster in every Envoy bootstrap that
	// points at meshd.
	XDSClusterName = "meshd_xds"

	// TrustBundleSecretName is the SDS secret holding the mesh's trusted roots.
	// It is fixed (as in SPIRE) so that a root rotation only changes its
	// contents, never the references to it.
	TrustBundleSecretName = "ROOTCA"

	// IdentitySecretName is the SDS secret carrying a proxy's own
	// certificate and key. It is the same name for every proxy (as in
	// Istio, and SPIRE's default_svid_name): each proxy's snapshot holds
	// only its own identity under it, so nothing that refers to it (an
	// outbound cluster's UpstreamTlsContext, an inbound listener's
	// DownstreamTlsContext) depends on who the proxy is. Named by SPIFFE
	// ID, every outbound cluster existed once per caller identity and
	// upstream; with one name it exists once per upstream and is shared by
	// the whole mesh (issue 14: the rendered state must not grow with
	// proxies × services).
	IdentitySecretName = "default"

	// CertProviderInstance is the certificate provider instance name in a
	// proxyless gRPC bootstrap; gRPC's TLS contexts refer to it for both the
	// identity certificate and the trusted roots.
	CertProviderInstance = "meshd"

	// GRPCServerListenerTemplate is the bootstrap's
	// server_listener_resource_name_template; gRPC substitutes "IP:PORT".
	GRPCServerListenerTemplate = "grpc/server?xds.resource.listening_address=%s"

	// LocalAppAddress is where a sidecar finds its application.
	LocalAppAddress = "127.0.0.1"
	// OutboundBindAddress is where a sidecar's outbound listeners bind.
	OutboundBindAddress = "127.0.0.1"
	// CaptureBindAddress is where a transparent sidecar's capture listener
	// binds: every IPv4 address, since the packet filter's REDIRECT
	// delivers to the address of the interface a connection left by.
	CaptureBindAddress = "0.0.0.0"

	// Filter chain names of inbound listeners: FilterChainMTLS takes TLS
	// offering the mesh ALPN; the default chain is FilterChainPlaintext
	// (PERMISSIVE) or FilterChainMTLSDefault (STRICT, for TLS without it).
	FilterChainMTLS        = "mtls"
	FilterChainMTLSDefault = "mtls-default"
	FilterChainPlaintext   = "plaintext"
	// FilterChainPlaintextCallers is a PERMISSIVE listener's plaintext
	// chain while its callers move from plaintext to mTLS (a migration
	// from DISABLE): the step that ends the move renames it back, and
	// Envoy drains the plaintext connections left on it.
	FilterChainPlaintextCallers = "plaintext-callers-moving"
	// FilterChainTLS is a gateway listener's chain terminating clients'
	// (one-way) TLS.
	FilterChainTLS = "tls"

	// MeshALPN is offered first by every sidecar originating mesh mTLS. A
	// PERMISSIVE inbound listener routes TLS that offers it to the mTLS
	// chain, so an application's own TLS is never mistaken for mesh traffic.
	MeshALPN = "meshd"

	// TransportSocketMatchKey marks, in endpoint metadata, endpoints whose
	// workload does not accept mTLS (mode DISABLE): callers reach them in
	// plaintext (auto mTLS).
	TransportSocketMatchKey = "meshd.mtls"
	// TransportSocketMatchDisabled is the key's value for such endpoints.
	TransportSocketMatchDisabled = "disabled"

	// Node metadata keys meshctl writes into bootstraps.
	NodeMetaNamespace = "MESHD_NAMESPACE"
	NodeMetaService   = "MESHD_SERVICE"
	NodeMetaFlavor    = "MESHD_FLAVOR"

	// NodeMetaDrainTimeS and NodeMetaDrainStrategy state, in an Envoy
	// bootstrap, the --drain-time-s and --drain-strategy Envoy is to be
	// started with (meshctl bootstrap prints the command). Envoy does not
	// report its command line over xDS: these say what the bootstrap asked
	// for, not what Envoy runs with.
	NodeMetaDrainTimeS    = "MESHD_DRAIN_TIME_S"
	NodeMetaDrainStrategy = "MESHD_DRAIN_STRATEGY"

	// NodeMetaSDS = NodeMetaSDSAgent in a bootstrap means the proxy takes
	// its secrets from a local mesh-agent over a Unix socket, through the
	// static cluster AgentSDSClusterName, instead of from meshd.
	NodeMetaSDS      = "MESHD_SDS"
	NodeMetaSDSAgent = "agent"
	// AgentSDSClusterName is the bootstrap's static cluster to mesh-agent.
	AgentSDSClusterName = "meshd_agent_sds"

	// The HTTP RBAC filters of every inbound HTTP connection manager of an
	// Envoy sidecar, in this order. They are always present, whatever the
	// policies: the policies themselves are per-route overrides
	// (RBACPerRoute) on the inbound route, keyed by these names, so a
	// policy change is an RDS update that applies to the next request on
	// an open connection, and never replaces the listener.
	RBACFilterDeny  = "envoy.filters.http.rbac.deny"
	RBACFilterAllow = "envoy.filters.http.rbac.allow"
	RBACFilterAudit = "envoy.filters.http.rbac.audit"

	// RBAC stat prefixes, one per filter, so that a DENY match and a
	// missing ALLOW match are counted apart. HTTP:
	// http.<hcm stat prefix>.rbac.deny.denied, ….rbac.allow.denied, and per
	// rule ….rbac.deny.policy.<ns>/<policy>/rule-<n>.denied (Envoy's
	// per-rule stats). tcp: <stat prefix>.deny.policy.<rule>.rbac.denied (one
	// network filter per DENY rule) and <stat prefix>.allow.rbac.denied.
	RBACStatDeny  = "deny"
	RBACStatAllow = "allow"
	RBACStatAudit = "audit"

	// TelemetryLogName is the log name of the access log every sidecar
	// streams to meshd (Options.Telemetry): meshd records only that log.
	TelemetryLogName = "meshd.inbound"

	// DeniedLogPrefix starts every access log line a sidecar writes for a
	// request or connection an authorization policy denied.
	DeniedLogPrefix = "[meshd-denied]"

	// CaptureListenerName is a transparent sidecar's outbound capture
	// listener: the packet filter redirects the application's outbound
	// connections to it, and it matches their original destination
	// against the services' virtual addresses.
	CaptureListenerName = "outbound|capture"
	// PassthroughClusterName sends a captured connection that matches no
	// service on to its original destination (passthrough: allow).
	PassthroughClusterName = "passthrough"
	// BlackholeClusterName has no endpoints: a captured connection that
	// matches no service is closed (passthrough: block).
	BlackholeClusterName = "blackhole"
	// PassthroughStatPrefix and BlockedStatPrefix are the tcp_proxy stat
	// prefixes of the capture listener's default chain.
	PassthroughStatPrefix = "passthrough"
	BlockedStatPrefix     = "blocked"
	// BlockedLogPrefix starts the access log line a transparent sidecar
	// writes for every connection it closed because its destination is
	// not a mesh service it sees (passthrough: block).
	BlockedLogPrefix = "[meshd-blocked]"

	// GatewaySDSStatPrefix is the stat prefix of a gateway's gRPC stream to
	// a host-local SDS server (tls.sdsSocket).
	GatewaySDSStatPrefix = "gateway_sds"
)

// GatewayListenerName names a gateway's listener on port (also the name
// of its route configuration).
func GatewayListenerName(port uint32) string {
	return "gateway|" + strconv.FormatUint(uint64(port), 10)
}

// GatewayStatPrefix is the stat prefix of a gateway listener's HTTP
// connection manager.
func GatewayStatPrefix(port uint32) string {
	return "gateway." + strconv.FormatUint(uint64(port), 10)
}

// GatewayTLSSecretName names the SDS secret meshd serves a gateway for a
// listener whose certificate comes from files: it carries the files'
// paths on the gateway's host, never their contents (Envoy reads them,
// and reloads them when they are replaced).
func GatewayTLSSecretName(port uint32) string {
	return GatewayTLSSecretPrefix + strconv.FormatUint(uint64(port), 10)
}

// GatewayTLSSecretPrefix starts every GatewayTLSSecretName. Such secrets
// hold only file paths, so the server lets any proxy subscribe to them; a
// proxy's snapshot holds those of its own listeners only.
const GatewayTLSSecretPrefix = "gateway-tls|"

// InboundListenerName names a sidecar's public (mTLS-terminating) listener.
func InboundListenerName(p *mesh.Proxy) string {
	return "inbound|" + strconv.FormatUint(uint64(p.PublicPort), 10)
}

// LocalAppClusterName names the static cluster from a sidecar to its own app.
// It is the same for every sidecar of a service (only the port inside
// differs), so the inbound route that points at it can be shared.
func LocalAppClusterName(k mesh.ServiceKey) string { return "local_app|" + k.String() }

// InboundRouteName names the route configuration of a sidecar's inbound
// listener. It depends only on the service, so every sidecar of a service
// shares it.
func InboundRouteName(k mesh.ServiceKey) string { return "inbound|" + k.String() }

// OutboundListenerName names a sidecar's loopback listener for one upstream.
func OutboundListenerName(u *mesh.Upstream) string {
	return "outbound|" + strconv.FormatUint(uint64(u.LocalPort), 10) + "|" + u.Key().String()
}

// OutboundClusterName names the EDS cluster of a service (also its EDS
// resource name). Envoy and gRPC proxies share it.
func OutboundClusterName(k mesh.ServiceKey) string { return "outbound|" + k.String() }

// OutboundRouteName names the route configuration for calls to a service.
func OutboundRouteName(k mesh.ServiceKey) string { return "outbound|" + k.String() }

// GRPCTarget is the host part of the xds:/// target a proxyless gRPC client
// dials for a service, and the name of its api_listener.
func GRPCTarget(k mesh.ServiceKey) string { return k.String() }

// GRPCServerListenerName is the listener a proxyless gRPC server at ip:port
// subscribes to.
func GRPCServerListenerName(ip string, port uint32) string {
	return fmt.Sprintf(GRPCServerListenerTemplate, net.JoinHostPort(ip, strconv.FormatUint(uint64(port), 10)))
}

// SNI is the server name a client sends to a service's endpoints. It is
// informative (the SPIFFE URI SAN is what is verified) and lets operators see
// the destination in TLS logs.
func SNI(k mesh.ServiceKey, trustDomain string) string {
	return k.Name + "." + k.Namespace + ".svc." + trustDomain
}

// DNSNames are the DNS SANs a service's leaf certificate carries.
func DNSNames(k mesh.ServiceKey, trustDomain string) []string {
	return []string{k.Name, k.Name + "." + k.Namespace, SNI(k, trustDomain)}
}

// Stat prefixes. The inbound one names the transport so that, once
// PERMISSIVE mode adds a plaintext chain, dashboards tell mTLS from plaintext.
func InboundStatPrefix(k mesh.ServiceKey, mtls bool) string {
	if mtls {
		return "inbound_mtls." + k.String()
	}
	return "inbound_plaintext." + k.String()
}

// NetworkRBACStatPrefix is the stat prefix of a tcp service's network
// RBAC filter: action is RBACStatDeny, RBACStatAllow or RBACStatAudit, rule
// names the one DENY rule a filter holds (empty for the others).
func NetworkRBACStatPrefix(stat, action, rule string) string {
	if rule != "" {
		return stat + "." + action + ".policy." + rule + "."
	}
	return stat + "." + action + "."
}

// ClusterStatName is what Envoy's stats call a cluster (its alt_stat_name):
// the name with its "|" made a ".", outbound.<svc>.<ns> or
// local_app.<svc>.<ns>, the shape of the listeners' stat prefixes, so that
// the bootstrap's stats tags (bootstrap.StatsTags) turn service and
// namespace into labels here too. Envoy's own cluster_name tag stops at
// the first dot: outbound|api.default would be tagged "outbound|api", with
// the namespace left in the metric's name.
func ClusterStatName(clusterName string) string { return strings.Replace(clusterName, "|", ".", 1) }

// StatKinds are the first components of meshd's stat prefixes and cluster
// stat names: what the bootstrap's stats tags match on.
var StatKinds = []string{"inbound_mtls", "inbound_plaintext", "outbound_mtls", "outbound", "local_app"}

// OutboundStatPrefix is the stat prefix of an outbound listener's filter.
func OutboundStatPrefix(k mesh.ServiceKey) string { return "outbound_mtls." + k.String() }

// DefaultNodeID is the node id a proxy presents when the catalog gives none.
func DefaultNodeID(k mesh.ServiceKey) string { return k.String() }
