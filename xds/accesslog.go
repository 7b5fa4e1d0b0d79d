package xds

import (
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	celv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/filters/cel/v3"
	grpcaccesslogv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	streamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	"google.golang.org/protobuf/types/known/durationpb"
)

// A sidecar logs every request and connection an authorization policy
// denied to its standard output, one line each, starting DeniedLogPrefix and
// naming the RBAC rule: rbac_access_denied_matched_policy[<ns>/<policy>/rule-<n>]
// for a DENY rule, rbac_access_denied_matched_policy[none] when no ALLOW
// rule matched. The lines are selected by that detail (a CEL filter), not
// by status: a denied gRPC call is HTTP 200 with grpc-status 7, and a tcp
// connection has no status at all. The log configuration does not depend
// on the policies, so it never makes a listener change.

const (
	accessLogStdout = "envoy.access_loggers.stdout"
	accessLogCEL    = "envoy.access_loggers.extension_filters.cel"

	// deniedHTTPFormat: the response code (403, or 200 for gRPC), the
	// rule, the caller's verified SPIFFE ID (empty for plaintext), the
	// request, and the gRPC status (7 for a denied call, "-" for HTTP).
	deniedHTTPFormat = DeniedLogPrefix + " %START_TIME% %RESPONSE_CODE% %RESPONSE_CODE_DETAILS% peer=%DOWNSTREAM_PEER_URI_SAN% %REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% authority=%REQ(:AUTHORITY)% grpc-status=%GRPC_STATUS_NUMBER%\n"
	// deniedTCPFormat: "tcp" where HTTP has the status, the rule (Envoy's
	// network RBAC puts it in the connection termination details), the
	// caller, and where it connected from.
	deniedTCPFormat = DeniedLogPrefix + " %START_TIME% tcp %CONNECTION_TERMINATION_DETAILS% peer=%DOWNSTREAM_PEER_URI_SAN% from=%DOWNSTREAM_REMOTE_ADDRESS%\n"
)

// deniedHTTPAccessLog is the HTTP connection manager's denial log.
func deniedHTTPAccessLog() (*accesslogv3.AccessLog, error) {
	return deniedAccessLog(deniedHTTPFormat, "response.code_details.startsWith('rbac_access_denied')")
}

// deniedTCPAccessLog is the tcp_proxy's denial log, written when the
// connection the network RBAC filter closed ends.
func deniedTCPAccessLog() (*accesslogv3.AccessLog, error) {
	return deniedAccessLog(deniedTCPFormat, "connection.termination_details.startsWith('rbac_access_denied')")
}

func deniedAccessLog(format, celExpr string) (*accesslogv3.AccessLog, error) {
	cfg, err := anyOf(&streamv3.StdoutAccessLog{AccessLogFormat: &streamv3.StdoutAccessLog_LogFormat{LogFormat: &corev3.SubstitutionFormatString{
		Format: &corev3.SubstitutionFormatString_TextFormatSource{TextFormatSource: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{
			InlineString: format,
		}}},
	}}})
	if err != nil {
		return nil, err
	}
	filter, err := anyOf(&celv3.ExpressionFilter{Expression: celExpr})
	if err != nil {
		return nil, err
	}
	return &accesslogv3.AccessLog{
		Name: accessLogStdout,
		Filter: &accesslogv3.AccessLogFilter{FilterSpecifier: &accesslogv3.AccessLogFilter_ExtensionFilter{ExtensionFilter: &accesslogv3.ExtensionFilter{
			Name:       accessLogCEL,
			ConfigType: &accesslogv3.ExtensionFilter_TypedConfig{TypedConfig: filter},
		}}},
		ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: cfg},
	}, nil
}

// Telemetry: with Options.Telemetry, a sidecar also reports every request
// and connection of its inbound listener to meshd over Envoy's gRPC access
// log service, through the bootstrap's meshd cluster (XDSClusterName):
// meshd authenticates the stream like the xDS stream (the bootstrap adds
// the token to every gRPC call on that cluster) and keeps per-edge
// counters, latencies and a live tap (package telemetry). The loggers do
// not depend on the proxy or its policies, so they are shared and never
// change a listener.

const (
	accessLogHTTPGRPC = "envoy.access_loggers.http_grpc"
	accessLogTCPGRPC  = "envoy.access_loggers.tcp_grpc"

	// telemetryFlushInterval bounds how long an entry waits in Envoy
	// before it is sent (a tap shows a request within about this; Envoy's
	// default is 1 s); a full buffer (16 KiB, about 40 entries) is sent at
	// once.
	telemetryFlushInterval = 250 * time.Millisecond
)

func telemetryCommon() *grpcaccesslogv3.CommonGrpcAccessLogConfig {
	return &grpcaccesslogv3.CommonGrpcAccessLogConfig{
		LogName: TelemetryLogName,
		GrpcService: &corev3.GrpcService{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
			EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: XDSClusterName},
		}},
		TransportApiVersion: corev3.ApiVersion_V3,
		BufferFlushInterval: durationpb.New(telemetryFlushInterval),
	}
}

// telemetryHTTPAccessLog reports the inbound HTTP connection manager's
// requests, with the gRPC status (a trailer, or a header of a
// trailers-only answer such as a denial).
func telemetryHTTPAccessLog() (*accesslogv3.AccessLog, error) {
	cfg, err := anyOf(&grpcaccesslogv3.HttpGrpcAccessLogConfig{
		CommonConfig:                    telemetryCommon(),
		AdditionalResponseHeadersToLog:  []string{"grpc-status"},
		AdditionalResponseTrailersToLog: []string{"grpc-status"},
	})
	if err != nil {
		return nil, err
	}
	return &accesslogv3.AccessLog{Name: accessLogHTTPGRPC, ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: cfg}}, nil
}

// telemetryTCPAccessLog reports the inbound tcp_proxy's connections when
// they close.
func telemetryTCPAccessLog() (*accesslogv3.AccessLog, error) {
	cfg, err := anyOf(&grpcaccesslogv3.TcpGrpcAccessLogConfig{CommonConfig: telemetryCommon()})
	if err != nil {
		return nil, err
	}
	return &accesslogv3.AccessLog{Name: accessLogTCPGRPC, ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: cfg}}, nil
}

// blockedFormat: where the application tried to connect (the original
// destination the capture listener restored) and from where.
const blockedFormat = BlockedLogPrefix + " %START_TIME% tcp dst=%DOWNSTREAM_LOCAL_ADDRESS% from=%DOWNSTREAM_REMOTE_ADDRESS%\n"

// blockedAccessLog logs every connection a transparent sidecar closed
// because its destination is not a mesh service the proxy sees
// (passthrough: block), so an operator can tell what the application
// tried to reach.
func blockedAccessLog() (*accesslogv3.AccessLog, error) {
	cfg, err := anyOf(&streamv3.StdoutAccessLog{AccessLogFormat: &streamv3.StdoutAccessLog_LogFormat{LogFormat: &corev3.SubstitutionFormatString{
		Format: &corev3.SubstitutionFormatString_TextFormatSource{TextFormatSource: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{
			InlineString: blockedFormat,
		}}},
	}}})
	if err != nil {
		return nil, err
	}
	return &accesslogv3.AccessLog{Name: accessLogStdout, ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: cfg}}, nil
}
