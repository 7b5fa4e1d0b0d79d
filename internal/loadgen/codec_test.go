package loadgen

import (
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// The tool's response decoder gives the same messages as proto.Unmarshal,
// for state-of-the-world and delta responses, odd Anys included, and
// rejects truncated input.
func TestResponseCodecDecodesAsProto(t *testing.T) {
	c := newResponseCodec()
	odd := &anypb.Any{TypeUrl: "type.googleapis.com/x", Value: []byte("v")}
	odd.ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 9, protowire.VarintType), 1))
	anys := []*anypb.Any{
		{TypeUrl: "type.googleapis.com/x", Value: []byte(strings.Repeat("b", 300))},
		{TypeUrl: "type.googleapis.com/y"},
		{Value: []byte("only a value")},
		odd,
	}
	sotw := &discoverygrpc.DiscoveryResponse{VersionInfo: "v1", Resources: anys, TypeUrl: "t", Nonce: "7", Canary: true,
		ControlPlane: &corev3.ControlPlane{Identifier: "cp"}}
	delta := &discoverygrpc.DeltaDiscoveryResponse{SystemVersionInfo: "v2", TypeUrl: "t", Nonce: "8", RemovedResources: []string{"gone"}}
	for i, a := range anys {
		delta.Resources = append(delta.Resources, &discoverygrpc.Resource{Name: "r" + string(rune('a'+i)), Version: "h", Resource: a, Aliases: []string{"al"}})
	}
	delta.Resources = append(delta.Resources, &discoverygrpc.Resource{Name: "no-any"})
	for _, tc := range []struct{ in, out proto.Message }{
		{sotw, &discoverygrpc.DiscoveryResponse{Nonce: "stale"}},
		{delta, &discoverygrpc.DeltaDiscoveryResponse{Nonce: "stale"}},
		{&discoverygrpc.DiscoveryRequest{VersionInfo: "v", ResourceNames: []string{"a"}}, &discoverygrpc.DiscoveryRequest{}},
	} {
		b, err := proto.Marshal(tc.in)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, tc.out); err != nil {
			t.Fatalf("%T: %v", tc.in, err)
		}
		if !proto.Equal(tc.in, tc.out) {
			t.Fatalf("%T decoded as\n%v\nwant\n%v", tc.in, tc.out, tc.in)
		}
		if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(b[:len(b)-1])}, tc.out); err == nil {
			t.Fatalf("%T: a truncated message decoded without an error", tc.in)
		}
	}
}
