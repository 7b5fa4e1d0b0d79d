package xds

import (
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshd/meshd/mesh"
)

// buildEnvoyInboundListener terminates mesh mTLS on the sidecar's public port
// and hands traffic to the local application.
func buildEnvoyInboundListener(s *mesh.Service, p *mesh.Proxy, self mesh.Identity, trustDomain string) (*Resource, error) {
	name := InboundListenerName(p)
	secret := IdentitySecretName(self)
	var alpn []string
	if s.Protocol.IsHTTP() {
		alpn = []string{alpnH2, alpnHTTP11}
	}
	ts, err := tlsTransportSocket(envoyDownstreamTLS(secret, trustDomain, alpn))
	if err != nil {
		return nil, err
	}
	refs := secretRefs(secret)
	var filter *listenerv3.Filter
	stat := InboundStatPrefix(s.Key(), true)
	if s.Protocol.IsHTTP() {
		route := InboundRouteName(s.Key())
		hcm, err := rdsHCM(stat, route)
		if err != nil {
			return nil, err
		}
		// The app learns the caller's verified identity from
		// x-forwarded-client-cert; anything a client sent in it is replaced.
		hcm.ForwardClientCertDetails = hcmv3.HttpConnectionManager_SANITIZE_SET
		hcm.SetCurrentClientCertDetails = &hcmv3.HttpConnectionManager_SetCurrentClientCertDetails{Uri: true}
		filter, err = networkFilter(filterHCM, hcm)
		if err != nil {
			return nil, err
		}
		refs = append(refs, Ref{TypeURL: resourcev3.RouteType, Name: route})
	} else {
		cluster := LocalAppClusterName(s.Key())
		filter, err = tcpProxyFilter(stat, cluster)
		if err != nil {
			return nil, err
		}
		refs = append(refs, Ref{TypeURL: resourcev3.ClusterType, Name: cluster})
	}
	l := &listenerv3.Listener{
		Name:             name,
		Address:          socketAddress(p.Address, p.PublicPort),
		TrafficDirection: corev3.TrafficDirection_INBOUND,
		FilterChains: []*listenerv3.FilterChain{{
			Name:            "mtls",
			Filters:         []*listenerv3.Filter{filter},
			TransportSocket: ts,
		}},
	}
	return newResource(name, l, refs...)
}

// buildEnvoyOutboundListener accepts the application's plaintext calls to
// one upstream on loopback; the cluster behind it originates mTLS.
func buildEnvoyOutboundListener(up *mesh.Service, u *mesh.Upstream) (*Resource, error) {
	name := OutboundListenerName(u)
	stat := OutboundStatPrefix(up.Key())
	var filter *listenerv3.Filter
	var ref Ref
	var err error
	if up.Protocol.IsHTTP() {
		route := OutboundRouteName(up.Key())
		hcm, herr := rdsHCM(stat, route)
		if herr != nil {
			return nil, herr
		}
		filter, err = networkFilter(filterHCM, hcm)
		ref = Ref{TypeURL: resourcev3.RouteType, Name: route}
	} else {
		cluster := OutboundClusterName(up.Key())
		filter, err = tcpProxyFilter(stat, cluster)
		ref = Ref{TypeURL: resourcev3.ClusterType, Name: cluster}
	}
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
// subscribes to: one filter chain, the HCM as its only filter, routes with
// NonForwardingAction and mTLS from the bootstrap's certificate provider.
func buildGRPCServerListener(s *mesh.Service, p *mesh.Proxy) (*Resource, error) {
	name := GRPCServerListenerName(p.Address, p.PublicPort)
	router, err := routerFilter()
	if err != nil {
		return nil, err
	}
	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix: InboundStatPrefix(s.Key(), true),
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
		HttpFilters: []*hcmv3.HttpFilter{router},
	}
	filter, err := networkFilter(filterHCM, hcm)
	if err != nil {
		return nil, err
	}
	ts, err := tlsTransportSocket(grpcDownstreamTLS())
	if err != nil {
		return nil, err
	}
	l := &listenerv3.Listener{
		Name:    name,
		Address: socketAddress(p.Address, p.PublicPort),
		FilterChains: []*listenerv3.FilterChain{{
			Name:            "mtls",
			Filters:         []*listenerv3.Filter{filter},
			TransportSocket: ts,
		}},
	}
	return newResource(name, l)
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

func tcpProxyFilter(stat, cluster string) (*listenerv3.Filter, error) {
	return networkFilter(filterTCPProxy, &tcpproxyv3.TcpProxy{
		StatPrefix:       stat,
		ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: cluster},
	})
}

func networkFilter(name string, m proto.Message) (*listenerv3.Filter, error) {
	a, err := anyOf(m)
	if err != nil {
		return nil, err
	}
	return &listenerv3.Filter{Name: name, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: a}}, nil
}
