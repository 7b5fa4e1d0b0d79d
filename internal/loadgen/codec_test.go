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
	// A received value is reused from one response to the next, as the
	// proxies' streams do: what the last one held must not leak into the
	// next.
	r := &received{sotw: &discoverygrpc.DiscoveryResponse{Nonce: "stale", Resources: anys}, delta: nil}
	rd := &received{delta: &discoverygrpc.DeltaDiscoveryResponse{Nonce: "stale"}}
	for _, tc := range []struct {
		in  proto.Message
		v   any
		out func() proto.Message
	}{
		{sotw, r, func() proto.Message { return r.sotw }},
		{&discoverygrpc.DiscoveryResponse{VersionInfo: "v2"}, r, func() proto.Message { return r.sotw }},
		{delta, rd, func() proto.Message { return rd.delta }},
		{&discoverygrpc.DiscoveryRequest{VersionInfo: "v", ResourceNames: []string{"a"}}, &discoverygrpc.DiscoveryRequest{}, nil},
	} {
		b, err := proto.Marshal(tc.in)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(b[:len(b)/2]), mem.SliceBuffer(b[len(b)/2:])}, tc.v); err != nil {
			t.Fatalf("%T: %v", tc.in, err)
		}
		out, _ := tc.v.(proto.Message)
		if tc.out != nil {
			out = tc.out()
		}
		if !proto.Equal(tc.in, out) {
			t.Fatalf("%T decoded as\n%v\nwant\n%v", tc.in, out, tc.in)
		}
		if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(b[:len(b)-1])}, tc.v); err == nil {
			t.Fatalf("%T: a truncated message decoded without an error", tc.in)
		}
	}
	// A name that is not UTF-8 is refused, as proto.Unmarshal refuses it.
	bad := protowire.AppendString(protowire.AppendTag(nil, 3, protowire.BytesType), "\xff")
	resp := protowire.AppendBytes(protowire.AppendTag(nil, 2, protowire.BytesType), bad)
	if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(resp)}, rd); err == nil {
		t.Fatal("a delta resource named with invalid UTF-8 decoded")
	}
	if err := proto.Unmarshal(resp, &discoverygrpc.DeltaDiscoveryResponse{}); err == nil {
		t.Fatal("proto.Unmarshal decodes the invalid name: the test's premise is wrong")
	}
	r.release()
	rd.release()
	if r.buf != nil || rd.buf != nil {
		t.Fatal("release kept the buffer")
	}
}

// Receive buffers come from size classes and go back only to their own.
func TestReceiveBuffers(t *testing.T) {
	for _, n := range []int{0, 1, 4 << 10, 4<<10 + 1, 300 << 10, 2 << 20} {
		b := getBuffer(n)
		if len(*b) < n || bufferClass(cap(*b)) < 0 || cap(*b) != 4<<10<<bufferClass(cap(*b)) {
			t.Fatalf("getBuffer(%d): len %d cap %d", n, len(*b), cap(*b))
		}
		putBuffer(b)
	}
	big := getBuffer(2<<20 + 1)
	if len(*big) != 2<<20+1 || bufferClass(cap(*big)) >= 0 {
		t.Fatalf("a buffer over 2 MiB: len %d, class %d", len(*big), bufferClass(cap(*big)))
	}
	putBuffer(big) // not pooled: must not panic or be handed out as a class's
	if b := getBuffer(2 << 20); cap(*b) != 2<<20 {
		t.Fatalf("class buffer of %d bytes", cap(*b))
	}
}
