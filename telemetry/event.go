package telemetry

import (
	"net"
	"strconv"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	accesslogdatav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
)

// Protocols of an Event.
const (
	ProtocolHTTP = "http"
	ProtocolTCP  = "tcp"
)

// NoAllowMatched is Event.Policy for a request denied because no ALLOW
// rule of the workload's policies matched (Envoy's
// rbac_access_denied_matched_policy[none]).
const NoAllowMatched = "none"

// Event is one request (HTTP, gRPC) or connection (tcp) a sidecar served or
// refused, as reported by the destination's sidecar.
type Event struct {
	Time time.Time `json:"time"`
	// Node is the reporting proxy's node id; Destination its service
	// (name.namespace).
	Node        string `json:"node"`
	Destination string `json:"destination"`
	// Source is the caller's SPIFFE ID, verified by mTLS; empty when the
	// caller came in plaintext (PERMISSIVE or DISABLE).
	Source string `json:"source,omitempty"`
	// SourceAddress is the caller's IP address.
	SourceAddress string `json:"sourceAddress,omitempty"`
	MTLS          bool   `json:"mtls"`
	Protocol      string `json:"protocol"`
	// HTTP only.
	Method     string `json:"method,omitempty"`
	Path       string `json:"path,omitempty"`
	Authority  string `json:"authority,omitempty"`
	Status     int    `json:"status,omitempty"`
	GRPCStatus *int   `json:"grpcStatus,omitempty"`
	// DurationMs is the request's (or connection's) duration, from its
	// first byte to the last byte sent back, in milliseconds.
	DurationMs float64 `json:"durationMs"`
	// Denied says an authorization policy refused it; Policy then names
	// the RBAC rule (<ns>/<policy>/rule-<n>), or NoAllowMatched.
	Denied bool   `json:"denied"`
	Policy string `json:"policy,omitempty"`
	// tcp only: bytes received from and sent to the caller.
	BytesReceived uint64 `json:"bytesReceived,omitempty"`
	BytesSent     uint64 `json:"bytesSent,omitempty"`
}

// Duration is the event's duration.
func (e *Event) Duration() time.Duration {
	return time.Duration(e.DurationMs * float64(time.Millisecond))
}

// Success is true for a request that neither failed on the server (HTTP
// 5xx) nor returned a gRPC error status. Connections always succeed.
func (e *Event) Success() bool {
	if e.Protocol != ProtocolHTTP {
		return true
	}
	return e.Status < 500 && (e.GRPCStatus == nil || *e.GRPCStatus == 0)
}

// Response classes of HTTP requests (a label of meshd_mesh_requests_total).
const (
	class2xx       = "2xx"
	class3xx       = "3xx"
	class4xx       = "4xx"
	class5xx       = "5xx"
	classGRPCError = "grpc_error"
	classOther     = "other"
)

var classes = [...]string{class2xx, class3xx, class4xx, class5xx, classGRPCError, classOther}

const nClasses = len(classes)

// classIndex is the event's response class: a gRPC error status (an HTTP
// 200 carrying grpc-status ≠ 0, such as a denied call's 7) counts as
// grpc_error, otherwise the HTTP status's hundreds; no status at all (the
// caller went away first) is other.
func (e *Event) classIndex() int {
	if e.GRPCStatus != nil && *e.GRPCStatus != 0 {
		return 4
	}
	switch e.Status / 100 {
	case 2:
		return 0
	case 3:
		return 1
	case 4:
		return 2
	case 5:
		return 3
	}
	return 5
}

// rbacDetailPrefix starts the response code details (HTTP) or connection
// termination details (tcp) of what an RBAC filter refused.
const rbacDetailPrefix = "rbac_access_denied_matched_policy["

// deniedBy returns the rule named by an RBAC denial detail.
func deniedBy(detail string) (string, bool) {
	rest, ok := strings.CutPrefix(detail, rbacDetailPrefix)
	if !ok {
		return "", false
	}
	return strings.TrimSuffix(rest, "]"), true
}

// fillCommon sets what HTTP and tcp entries share.
func (e *Event) fillCommon(c *accesslogdatav3.AccessLogCommon) {
	if c == nil {
		return
	}
	if t := c.GetStartTime(); t != nil {
		e.Time = t.AsTime()
	}
	e.SourceAddress = ipOf(c.GetDownstreamRemoteAddress())
	if tls := c.GetTlsProperties(); tls != nil {
		// A verified peer certificate means mTLS; Envoy reports the URI
		// SANs of the certificate its validation context accepted.
		for _, san := range tls.GetPeerCertificateProperties().GetSubjectAltName() {
			if u := san.GetUri(); strings.HasPrefix(u, "spiffe://") {
				e.Source, e.MTLS = u, true
				break
			}
		}
	}
	d := c.GetDuration()
	if d == nil {
		d = c.GetTimeToLastDownstreamTxByte()
	}
	if d != nil {
		e.DurationMs = float64(d.AsDuration()) / float64(time.Millisecond)
	}
}

func ipOf(a *corev3.Address) string {
	sa := a.GetSocketAddress()
	if sa == nil {
		return ""
	}
	if ip := net.ParseIP(sa.GetAddress()); ip != nil {
		return ip.String()
	}
	return sa.GetAddress()
}

// FromHTTP turns an HTTP access log entry of a sidecar's inbound listener
// into an event.
func FromHTTP(x *accesslogdatav3.HTTPAccessLogEntry) Event {
	e := Event{Protocol: ProtocolHTTP}
	e.fillCommon(x.GetCommonProperties())
	req, resp := x.GetRequest(), x.GetResponse()
	if m := req.GetRequestMethod(); m != corev3.RequestMethod_METHOD_UNSPECIFIED {
		e.Method = m.String()
	}
	e.Path = req.GetPath()
	if p := req.GetOriginalPath(); p != "" {
		e.Path = p
	}
	e.Authority = req.GetAuthority()
	e.Status = int(resp.GetResponseCode().GetValue())
	// A gRPC status is a trailer, or a header of a trailers-only answer
	// (what Envoy's own denial sends).
	for _, h := range []map[string]string{resp.GetResponseTrailers(), resp.GetResponseHeaders()} {
		if v, ok := h["grpc-status"]; ok {
			if n, err := strconv.Atoi(v); err == nil {
				e.GRPCStatus = &n
				break
			}
		}
	}
	if rule, ok := deniedBy(resp.GetResponseCodeDetails()); ok {
		e.Denied, e.Policy = true, rule
	}
	return e
}

// FromTCP turns a tcp_proxy access log entry into an event.
func FromTCP(x *accesslogdatav3.TCPAccessLogEntry) Event {
	e := Event{Protocol: ProtocolTCP}
	e.fillCommon(x.GetCommonProperties())
	e.BytesReceived = x.GetConnectionProperties().GetReceivedBytes()
	e.BytesSent = x.GetConnectionProperties().GetSentBytes()
	if rule, ok := deniedBy(x.GetCommonProperties().GetConnectionTerminationDetails()); ok {
		e.Denied, e.Policy = true, rule
	}
	return e
}
