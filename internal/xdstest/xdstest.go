// Package xdstest holds test helpers that check rendered xDS resources
// independently of the code that built them: deep proto validation that
// descends into every Any, and a reference extractor that reads the protos
// themselves rather than trusting the builders' declared references.
package xdstest

import (
	"errors"
	"fmt"
	"slices"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
)

type validator interface{ ValidateAll() error }

// DeepValidate runs ValidateAll on m and on every message nested in it,
// unpacking every Any (which ValidateAll itself skips). An Any whose type is
// not linked into the test binary is an error: it could not be checked.
func DeepValidate(m proto.Message) error {
	var errs []error
	walk(m.ProtoReflect(), func(msg protoreflect.Message, path string) {
		if v, ok := msg.Interface().(validator); ok {
			if err := v.ValidateAll(); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", path, err))
			}
		}
	}, func(a *anypb.Any, path string, err error) {
		errs = append(errs, fmt.Errorf("%s: cannot unpack Any %s: %w", path, a.GetTypeUrl(), err))
	}, string(m.ProtoReflect().Descriptor().Name()))
	return errors.Join(errs...)
}

// Ref is a reference found in a resource.
type Ref struct {
	TypeURL string
	Name    string
}

// References extracts every name m refers to by reading the protos: RDS
// route names, route and tcp_proxy clusters, EDS service names, SDS secrets.
func References(m proto.Message) []Ref {
	var refs []Ref
	add := func(t, n string) { refs = append(refs, Ref{TypeURL: t, Name: n}) }
	walk(m.ProtoReflect(), func(msg protoreflect.Message, _ string) {
		switch x := msg.Interface().(type) {
		case *hcmv3.Rds:
			add(resourcev3.RouteType, x.GetRouteConfigName())
		case *routev3.RouteAction:
			if c := x.GetCluster(); c != "" {
				add(resourcev3.ClusterType, c)
			}
		case *tcpproxyv3.TcpProxy:
			if c := x.GetCluster(); c != "" {
				add(resourcev3.ClusterType, c)
			}
		case *clusterv3.Cluster:
			if x.GetType() == clusterv3.Cluster_EDS {
				n := x.GetEdsClusterConfig().GetServiceName()
				if n == "" {
					n = x.GetName()
				}
				add(resourcev3.EndpointType, n)
			}
		case *tlsv3.SdsSecretConfig:
			// Only secrets fetched over ADS are meshd's to serve; others
			// come from another SDS server (a mesh-agent).
			if x.GetSdsConfig().GetAds() != nil {
				add(resourcev3.SecretType, x.GetName())
			}
		}
	}, func(*anypb.Any, string, error) {}, "")
	slices.SortFunc(refs, func(a, b Ref) int {
		if a.TypeURL != b.TypeURL {
			if a.TypeURL < b.TypeURL {
				return -1
			}
			return 1
		}
		switch {
		case a.Name < b.Name:
			return -1
		case a.Name > b.Name:
			return 1
		}
		return 0
	})
	return slices.Compact(refs)
}

// CheckReferences verifies, from the protos alone, that every reference in
// the set resolves to a resource in the set. sets maps type URL to resources.
func CheckReferences(sets map[string][]proto.Message, nameOf func(proto.Message) string) error {
	have := map[Ref]bool{}
	for typ, list := range sets {
		for _, m := range list {
			have[Ref{typ, nameOf(m)}] = true
		}
	}
	var errs []error
	for typ, list := range sets {
		for _, m := range list {
			for _, r := range References(m) {
				if !have[r] {
					errs = append(errs, fmt.Errorf("%s %q refers to missing %s %q", typ, nameOf(m), r.TypeURL, r.Name))
				}
			}
		}
	}
	return errors.Join(errs...)
}

func walk(m protoreflect.Message, visit func(protoreflect.Message, string), bad func(*anypb.Any, string, error), path string) {
	if a, ok := m.Interface().(*anypb.Any); ok {
		inner, err := a.UnmarshalNew()
		if err != nil {
			bad(a, path, err)
			return
		}
		walk(inner.ProtoReflect(), visit, bad, path+"<"+string(inner.ProtoReflect().Descriptor().Name())+">")
		return
	}
	visit(m, path)
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		p := path + "." + string(fd.Name())
		switch {
		case fd.IsList() && fd.Message() != nil:
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				walk(l.Get(i).Message(), visit, bad, fmt.Sprintf("%s[%d]", p, i))
			}
		case fd.IsMap() && fd.MapValue().Message() != nil:
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				walk(mv.Message(), visit, bad, fmt.Sprintf("%s[%v]", p, k))
				return true
			})
		case fd.Message() != nil && !fd.IsList() && !fd.IsMap():
			walk(v.Message(), visit, bad, p)
		}
		return true
	})
}
