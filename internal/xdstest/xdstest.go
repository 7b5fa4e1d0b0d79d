// Package xdstest holds test helpers that check rendered xDS resources
// independently of the code that built them: deep proto validation that
// descends into every Any, and a reference extractor that reads the protos
// themselves rather than trusting the builders' declared references.
package xdstest

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

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

// DeepValidate runs ValidateAll on m and on the message inside every Any
// nested in it, which ValidateAll itself skips (it does descend into every
// other nested message, so calling it once per Any's content covers all).
// An Any whose type is not linked into the test binary is an error: it
// could not be checked.
func DeepValidate(m proto.Message) error {
	_, err := Check(m)
	return err
}

// Ref is a reference found in a resource.
type Ref struct {
	TypeURL string
	Name    string
}

// References extracts every name m refers to by reading the protos: RDS
// route names, route and tcp_proxy clusters, EDS service names, SDS secrets.
func References(m proto.Message) []Ref {
	refs, _ := Check(m)
	return refs
}

// Check is DeepValidate and References in one walk of m.
func Check(m proto.Message) ([]Ref, error) {
	var (
		refs []Ref
		errs []error
	)
	add := func(t, n string) { refs = append(refs, Ref{TypeURL: t, Name: n}) }
	w := walker{root: func(msg protoreflect.Message, path func() string) {
		if v, ok := msg.Interface().(validator); ok {
			if err := v.ValidateAll(); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", path(), err))
			}
		}
	}, bad: func(a *anypb.Any, path func() string, err error) {
		errs = append(errs, fmt.Errorf("%s: cannot unpack Any %s: %w", path(), a.GetTypeUrl(), err))
	}, visit: func(msg protoreflect.Message) {
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
	}}
	w.run(m.ProtoReflect())
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
	return slices.Compact(refs), errors.Join(errs...)
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

// walker visits every message nested in a message, through Anys. The
// path of the message being visited is kept as segments and only made a
// string when asked for (an error): building it for every field was most
// of the cost of checking a resource.
type walker struct {
	visit func(protoreflect.Message)                // every message
	root  func(protoreflect.Message, func() string) // the top message and each Any's content
	bad   func(*anypb.Any, func() string, error)    // an Any that does not unpack
	segs  []seg
}

// seg is one step of a path: a field, an element of one, or an Any's content.
type seg struct {
	text  string // a field's name, a map key, or the type inside an Any
	index int    // a list element's index, or -1
	kind  byte   // '.' field, '[' list element or map value, '<' Any content
}

func (w *walker) path() string {
	var b strings.Builder
	for _, s := range w.segs {
		switch s.kind {
		case '.':
			b.WriteString("." + s.text)
		case '[':
			if s.index >= 0 {
				b.WriteString("[" + strconv.Itoa(s.index) + "]")
			} else {
				b.WriteString("[" + s.text + "]")
			}
		case '<':
			b.WriteString("<" + s.text + ">")
		default:
			b.WriteString(s.text)
		}
	}
	return b.String()
}

func (w *walker) run(m protoreflect.Message) {
	w.segs = append(w.segs[:0], seg{text: string(m.Descriptor().Name())})
	if w.root != nil {
		w.root(m, w.path)
	}
	w.walk(m)
}

func (w *walker) walk(m protoreflect.Message) {
	if a, ok := m.Interface().(*anypb.Any); ok {
		inner, err := a.UnmarshalNew()
		if err != nil {
			if w.bad != nil {
				w.bad(a, w.path, err)
			}
			return
		}
		im := inner.ProtoReflect()
		w.segs = append(w.segs, seg{text: string(im.Descriptor().Name()), kind: '<'})
		if w.root != nil {
			w.root(im, w.path)
		}
		w.walk(im)
		w.segs = w.segs[:len(w.segs)-1]
		return
	}
	if w.visit != nil {
		w.visit(m)
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		field := seg{text: string(fd.Name()), kind: '.'}
		switch {
		case fd.IsList() && fd.Message() != nil:
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				w.segs = append(w.segs, field, seg{index: i, kind: '['})
				w.walk(l.Get(i).Message())
				w.segs = w.segs[:len(w.segs)-2]
			}
		case fd.IsMap() && fd.MapValue().Message() != nil:
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				w.segs = append(w.segs, field, seg{text: k.String(), index: -1, kind: '['})
				w.walk(mv.Message())
				w.segs = w.segs[:len(w.segs)-2]
				return true
			})
		case fd.Message() != nil && !fd.IsList() && !fd.IsMap():
			w.segs = append(w.segs, field)
			w.walk(v.Message())
			w.segs = w.segs[:len(w.segs)-1]
		}
		return true
	})
}
