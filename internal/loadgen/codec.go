package loadgen

import (
	"sync"
	"unicode/utf8"

	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// responseCodec decodes the discovery responses a simulated proxy receives
// with each resource's value pointing into one buffer holding the whole
// message, instead of a copy of its own, and takes that buffer from a pool
// that the proxy gives it back to once it has handled the response (it
// keeps no value it receives: its resource cache clones the few it has not
// seen before). proto.Unmarshal's copy of every value — 300 KiB per cold
// proxy that sees 200 services — was a fifth of the tool's CPU, and a
// fresh buffer per message made the copy slower still at 10,000 proxies
// (new memory, faulted in page by page), on the two cores the control
// plane is measured on. Everything else is gRPC's proto codec.
type responseCodec struct{ encoding.CodecV2 }

func newResponseCodec() responseCodec {
	return responseCodec{encoding.GetCodecV2("proto")}
}

// received is what a proxy's stream reads a response into: one of the two
// messages, and the pooled buffer their values point into, until release.
type received struct {
	sotw  *discoverygrpc.DiscoveryResponse
	delta *discoverygrpc.DeltaDiscoveryResponse
	buf   *[]byte
}

// release gives the buffer back: r's resource values are invalid after it.
func (r *received) release() {
	if r.buf != nil {
		putBuffer(r.buf)
		r.buf = nil
	}
}

// Unmarshal implements encoding.CodecV2.
func (c responseCodec) Unmarshal(data mem.BufferSlice, v any) error {
	r, ok := v.(*received)
	if !ok {
		return c.CodecV2.Unmarshal(data, v)
	}
	r.release()
	r.buf = getBuffer(data.Len())
	b := (*r.buf)[:data.Len()]
	data.CopyTo(b)
	if r.delta != nil {
		m := r.delta
		return decodeAliasing(b, m, func(field []byte) error {
			res, err := decodeResource(field)
			m.Resources = append(m.Resources, res)
			return err
		})
	}
	m := r.sotw
	return decodeAliasing(b, m, func(field []byte) error {
		a, err := aliasAny(field)
		m.Resources = append(m.Resources, a)
		return err
	})
}

// bufferPools hold receive buffers by size class: 4 KiB << i.
var bufferPools [10]sync.Pool

func bufferClass(n int) int {
	for i := range bufferPools {
		if n <= 4<<10<<i {
			return i
		}
	}
	return -1 // larger than 2 MiB: not pooled
}

func getBuffer(n int) *[]byte {
	c := bufferClass(n)
	if c < 0 {
		b := make([]byte, n)
		return &b
	}
	if b, ok := bufferPools[c].Get().(*[]byte); ok {
		return b
	}
	b := make([]byte, 4<<10<<c)
	return &b
}

func putBuffer(b *[]byte) {
	if c := bufferClass(cap(*b)); c >= 0 && cap(*b) == 4<<10<<c {
		bufferPools[c].Put(b)
	}
}

// decodeAliasing decodes b into m (reset first): field 2 (the resources,
// or a delta resource's Any) is handed to each as it is in b, every other
// field is decoded by proto.Unmarshal.
func decodeAliasing(b []byte, m proto.Message, each func([]byte) error) error {
	proto.Reset(m)
	var rest []byte
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		l := protowire.ConsumeFieldValue(num, typ, b[n:])
		if l < 0 {
			return protowire.ParseError(l)
		}
		if num == 2 && typ == protowire.BytesType {
			v, _ := protowire.ConsumeBytes(b[n:])
			if err := each(v); err != nil {
				return err
			}
		} else {
			rest = append(rest, b[:n+l]...)
		}
		b = b[n+l:]
	}
	return proto.UnmarshalOptions{Merge: true}.Unmarshal(rest, m)
}

// decodeResource decodes a delta resource: its name and version (as
// meshd sends them, strings shared between proxies) and its Any here, any
// other field by proto.Unmarshal — which decoding each wrapper whole was
// a fifth of the tool's CPU in a delta cold sync of 3,000 proxies.
func decodeResource(b []byte) (*discoverygrpc.Resource, error) {
	r := &discoverygrpc.Resource{}
	var rest []byte
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return r, protowire.ParseError(n)
		}
		l := protowire.ConsumeFieldValue(num, typ, b[n:])
		if l < 0 {
			return r, protowire.ParseError(l)
		}
		v, _ := protowire.ConsumeBytes(b[n:])
		switch {
		case typ != protowire.BytesType:
			rest = append(rest, b[:n+l]...)
		case num == 2:
			a, err := aliasAny(v)
			if err != nil {
				return r, err
			}
			r.Resource = a
		case (num == 1 || num == 3) && utf8.Valid(v):
			if num == 1 {
				r.Version = intern(v)
			} else {
				r.Name = intern(v)
			}
		default:
			rest = append(rest, b[:n+l]...)
		}
		b = b[n+l:]
	}
	if len(rest) == 0 {
		return r, nil
	}
	return r, proto.UnmarshalOptions{Merge: true}.Unmarshal(rest, r)
}

// aliasAny decodes an Any whose value stays in b.
func aliasAny(b []byte) (*anypb.Any, error) {
	a, whole := &anypb.Any{}, b
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, protowire.ParseError(n)
		}
		if typ != protowire.BytesType || (num != 1 && num != 2) {
			// Not an Any as control planes send it: decode it the usual way.
			a = &anypb.Any{}
			return a, proto.Unmarshal(whole, a)
		}
		v, m := protowire.ConsumeBytes(b[n:])
		if m < 0 {
			return nil, protowire.ParseError(m)
		}
		if num == 1 {
			a.TypeUrl = intern(v)
		} else {
			a.Value = v[:len(v):len(v)]
		}
		b = b[n+m:]
	}
	return a, nil
}

// interned holds the strings responses repeat from proxy to proxy: type
// URLs, and delta resources' names and versions (as many as the distinct
// resources a run sees).
var interned sync.Map // string → string

// intern returns b as a string, one per distinct value.
func intern(b []byte) string {
	if s, ok := interned.Load(string(b)); ok {
		return s.(string)
	}
	s, _ := interned.LoadOrStore(string(b), string(b))
	return s.(string)
}
