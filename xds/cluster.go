package xds

import (
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	rawbufferv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/raw_buffer/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/meshd/meshd/mesh"
)

// buildLocalAppCluster is the static cluster from a sidecar to its own
// application on loopback. Its name depends only on the service, so every
// sidecar of the service shares the inbound route that points at it.
func buildLocalAppCluster(s *mesh.Service, p *mesh.Proxy) (*Resource, error) {
	name := LocalAppClusterName(s.Key())
	c := &clusterv3.Cluster{
		Name:                 name,
		AltStatName:          ClusterStatName(name),
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		ConnectTimeout:       localConnectTimeout,
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: name,
			Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{{
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
					Address: socketAddress(LocalAppAddress, p.AppPort),
				}},
			}}}},
		},
	}
	if err := setHTTP2(c, s.Protocol); err != nil {
		return nil, err
	}
	return newResource(name, c)
}

// buildEnvoyOutboundCluster is a sidecar's EDS cluster for an upstream,
// originating mTLS with the sidecar's own identity. The identity is the
// secret every proxy has under the same name (IdentitySecretName), so the
// cluster does not depend on who calls: every sidecar calling the service
// (with the same SDS source) shares it.
func buildEnvoyOutboundCluster(up *mesh.Service, trustDomain string, agent bool) (*Resource, error) {
	name := OutboundClusterName(up.Key())
	peer := mesh.IdentityOf(trustDomain, up).SPIFFEID()
	// The mesh ALPN comes first so a PERMISSIVE server recognises mesh
	// traffic; the application protocol follows for the server to select.
	alpn := []string{MeshALPN, alpnHTTP11}
	if up.Protocol.UsesHTTP2() {
		alpn = []string{MeshALPN, alpnH2}
	} else if up.Protocol == mesh.ProtocolTCP {
		alpn = []string{MeshALPN}
	}
	ts, err := tlsTransportSocket(envoyUpstreamTLS(IdentitySecretName, SNI(up.Key(), trustDomain), peer, alpn, agent))
	if err != nil {
		return nil, err
	}
	c := edsCluster(name)
	c.TransportSocket = ts
	// Endpoints whose workload has mTLS disabled are reached in plaintext
	// (auto mTLS); EDS marks them, so this cluster stays shareable.
	raw, err := anyOf(&rawbufferv3.RawBuffer{})
	if err != nil {
		return nil, err
	}
	c.TransportSocketMatches = []*clusterv3.Cluster_TransportSocketMatch{{
		Name:            "plaintext-to-mtls-disabled",
		Match:           &structpb.Struct{Fields: map[string]*structpb.Value{TransportSocketMatchKey: structpb.NewStringValue(TransportSocketMatchDisabled)}},
		TransportSocket: &corev3.TransportSocket{Name: transportSocketRaw, ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: raw}},
	}}
	if err := setHTTP2(c, up.Protocol); err != nil {
		return nil, err
	}
	refs := append(secretRefs(IdentitySecretName, agent), Ref{TypeURL: resourcev3.EndpointType, Name: name})
	return newResource(name, c, refs...)
}

// buildGRPCCluster is a proxyless gRPC client's cluster for an upstream. It
// names no identity of the caller (gRPC takes certificates from its
// bootstrap's provider instance), so every gRPC client shares it.
//
// gRPC has no transport socket matches, so the choice is per service: plaintext
// only when every endpoint's workload has mTLS disabled.
func buildGRPCCluster(up *mesh.Service, trustDomain string, plaintext bool) (*Resource, error) {
	name := OutboundClusterName(up.Key())
	c := edsCluster(name)
	if !plaintext {
		ts, err := tlsTransportSocket(grpcUpstreamTLS(mesh.IdentityOf(trustDomain, up).SPIFFEID()))
		if err != nil {
			return nil, err
		}
		c.TransportSocket = ts
	}
	return newResource(name, c, Ref{TypeURL: resourcev3.EndpointType, Name: name})
}

func edsCluster(name string) *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 name,
		AltStatName:          ClusterStatName(name),
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: adsSource(), ServiceName: name},
		ConnectTimeout:       connectTimeout,
		LbPolicy:             clusterv3.Cluster_ROUND_ROBIN,
	}
}

// setHTTP2 makes a cluster speak HTTP/2 to its hosts when the protocol needs
// it (gRPC and h2 apps); otherwise Envoy's default HTTP/1.1 is right.
func setHTTP2(c *clusterv3.Cluster, p mesh.Protocol) error {
	if !p.UsesHTTP2() {
		return nil
	}
	opts, err := anyOf(&httpv3.HttpProtocolOptions{
		UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &corev3.Http2ProtocolOptions{}},
		}},
	})
	if err != nil {
		return err
	}
	c.TypedExtensionProtocolOptions = map[string]*anypb.Any{httpProtocolOptionsK: opts}
	return nil
}

// buildPassthroughCluster connects a transparent sidecar's captured
// connection to its original destination (the address the capture
// listener's original_dst filter restored): non-mesh traffic passes as if
// there were no sidecar. Envoy's own connections are excluded from
// capture by its uid, so this cannot loop back into the listener.
func buildPassthroughCluster() (*Resource, error) {
	c := &clusterv3.Cluster{
		Name:                 PassthroughClusterName,
		AltStatName:          PassthroughClusterName,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_ORIGINAL_DST},
		LbPolicy:             clusterv3.Cluster_CLUSTER_PROVIDED,
		ConnectTimeout:       connectTimeout,
	}
	return newResource(PassthroughClusterName, c)
}

// buildBlackholeCluster has no endpoints: tcp_proxy to it closes the
// connection (passthrough: block). A cluster rather than no default
// chain, so blocked connections are counted (cluster.blackhole.*) and
// logged with their destination.
func buildBlackholeCluster() (*Resource, error) {
	c := &clusterv3.Cluster{
		Name:                 BlackholeClusterName,
		AltStatName:          BlackholeClusterName,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		ConnectTimeout:       connectTimeout,
		LoadAssignment:       &endpointv3.ClusterLoadAssignment{ClusterName: BlackholeClusterName},
	}
	return newResource(BlackholeClusterName, c)
}
