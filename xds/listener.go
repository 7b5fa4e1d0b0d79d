package xds

import (
	"fmt"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	originaldstv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	tlsinspectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshd/meshd/mesh"
)

// buildEnvoyInboundListener accepts mesh traffic on the sidecar's public
// port and hands it to the local application, after the authorization
// filters. The mTLS mode decides the filter chains:
//   - STRICT: the TLS inspector routes TLS offering the mesh ALPN (and, for
//     grpc services, h2 from proxyless gRPC callers, which cannot set
//     ALPN) to the mTLS chain, everything else to a second mTLS chain (the
//     default chain), so plaintext fails the handshake;
//   - PERMISSIVE: the same, but the default chain is plaintext, with its
//     own stat prefix (an application's own TLS passes through it);
//   - DISABLE: one plaintext chain.
//
// plain names the plaintext chain (FilterChainPlaintext, or
// FilterChainPlaintextCallers while callers move from plaintext to mTLS).
func buildEnvoyInboundListener(s *mesh.Service, p *mesh.Proxy, self mesh.Identity, opts Options, mode mesh.MTLSMode, plain string, rbac *rbacSets) (*Resource, error) {
	parts, refs, err := inboundListenerParts(s, self, opts, mode, plain, rbac, !p.SecretsFromMeshd())
	if err != nil {
		return nil, err
	}
	return inboundListener(p, parts, refs)
}

// inboundListener is a sidecar's inbound listener: its own name and address
// on the filter chains and listener filters of parts (which the caller may
// share between sidecars; they are not modified).
func inboundListener(p *mesh.Proxy, parts *listenerv3.Listener, refs []Ref) (*Resource, error) {
	name := InboundListenerName(p)
	l := &listenerv3.Listener{
		Name:               name,
		Address:            socketAddress(p.Address, p.PublicPort),
		TrafficDirection:   corev3.TrafficDirection_INBOUND,
		FilterChains:       parts.FilterChains,
		DefaultFilterChain: parts.DefaultFilterChain,
		ListenerFilters:    parts.ListenerFilters,
	}
	return newProxyResource(name, l, refs...)
}

// inboundListenerParts renders everything of an inbound listener but its
// name and address (see buildEnvoyInboundListener), with the references the
// filter chains make. The result depends only on its arguments.
func inboundListenerParts(s *mesh.Service, self mesh.Identity, opts Options, mode mesh.MTLSMode, plain string, rbac *rbacSets, agent bool) (*listenerv3.Listener, []Ref, error) {
	secret := IdentitySecretName
	l := &listenerv3.Listener{}
	var refs []Ref
	mtlsChain := func() (*listenerv3.FilterChain, error) {
		var alpn []string
		if s.Protocol.IsHTTP() {
			alpn = []string{alpnH2, alpnHTTP11}
		}
		ts, err := tlsTransportSocket(envoyDownstreamTLS(secret, opts.TrustDomain, alpn, agent))
		if err != nil {
			return nil, err
		}
		filters, frefs, err := inboundFilters(s, true, rbac, opts.Telemetry)
		if err != nil {
			return nil, err
		}
		refs = append(refs, frefs...)
		refs = append(refs, secretRefs(secret, agent)...)
		return &listenerv3.FilterChain{Name: FilterChainMTLS, Filters: filters, TransportSocket: ts}, nil
	}
	plainChain := func() (*listenerv3.FilterChain, error) {
		filters, frefs, err := inboundFilters(s, false, rbac, opts.Telemetry)
		if err != nil {
			return nil, err
		}
		refs = append(refs, frefs...)
		return &listenerv3.FilterChain{Name: plain, Filters: filters}, nil
	}
	if mode == mesh.MTLSDisable {
		c, err := plainChain()
		if err != nil {
			return nil, nil, err
		}
		l.FilterChains = []*listenerv3.FilterChain{c}
		return l, dedupRefs(refs), nil
	}
	// STRICT and PERMISSIVE share the listener filter and the chain for
	// mesh mTLS and differ only in the default chain, so that a change
	// between them is an in-place filter chain update for Envoy: it drains
	// only the connections of the default chain it replaces (PERMISSIVE →
	// STRICT: the plaintext ones, closed within Envoy's --drain-time-s),
	// never the mesh callers' mTLS connections.
	c, err := mtlsChain()
	if err != nil {
		return nil, nil, err
	}
	protos := []string{MeshALPN}
	if s.Protocol == mesh.ProtocolGRPC {
		protos = append(protos, alpnH2)
	}
	c.FilterChainMatch = &listenerv3.FilterChainMatch{TransportProtocol: "tls", ApplicationProtocols: protos}
	inspector, err := anyOf(&tlsinspectorv3.TlsInspector{})
	if err != nil {
		return nil, nil, err
	}
	l.ListenerFilters = []*listenerv3.ListenerFilter{{Name: listenerTLSInspector, ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: inspector}}}
	l.FilterChains = []*listenerv3.FilterChain{c}
	if mode == mesh.MTLSPermissive {
		l.DefaultFilterChain, err = plainChain()
	} else {
		// STRICT: whatever does not offer the mesh ALPN (plaintext, which
		// then fails the handshake; a client with a mesh certificate but
		// other ALPN) must still pass mTLS.
		l.DefaultFilterChain, err = mtlsChain()
		if l.DefaultFilterChain != nil {
			l.DefaultFilterChain.Name = FilterChainMTLSDefault
		}
	}
	if err != nil {
		return nil, nil, err
	}
	return l, dedupRefs(refs), nil
}

