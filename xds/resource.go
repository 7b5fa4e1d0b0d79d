package xds

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sync"
	"unique"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// Resource is one rendered, validated xDS resource. It is immutable once
// built: the same *Resource is handed to every proxy that needs it, so it is
// marshalled, hashed and validated once, not once per proxy.
type Resource struct {
	Name    string
	Message types.Resource
	// Hash is the hex SHA-256 of the deterministic wire bytes; snapshot
	// versions are derived from it so identical content gives identical
	// versions on every replica and after restarts.
	Hash string
	// Refs are the resources this one points at (RDS, EDS, SDS names and
	// route clusters), recorded by the builder so that a whole proxy's set can
	// be checked for dangling references without re-parsing every Any.
	Refs []Ref
	// Wire is Message's deterministic encoding (the bytes Hash is taken
	// of) as it goes into a response. Marshalled once here, it is shared by
	// every response that carries the resource (the server's SotW and delta loops), so
	// serving a proxy does not marshal its configuration again. Nil for a
	// resource only one proxy has (its inbound listener): those are encoded
	// per response rather than held twice.
	Wire *anypb.Any
}

// Ref is a reference from one resource to another by type and name.
type Ref struct {
	TypeURL string
	Name    string
}

// validator is implemented by every generated Envoy message (protoc-gen-validate).
type validator interface{ ValidateAll() error }

var deterministic = proto.MarshalOptions{Deterministic: true}

// newResource validates m, hashes its deterministic encoding and wraps it.
// A resource that fails validation is an error here, so it can never reach a
// snapshot.
func newResource(name string, m types.Resource, refs ...Ref) (*Resource, error) {
	if v, ok := m.(validator); ok {
		if err := v.ValidateAll(); err != nil {
			return nil, fmt.Errorf("resource %q (%T) failed validation: %w", name, m, err)
		}
	}
	b, err := deterministic.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("marshal resource %q: %w", name, err)
	}
	// The full SHA-256 hex of the deterministic encoding is exactly the
	// per-resource version go-control-plane puts in delta responses, so the
	// versions a delta client reports back (initial_resource_versions, after
	// a reconnect) compare equal and unchanged resources are not resent.
	sum := sha256.Sum256(b)
	// One type URL string per type, not per resource.
	wire := &anypb.Any{TypeUrl: unique.Make(typeURLPrefix + string(m.ProtoReflect().Descriptor().FullName())).Value(), Value: b}
	return &Resource{Name: name, Message: m, Hash: hex.EncodeToString(sum[:]), Refs: refs, Wire: wire}, nil
}

// newProxyResource is newResource for a resource only one proxy has (its
// inbound listener: it carries the proxy's address). Its encoding is only
// hashed, in a pooled buffer, and not kept as Wire: held for every proxy
// it would cost more memory than encoding it per response costs time, and
// rendering every proxy would leave a buffer of garbage each.
func newProxyResource(name string, m types.Resource, refs ...Ref) (*Resource, error) {
	if v, ok := m.(validator); ok {
		if err := v.ValidateAll(); err != nil {
			return nil, fmt.Errorf("resource %q (%T) failed validation: %w", name, m, err)
		}
	}
	buf := marshalBuffers.Get().(*[]byte)
	defer marshalBuffers.Put(buf)
	b, err := deterministic.MarshalAppend((*buf)[:0], m)
	if err != nil {
		return nil, fmt.Errorf("marshal resource %q: %w", name, err)
	}
	*buf = b
	sum := sha256.Sum256(b)
	return &Resource{Name: name, Message: m, Hash: hex.EncodeToString(sum[:]), Refs: refs}, nil
}

// marshalBuffers are scratch buffers for encodings that are only hashed.
var marshalBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

// anyOf validates m and wraps it in an Any. ValidateAll on the outer message
// does not descend into Any fields, so this is the only place embedded
// messages (filters, transport sockets, protocol options) get validated.
func anyOf(m proto.Message) (*anypb.Any, error) {
	if v, ok := m.(validator); ok {
		if err := v.ValidateAll(); err != nil {
			return nil, fmt.Errorf("%T failed validation: %w", m, err)
		}
	}
	b, err := deterministic.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("marshal %T: %w", m, err)
	}
	return &anypb.Any{TypeUrl: typeURLPrefix + string(m.ProtoReflect().Descriptor().FullName()), Value: b}, nil
}

const typeURLPrefix = "type.googleapis.com/"
