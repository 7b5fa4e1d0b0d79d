package xds

import (
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// The TLS contexts meshd renders. Envoy gets certificates and roots by SDS
// secret name over the same ADS stream; gRPC never consumes SDS, so it gets
// certificate provider instances that its bootstrap maps to files.

const (
	alpnH2     = "h2"
	alpnHTTP11 = "http/1.1"
)

func tlsParams() *tlsv3.TlsParameters {
	return &tlsv3.TlsParameters{TlsMinimumProtocolVersion: tlsv3.TlsParameters_TLSv1_2}
}

// sdsSecret refers to a secret served by meshd over ADS or, for a proxy fed
// by a mesh-agent, by the agent through the bootstrap's static cluster.
func sdsSecret(name string, agent bool) *tlsv3.SdsSecretConfig {
	if !agent {
		return &tlsv3.SdsSecretConfig{Name: name, SdsConfig: adsSource()}
	}
	return &tlsv3.SdsSecretConfig{Name: name, SdsConfig: &corev3.ConfigSource{
		ResourceApiVersion: corev3.ApiVersion_V3,
		ConfigSourceSpecifier: &corev3.ConfigSource_ApiConfigSource{ApiConfigSource: &corev3.ApiConfigSource{
			ApiType:             corev3.ApiConfigSource_GRPC,
			TransportApiVersion: corev3.ApiVersion_V3,
			GrpcServices: []*corev3.GrpcService{{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
				EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: AgentSDSClusterName},
			}}},
		}},
	}}
}

// hostSDSSecret refers to a secret served by an SDS server on the proxy's
// host, at a Unix socket (a gateway's tls.sdsSocket). Envoy's own gRPC
// client (envoy_grpc) would need a cluster for the socket in the
// bootstrap; the Google gRPC client dials the socket by URI, so the
// catalog alone describes it.
func hostSDSSecret(name, socket string) *tlsv3.SdsSecretConfig {
	return &tlsv3.SdsSecretConfig{Name: name, SdsConfig: &corev3.ConfigSource{
		ResourceApiVersion: corev3.ApiVersion_V3,
		ConfigSourceSpecifier: &corev3.ConfigSource_ApiConfigSource{ApiConfigSource: &corev3.ApiConfigSource{
			ApiType:             corev3.ApiConfigSource_GRPC,
			TransportApiVersion: corev3.ApiVersion_V3,
			GrpcServices: []*corev3.GrpcService{{TargetSpecifier: &corev3.GrpcService_GoogleGrpc_{
				GoogleGrpc: &corev3.GrpcService_GoogleGrpc{TargetUri: "unix:" + socket, StatPrefix: GatewaySDSStatPrefix},
			}}},
		}},
	}}
}

// secretRefs are the secrets a TLS context needs from meshd: none when a
// mesh-agent serves them.
func secretRefs(identitySecret string, agent bool) []Ref {
	if agent {
		return nil
	}
	return []Ref{
		{TypeURL: resourcev3.SecretType, Name: identitySecret},
		{TypeURL: resourcev3.SecretType, Name: TrustBundleSecretName},
	}
}

// envoyDownstreamTLS terminates mesh mTLS on a sidecar's public port: a client
// certificate is required and must chain to the mesh roots and carry a SPIFFE
// ID of this trust domain. Which identities may call is authorization's job.
func envoyDownstreamTLS(identitySecret, trustDomain string, alpn []string, agent bool) *tlsv3.DownstreamTlsContext {
	return &tlsv3.DownstreamTlsContext{
		RequireClientCertificate: wrapperspb.Bool(true),
		CommonTlsContext: &tlsv3.CommonTlsContext{
			TlsParams:                      tlsParams(),
			AlpnProtocols:                  alpn,
			TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{sdsSecret(identitySecret, agent)},
			ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{
				CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
					DefaultValidationContext: &tlsv3.CertificateValidationContext{
						MatchTypedSubjectAltNames: []*tlsv3.SubjectAltNameMatcher{{
							SanType: tlsv3.SubjectAltNameMatcher_URI,
							Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: "spiffe://" + trustDomain + "/"}},
						}},
					},
					ValidationContextSdsSecretConfig: sdsSecret(TrustBundleSecretName, agent),
				},
			},
		},
	}
}

// envoyUpstreamTLS originates mesh mTLS from a sidecar: it presents the
// sidecar's own identity and accepts only the destination's exact SPIFFE ID,
// so a compromised endpoint of another service cannot impersonate it.
func envoyUpstreamTLS(identitySecret, sni, peerSPIFFE string, alpn []string, agent bool) *tlsv3.UpstreamTlsContext {
	return &tlsv3.UpstreamTlsContext{
		Sni: sni,
		CommonTlsContext: &tlsv3.CommonTlsContext{
			TlsParams:                      tlsParams(),
			AlpnProtocols:                  alpn,
			TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{sdsSecret(identitySecret, agent)},
			ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{
				CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
					DefaultValidationContext: &tlsv3.CertificateValidationContext{
						MatchTypedSubjectAltNames: []*tlsv3.SubjectAltNameMatcher{exactURISAN(peerSPIFFE)},
					},
					ValidationContextSdsSecretConfig: sdsSecret(TrustBundleSecretName, agent),
				},
			},
		},
	}
}

func exactURISAN(spiffe string) *tlsv3.SubjectAltNameMatcher {
	return &tlsv3.SubjectAltNameMatcher{
		SanType: tlsv3.SubjectAltNameMatcher_URI,
		Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: spiffe}},
	}
}

func providerInstance() *tlsv3.CertificateProviderPluginInstance {
	return &tlsv3.CertificateProviderPluginInstance{InstanceName: CertProviderInstance, CertificateName: "default"}
}

// grpcUpstreamTLS is the client side for proxyless gRPC. gRPC-Go reads
// match_subject_alt_names from the plain validation context (it does not
// understand the typed SAN matchers or SDS), hence a different shape.
func grpcUpstreamTLS(peerSPIFFE string) *tlsv3.UpstreamTlsContext {
	return &tlsv3.UpstreamTlsContext{
		CommonTlsContext: &tlsv3.CommonTlsContext{
			TlsCertificateProviderInstance: providerInstance(),
			ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{
				ValidationContext: &tlsv3.CertificateValidationContext{
					CaCertificateProviderInstance: providerInstance(),
					MatchSubjectAltNames: []*matcherv3.StringMatcher{
						{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: peerSPIFFE}},
					},
				},
			},
		},
	}
}

// grpcDownstreamTLS is the server side for proxyless gRPC: gRPC rejects SAN
// matchers, tls_params and SDS here, so only provider instances remain.
func grpcDownstreamTLS() *tlsv3.DownstreamTlsContext {
	return &tlsv3.DownstreamTlsContext{
		RequireClientCertificate: wrapperspb.Bool(true),
		CommonTlsContext: &tlsv3.CommonTlsContext{
			TlsCertificateProviderInstance: providerInstance(),
			ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{
				ValidationContext: &tlsv3.CertificateValidationContext{
					CaCertificateProviderInstance: providerInstance(),
				},
			},
		},
	}
}

// tlsTransportSocket wraps a TLS context in the transport socket both Envoy
// and gRPC expect.
func tlsTransportSocket(ctx proto.Message) (*corev3.TransportSocket, error) {
	a, err := anyOf(ctx)
	if err != nil {
		return nil, err
	}
	return &corev3.TransportSocket{Name: transportSocketTLS, ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: a}}, nil
}
