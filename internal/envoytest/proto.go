package envoytest

import (
	"fmt"
	"strings"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	"sigs.k8s.io/yaml"

	// Every extension meshd puts inside an Any must be linked in, or
	// protojson and anypb cannot resolve its type URL. Keep this list in
	// step with what meshd generates; DeepValidate names a missing one.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
)

// validatable is implemented by every message protoc-gen-validate generated
// (all of Envoy's).
type validatable interface {
	ValidateAll() error
}

// DeepValidate runs ValidateAll on m and, because ValidateAll stops at Any
// fields, unpacks every Any found anywhere inside m and validates its
// contents the same way, recursively. An Any whose type is not linked into
// the test binary is an error (add a blank import to this package).
func DeepValidate(m proto.Message) error {
	var errs []string
	deepValidate(m.ProtoReflect(), string(m.ProtoReflect().Descriptor().FullName()), &errs)
	if len(errs) > 0 {
		return fmt.Errorf("%d problem(s):\n  %s", len(errs), strings.Join(errs, "\n  "))
	}
	return nil
}

func deepValidate(m protoreflect.Message, path string, errs *[]string) {
	if v, ok := m.Interface().(validatable); ok {
		if err := v.ValidateAll(); err != nil {
			*errs = append(*errs, path+": "+err.Error())
		}
	}
	walkAnys(m, path, errs)
}

// walkAnys finds the Any fields below m; each one's contents get a full
// deepValidate (their own ValidateAll plus their Anys).
func walkAnys(m protoreflect.Message, path string, errs *[]string) {
	if a, ok := m.Interface().(*anypb.Any); ok {
		inner, err := anypb.UnmarshalNew(a, proto.UnmarshalOptions{})
		if err != nil {
			*errs = append(*errs, fmt.Sprintf("%s: cannot unpack Any %q (is its package imported by envoytest?): %v", path, a.GetTypeUrl(), err))
			return
		}
		deepValidate(inner.ProtoReflect(), path+"<"+string(inner.ProtoReflect().Descriptor().FullName())+">", errs)
		return
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		name := path + "." + string(fd.Name())
		switch {
		case fd.IsMap():
			if fd.MapValue().Message() == nil {
				return true
			}
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				walkAnys(mv.Message(), fmt.Sprintf("%s[%v]", name, k.Interface()), errs)
				return true
			})
		case fd.IsList():
			if fd.Message() == nil {
				return true
			}
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				walkAnys(l.Get(i).Message(), fmt.Sprintf("%s[%d]", name, i), errs)
			}
		case fd.Message() != nil:
			walkAnys(v.Message(), name, errs)
		}
		return true
	})
}

// UnmarshalYAML parses Envoy-style YAML (as Envoy itself reads it: YAML →
// JSON → proto JSON mapping) into m, rejecting unknown fields.
func UnmarshalYAML(data []byte, m proto.Message) error {
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return fmt.Errorf("YAML to JSON: %w", err)
	}
	if err := protojson.Unmarshal(js, m); err != nil {
		return fmt.Errorf("parsing as %s: %w", m.ProtoReflect().Descriptor().FullName(), err)
	}
	return nil
}

// MarshalYAML renders m as Envoy-style YAML (snake_case field names), e.g.
// to hand a generated resource to `envoy --mode validate`.
func MarshalYAML(m proto.Message) ([]byte, error) {
	js, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encoding %s as JSON: %w", m.ProtoReflect().Descriptor().FullName(), err)
	}
	y, err := yaml.JSONToYAML(js)
	if err != nil {
		return nil, fmt.Errorf("converting %s to YAML: %w", m.ProtoReflect().Descriptor().FullName(), err)
	}
	return y, nil
}

// ParseBootstrapYAML parses an Envoy bootstrap and deep-validates it.
func ParseBootstrapYAML(data []byte) (*bootstrapv3.Bootstrap, error) {
	b := &bootstrapv3.Bootstrap{}
	if err := UnmarshalYAML(data, b); err != nil {
		return nil, err
	}
	if err := DeepValidate(b); err != nil {
		return nil, fmt.Errorf("bootstrap fails validation: %w", err)
	}
	return b, nil
}