// inboundFilters renders one inbound chain's network filters: the HTTP
// connection manager with its fixed RBAC filters (the policies are in the
// route, see perRouteRBAC; rbac is not used), or network RBAC rendered from
// rbac then tcp_proxy. With telemetry, every request or connection is also
// reported to meshd (accesslog.go).
func inboundFilters(s *mesh.Service, mtls bool, rbac *rbacSets, telemetry bool) ([]*listenerv3.Filter, []Ref, error) {
	stat := InboundStatPrefix(s.Key(), mtls)
	if s.Protocol.IsHTTP() {
		route := InboundRouteName(s.Key())
		hcm, err := rdsHCM(stat, route)
		if err != nil {
			return nil, nil, err
		}
		// The RBAC filters are the same whatever the policies (which are
		// in the route), and so is the denial log: a policy change leaves
		// the listener as it is.
		authz, err := envoyRBACFilters()
		if err != nil {
			return nil, nil, err
		}
		hcm.HttpFilters = append(authz, hcm.HttpFilters...)
		// Denials are logged with the RBAC rule that caused them
		// (rbac_access_denied_matched_policy[<ns>/<policy>/rule-<n>]),
		// so "which policy denied this?" is answered from Envoy's log.
		al, err := deniedHTTPAccessLog()
		if err != nil {
			return nil, nil, err
		}
		hcm.AccessLog = []*accesslogv3.AccessLog{al}
		if telemetry {
			tl, err := telemetryHTTPAccessLog()
			if err != nil {
				return nil, nil, err
			}
			hcm.AccessLog = append(hcm.AccessLog, tl)
		}
		if mtls {
			// The app learns the caller's verified identity from
			// x-forwarded-client-cert; anything a client sent is replaced.
			hcm.ForwardClientCertDetails = hcmv3.HttpConnectionManager_SANITIZE_SET
			hcm.SetCurrentClientCertDetails = &hcmv3.HttpConnectionManager_SetCurrentClientCertDetails{Uri: true}
		} else {
			// A plaintext caller has no verified identity to pass on, and
			// must not be able to forge one.
			hcm.ForwardClientCertDetails = hcmv3.HttpConnectionManager_SANITIZE
		}
		f, err := networkFilter(filterHCM, hcm)
		if err != nil {
			return nil, nil, err
		}
		return []*listenerv3.Filter{f}, []Ref{{TypeURL: resourcev3.RouteType, Name: route}}, nil
	}
	cluster := LocalAppClusterName(s.Key())
	filters, err := rbac.networkFilters(stat)
	if err != nil {
		return nil, nil, err
	}
	denied, err := deniedTCPAccessLog()
	if err != nil {
		return nil, nil, err
	}
	logs := []*accesslogv3.AccessLog{denied}
	if telemetry {
		tl, err := telemetryTCPAccessLog()
		if err != nil {
			return nil, nil, err
		}
		logs = append(logs, tl)
	}
	tcp, err := tcpProxyFilter(stat, cluster, logs...)
	if err != nil {
		return nil, nil, err
	}
	return append(filters, tcp), []Ref{{TypeURL: resourcev3.ClusterType, Name: cluster}}, nil
}

