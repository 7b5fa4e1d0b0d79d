package xds

import (
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Well-known Envoy extension names.
const (
	filterHCM      = "envoy.filters.network.http_connection_manager"
	filterTCPProxy = "envoy.filters.network.tcp_proxy"
	filterRouter   = "envoy.filters.http.router"
	// transportSocketTLS must be exactly this for gRPC, which matches on it.
	transportSocketTLS   = "envoy.transport_sockets.tls"
	transportSocketRaw   = "envoy.transport_sockets.raw_buffer"
	listenerTLSInspector = "envoy.filters.listener.tls_inspector"
	listenerOriginalDst  = "envoy.filters.listener.original_dst"
	httpProtocolOptionsK = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
)

var (
	connectTimeout      = durationpb.New(5 * time.Second)
	localConnectTimeout = durationpb.New(1 * time.Second)
)

// adsSource points a dynamic reference (RDS, EDS, SDS) back at the ADS stream.
func adsSource() *corev3.ConfigSource {
	return &corev3.ConfigSource{
		ResourceApiVersion:    corev3.ApiVersion_V3,
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
	}
}

func socketAddress(ip string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address:       ip,
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}

func routerFilter() (*hcmv3.HttpFilter, error) {
	a, err := anyOf(&routerv3.Router{})
	if err != nil {
		return nil, err
	}
	return &hcmv3.HttpFilter{Name: filterRouter, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: a}}, nil
}
