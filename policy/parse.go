package policy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/meshd/meshd/internal/yamlsyntax"
	"github.com/meshd/meshd/mesh"
)

// The documents are walked as yaml.Node trees rather than decoded into
// structs: every problem then has its exact line and field path, fields Istio
// has but meshd does not support get their own explanation instead of
// "unknown field", and all problems of a file are reported at once.

const (
	kindPeer  = "PeerAuthentication"
	kindAuthz = "AuthorizationPolicy"
)

var (
	istioVersions = []string{"security.istio.io/v1", "security.istio.io/v1beta1"}
	// allKinds are the kinds meshd reads, Istio's then Linkerd's.
	allKinds = []string{kindPeer, kindAuthz, kindServer, kindServerAuthz, kindMeshTLS, kindNetworkAuthn, kindNamespace}

	// otherIstioKinds explains why a known Istio kind is not read here.
	otherIstioKinds = map[string]string{
		"RequestAuthentication": "JWT request authentication is not supported",
		"VirtualService":        "routing comes from the catalog (docs/catalog.md), not from Istio networking resources",
		"DestinationRule":       "routing comes from the catalog (docs/catalog.md), not from Istio networking resources",
		"ServiceEntry":          "services come from the catalog (docs/catalog.md)",
		"Sidecar":               "upstreams come from the catalog (docs/catalog.md)",
		"Gateway":               "gateways are not supported",
		"EnvoyFilter":           "raw Envoy configuration is not accepted",
		"WorkloadEntry":         "workloads come from the catalog (docs/catalog.md)",
		"List":                  "put each policy in its own YAML document, separated by ---",
	}

	modes = []string{string(mesh.MTLSUnset), string(mesh.MTLSStrict), string(mesh.MTLSPermissive), string(mesh.MTLSDisable)}

	actions = []string{string(mesh.ActionAllow), string(mesh.ActionDeny), string(mesh.ActionAudit)}

	// WhenKeys are the condition keys meshd supports, as documented.
	WhenKeys = []string{"request.headers[<name>]", "source.ip", "source.namespace", "source.principal", "destination.port", "connection.sni"}

	headerKeyRE = regexp.MustCompile(`^request\.headers\[(.*)\]$`)
	// headerNameRE is RFC 9110's token: what an HTTP field name may contain.
	headerNameRE = regexp.MustCompile("^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
	methodRE     = regexp.MustCompile(`^[A-Z]+$`)
	// objectNameRE is a Kubernetes object name (DNS-1123 subdomain).
	objectNameRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
)

// Parse reads the policy documents in data: YAML documents separated by ---,
// each an Istio PeerAuthentication or AuthorizationPolicy, a Linkerd policy
// resource (Server, ServerAuthorization, AuthorizationPolicy,
// MeshTLSAuthentication, NetworkAuthentication) or a Namespace carrying
// Linkerd's default-inbound-policy annotation. path is used in messages and
// in the policies' Source ("path:line"). Every problem found is reported, in
// one *Error; nothing is returned unless the whole file is valid. A file
// with no document at all wraps ErrEmpty. References between Linkerd
// resources are checked by LoadDir and LoadFiles, which see every file.
func Parse(path string, data []byte) (*Policies, error) {
	out := &Policies{Files: []string{path}}
	var problems []Problem
	dec := yaml.NewDecoder(bytes.NewReader(data))
	docs := 0
	for index := 1; ; index++ {
		var root yaml.Node
		err := dec.Decode(&root)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			// Nothing after a syntax error can be trusted.
			problems = append(problems, syntaxProblem(path, data, err))
			return nil, errorOf(problems)
		}
		if len(root.Content) == 0 || isNull(root.Content[0]) {
			continue // a stray ---, or a document of comments only
		}
		docs++
		d := &docParser{file: path, policy: fmt.Sprintf("document %d", index)}
		doc := &Policies{}
		d.document(root.Content[0], doc)
		// Fields are checked in schema order; read them in file order.
		slices.SortStableFunc(d.problems, func(a, b Problem) int { return a.Line - b.Line })
		problems = append(problems, d.problems...)
		if len(d.problems) > 0 {
			continue
		}
		out.add(doc)
	}
	if docs == 0 {
		return nil, errorOf([]Problem{{File: path, Message: ErrEmpty.Error() +
			": delete the file to remove its policies (an empty file is refused because it is usually a write caught half-way, and losing a DENY policy to one would open access)"}}, ErrEmpty)
	}
	if err := errorOf(problems); err != nil {
		return nil, err
	}
	if err := checkDuplicates(out); err != nil {
		return nil, err
	}
	return out, nil
}

