package auth

import (
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

// The replayed first request reaches go-control-plane with every field the
// proxy sent (unknown ones too), moved rather than copied.
func TestMoveIntoKeepsTheWholeRequest(t *testing.T) {
	meta, err := structpb.NewStruct(map[string]any{"flavor": "envoy", "labels": map[string]any{"app": "web"}})
	if err != nil {
		t.Fatal(err)
	}
	src := &discoveryv3.DiscoveryRequest{
		VersionInfo:   "v1",
		Node:          &corev3.Node{Id: "web.default", Cluster: "web", Metadata: meta, UserAgentName: "envoy"},
		ResourceNames: []string{"a", "b"},
		TypeUrl:       resourcev3.SecretType,
		ResponseNonce: "7",
	}
	src.ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 999, protowire.VarintType), 42))
	want := proto.Clone(src)
	dst := &discoveryv3.DiscoveryRequest{}
	moveInto(dst, src)
	if !proto.Equal(dst, want) {
		t.Fatalf("moved request differs:\n got %v\nwant %v", dst, want)
	}
	if len(dst.ProtoReflect().GetUnknown()) == 0 {
		t.Error("unknown fields lost")
	}
	if dst.GetNode() != src.GetNode() {
		t.Error("node copied rather than moved")
	}
	deltaSrc := &discoveryv3.DeltaDiscoveryRequest{Node: src.GetNode(), TypeUrl: resourcev3.ClusterType,
		ResourceNamesSubscribe: []string{"x"}, InitialResourceVersions: map[string]string{"x": "1"}}
	deltaWant := proto.Clone(deltaSrc)
	deltaDst := &discoveryv3.DeltaDiscoveryRequest{}
	moveInto(deltaDst, deltaSrc)
	if !proto.Equal(deltaDst, deltaWant) {
		t.Fatalf("moved delta request differs:\n got %v\nwant %v", deltaDst, deltaWant)
	}
}