func dedupRefs(refs []Ref) []Ref {
	seen := map[Ref]bool{}
	var out []Ref
	for _, r := range refs {
		if !seen[r] {
			seen[r] = true
			out = append(out, r)
		}
	}
	return out
}

// buildEnvoyOutboundListener accepts the application's plaintext calls to
// one upstream on loopback; the cluster behind it originates mTLS.
func buildEnvoyOutboundListener(up *mesh.Service, u *mesh.Upstream) (*Resource, error) {
	name := OutboundListenerName(u)
	filter, ref, err := outboundFilter(up)
	if err != nil {
		return nil, err
	}
	l := &listenerv3.Listener{
		Name:             name,
		Address:          socketAddress(OutboundBindAddress, u.LocalPort),
		TrafficDirection: corev3.TrafficDirection_OUTBOUND,
		FilterChains:     []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{filter}}},
	}
	return newResource(name, l, ref)
}

// outboundFilter is the network filter for an application's plaintext
// calls to a service, the same behind a loopback listener and in a capture
// listener's chain: an HTTP connection manager on the service's outbound
// route, or tcp_proxy to its cluster (which originates mTLS).
func outboundFilter(up *mesh.Service) (*listenerv3.Filter, Ref, error) {
	stat := OutboundStatPrefix(up.Key())
	if up.Protocol.IsHTTP() {
		route := OutboundRouteName(up.Key())
		hcm, err := rdsHCM(stat, route)
		if err != nil {
			return nil, Ref{}, err
		}
		f, err := networkFilter(filterHCM, hcm)
		return f, Ref{TypeURL: resourcev3.RouteType, Name: route}, err
	}
	cluster := OutboundClusterName(up.Key())
	f, err := tcpProxyFilter(stat, cluster)
	return f, Ref{TypeURL: resourcev3.ClusterType, Name: cluster}, err
}

// buildCaptureListener is a transparent sidecar's outbound capture
// listener on every address at port: the packet filter redirects the
// application's outbound TCP here (meshctl redirect-traffic), the
// original_dst listener filter restores where each connection was going,
// and one filter chain per service matches its virtual address and port
// (the most specific match wins, so order does not matter). A connection
// to anything else takes the default chain: on to its original
// destination (passthrough allow) or closed and logged (block).
//
// Why chains in one listener and not a listener per service (Istio's
// per-port listeners with bind_to_port false, reached through
// use_original_dst): one resource whose chains are each shared between
// every proxy that sees the service, and a listener that, with the same
// visible set (every service, say), is byte-identical for every proxy and
// rendered once.
func buildCaptureListener(port uint32, services []*mesh.Service, passthrough mesh.Passthrough) (*Resource, error) {
	var refs []Ref
	chains := make([]*listenerv3.FilterChain, 0, len(services))
	for _, up := range services {
		c, ref, err := captureChain(up)
		if err != nil {
			return nil, fmt.Errorf("service %s: %w", up.Key(), err)
		}
		chains = append(chains, c)
		refs = append(refs, ref)
	}
	def, ref, err := passthroughChain(passthrough)
	if err != nil {
		return nil, err
	}
	refs = append(refs, ref)
	origDst, err := anyOf(&originaldstv3.OriginalDst{})
	if err != nil {
		return nil, err
	}
	l := &listenerv3.Listener{
		Name:             CaptureListenerName,
		Address:          socketAddress(CaptureBindAddress, port),
		TrafficDirection: corev3.TrafficDirection_OUTBOUND,
		ListenerFilters: []*listenerv3.ListenerFilter{{
			Name:       listenerOriginalDst,
			ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: origDst},
		}},
		FilterChains:       chains,
		DefaultFilterChain: def,
	}
	return newResource(CaptureListenerName, l, dedupRefs(refs)...)
}