// syntaxProblem is a yaml.v3 syntax error on the line where the error is
// (internal/yamlsyntax).
func syntaxProblem(path string, data []byte, err error) Problem {
	line, text := yamlsyntax.Explain(data, err)
	return Problem{File: path, Line: line, Message: text}
}

// maxValues bounds the values one document may hold once aliases are
// followed: a few lines of anchors and aliases can otherwise stand for
// billions of values.
const maxValues = 100000

// docParser walks one document and collects its problems.
type docParser struct {
	file     string
	policy   string
	problems []Problem
	visited  int
}

// spend counts one value against maxValues and reports false, once with a
// problem, when the document is over it.
func (d *docParser) spend(n *yaml.Node) bool {
	d.visited++
	if d.visited == maxValues+1 {
		d.add(n, "", "the document holds more than %d values once aliases are expanded: write the policy out, or split it", maxValues)
	}
	return d.visited <= maxValues
}

func (d *docParser) add(n *yaml.Node, field, format string, args ...any) {
	d.problems = append(d.problems, Problem{File: d.file, Line: line(n), Policy: d.policy, Field: field, Message: fmt.Sprintf(format, args...)})
}

func (d *docParser) unsupported(n *yaml.Node, field, format string, args ...any) {
	d.add(n, field, format, args...)
	d.problems[len(d.problems)-1].unsupported = true
}

func line(n *yaml.Node) int {
	if n == nil {
		return 0
	}
	return n.Line
}

