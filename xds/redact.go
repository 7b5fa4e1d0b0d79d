package xds

import (
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/proto"
)

// Redacted replaces key material in dumps, as Envoy's own /config_dump does.
const Redacted = "[redacted]"

// Redact returns m with any private key replaced by Redacted. Messages
// without key material are returned as they are; m itself is never modified
// (it may be shared by many proxies' snapshots).
func Redact(m proto.Message) proto.Message {
	s, ok := m.(*tlsv3.Secret)
	if !ok || s.GetTlsCertificate() == nil {
		return m
	}
	c := proto.Clone(s).(*tlsv3.Secret)
	tc := c.GetTlsCertificate()
	redacted := &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: Redacted}}
	if tc.PrivateKey != nil {
		tc.PrivateKey = redacted
	}
	if tc.Password != nil {
		tc.Password = redacted
	}
	return c
}