// captureChain is the capture listener's chain for one service: its
// virtual address and port, and the same filter as a loopback listener's.
// It depends on the service's shape only, so every proxy shares it.
func captureChain(up *mesh.Service) (*listenerv3.FilterChain, Ref, error) {
	f, ref, err := outboundFilter(up)
	if err != nil {
		return nil, Ref{}, err
	}
	return &listenerv3.FilterChain{
		Name: OutboundClusterName(up.Key()),
		FilterChainMatch: &listenerv3.FilterChainMatch{
			DestinationPort: wrapperspb.UInt32(up.Port),
			PrefixRanges:    []*corev3.CidrRange{{AddressPrefix: up.Address, PrefixLen: wrapperspb.UInt32(32)}},
		},
		Filters: []*listenerv3.Filter{f},
	}, ref, nil
}

// passthroughChain is the capture listener's default chain.
func passthroughChain(mode mesh.Passthrough) (*listenerv3.FilterChain, Ref, error) {
	if mode == mesh.PassthroughBlock {
		log, err := blockedAccessLog()
		if err != nil {
			return nil, Ref{}, err
		}
		f, err := tcpProxyFilter(BlockedStatPrefix, BlackholeClusterName, log)
		return &listenerv3.FilterChain{Name: BlackholeClusterName, Filters: []*listenerv3.Filter{f}},
			Ref{TypeURL: resourcev3.ClusterType, Name: BlackholeClusterName}, err
	}
	f, err := tcpProxyFilter(PassthroughStatPrefix, PassthroughClusterName)
	return &listenerv3.FilterChain{Name: PassthroughClusterName, Filters: []*listenerv3.Filter{f}},
		Ref{TypeURL: resourcev3.ClusterType, Name: PassthroughClusterName}, err
}

// buildGatewayListener is one port of an ingress gateway, for clients
// outside the mesh: HTTP, or HTTPS when the listener has TLS (the
// certificate from files on the gateway's host, served as an SDS secret
// that names them, or from a host-local SDS server), routed by host and
// path on the route configuration of the same name. It is an edge: the
// client's address is taken from the connection (use_remote_address), a
// port in the Host header is ignored for routing, and anything a client
// claims in x-forwarded-client-cert is dropped.
func buildGatewayListener(p *mesh.Proxy, gl *mesh.GatewayListener) (*Resource, error) {
	name := GatewayListenerName(gl.Port)
	hcm, err := rdsHCM(GatewayStatPrefix(gl.Port), name)
	if err != nil {
		return nil, err
	}
	hcm.UseRemoteAddress = wrapperspb.Bool(true)
	hcm.StripPortMode = &hcmv3.HttpConnectionManager_StripAnyHostPort{StripAnyHostPort: true}
	hcm.ForwardClientCertDetails = hcmv3.HttpConnectionManager_SANITIZE
	filter, err := networkFilter(filterHCM, hcm)
	if err != nil {
		return nil, err
	}
	refs := []Ref{{TypeURL: resourcev3.RouteType, Name: name}}
	chain := &listenerv3.FilterChain{Name: FilterChainPlaintext, Filters: []*listenerv3.Filter{filter}}
	if gl.TLS.Enabled() {
		var sds *tlsv3.SdsSecretConfig
		if gl.TLS.FromFiles() {
			sds = &tlsv3.SdsSecretConfig{Name: GatewayTLSSecretName(gl.Port), SdsConfig: adsSource()}
			refs = append(refs, Ref{TypeURL: resourcev3.SecretType, Name: sds.Name})
		} else {
			sds = hostSDSSecret(gl.TLS.SDSSecret, gl.TLS.SDSSocket)
		}
		ts, err := tlsTransportSocket(&tlsv3.DownstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
			TlsParams:                      tlsParams(),
			AlpnProtocols:                  []string{alpnH2, alpnHTTP11},
			TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{sds},
		}})
		if err != nil {
			return nil, err
		}
		chain.Name, chain.TransportSocket = FilterChainTLS, ts
	}
	l := &listenerv3.Listener{
		Name:             name,
		Address:          socketAddress(p.Address, gl.Port),
		TrafficDirection: corev3.TrafficDirection_INBOUND,
		FilterChains:     []*listenerv3.FilterChain{chain},
	}
	return newResource(name, l, refs...)
}

