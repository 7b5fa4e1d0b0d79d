package server

import (
	"bytes"
	"strings"
	"testing"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/meshd/meshd/server/caclient"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// The codec encodes as gRPC's proto codec does (same bytes as
// proto.Marshal), takes buffers above gRPC's pooling threshold from the
// bounded pool and gives them back when gRPC frees them, and decodes.
func TestPoolCodec(t *testing.T) {
	pool := newBoundedPool([2]int{256, 4}, [2]int{64 << 10, 4})
	c := poolCodec{pool: pool}
	for _, size := range []int{10, 5000} {
		in := &discoveryv3.DiscoveryResponse{VersionInfo: "v1", TypeUrl: "t", Nonce: "7",
			Resources: []*anypb.Any{{TypeUrl: "x", Value: []byte(strings.Repeat("a", size))}}}
		data, err := c.Marshal(in)
		if err != nil {
			t.Fatal(err)
		}
		want, err := proto.Marshal(in)
		if err != nil {
			t.Fatal(err)
		}
		if got := data.Materialize(); !bytes.Equal(got, want) {
			t.Fatalf("size %d: encoding differs from proto.Marshal", size)
		}
		var out discoveryv3.DiscoveryResponse
		if err := c.Unmarshal(data, &out); err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(in, &out) {
			t.Fatalf("size %d: round trip differs", size)
		}
		data.Free()
		pooled := !mem.IsBelowBufferPoolingThreshold(len(want))
		if kept := pool.kept()[1]; pooled != (kept > 0) {
			t.Fatalf("size %d (pooled %v): large buffers kept after Free: %d", size, pooled, kept)
		}
	}
	if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer([]byte{0xff})}, &discoveryv3.DiscoveryRequest{}); err == nil {
		t.Fatal("garbage decoded without an error")
	}
	// The CA service's messages (not protos) are JSON.
	data, err := c.Marshal(&caclient.SignRequest{NodeID: "web.default", CSR: "x"})
	if err != nil {
		t.Fatal(err)
	}
	if got := string(data.Materialize()); got != `{"nodeId":"web.default","csr":"x"}` {
		t.Fatalf("SignRequest encoded as %s", got)
	}
	var back caclient.SignRequest
	if err := c.Unmarshal(data, &back); err != nil || back.NodeID != "web.default" {
		t.Fatalf("SignRequest round trip: %+v, %v", back, err)
	}
	if _, err := c.Marshal(func() {}); err == nil {
		t.Fatal("a func marshalled")
	}
}
