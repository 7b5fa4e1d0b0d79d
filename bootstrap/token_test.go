package bootstrap_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshd/meshd/bootstrap"
	"github.com/meshd/meshd/internal/envoytest"
	"github.com/meshd/meshd/xds"
)

// TestEnvoyTokenMetadata: a bootstrap token travels as the xDS stream's
// initial metadata, and Envoy accepts the result.
func TestEnvoyTokenMetadata(t *testing.T) {
	dir := t.TempDir()
	o := bootstrap.EnvoyOptions{Service: "web", CAFile: envoytest.WriteRootCA(t, dir, "root-cert.pem"), Token: "meshd1.e30.c2ln"}
	b, err := bootstrap.Envoy(o)
	if err != nil {
		t.Fatal(err)
	}
	md := b.GetDynamicResources().GetAdsConfig().GetGrpcServices()[0].GetInitialMetadata()
	if len(md) != 1 || md[0].GetKey() != "authorization" || md[0].GetValue() != "Bearer meshd1.e30.c2ln" {
		t.Fatalf("initial_metadata = %v, want authorization: Bearer <token>", md)
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
	if strings.Contains(string(y), "initial_metadata") {
		t.Error("a bootstrap without a token carries initial_metadata")
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
