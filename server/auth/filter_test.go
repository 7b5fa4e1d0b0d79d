package auth

import (
	"log/slog"
	"slices"
	"testing"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/meshd/meshd/xds"
)

// A secret subscription keeps the identity secret, the bundle and a
// gateway's certificate-file secrets (paths, no key); any other name, such
// as another identity's SPIFFE ID, is dropped and counted.
func TestFilterKeepsWhatEveryProxyMayRead(t *testing.T) {
	a := &Authenticator{Logger: slog.New(slog.DiscardHandler)}
	a.init()
	s := &authStream{a: a, cred: &credential{kind: "token"}, node: "gw"}
	req := &discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.SecretType, ResourceNames: []string{
		xds.IdentitySecretName, xds.TrustBundleSecretName, xds.GatewayTLSSecretName(8443), "spiffe://cluster.local/ns/default/sa/api",
	}}
	s.filter(req)
	want := []string{xds.IdentitySecretName, xds.TrustBundleSecretName, xds.GatewayTLSSecretName(8443)}
	if !slices.Equal(req.ResourceNames, want) {
		t.Errorf("kept %v, want %v", req.ResourceNames, want)
	}
	if n := testutil.ToFloat64(a.secretsDenied.WithLabelValues("gw")); n != 1 {
		t.Errorf("denied %v names, want 1", n)
	}
}