func deref(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode && i < 32; i++ {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	n = deref(n)
	return n == nil || n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

func join(path, field string) string {
	if path == "" {
		return field
	}
	return path + "." + field
}

func describe(n *yaml.Node) string {
	n = deref(n)
	switch {
	case n == nil:
		return "nothing"
	case n.Kind == yaml.SequenceNode:
		return "a list"
	case n.Kind == yaml.MappingNode:
		return "a mapping"
	}
	switch n.ShortTag() {
	case "!!str":
		return fmt.Sprintf("the string %q", n.Value)
	case "!!int", "!!float":
		return "the number " + n.Value
	case "!!bool":
		return "the boolean " + n.Value
	case "!!null":
		return "nothing (null)"
	}
	return fmt.Sprintf("the value %q", n.Value)
}

// entry is one key of a mapping.
type entry struct{ key, val *yaml.Node }

// fields checks that n is a mapping and returns its entries by key. Keys not
// in accepted are reported: those in unsupported with the reason given, the
// rest as unknown with a did-you-mean. A null n is an empty mapping.
func (d *docParser) fields(n *yaml.Node, path, what string, accepted []string, unsupported map[string]string) (map[string]entry, bool) {
	n = deref(n)
	if !d.spend(n) {
		return nil, false
	}
	if isNull(n) {
		return map[string]entry{}, true
	}
	if n.Kind != yaml.MappingNode {
		d.add(n, path, "want %s (a mapping of field: value), got %s; %s", what, describe(n), docsHint)
		return nil, false
	}
	out := map[string]entry{}
	var merged []*yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.ShortTag() == "!!merge" {
			merged = append(merged, mergeSources(v)...)
			continue
		}
		if k.Kind != yaml.ScalarNode {
			d.add(k, path, "a key must be a plain name, got %s", describe(k))
			continue
		}
		if prev, dup := out[k.Value]; dup {
			d.add(k, join(path, k.Value), "field %q appears twice in %s (first at line %d): keep one", k.Value, what, prev.key.Line)
			continue
		}
		out[k.Value] = entry{k, v}
	}
	// "<<: *anchor" merges fields in; as in YAML, explicit keys win over
	// merged ones, and earlier merged mappings over later ones.
	var merge func(m *yaml.Node, depth int)
	merge = func(m *yaml.Node, depth int) {
		if !d.spend(m) {
			return
		}
		for i := 0; i+1 < len(m.Content) && depth < 8; i += 2 {
			k, v := m.Content[i], m.Content[i+1]
			if k.ShortTag() == "!!merge" {
				for _, src := range mergeSources(v) {
					merge(src, depth+1)
				}
				continue
			}
			if _, ok := out[k.Value]; !ok && k.Kind == yaml.ScalarNode {
				out[k.Value] = entry{k, v}
			}
		}
	}
	for _, src := range merged {
		merge(src, 0)
	}
	for _, name := range sortedKeys(out) {
		e := out[name]
		if slices.Contains(accepted, name) {
			continue
		}
		if why, ok := unsupported[name]; ok {
			d.unsupported(e.key, join(path, name), "%s", why)
		} else {
			d.add(e.key, join(path, name), "unknown field %q in %s; %s; %s", name, what, didYouMean(name, append(slices.Clone(accepted), keysOf(unsupported)...)), docsHint)
		}
		delete(out, name)
	}
	return out, true
}

func mergeSources(v *yaml.Node) []*yaml.Node {
	v = deref(v)
	if v == nil {
		return nil
	}
	if v.Kind == yaml.SequenceNode {
		var out []*yaml.Node
		for _, c := range v.Content {
			if c = deref(c); c != nil && c.Kind == yaml.MappingNode {
				out = append(out, c)
			}
		}
		return out
	}
	if v.Kind == yaml.MappingNode {
		return []*yaml.Node{v}
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func keysOf(m map[string]string) []string { return sortedKeys(m) }

// str reads a string scalar.
func (d *docParser) str(n *yaml.Node, path string) (string, bool) {
	n = deref(n)
	if !d.spend(n) {
		return "", false
	}
	if n == nil || n.Kind != yaml.ScalarNode || n.ShortTag() != "!!str" {
		hint := ""
		if n != nil && n.Kind == yaml.ScalarNode && n.ShortTag() != "!!null" {
			hint = fmt.Sprintf(" (quote it: %q)", n.Value)
		}
		d.add(n, path, "want a string, got %s%s", describe(n), hint)
		return "", false
	}
	return n.Value, true
}

// list returns the items of a sequence; null is an empty list.
func (d *docParser) list(n *yaml.Node, path, what string) ([]*yaml.Node, bool) {
	n = deref(n)
	if isNull(n) {
		return nil, true
	}
	if n.Kind != yaml.SequenceNode {
		d.add(n, path, "want a list of %s, got %s (write a one-item list as [value] or as a line starting with '- ')", what, describe(n))
		return nil, false
	}
	return n.Content, true
}

// strings reads a list of strings, checking each with check (may be nil).
func (d *docParser) strings(n *yaml.Node, path string, check func(string) error) []string {
	items, ok := d.list(n, path, "strings")
	if !ok {
		return nil
	}
	var out []string
	for i, it := range items {
		p := fmt.Sprintf("%s[%d]", path, i)
		s, ok := d.str(it, p)
		if !ok {
			continue
		}
		if check != nil {
			if err := check(s); err != nil {
				d.add(deref(it), p, "%v", err)
				continue
			}
		}
		out = append(out, s)
	}
	return out
}

// ports reads a list of ports, written as Istio writes them ("8080") or as
// plain numbers.
func (d *docParser) ports(n *yaml.Node, path string) []uint32 {
	items, ok := d.list(n, path, "ports")
	if !ok {
		return nil
	}
	var out []uint32
	for i, it := range items {
		p := fmt.Sprintf("%s[%d]", path, i)
		it = deref(it)
		if !d.spend(it) {
			return nil
		}
		if it.Kind != yaml.ScalarNode || (it.ShortTag() != "!!str" && it.ShortTag() != "!!int") {
			d.add(it, p, "want a port number such as \"8080\", got %s", describe(it))
			continue
		}
		port, err := parsePort(it.Value)
		if err != nil {
			d.add(it, p, "%v", err)
			continue
		}
		out = append(out, port)
	}
	return out
}

func parsePort(s string) (uint32, error) {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n < 1 || n > 65535 {
		return 0, fmt.Errorf("%q is not a port: use a number from 1 to 65535", s)
	}
	return uint32(n), nil
}

// lookup finds a scalar by a path of keys without reporting anything: used
// to name the policy before its fields are checked.
func lookup(n *yaml.Node, keys ...string) string {
	for _, k := range keys {
		n = deref(n)
		if n == nil || n.Kind != yaml.MappingNode {
			return ""
		}
		var next *yaml.Node
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == k {
				next = n.Content[i+1]
			}
		}
		n = next
	}
	n = deref(n)
	if n == nil || n.Kind != yaml.ScalarNode {
		return ""
	}
	return n.Value
}

func (d *docParser) document(root *yaml.Node, out *Policies) {
	root = deref(root)
	kind := lookup(root, "kind")
	apiVersion := lookup(root, "apiVersion")
	name := lookup(root, "metadata", "name")
	namespace := lookup(root, "metadata", "namespace")
	if namespace == "" {
		namespace = mesh.DefaultNamespace
	}
	linkerd := strings.HasPrefix(apiVersion, linkerdGroup+"/")
	display := displayKind(kind, linkerd)
	switch {
	case kind == kindNamespace && name != "":
		d.policy = kindNamespace + " " + name
	case slices.Contains(allKinds, kind) && name != "":
		d.policy = display + " " + namespace + "/" + name
	}

	top, ok := d.fields(root, "", "a policy document", []string{"apiVersion", "kind", "metadata", "spec", "status"}, nil)
	if !ok {
		return
	}
	if e, ok := top["status"]; ok {
		// Present in `kubectl get -o yaml` output, and meaningless here.
		d.add(e.key, "status", "status is written by the cluster's controllers, not by users: remove it")
	}
	source := fmt.Sprintf("%s:%d", d.file, root.Line)

	kindOK := false
	if e, ok := top["kind"]; !ok {
		d.add(root, "kind", "kind is required: use %s", strings.Join(allKinds, ", "))
	} else if v, ok := d.str(e.val, "kind"); ok {
		why, otherIstio := otherIstioKinds[v]
		whyLinkerd, otherLinkerd := otherLinkerdKinds[v]
		switch {
		case slices.Contains(allKinds, v):
			kindOK = true
		case otherIstio:
			d.unsupported(e.val, "kind", "kind %q is not supported (%s): meshd reads %s", v, why, strings.Join(allKinds, ", "))
		case otherLinkerd:
			d.unsupported(e.val, "kind", "kind %q is not supported (%s): meshd reads %s", v, whyLinkerd, strings.Join(allKinds, ", "))
		default:
			d.add(e.val, "kind", "unknown kind %q; %s", v, didYouMean(v, allKinds))
		}
	}
	versions := versionsOf(kind)
	if !kindOK {
		versions = allVersions
	}
	if e, ok := top["apiVersion"]; !ok {
		d.add(root, "apiVersion", "apiVersion is required: use %s", strings.Join(versions, " or "))
		kindOK = false
	} else if v, ok := d.str(e.val, "apiVersion"); ok && !slices.Contains(versions, v) {
		if kindOK {
			d.add(e.val, "apiVersion", "apiVersion %q is not supported for kind %s: use %s", v, kind, strings.Join(versions, " or "))
		} else {
			d.add(e.val, "apiVersion", "apiVersion %q is not supported: use %s", v, strings.Join(versions, " or "))
		}
		kindOK = false
	} else if !ok {
		kindOK = false
	}

	meta, metaOK := top["metadata"]
	var labels, annotations map[string]string
	if !metaOK {
		d.add(root, "metadata", "metadata is required, with at least a name")
	} else if m, ok := d.fields(meta.val, "metadata", "metadata", []string{"name", "namespace", "labels", "annotations"}, nil); ok {
		if e, ok := m["name"]; !ok {
			d.add(meta.key, "metadata.name", "name is required")
		} else if v, ok := d.str(e.val, "metadata.name"); ok {
			if kind == kindNamespace {
				if err := mesh.ValidName(v); err != nil {
					d.add(e.val, "metadata.name", "%v", err)
				}
			} else if !objectNameRE.MatchString(v) || len(v) > 253 {
				d.add(e.val, "metadata.name", "%q is not a valid name: use lowercase letters, digits, '-' and '.', starting and ending with a letter or digit", v)
			}
		}
		if e, ok := m["namespace"]; ok {
			if kind == kindNamespace {
				d.add(e.key, "metadata.namespace", "a Namespace is not in a namespace: remove metadata.namespace")
			} else if v, ok := d.str(e.val, "metadata.namespace"); ok {
				if err := mesh.ValidName(v); err != nil {
					d.add(e.val, "metadata.namespace", "%v", err)
				}
			}
		}
		if e, ok := m["labels"]; ok {
			labels = d.stringMap(e.val, "metadata.labels")
		}
		if e, ok := m["annotations"]; ok {
			annotations = d.stringMap(e.val, "metadata.annotations")
		}
	}
	if !kindOK {
		return
	}
	var spec *yaml.Node
	if e, ok := top["spec"]; ok {
		spec = e.val
	}
	switch {
	case kind == kindNamespace:
		if e, ok := top["spec"]; ok {
			d.add(e.key, "spec", "meshd reads only the %s annotation of a Namespace: remove spec", mesh.DefaultInboundPolicyLabel)
		}
		ns := d.namespaceDoc(meta.val, annotations)
		ns.name, ns.source = name, source
		out.linkerd.namespaces = append(out.linkerd.namespaces, ns)
	case linkerd:
		d.linkerdDocument(kind, apiVersion, linkerdMeta{name: name, namespace: namespace, source: source, labels: labels}, spec, &out.linkerd)
	case kind == kindPeer:
		p := &mesh.PeerAuthentication{Name: name, Namespace: namespace, Source: source}
		d.peerSpec(spec, p)
		out.Peer = append(out.Peer, *p)
	default:
		a := &mesh.AuthorizationPolicy{Name: name, Namespace: namespace, Source: source}
		d.authzSpec(spec, a)
		out.Authorizations = append(out.Authorizations, *a)
	}
}

// stringMap reads a mapping of names to strings (metadata labels and
// annotations).
func (d *docParser) stringMap(n *yaml.Node, path string) map[string]string {
	n = deref(n)
	if isNull(n) {
		return nil
	}
	if n.Kind != yaml.MappingNode {
		d.add(n, path, "want a mapping of names to strings, got %s", describe(n))
		return nil
	}
	out := map[string]string{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := deref(n.Content[i]), n.Content[i+1]
		if !d.spend(v) {
			return nil
		}
		if k.Kind != yaml.ScalarNode || k.Value == "" {
			d.add(k, path, "names must be non-empty strings")
			continue
		}
		if _, dup := out[k.Value]; dup {
			d.add(k, path+"."+k.Value, "%q appears twice: keep one", k.Value)
			continue
		}
		if val, ok := d.str(v, path+"."+k.Value); ok {
			out[k.Value] = val
		}
	}
	return out
}

// selector reads spec.selector. An empty one is refused: whether it means
// "every workload" or "none" is not obvious to a reader, and Istio's own
// way to say "every workload" is to leave selector out.
func (d *docParser) selector(n *yaml.Node) map[string]string {
	if isNull(n) {
		return nil
	}
	m, ok := d.fields(n, "spec.selector", "selector", []string{"matchLabels"}, nil)
	if !ok {
		return nil
	}
	e, ok := m["matchLabels"]
	if !ok || isNull(e.val) || (deref(e.val).Kind == yaml.MappingNode && len(deref(e.val).Content) == 0) {
		d.add(n, "spec.selector", "the selector has no matchLabels: remove selector to apply the policy to every workload of the namespace, or list labels to match")
		return nil
	}
	labels := deref(e.val)
	if labels.Kind != yaml.MappingNode {
		d.add(labels, "spec.selector.matchLabels", "want a mapping of label names to values, got %s", describe(labels))
		return nil
	}
	out := map[string]string{}
	for i := 0; i+1 < len(labels.Content); i += 2 {
		k, v := deref(labels.Content[i]), labels.Content[i+1]
		p := "spec.selector.matchLabels." + k.Value
		if k.Kind != yaml.ScalarNode || k.Value == "" {
			d.add(k, "spec.selector.matchLabels", "label names must be non-empty strings")
			continue
		}
		if _, dup := out[k.Value]; dup {
			d.add(k, p, "label %q appears twice: keep one", k.Value)
			continue
		}
		val, ok := d.str(v, p)
		if !ok {
			continue
		}
		if strings.Contains(k.Value, "*") || strings.Contains(val, "*") {
			d.add(v, p, "wildcards are not supported in selectors: labels match exactly")
			continue
		}
		out[k.Value] = val
	}
	return out
}

func (d *docParser) mode(n *yaml.Node, path string) (mesh.MTLSMode, bool) {
	s, ok := d.str(n, path)
	if !ok {
		return "", false
	}
	if !slices.Contains(modes, s) {
		d.add(deref(n), path, "unknown mode %q: use STRICT, PERMISSIVE, DISABLE or UNSET; %s", s, didYouMean(s, modes))
		return "", false
	}
	return mesh.MTLSMode(s), true
}

func (d *docParser) peerSpec(spec *yaml.Node, p *mesh.PeerAuthentication) {
	p.Mode = mesh.MTLSUnset
	m, ok := d.fields(spec, "spec", "a PeerAuthentication spec", []string{"selector", "mtls", "portLevelMtls"}, nil)
	if !ok {
		return
	}
	if e, ok := m["selector"]; ok {
		p.Selector = d.selector(e.val)
	}
	if e, ok := m["mtls"]; ok {
		if mt, ok := d.fields(e.val, "spec.mtls", "mtls", []string{"mode"}, nil); ok {
			if me, ok := mt["mode"]; ok {
				if mode, ok := d.mode(me.val, "spec.mtls.mode"); ok {
					p.Mode = mode
				}
			}
		}
	}
	e, ok := m["portLevelMtls"]
	if !ok || isNull(e.val) {
		return
	}
	if p.Selector == nil {
		// Istio rejects it too: a port number means nothing without knowing
		// which workload's ports it refers to.
		d.add(e.key, "spec.portLevelMtls", "portLevelMtls needs a selector: port-level modes apply only to the workloads a policy selects")
	}
	ports := deref(e.val)
	if ports.Kind != yaml.MappingNode {
		d.add(ports, "spec.portLevelMtls", "want a mapping of port numbers to {mode: ...}, got %s", describe(ports))
		return
	}
	p.PortModes = map[uint32]mesh.MTLSMode{}
	for i := 0; i+1 < len(ports.Content); i += 2 {
		k, v := deref(ports.Content[i]), ports.Content[i+1]
		path := "spec.portLevelMtls." + k.Value
		port, err := parsePort(k.Value)
		if err != nil || k.Kind != yaml.ScalarNode {
			d.add(k, path, "%v", err)
			continue
		}
		if _, dup := p.PortModes[port]; dup {
			d.add(k, path, "port %d appears twice: keep one", port)
			continue
		}
		pm, ok := d.fields(v, path, "a port-level mtls setting", []string{"mode"}, nil)
		if !ok {
			continue
		}
		mode := mesh.MTLSUnset
		if me, ok := pm["mode"]; ok {
			if mode, ok = d.mode(me.val, path+".mode"); !ok {
				continue
			}
		}
		p.PortModes[port] = mode
	}
}

func (d *docParser) authzSpec(spec *yaml.Node, a *mesh.AuthorizationPolicy) {
	a.Action = mesh.ActionAllow
	m, ok := d.fields(spec, "spec", "an AuthorizationPolicy spec", []string{"selector", "action", "rules"}, map[string]string{
		"provider":   "provider is only used by the CUSTOM action, and CUSTOM (external authorization) is not supported",
		"targetRef":  "targetRef (Gateway API policy attachment) is not supported: select workloads with selector.matchLabels",
		"targetRefs": "targetRefs (Gateway API policy attachment) are not supported: select workloads with selector.matchLabels",
	})
	if !ok {
		return
	}
	if e, ok := m["selector"]; ok {
		a.Selector = d.selector(e.val)
	}
	if e, ok := m["action"]; ok {
		if s, ok := d.str(e.val, "spec.action"); ok {
			switch {
			case slices.Contains(actions, s):
				a.Action = mesh.AuthzAction(s)
			case s == "CUSTOM":
				d.unsupported(deref(e.val), "spec.action", "CUSTOM (external authorization) is not supported: use ALLOW, DENY or AUDIT")
			default:
				d.add(deref(e.val), "spec.action", "unknown action %q: use ALLOW (the default), DENY or AUDIT; %s", s, didYouMean(s, actions))
			}
		}
	}
	e, ok := m["rules"]
	if !ok {
		return
	}
	items, ok := d.list(e.val, "spec.rules", "rules")
	if !ok {
		return
	}
	for i, it := range items {
		path := fmt.Sprintf("spec.rules[%d]", i)
		if isNull(it) {
			// "- " with nothing after it would otherwise be an empty rule,
			// which matches every request: too much to read into a typo.
			d.add(it, path, "empty list item: write {} for a rule that matches every request")
			continue
		}
		a.Rules = append(a.Rules, d.rule(it, path))
	}
}

func (d *docParser) rule(n *yaml.Node, path string) mesh.Rule {
	var r mesh.Rule
	m, ok := d.fields(n, path, "a rule", []string{"from", "to", "when"}, nil)
	if !ok {
		return r
	}
	if e, ok := m["from"]; ok {
		items, _ := d.list(e.val, path+".from", "sources ({source: {...}})")
		for i, it := range items {
			p := fmt.Sprintf("%s.from[%d]", path, i)
			f, ok := d.fields(it, p, "a from entry", []string{"source"}, nil)
			if !ok {
				continue
			}
			se, ok := f["source"]
			if !ok || isNull(se.val) {
				d.add(deref(it), p, "from entry without source: write from: [{source: {principals: [...]}}]")
				continue
			}
			if s, ok := d.source(se.val, p+".source"); ok {
				r.From = append(r.From, s)
			}
		}
	}
	if e, ok := m["to"]; ok {
		items, _ := d.list(e.val, path+".to", "operations ({operation: {...}})")
		for i, it := range items {
			p := fmt.Sprintf("%s.to[%d]", path, i)
			f, ok := d.fields(it, p, "a to entry", []string{"operation"}, nil)
			if !ok {
				continue
			}
			oe, ok := f["operation"]
			if !ok || isNull(oe.val) {
				d.add(deref(it), p, "to entry without operation: write to: [{operation: {paths: [...]}}]")
				continue
			}
			if o, ok := d.operation(oe.val, p+".operation"); ok {
				r.To = append(r.To, o)
			}
		}
	}
	if e, ok := m["when"]; ok {
		items, _ := d.list(e.val, path+".when", "conditions ({key: ..., values: [...]})")
		for i, it := range items {
			if c, ok := d.condition(it, fmt.Sprintf("%s.when[%d]", path, i)); ok {
				r.When = append(r.When, c)
			}
		}
	}
	return r
}

func (d *docParser) source(n *yaml.Node, path string) (mesh.Source, bool) {
	jwt := "JWT request authentication is not supported, so there are no request principals: match the peer's identity with principals instead"
	m, ok := d.fields(n, path, "a source", []string{"principals", "notPrincipals", "namespaces", "notNamespaces", "ipBlocks", "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks"},
		map[string]string{"requestPrincipals": jwt, "notRequestPrincipals": jwt})
	if !ok {
		return mesh.Source{}, false
	}
	get := func(f string, check func(string) error) []string {
		if e, ok := m[f]; ok {
			return d.strings(e.val, path+"."+f, check)
		}
		return nil
	}
	s := mesh.Source{
		Principals:        get("principals", checkPrincipal),
		NotPrincipals:     get("notPrincipals", checkPrincipal),
		Namespaces:        get("namespaces", checkNamespace),
		NotNamespaces:     get("notNamespaces", checkNamespace),
		IPBlocks:          get("ipBlocks", checkIPBlock),
		NotIPBlocks:       get("notIpBlocks", checkIPBlock),
		RemoteIPBlocks:    get("remoteIpBlocks", checkIPBlock),
		NotRemoteIPBlocks: get("notRemoteIpBlocks", checkIPBlock),
	}
	if len(s.Principals)+len(s.NotPrincipals)+len(s.Namespaces)+len(s.NotNamespaces)+
		len(s.IPBlocks)+len(s.NotIPBlocks)+len(s.RemoteIPBlocks)+len(s.NotRemoteIPBlocks) == 0 && !d.hasProblemsUnder(path) {
		// Istio rejects it as well: an empty source would match every
		// caller, which is what leaving out from already says.
		d.add(deref(n), path, "the source is empty: give at least one field, or leave out from to match every caller")
		return s, false
	}
	return s, true
}

func (d *docParser) operation(n *yaml.Node, path string) (mesh.Operation, bool) {
	m, ok := d.fields(n, path, "an operation", []string{"hosts", "notHosts", "ports", "notPorts", "methods", "notMethods", "paths", "notPaths"}, nil)
	if !ok {
		return mesh.Operation{}, false
	}
	get := func(f string, check func(string) error) []string {
		if e, ok := m[f]; ok {
			return d.strings(e.val, path+"."+f, check)
		}
		return nil
	}
	getPorts := func(f string) []uint32 {
		if e, ok := m[f]; ok {
			return d.ports(e.val, path+"."+f)
		}
		return nil
	}
	o := mesh.Operation{
		Hosts:      get("hosts", checkHost),
		NotHosts:   get("notHosts", checkHost),
		Ports:      getPorts("ports"),
		NotPorts:   getPorts("notPorts"),
		Methods:    get("methods", checkMethod),
		NotMethods: get("notMethods", checkMethod),
		Paths:      get("paths", checkPath),
		NotPaths:   get("notPaths", checkPath),
	}
	if len(o.Hosts)+len(o.NotHosts)+len(o.Ports)+len(o.NotPorts)+len(o.Methods)+len(o.NotMethods)+len(o.Paths)+len(o.NotPaths) == 0 && !d.hasProblemsUnder(path) {
		d.add(deref(n), path, "the operation is empty: give at least one field, or leave out to to match every request")
		return o, false
	}
	return o, true
}

func (d *docParser) hasProblemsUnder(path string) bool {
	for _, p := range d.problems {
		if p.Field == path || strings.HasPrefix(p.Field, path+".") {
			return true
		}
	}
	return false
}

func (d *docParser) condition(n *yaml.Node, path string) (mesh.Condition, bool) {
	var c mesh.Condition
	m, ok := d.fields(n, path, "a condition", []string{"key", "values", "notValues"}, nil)
	if !ok {
		return c, false
	}
	e, ok := m["key"]
	if !ok {
		d.add(deref(n), path, "key is required, one of %s", strings.Join(WhenKeys, ", "))
		return c, false
	}
	key, ok := d.str(e.val, path+".key")
	if !ok {
		return c, false
	}
	check, err := conditionCheck(key)
	if err != nil {
		d.unsupported(deref(e.val), path+".key", "%v", err)
		return c, false
	}
	c.Key = key
	if v, ok := m["values"]; ok {
		c.Values = d.strings(v.val, path+".values", check)
	}
	if v, ok := m["notValues"]; ok {
		c.NotValues = d.strings(v.val, path+".notValues", check)
	}
	if len(c.Values)+len(c.NotValues) == 0 && !d.hasProblemsUnder(path) {
		d.add(deref(n), path, "condition %q has no values or notValues: give at least one", key)
		return c, false
	}
	return c, true
}

// conditionCheck returns the value check for a supported when key, or why
// the key is not supported.
func conditionCheck(key string) (func(string) error, error) {
	switch key {
	case "source.ip":
		return checkIPBlock, nil
	case "source.namespace":
		return checkNamespace, nil
	case "source.principal":
		return checkPrincipal, nil
	case "destination.port":
		return func(s string) error { _, err := parsePort(s); return err }, nil
	case "connection.sni":
		return checkHost, nil
	}
	if m := headerKeyRE.FindStringSubmatch(key); m != nil {
		if !headerNameRE.MatchString(m[1]) {
			return nil, fmt.Errorf("%q is not a header name: write request.headers[<name>], e.g. request.headers[x-user]", m[1])
		}
		return checkWildcard, nil
	}
	supported := strings.Join(WhenKeys, ", ")
	switch {
	case strings.HasPrefix(key, "request.auth."):
		return nil, fmt.Errorf("when key %q needs JWT request authentication, which meshd does not support; supported keys: %s", key, supported)
	case strings.HasPrefix(key, "request.headers"):
		return nil, fmt.Errorf("when key %q: write request.headers[<name>], e.g. request.headers[x-user]", key)
	}
	return nil, fmt.Errorf("when key %q is not supported; supported keys: %s", key, supported)
}

// checkWildcard allows Istio's matching forms: exact, "prefix*", "*suffix"
// and "*" (present). A "*" anywhere else would be matched literally by
// Envoy, which is never what was meant.
func checkWildcard(s string) error {
	if s == "" {
		return fmt.Errorf("empty value: write a value, or \"*\" for any")
	}
	inner := strings.TrimSuffix(strings.TrimPrefix(s, "*"), "*")
	if s != "*" && (strings.Contains(inner, "*") || strings.HasPrefix(s, "*") && strings.HasSuffix(s, "*")) {
		return fmt.Errorf("%q: \"*\" may only be the whole value, its first character (suffix match) or its last (prefix match)", s)
	}
	return nil
}

func checkPrincipal(s string) error {
	if strings.HasPrefix(s, "spiffe://") {
		return fmt.Errorf("%q: write principals without spiffe://, as Istio does: %q", s, strings.TrimPrefix(s, "spiffe://"))
	}
	return checkWildcard(s)
}

func checkNamespace(s string) error {
	if err := checkWildcard(s); err != nil {
		return err
	}
	if !strings.Contains(s, "*") {
		if err := mesh.ValidName(s); err != nil {
			return fmt.Errorf("namespace %w", err)
		}
	}
	return nil
}

func checkIPBlock(s string) error {
	if _, err := netip.ParsePrefix(s); err == nil {
		return nil
	}
	if _, err := netip.ParseAddr(s); err == nil {
		return nil
	}
	return fmt.Errorf("%q is not an IP address or CIDR block (e.g. 10.0.0.1 or 10.0.0.0/16)", s)
}

func checkHost(s string) error { return checkWildcard(s) }

func checkMethod(s string) error {
	if err := checkWildcard(s); err != nil {
		return err
	}
	if m := strings.Trim(s, "*"); m != "" && !methodRE.MatchString(m) {
		if methodRE.MatchString(strings.ToUpper(m)) {
			return fmt.Errorf("method %q must be uppercase: %q (methods match exactly)", s, strings.ToUpper(s))
		}
		return fmt.Errorf("%q is not an HTTP method (e.g. GET, POST)", s)
	}
	return nil
}

func checkPath(s string) error {
	if strings.Contains(s, "{*}") || strings.Contains(s, "{**}") {
		return fmt.Errorf("%q: path templates ({*}, {**}) are not supported: use exact paths, \"prefix*\" or \"*suffix\"", s)
	}
	if err := checkWildcard(s); err != nil {
		return err
	}
	if s == "*" || strings.HasPrefix(s, "*") {
		return nil
	}
	if !strings.HasPrefix(s, "/") {
		return fmt.Errorf("path %q must start with \"/\" (or be \"*\" or \"*suffix\")", s)
	}
	return nil
}

// checkDuplicates refuses two objects of one kind with one namespace/name:
// Kubernetes could not hold both, and which one wins is not something to
// guess.
func checkDuplicates(p *Policies) error {
	var problems []Problem
	seen := map[string]string{}
	check := func(id, source string) {
		if prev, ok := seen[id]; ok {
			file, line := splitSource(source)
			problems = append(problems, Problem{File: file, Line: line, Policy: id,
				Message: fmt.Sprintf("defined twice, at %s and at %s: rename or remove one", prev, source)})
			return
		}
		seen[id] = source
	}
	for _, x := range p.Peer {
		check(kindPeer+" "+x.Namespace+"/"+x.Name, x.Source)
	}
	for _, x := range p.Authorizations {
		check(kindAuthz+" "+x.Namespace+"/"+x.Name, x.Source)
	}
	p.linkerd.each(check)
	return errorOf(problems)
}

// splitSource splits a Source "file:line" back into its parts.
func splitSource(s string) (string, int) {
	i := strings.LastIndexByte(s, ':')
	if i < 0 {
		return s, 0
	}
	n, err := strconv.Atoi(s[i+1:])
	if err != nil {
		return s, 0
	}
	return s[:i], n
}
