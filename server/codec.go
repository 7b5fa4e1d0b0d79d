package server

import (
	"encoding/json"
	"fmt"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
)

// poolCodec is gRPC's proto codec (the same encoding, UseCachedSize after
// Size as gRPC does) with meshd's bounded buffer pool: gRPC's own codec
// takes its buffers from the process-wide default pool, a sync.Pool per
// size, whatever pool the server is given — and that is where a burst of
// responses leaves most of its buffers (bufpool.go).
//
// A codec forced on a server serves every call whatever its content
// subtype, so it also carries the CA service's JSON messages (auth_ca.go),
// the only values on meshd's server that are not protos.
type poolCodec struct{ pool mem.BufferPool }

// Name implements encoding.CodecV2: it replaces the "proto" codec.
func (poolCodec) Name() string { return "proto" }

// Marshal implements encoding.CodecV2.
func (c poolCodec) Marshal(v any) (mem.BufferSlice, error) {
	m, ok := v.(proto.Message)
	if !ok {
		b, err := json.Marshal(v) // the CA service's messages (server/caclient's JSON codec)
		if err != nil {
			return nil, fmt.Errorf("encoding %T: %w", v, err)
		}
		return mem.BufferSlice{mem.SliceBuffer(b)}, nil
	}
	switch r := m.(type) {
	case *discoveryv3.DiscoveryResponse:
		if out, ok := marshalSotW(r); ok {
			return out, nil
		}
	case *discoveryv3.DeltaDiscoveryResponse:
		if out, ok := marshalDelta(r); ok {
			return out, nil
		}
	}
	size := proto.Size(m)
	opts := proto.MarshalOptions{UseCachedSize: true}
	if mem.IsBelowBufferPoolingThreshold(size) {
		b, err := opts.Marshal(m)
		if err != nil {
			return nil, err
		}
		return mem.BufferSlice{mem.SliceBuffer(b)}, nil
	}
	buf := c.pool.Get(size)
	if _, err := opts.MarshalAppend((*buf)[:0], m); err != nil {
		c.pool.Put(buf)
		return nil, err
	}
	return mem.BufferSlice{mem.NewBuffer(buf, c.pool)}, nil
}

// Unmarshal implements encoding.CodecV2.
func (c poolCodec) Unmarshal(data mem.BufferSlice, v any) error {
	buf := data.MaterializeToBuffer(c.pool)
	defer buf.Free()
	m, ok := v.(proto.Message)
	if !ok {
		return json.Unmarshal(buf.ReadOnlyData(), v)
	}
	if r, ok := m.(*discoveryv3.DiscoveryRequest); ok {
		return unmarshalRequest(buf.ReadOnlyData(), r)
	}
	return proto.Unmarshal(buf.ReadOnlyData(), m)
}
