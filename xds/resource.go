package xds

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"

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
	return &Resource{Name: name, Message: m, Hash: hex.EncodeToString(sum[:]), Refs: refs}, nil
}

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
	return &anypb.Any{TypeUrl: "type.googleapis.com/" + string(m.ProtoReflect().Descriptor().FullName()), Value: b}, nil
}
