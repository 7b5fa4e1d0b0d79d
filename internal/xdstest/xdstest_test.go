package xdstest

import (
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

func listener(t *testing.T, statPrefix, address string, extra ...*anypb.Any) *listenerv3.Listener {
	t.Helper()
	hcm, err := anypb.New(&hcmv3.HttpConnectionManager{StatPrefix: statPrefix, RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{
		Rds: &hcmv3.Rds{RouteConfigName: "routes-a", ConfigSource: &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}}}})
	if err != nil {
		t.Fatal(err)
	}
	l := &listenerv3.Listener{Name: "l", Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: address, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 80}}}},
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{Name: "hcm", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: hcm}}}}}}
	for _, a := range extra {
		l.FilterChains = append(l.FilterChains, &listenerv3.FilterChain{Filters: []*listenerv3.Filter{{Name: "x", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: a}}}})
	}
	return l
}

// DeepValidate finds what is invalid inside an Any (which ValidateAll
// skips) and in ordinary nested messages, names where, and reports an Any
// it cannot unpack; References reads the names a resource refers to.
func TestDeepValidateAndReferences(t *testing.T) {
	if err := DeepValidate(listener(t, "ok", "10.0.0.1")); err != nil {
		t.Fatalf("a valid listener: %v", err)
	}
	err := DeepValidate(listener(t, "", "10.0.0.1"))
	if err == nil || !strings.Contains(err.Error(), "Listener.filter_chains[0].filters[0].typed_config<HttpConnectionManager>") ||
		!strings.Contains(err.Error(), "StatPrefix") {
		t.Fatalf("an HCM without a stat prefix inside an Any: %v", err)
	}
	if err := DeepValidate(listener(t, "ok", "")); err == nil || !strings.Contains(err.Error(), "Address") {
		t.Fatalf("a socket address without an address: %v", err)
	}
	err = DeepValidate(listener(t, "ok", "10.0.0.1", &anypb.Any{TypeUrl: "type.googleapis.com/no.such.Type"}))
	if err == nil || !strings.Contains(err.Error(), "filter_chains[1].filters[0].typed_config: cannot unpack Any type.googleapis.com/no.such.Type") {
		t.Fatalf("an Any of an unknown type: %v", err)
	}
	refs := References(listener(t, "ok", "10.0.0.1"))
	if len(refs) != 1 || refs[0] != (Ref{resourcev3.RouteType, "routes-a"}) {
		t.Fatalf("references %v, want the RDS route name", refs)
	}
}