// buildGRPCClientListener is what a proxyless gRPC client resolves for
// xds:///<target>: an api_listener with the route inline, because gRPC
// accepts that and go-control-plane's consistency check cannot see RDS names
// inside api_listeners. Shared by every gRPC client of the service.
func buildGRPCClientListener(up *mesh.Service) (*Resource, error) {
	name := GRPCTarget(up.Key())
	cluster := OutboundClusterName(up.Key())
	router, err := routerFilter()
	if err != nil {
		return nil, err
	}
	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix: OutboundStatPrefix(up.Key()),
		RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: &routev3.RouteConfiguration{
			Name:         OutboundRouteName(up.Key()),
			VirtualHosts: []*routev3.VirtualHost{forwardAll(name, []string{name}, cluster)},
		}},
		HttpFilters: []*hcmv3.HttpFilter{router},
	}
	a, err := anyOf(hcm)
	if err != nil {
		return nil, err
	}
	l := &listenerv3.Listener{Name: name, ApiListener: &listenerv3.ApiListener{ApiListener: a}}
	return newResource(name, l, Ref{TypeURL: resourcev3.ClusterType, Name: cluster})
}

// buildGRPCServerListener is what a proxyless gRPC server at address:port
// subscribes to: one filter chain, the HCM as its only filter, RBAC then the
// router, routes with NonForwardingAction, and mTLS from the bootstrap's
// certificate provider unless the workload's mode is DISABLE.
func buildGRPCServerListener(s *mesh.Service, p *mesh.Proxy, mode mesh.MTLSMode, rbac *rbacSets) (*Resource, error) {
	name := GRPCServerListenerName(p.Address, p.PublicPort)
	router, err := routerFilter()
	if err != nil {
		return nil, err
	}
	authz, err := rbac.grpcServerFilters()
	if err != nil {
		return nil, err
	}
	mtls := mode != mesh.MTLSDisable
	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix: InboundStatPrefix(s.Key(), mtls),
		RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: &routev3.RouteConfiguration{
			Name: InboundRouteName(s.Key()),
			VirtualHosts: []*routev3.VirtualHost{{
				Name:    InboundRouteName(s.Key()),
				Domains: []string{"*"},
				Routes: []*routev3.Route{{
					Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
					Action: &routev3.Route_NonForwardingAction{NonForwardingAction: &routev3.NonForwardingAction{}},
				}},
			}},
		}},
		HttpFilters: append(authz, router),
	}
	filter, err := networkFilter(filterHCM, hcm)
	if err != nil {
		return nil, err
	}
	chain := &listenerv3.FilterChain{Name: FilterChainPlaintext, Filters: []*listenerv3.Filter{filter}}
	if mtls {
		ts, err := tlsTransportSocket(grpcDownstreamTLS())
		if err != nil {
			return nil, err
		}
		chain.Name, chain.TransportSocket = FilterChainMTLS, ts
	}
	l := &listenerv3.Listener{
		Name:         name,
		Address:      socketAddress(p.Address, p.PublicPort),
		FilterChains: []*listenerv3.FilterChain{chain},
	}
	return newProxyResource(name, l)
}

func rdsHCM(stat, route string) (*hcmv3.HttpConnectionManager, error) {
	router, err := routerFilter()
	if err != nil {
		return nil, err
	}
	return &hcmv3.HttpConnectionManager{
		StatPrefix: stat,
		CodecType:  hcmv3.HttpConnectionManager_AUTO,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			ConfigSource:    adsSource(),
			RouteConfigName: route,
		}},
		HttpFilters: []*hcmv3.HttpFilter{router},
		// Normalise paths so that later path-based authorization sees the
		// same path the application will.
		NormalizePath: wrapperspb.Bool(true),
		MergeSlashes:  true,
	}, nil
}

func tcpProxyFilter(stat, cluster string, accessLogs ...*accesslogv3.AccessLog) (*listenerv3.Filter, error) {
	tp := &tcpproxyv3.TcpProxy{
		StatPrefix:       stat,
		ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: cluster},
		AccessLog:        accessLogs,
	}
	return networkFilter(filterTCPProxy, tp)
}

func networkFilter(name string, m proto.Message) (*listenerv3.Filter, error) {
	a, err := anyOf(m)
	if err != nil {
		return nil, err
	}
	return &listenerv3.Filter{Name: name, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: a}}, nil
}
