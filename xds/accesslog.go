package xds

import (
	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	celv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/filters/cel/v3"
	streamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
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
