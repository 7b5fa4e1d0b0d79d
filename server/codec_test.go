package server

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/meshd/meshd/server/caclient"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// The codec encodes messages other than responses as gRPC's proto codec
// does (same bytes as proto.Marshal), takes buffers above gRPC's pooling
// threshold from the bounded pool and gives them back when gRPC frees
// them, and decodes.
func TestPoolCodec(t *testing.T) {
	pool := newBoundedPool([2]int{256, 4}, [2]int{64 << 10, 4})
	c := poolCodec{pool: pool}
	for _, size := range []int{10, 5000} {
		in := &discoveryv3.DiscoveryRequest{VersionInfo: "v1", TypeUrl: "t", ResponseNonce: "7",
			ResourceNames: []string{strings.Repeat("a", size)}}
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
		var out discoveryv3.DiscoveryRequest
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

// Responses are encoded as pieces that reference each large resource value
// instead of copying it (wire.go), and parse to the same message; a
// resource the piece encoder cannot write exactly (an Any with unknown
// fields) falls back to proto.Marshal.
func TestResponsesReferenceResources(t *testing.T) {
	c := poolCodec{pool: newBoundedPool([2]int{256, 4})}
	big := []byte(strings.Repeat("b", 5000))
	anys := []*anypb.Any{
		{TypeUrl: "type.googleapis.com/x", Value: []byte("small")},
		{TypeUrl: "type.googleapis.com/x", Value: big},
		{TypeUrl: "type.googleapis.com/x"},
		{Value: big[:refMin]},
	}
	sotw := &discoveryv3.DiscoveryResponse{VersionInfo: "v1", Resources: anys, TypeUrl: "t", Nonce: "7", Canary: true,
		ControlPlane: &corev3.ControlPlane{Identifier: "meshd"}}
	var wrapped []*discoveryv3.Resource
	for i, a := range anys {
		// Plain wrappers (name, version) take marshalDelta's fast path;
		// one with aliases and one without a version take proto.Marshal's.
		r := &discoveryv3.Resource{Name: fmt.Sprint("r", i), Version: "h", Resource: a}
		switch i {
		case 1:
			r.Aliases = []string{"x"}
		case 2:
			r.Version = ""
		}
		wrapped = append(wrapped, r)
	}
	delta := &discoveryv3.DeltaDiscoveryResponse{SystemVersionInfo: "v1", Resources: wrapped, RemovedResources: []string{"gone"}, TypeUrl: "t", Nonce: "8"}
	for _, tc := range []struct {
		in  proto.Message
		out proto.Message
	}{{sotw, &discoveryv3.DiscoveryResponse{}}, {delta, &discoveryv3.DeltaDiscoveryResponse{}}} {
		before := proto.Clone(tc.in)
		data, err := c.Marshal(tc.in)
		if err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(tc.in, before) {
			t.Fatalf("%T changed by encoding", tc.in)
		}
		if data.Len() != proto.Size(tc.in) {
			t.Fatalf("%T: %d bytes, proto.Size says %d", tc.in, data.Len(), proto.Size(tc.in))
		}
		refs := 0
		for _, b := range data {
			if d := b.ReadOnlyData(); len(d) > 0 && &d[0] == &big[0] {
				refs++
			}
		}
		if refs != 2 {
			t.Fatalf("%T: the large value is referenced by %d pieces, want 2 (copied instead?)", tc.in, refs)
		}
		if err := c.Unmarshal(data, tc.out); err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(tc.in, tc.out) {
			t.Fatalf("%T: round trip differs:\n%v\n%v", tc.in, tc.in, tc.out)
		}
	}
	// An Any with unknown fields is encoded by proto.Marshal, unknown
	// fields included.
	odd := &anypb.Any{TypeUrl: "type.googleapis.com/x", Value: big}
	odd.ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 9, protowire.VarintType), 1))
	in := &discoveryv3.DiscoveryResponse{VersionInfo: "v1", Resources: []*anypb.Any{odd}, TypeUrl: "t"}
	data, err := c.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := proto.Marshal(in)
	if !bytes.Equal(data.Materialize(), want) {
		t.Fatal("an Any with unknown fields was not encoded by proto.Marshal")
	}
}

