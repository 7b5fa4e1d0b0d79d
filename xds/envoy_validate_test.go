package xds_test

import (
	"os"
	"path/filepath"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"gopkg.in/yaml.v3"

	"github.com/meshd/meshd/internal/envoytest"
	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/xds"
)

// TestEnvoyAcceptsRenderedShapes hands every proxy of the transparent and
// gateway golden cases to `envoy --mode validate`: its listeners and
// clusters as static resources of a bootstrap whose ADS cluster stands in
// for meshd (routes, endpoints and secrets are referenced over ADS, as
// meshd serves them). Validate mode builds every listener, filter chain
// and cluster as Envoy would, beyond what the protos' own rules check: an
// original_dst listener filter, filter chain matches that must be
// distinct, an ORIGINAL_DST cluster's load balancer, a Google gRPC SDS
// source.
func TestEnvoyAcceptsRenderedShapes(t *testing.T) {
	envoytest.Binary(t)
	for _, name := range []string{"transparent", "gateway"} {
		data, err := os.ReadFile(filepath.Join("testdata", "in", name+".yaml"))
		if err != nil {
			t.Fatal(err)
		}
		var in struct {
			Services []mesh.Service  `yaml:"services"`
			Proxies  []mesh.Proxy    `yaml:"proxies"`
			Policy   *mesh.PolicySet `yaml:"policy"`
		}
		if err := yaml.Unmarshal(data, &in); err != nil {
			t.Fatal(err)
		}
		cat, err := mesh.NewCatalog(in.Services, in.Proxies)
		if err != nil {
			t.Fatal(err)
		}
		gen := xds.NewTranslator(xds.Options{TrustDomain: "cluster.local"}).Generation(cat, in.Policy)
		for _, p := range cat.Proxies() {
			if !p.Flavor.IsEnvoy() {
				continue
			}
			t.Run(name+"/"+p.ID, func(t *testing.T) {
				r, err := gen.Proxy(p.ID)
				if err != nil {
					t.Fatal(err)
				}
				b := staticBootstrap(p.ID)
				for _, l := range r.Listeners {
					b.StaticResources.Listeners = append(b.StaticResources.Listeners, l.Message.(*listenerv3.Listener))
				}
				for _, c := range r.Clusters {
					b.StaticResources.Clusters = append(b.StaticResources.Clusters, c.Message.(*clusterv3.Cluster))
				}
				y, err := envoytest.MarshalYAML(b)
				if err != nil {
					t.Fatal(err)
				}
				path := filepath.Join(t.TempDir(), "static.yaml")
				if err := os.WriteFile(path, y, 0o644); err != nil {
					t.Fatal(err)
				}
				envoytest.Validate(t, path)
			})
		}
	}
}

// staticBootstrap has meshd's ADS cluster (plaintext, never dialled in
// validate mode) and nothing else.
func staticBootstrap(node string) *bootstrapv3.Bootstrap {
	ads := &corev3.ConfigSource{ResourceApiVersion: corev3.ApiVersion_V3, ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}
	return &bootstrapv3.Bootstrap{
		Node: &corev3.Node{Id: node, Cluster: node},
		DynamicResources: &bootstrapv3.Bootstrap_DynamicResources{
			AdsConfig: &corev3.ApiConfigSource{
				ApiType:             corev3.ApiConfigSource_GRPC,
				TransportApiVersion: corev3.ApiVersion_V3,
				GrpcServices: []*corev3.GrpcService{{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
					EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: xds.XDSClusterName},
				}}},
			},
			CdsConfig: ads,
		},
		StaticResources: &bootstrapv3.Bootstrap_StaticResources{Clusters: []*clusterv3.Cluster{{
			Name:                 xds.XDSClusterName,
			ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
			ConnectTimeout:       durationpb.New(1e9),
			Http2ProtocolOptions: &corev3.Http2ProtocolOptions{},
			LoadAssignment: &endpointv3.ClusterLoadAssignment{ClusterName: xds.XDSClusterName, Endpoints: []*endpointv3.LocalityLbEndpoints{{
				LbEndpoints: []*endpointv3.LbEndpoint{{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
					Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
						Address: "127.0.0.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 15012},
					}}},
				}}}},
			}}},
		}}},
	}
}
