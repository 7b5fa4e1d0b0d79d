package bootstrap_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	headermutationv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/header_mutation/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"

	"github.com/meshd/meshd/bootstrap"
	"github.com/meshd/meshd/internal/envoytest"
	"github.com/meshd/meshd/xds"
)

// TestEnvoyTokenMetadata: a bootstrap token travels in an upstream header
// filter of meshd's cluster (so on every gRPC call to meshd: xDS and the
// access-log streams), and Envoy accepts the result. e2e tests prove meshd
// receives it on both.
func TestEnvoyTokenMetadata(t *testing.T) {
	dir := t.TempDir()
	o := bootstrap.EnvoyOptions{Service: "web", CAFile: envoytest.WriteRootCA(t, dir, "root-cert.pem"), Token: "meshd1.e30.c2ln"}
	b, err := bootstrap.Envoy(o)
	if err != nil {
		t.Fatal(err)
	}
	var opts upstreamhttpv3.HttpProtocolOptions
	if err := b.GetStaticResources().GetClusters()[0].GetTypedExtensionProtocolOptions()["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].UnmarshalTo(&opts); err != nil {
		t.Fatal(err)
	}
	fs := opts.GetHttpFilters()
	if len(fs) != 2 || fs[0].GetName() != "envoy.filters.http.header_mutation" || fs[1].GetName() != "envoy.filters.http.upstream_codec" {
		t.Fatalf("upstream filters of meshd's cluster: %v", fs)
	}
	var hm headermutationv3.HeaderMutation
	if err := fs[0].GetTypedConfig().UnmarshalTo(&hm); err != nil {
		t.Fatal(err)
	}
	rm := hm.GetMutations().GetRequestMutations()
	if len(rm) != 1 || rm[0].GetAppend().GetHeader().GetKey() != "authorization" || rm[0].GetAppend().GetHeader().GetValue() != "Bearer meshd1.e30.c2ln" ||
		rm[0].GetAppend().GetAppendAction() != corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD {
		t.Fatalf("request mutations = %v, want authorization: Bearer <token>, replacing", rm)
	}
	y, err := bootstrap.EnvoyYAML(o)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "bootstrap.yaml")
	if err := os.WriteFile(path, y, 0o600); err != nil {
		t.Fatal(err)
	}
	envoytest.Validate(t, path)

	o.Token = ""
	y, err = bootstrap.EnvoyYAML(o)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(y), "authorization") || strings.Contains(string(y), "http_filters") {
		t.Error("a bootstrap without a token carries the token filter")
	}
}

// TestEnvoyAgentSocket: --agent-socket adds the static SDS cluster over a
// Unix pipe and the node metadata, and Envoy accepts it.
func TestEnvoyAgentSocket(t *testing.T) {
	dir := t.TempDir()
	o := bootstrap.EnvoyOptions{Service: "web", CAFile: envoytest.WriteRootCA(t, dir, "root-cert.pem"), AgentSocket: filepath.Join(dir, "agent.sock")}
	b, err := bootstrap.Envoy(o)
	if err != nil {
		t.Fatal(err)
	}
	cs := b.GetStaticResources().GetClusters()
	if len(cs) != 2 || cs[1].GetName() != xds.AgentSDSClusterName ||
		cs[1].GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetPipe().GetPath() != o.AgentSocket {
		t.Fatalf("static clusters %v, want meshd's and the agent pipe", cs)
	}
	if v := b.GetNode().GetMetadata().GetFields()[xds.NodeMetaSDS].GetStringValue(); v != xds.NodeMetaSDSAgent {
		t.Errorf("node metadata %s = %q", xds.NodeMetaSDS, v)
	}
	y, err := bootstrap.EnvoyYAML(o)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "bootstrap.yaml")
	if err := os.WriteFile(path, y, 0o600); err != nil {
		t.Fatal(err)
	}
	envoytest.Validate(t, path)
}