// BenchmarkMarshalColdResponse encodes what a cold proxy that sees 200
// services is sent for clusters and listeners (200 resources of 555 bytes,
// one of 76 KB, as xds-load --all-services renders them) with the piece
// encoder and, for comparison, with proto.Marshal into one buffer, and
// hands the result to gRPC's framer the way loopy does (a copy into a
// 16 KiB frame buffer).
func BenchmarkMarshalColdResponse(b *testing.B) {
	var anys []*anypb.Any
	for i := range 200 {
		anys = append(anys, &anypb.Any{TypeUrl: "type.googleapis.com/envoy.config.cluster.v3.Cluster", Value: []byte(strings.Repeat(fmt.Sprint(i%10), 555))})
	}
	anys = append(anys, &anypb.Any{TypeUrl: "type.googleapis.com/envoy.config.listener.v3.Listener", Value: []byte(strings.Repeat("l", 76<<10))})
	resp := &discoveryv3.DiscoveryResponse{VersionInfo: "0123456789abcdef", Resources: anys, TypeUrl: "t", Nonce: "1"}
	frame := make([]byte, 16<<10)
	for _, tc := range []struct {
		name string
		enc  func() mem.BufferSlice
	}{
		{"pieces", func() mem.BufferSlice { out, _ := marshalSotW(resp); return out }},
		{"proto.Marshal", func() mem.BufferSlice {
			buf := make([]byte, 0, proto.Size(resp))
			buf, _ = proto.MarshalOptions{UseCachedSize: true}.MarshalAppend(buf, resp)
			return mem.BufferSlice{mem.SliceBuffer(buf)}
		}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(proto.Size(resp)))
			for b.Loop() {
				r := tc.enc().Reader()
				for r.Remaining() > 0 {
					if _, err := r.Read(frame); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}

// Requests decode as proto.Unmarshal decodes them, resource names included
// (made from one string: an ACK of 200 names allocates a handful of times,
// not 200), and invalid UTF-8 in a name is refused as proto.Unmarshal
// refuses it.
func TestRequestsDecodeAsProto(t *testing.T) {
	c := poolCodec{pool: newBoundedPool([2]int{256, 4}, [2]int{16 << 10, 4})}
	var names []string
	for i := range 200 {
		names = append(names, fmt.Sprintf("outbound|svc-%04d.ns-%d", i, i%10))
	}
	odd := &discoveryv3.DiscoveryRequest{VersionInfo: "v"}
	odd.ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 99, protowire.VarintType), 7))
	for _, in := range []*discoveryv3.DiscoveryRequest{
		{},
		{VersionInfo: "v1", ResourceNames: names, TypeUrl: "t", ResponseNonce: "3"},
		{Node: &corev3.Node{Id: "web.default", Cluster: "web"}, ResourceNames: []string{"", "*", "é"}, TypeUrl: "t"},
		{ResourceNames: []string{"a"}, ErrorDetail: &statuspb.Status{Code: 3, Message: "bad"}, ResourceLocators: []*discoveryv3.ResourceLocator{{Name: "x"}}},
		odd,
	} {
		b, err := proto.Marshal(in)
		if err != nil {
			t.Fatal(err)
		}
		got := &discoveryv3.DiscoveryRequest{VersionInfo: "stale", ResourceNames: []string{"stale"}}
		if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, got); err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(in, got) {
			t.Fatalf("decoded as\n%v\nwant\n%v", got, in)
		}
		if len(b) > 0 {
			if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(b[:len(b)-1])}, got); err == nil {
				t.Fatalf("truncated %v decoded", in)
			}
		}
	}
	bad := protowire.AppendString(protowire.AppendTag(nil, 3, protowire.BytesType), "\xff")
	if err := proto.Unmarshal(bad, &discoveryv3.DiscoveryRequest{}); err == nil {
		t.Fatal("proto.Unmarshal accepts invalid UTF-8: the test's premise is wrong")
	}
	if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(bad)}, &discoveryv3.DiscoveryRequest{}); err == nil {
		t.Fatal("a name with invalid UTF-8 decoded")
	}
	ack, _ := proto.Marshal(&discoveryv3.DiscoveryRequest{VersionInfo: "v1", ResourceNames: names, TypeUrl: "t", ResponseNonce: "3"})
	allocs := testing.AllocsPerRun(50, func() {
		if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(ack)}, &discoveryv3.DiscoveryRequest{}); err != nil {
			t.Fatal(err)
		}
	})
	if allocs > 20 {
		t.Fatalf("an ACK of 200 names took %.0f allocations, want a handful", allocs)
	}
}

// BenchmarkDecodeACK decodes a state-of-the-world ACK naming 200 endpoint
// sets (a proxy that sees every service) as the server's codec does, and
// as proto.Unmarshal does.
func BenchmarkDecodeACK(b *testing.B) {
	var names []string
	for i := range 200 {
		names = append(names, fmt.Sprintf("outbound|svc-%04d.ns-%d", i, i%10))
	}
	ack, _ := proto.Marshal(&discoveryv3.DiscoveryRequest{VersionInfo: "0123456789abcdef0123456789abcdef", ResourceNames: names,
		TypeUrl: "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment", ResponseNonce: "12"})
	b.Run("codec", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := unmarshalRequest(ack, &discoveryv3.DiscoveryRequest{}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("proto.Unmarshal", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := proto.Unmarshal(ack, &discoveryv3.DiscoveryRequest{}); err != nil {
				b.Fatal(err)
			}
		}
	})
}
