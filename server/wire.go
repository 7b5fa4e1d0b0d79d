package server

import (
	"encoding/binary"
	"fmt"
	"strings"
	"unicode/utf8"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// Responses are encoded without copying their large resources, and in
// chunks rather than one buffer the size of the response (issue 14). A
// resource's encoding (xds.Resource.Wire) is made once and shared by every
// response that carries it; proto.Marshal copied all of them into one
// buffer per response — 300 KiB for a proxy that sees 200 services, a
// fresh large allocation for every cold proxy — which gRPC's framer then
// copied again into its write buffer. Here a response is a list of pieces:
// the small fields and small resources copied into 32 KiB chunks (an
// ordinary size class, reused as soon as the write is done), each large
// resource's value referenced where it is. Small resources are not
// referenced one by one: gRPC keeps a slice per connection as long as the
// most pieces one HTTP/2 frame ever took, which was a kilobyte per proxy
// when every endpoint set was a piece of its own.
//
// The bytes parse to the same message as proto.Marshal's; only the order
// of the top-level fields differs (resources last), which protobuf
// parsers accept by definition.

const (
	// refMin is the smallest resource value referenced rather than copied.
	refMin = 4 << 10
	// chunkSize is the size of the buffers the copied bytes go into.
	chunkSize = 32 << 10
)

// pieceWriter builds the pieces of one response.
type pieceWriter struct {
	buf   []byte // the current chunk
	start int    // buf[start:] is not yet a piece
	out   mem.BufferSlice
}

// cut makes the chunk's bytes written since the last cut a piece.
func (w *pieceWriter) cut() {
	if len(w.buf) > w.start {
		w.out = append(w.out, mem.SliceBuffer(w.buf[w.start:len(w.buf):len(w.buf)]))
		w.start = len(w.buf)
	}
}

// room makes sure the current chunk has n more bytes: a new chunk when it
// has not (written bytes are never moved: pieces point into them).
func (w *pieceWriter) room(n int) {
	if cap(w.buf)-len(w.buf) >= n {
		return
	}
	w.cut()
	w.buf, w.start = make([]byte, 0, max(chunkSize, n)), 0
}

// anySize is the encoded size of a as a message (not as a field).
func anySize(a *anypb.Any) int {
	n := 0
	if a.TypeUrl != "" {
		n += protowire.SizeTag(1) + protowire.SizeBytes(len(a.TypeUrl))
	}
	if len(a.Value) > 0 {
		n += protowire.SizeTag(2) + protowire.SizeBytes(len(a.Value))
	}
	return n
}

// anyField writes a as field num, its value referenced when large enough.
// Any has no fields but these two, and meshd sets no unknown fields on it.
func (w *pieceWriter) anyField(num protowire.Number, a *anypb.Any) {
	// Tags and lengths: at most 3 × (tag 1 + varint 10), and the type URL.
	w.room(33 + len(a.TypeUrl))
	w.buf = protowire.AppendTag(w.buf, num, protowire.BytesType)
	w.buf = protowire.AppendVarint(w.buf, uint64(anySize(a)))
	if a.TypeUrl != "" {
		w.buf = protowire.AppendTag(w.buf, 1, protowire.BytesType)
		w.buf = protowire.AppendString(w.buf, a.TypeUrl)
	}
	if len(a.Value) == 0 {
		return
	}
	w.buf = protowire.AppendTag(w.buf, 2, protowire.BytesType)
	w.buf = protowire.AppendVarint(w.buf, uint64(len(a.Value)))
	if len(a.Value) < refMin {
		w.room(len(a.Value))
		w.buf = append(w.buf, a.Value...)
		return
	}
	w.cut()
	w.out = append(w.out, mem.SliceBuffer(a.Value))
}

// usable reports whether a's encoding is what anyField writes: unknown
// fields (none that meshd makes) would be lost.
func usable(a *anypb.Any) bool {
	return a != nil && len(a.ProtoReflect().GetUnknown()) == 0
}

// startWithout checks every resource in *rs with ok, then returns a writer
// holding m's encoding without them (they are written after it, as
// pieces). m is briefly without its resources: it belongs to the sending
// stream, which is blocked in Send.
func startWithout[R any](m proto.Message, rs *[]R, ok func(R) bool) (pieceWriter, bool) {
	var w pieceWriter
	for _, r := range *rs {
		if !ok(r) {
			return w, false
		}
	}
	saved := *rs
	*rs = nil
	w.room(proto.Size(m))
	var err error
	w.buf, err = proto.MarshalOptions{}.MarshalAppend(w.buf, m)
	*rs = saved
	return w, err == nil
}

// marshalSotW encodes a state-of-the-world response as pieces.
func marshalSotW(m *discoveryv3.DiscoveryResponse) (mem.BufferSlice, bool) {
	w, ok := startWithout(m, &m.Resources, usable)
	if !ok {
		return nil, false
	}
	for _, a := range m.Resources {
		w.anyField(2, a)
	}
	w.cut()
	return w.out, true
}

// marshalDelta is marshalSotW for delta responses: each resource's
// wrapper (name, version) is encoded into the scratch buffer, its Any as
// above. The wrappers are made for this response alone (delta.go).
func marshalDelta(m *discoveryv3.DeltaDiscoveryResponse) (mem.BufferSlice, bool) {
	w, ok := startWithout(m, &m.Resources, func(r *discoveryv3.Resource) bool {
		return r != nil && usable(r.Resource) && len(r.ProtoReflect().GetUnknown()) == 0
	})
	if !ok {
		return nil, false
	}
	var err error
	for _, r := range m.Resources {
		a := r.Resource
		if plainWrapper(r) {
			// What meshd sends: a name, a version and the resource,
			// written here rather than by proto.Marshal per resource (a
			// quarter of meshd's CPU in a delta cold sync of 3,000 proxies
			// that see every service).
			inner := protowire.SizeTag(1) + protowire.SizeBytes(len(r.Version)) +
				protowire.SizeTag(3) + protowire.SizeBytes(len(r.Name)) +
				protowire.SizeTag(2) + protowire.SizeBytes(anySize(a))
			w.room(3*protowire.SizeTag(3) + 4*binary.MaxVarintLen64 + len(r.Version) + len(r.Name))
			w.buf = protowire.AppendTag(w.buf, 2, protowire.BytesType)
			w.buf = protowire.AppendVarint(w.buf, uint64(inner))
			w.buf = protowire.AppendTag(w.buf, 1, protowire.BytesType)
			w.buf = protowire.AppendString(w.buf, r.Version)
			w.buf = protowire.AppendTag(w.buf, 3, protowire.BytesType)
			w.buf = protowire.AppendString(w.buf, r.Name)
			w.anyField(2, a)
			continue
		}
		r.Resource = nil
		shell := proto.Size(r)
		w.room(20 + shell)
		w.buf = protowire.AppendTag(w.buf, 2, protowire.BytesType)
		w.buf = protowire.AppendVarint(w.buf, uint64(shell+protowire.SizeTag(2)+protowire.SizeBytes(anySize(a))))
		w.buf, err = proto.MarshalOptions{}.MarshalAppend(w.buf, r)
		r.Resource = a
		if err != nil {
			return nil, false
		}
		w.anyField(2, a)
	}
	w.cut()
	return w.out, true
}

// plainWrapper reports whether a delta resource has only a name and a
// version besides its resource, both set and valid UTF-8 (as proto.Marshal
// would insist), and nothing proto.Marshal would write that marshalDelta's
// fast path does not.
func plainWrapper(r *discoveryv3.Resource) bool {
	return r.Name != "" && r.Version != "" && r.ResourceName == nil && len(r.Aliases) == 0 && r.Ttl == nil &&
		r.CacheControl == nil && r.Metadata == nil && utf8.ValidString(r.Name) && utf8.ValidString(r.Version)
}

// unmarshalRequest is proto.Unmarshal for a state-of-the-world request,
// with its resource names made from one string instead of one each
// (issue 14). Every ACK repeats the names a proxy subscribes to: 200 for a
// proxy that sees every service, so an endpoint change at 3,000 such
// proxies made 600,000 strings to compare with the subscriptions and
// drop (decoding ACKs was a tenth of meshd's CPU profile for such a
// change). BenchmarkDecodeACK: 9 allocations instead of 213, and a little
// less time. The other fields go to proto.Unmarshal; names are checked for
// UTF-8 as it checks them.
func unmarshalRequest(b []byte, m *discoveryv3.DiscoveryRequest) error {
	var (
		rest  []byte
		spans [][2]int // of the names in b
		total int
	)
	// Names are most of an ACK: size the list for as many as it could hold
	// (each takes at least two bytes), up to what a proxy seeing every
	// service names, rather than growing it by doubling.
	spans = make([][2]int, 0, min(len(b)/2, 256))
	for off := 0; off < len(b); {
		num, typ, n := protowire.ConsumeTag(b[off:])
		if n < 0 {
			return protowire.ParseError(n)
		}
		l := protowire.ConsumeFieldValue(num, typ, b[off+n:])
		if l < 0 {
			return protowire.ParseError(l)
		}
		if num == 3 && typ == protowire.BytesType {
			v, vn := protowire.ConsumeBytes(b[off+n:])
			start := off + n + vn - len(v)
			spans = append(spans, [2]int{start, start + len(v)})
			total += len(v)
		} else {
			rest = append(rest, b[off:off+n+l]...)
		}
		off += n + l
	}
	if err := proto.Unmarshal(rest, m); err != nil {
		return err
	}
	if len(spans) == 0 {
		return nil
	}
	var all strings.Builder
	all.Grow(total)
	for _, sp := range spans {
		all.Write(b[sp[0]:sp[1]])
	}
	joined := all.String()
	names := make([]string, len(spans))
	at := 0
	for i, sp := range spans {
		names[i] = joined[at : at+sp[1]-sp[0]]
		at += sp[1] - sp[0]
		if !utf8.ValidString(names[i]) {
			return fmt.Errorf("proto: field envoy.service.discovery.v3.DiscoveryRequest.resource_names contains invalid UTF-8")
		}
	}
	m.ResourceNames = names
	return nil
}
