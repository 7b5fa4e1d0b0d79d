package file

import (
	"bytes"
	"cmp"
	"fmt"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"gopkg.in/yaml.v3"

	"github.com/meshd/meshd/internal/suggest"
	"github.com/meshd/meshd/internal/yamlsyntax"
	"github.com/meshd/meshd/mesh"
)

// yaml.v3 speaks in Go terms ("field prot not found in type mesh.Service",
// "cannot unmarshal !!str `abc` into uint32"). The people who read these
// messages write YAML and have never seen the Go types, so every message is
// rewritten into the file's own vocabulary: the YAML field name, the path to
// it (services[0].endpoints[1].port) and what would be accepted. The line
// numbers are yaml.v3's and are kept as they are.

var (
	unknownRE   = regexp.MustCompile(`^line (\d+): field (.*) not found in type (.*)$`)
	typeRE      = regexp.MustCompile("^line (\\d+): cannot unmarshal (\\S+)(?: `(.*)`)? into (.*)$")
	duplicateRE = regexp.MustCompile(`^line (\d+): mapping key (".*") already defined at line (\d+)$`)
)

// objectNames are the names the documentation uses for each mapping in the
// file; a type missing here is not a mapping of the catalog.
var objectNames = map[reflect.Type]string{
	reflect.TypeFor[document]():      "the top level",
	reflect.TypeFor[mesh.Service]():  "service",
	reflect.TypeFor[mesh.Endpoint](): "endpoint",
	reflect.TypeFor[mesh.Locality](): "locality",
	reflect.TypeFor[mesh.Proxy]():    "proxy",
	reflect.TypeFor[mesh.Upstream](): "upstream",
	// A gateway's listeners (docs/catalog.md, gateway).
	reflect.TypeFor[mesh.GatewayListener](): "listener",
	reflect.TypeFor[mesh.GatewayTLS]():      "tls",
	reflect.TypeFor[mesh.GatewayRoute]():    "route",
}

// typesByName finds the types yaml.v3 names in its messages (by their Go
// String()), for when the message cannot be matched to a node.
var typesByName = func() map[string]reflect.Type {
	m := map[string]reflect.Type{}
	var add func(t reflect.Type)
	add = func(t reflect.Type) {
		if _, seen := m[t.String()]; seen {
			return
		}
		m[t.String()] = t
		switch t.Kind() {
		case reflect.Slice, reflect.Map, reflect.Pointer:
			add(t.Elem())
		case reflect.Struct:
			for i := range t.NumField() {
				add(t.Field(i).Type)
			}
		}
	}
	add(reflect.TypeFor[document]())
	return m
}()

// syntaxProblem turns a yaml.v3 syntax error into a Problem, on the line
// where the error is (internal/yamlsyntax).
func syntaxProblem(data []byte, err error) Problem {
	line, text := yamlsyntax.Explain(data, err)
	return Problem{Line: line, Message: text}
}

// explainTypeErrors rewrites each of yaml.v3's field-level errors.
func explainTypeErrors(data []byte, te *yaml.TypeError) []Problem {
	sites := walkSites(data)
	out := make([]Problem, 0, min(len(te.Errors), maxProblems+1))
	seen := make(map[Problem]bool, len(out))
	for i, e := range te.Errors {
		// A pathological file (a key repeated hundreds of times at many
		// depths) makes yaml.v3 report hundreds of thousands of errors:
		// explaining them all took minutes and gave a message of tens of
		// megabytes. The first ones are what a person fixes first.
		if len(out) == maxProblems || i == maxTypeErrorsExamined {
			out = append(out, Problem{Message: fmt.Sprintf("and up to %d more problems not shown: fix these first", len(te.Errors)-i)})
			break
		}
		p := explainTypeError(sites, e)
		// A mapping merged in with "<<: *anchor" is decoded, and reported,
		// once per use; once is enough to read.
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out
}

// maxProblems is how many distinct problems a catalog error lists, and
// maxTypeErrorsExamined how many of yaml.v3's errors are looked at to find
// them.
const (
	maxProblems           = 50
	maxTypeErrorsExamined = 5000
)

func explainTypeError(sites []site, e string) Problem {
	if m := unknownRE.FindStringSubmatch(e); m != nil {
		line, _ := strconv.Atoi(m[1])
		name := m[2]
		t := typesByName[m[3]]
		where := ""
		for _, s := range sites {
			if s.key != nil && s.key.Line == line && s.key.Value == name && s.parentType == t {
				where = s.parentPath
				break
			}
		}
		return Problem{Line: line, Message: unknownFieldMessage(name, t, m[3], where)}
	}
	if m := typeRE.FindStringSubmatch(e); m != nil {
		line, _ := strconv.Atoi(m[1])
		tag, value, goType := m[2], m[3], m[4]
		want := typesByName[goType]
		var found *site
		for i := range sites {
			s := &sites[i]
			if s.node.Line == line && s.typ == want && sameValue(s.node, tag, value) {
				found = s
				break
			}
		}
		got := describeValue(tag, value)
		where := "value"
		if found != nil {
			got = describeValue(tag, found.node.Value)
			where = found.path
			if where == "" {
				where = "the catalog"
			}
		}
		return Problem{Line: line, Message: fmt.Sprintf("%s: want %s, got %s; %s", where, describeType(want, goType), got, docsHint)}
	}
	if m := duplicateRE.FindStringSubmatch(e); m != nil {
		line, _ := strconv.Atoi(m[1])
		first, _ := strconv.Atoi(m[3])
		name, err := strconv.Unquote(m[2])
		if err != nil {
			name = m[2]
		}
		return duplicateProblem(sites, line, name, first)
	}
	// A message this code does not know: better yaml.v3's words than none.
	if line, rest, ok := strings.Cut(e, ": "); ok {
		if n, err := strconv.Atoi(strings.TrimPrefix(line, "line ")); err == nil {
			return Problem{Line: n, Message: rest + "; " + docsHint}
		}
	}
	return Problem{Message: e + "; " + docsHint}
}

// duplicateProblem explains a key that appears twice in one mapping, at
// line and first at firstLine.
func duplicateProblem(sites []site, line int, name string, firstLine int) Problem {
	in := ""
	for _, s := range sites {
		if s.key != nil && s.key.Line == line && s.key.Value == name {
			in = " " + describeObject(s.parentType, s.parentPath)
			break
		}
	}
	return Problem{Line: line, Message: repeatedMessage(name, in, firstLine)}
}

func repeatedMessage(name, in string, firstLine int) string {
	return fmt.Sprintf("field %q appears twice%s (first at line %d): keep one", name, in, firstLine)
}

// repeatedKeyProblem explains the JSON path's repeated key. Its offset gives
// the key's line and column, which tell it from a key of the same name in
// another object on the same line (JSON catalogs often hold one object per
// line).
func repeatedKeyProblem(data []byte, e *repeatedKeyError) Problem {
	before := data[:e.offset]
	line := bytes.Count(before, []byte{'\n'}) + 1
	// yaml.v3 counts columns in characters, from 1.
	col := utf8.RuneCount(before[bytes.LastIndexByte(before, '\n')+1:]) + 1
	sites := walkSites(data)
	for _, s := range sites {
		if s.key == nil || s.key.Line != line || s.key.Column != col || s.key.Value != e.key {
			continue
		}
		first := line
		for _, f := range sites {
			// Sites are in document order: the first key of that name in
			// the same object is where it first appears.
			if f.key != nil && f.key.Value == e.key && f.parentPath == s.parentPath && f.parentType == s.parentType {
				first = f.key.Line
				break
			}
		}
		in := ""
		if d := describeObject(s.parentType, s.parentPath); d != "" {
			in = " " + d
		}
		return Problem{Line: line, Message: repeatedMessage(e.key, in, first)}
	}
	// Past what walkSites looks at (a very large file): the line alone.
	return Problem{Line: line, Message: fmt.Sprintf("field %q appears twice in one object: keep one", e.key)}
}

func unknownFieldMessage(name string, t reflect.Type, goType, where string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "unknown field %q ", name)
	if t == nil {
		fmt.Fprintf(&b, "in %s", goType)
		b.WriteString("; " + docsHint)
		return b.String()
	}
	b.WriteString(describeObject(t, where))
	fields := yamlFields(t)
	if s := suggest.Closest(name, fields); s != "" {
		fmt.Fprintf(&b, "; did you mean %q?", s)
	} else {
		fmt.Fprintf(&b, "; valid fields are %s;", strings.Join(fields, ", "))
	}
	b.WriteString(" " + docsHint)
	return b.String()
}

// describeObject names a mapping: "at the top level" or "in service (services[0])".
func describeObject(t reflect.Type, path string) string {
	name, ok := objectNames[t]
	switch {
	case !ok && path == "":
		return ""
	case !ok:
		return "in " + path
	case t == reflect.TypeFor[document]():
		return "at " + name
	case path == "":
		return "in " + name
	}
	return fmt.Sprintf("in %s (%s)", name, path)
}

// sameValue reports whether node is the one a yaml.v3 type error describes.
// yaml.v3 shortens long values to their first 7 characters and "...".
func sameValue(n *yaml.Node, tag, value string) bool {
	if n.ShortTag() != tag && n.Tag != tag {
		return false
	}
	if n.Kind != yaml.ScalarNode {
		return value == ""
	}
	if short, ok := strings.CutSuffix(value, "..."); ok && len(n.Value) > 10 {
		return strings.HasPrefix(n.Value, short)
	}
	return n.Value == value
}

func describeValue(tag, value string) string {
	switch tag {
	case "!!str":
		return fmt.Sprintf("the string %q", value)
	case "!!int", "!!float":
		return "the number " + value
	case "!!bool":
		return "the boolean " + value
	case "!!null":
		return "nothing (null)"
	case "!!seq":
		return "a list"
	case "!!map":
		return "a mapping"
	}
	if value == "" {
		return "a " + tag + " value"
	}
	return fmt.Sprintf("the %s value %q", tag, value)
}

func describeType(t reflect.Type, goType string) string {
	if t == nil {
		return goType
	}
	switch t.Kind() {
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a non-negative whole number"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return "a whole number"
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Slice:
		if name, ok := objectNames[t.Elem()]; ok {
			return "a list of " + name + "s"
		}
		return "a list"
	case reflect.Map:
		return "a mapping of names to strings"
	case reflect.Struct:
		if t == reflect.TypeFor[document]() {
			return "a mapping with services: and proxies:"
		}
		if name, ok := objectNames[t]; ok {
			return "a " + name + " (a mapping of field: value)"
		}
	}
	return goType
}

// yamlFields lists a struct's YAML field names in declaration order, the order
// the documentation uses.
func yamlFields(t reflect.Type) []string {
	var out []string
	for i := range t.NumField() {
		if name := yamlName(t.Field(i)); name != "" {
			out = append(out, name)
		}
	}
	return out
}

func yamlName(f reflect.StructField) string {
	if !f.IsExported() {
		return ""
	}
	name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
	switch name {
	case "-":
		return ""
	case "":
		return strings.ToLower(f.Name) // yaml.v3's default
	}
	return name
}

func fieldType(t reflect.Type, name string) reflect.Type {
	for i := range t.NumField() {
		if yamlName(t.Field(i)) == name {
			return t.Field(i).Type
		}
	}
	return nil
}

// site is one node of the document with what the schema says about it.
type site struct {
	key        *yaml.Node   // the mapping key naming the node; nil for list items and the root
	node       *yaml.Node   // the value
	path       string       // e.g. services[0].endpoints[1].port; "" for the root
	typ        reflect.Type // what the node decodes into; nil under an unknown field
	parentPath string
	parentType reflect.Type // the mapping's type, when key != nil
}

// walkSites parses data into a node tree and pairs every node with its path
// and type, so that a line number from yaml.v3 can be turned back into a
// field. It is only used on the error path.
func walkSites(data []byte) []site {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil || root.Kind != yaml.DocumentNode || len(root.Content) == 0 {
		return nil
	}
	var out []site
	// depth bounds the walk: aliases can make the tree very wide.
	var walk func(n, key *yaml.Node, t reflect.Type, path, parentPath string, parentType reflect.Type, depth int)
	walk = func(n, key *yaml.Node, t reflect.Type, path, parentPath string, parentType reflect.Type, depth int) {
		if depth > 32 || len(out) > 100000 {
			return
		}
		if n.Kind == yaml.AliasNode && n.Alias != nil {
			n = n.Alias
		}
		for t != nil && t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		out = append(out, site{key: key, node: n, path: path, typ: t, parentPath: parentPath, parentType: parentType})
		switch n.Kind {
		case yaml.SequenceNode:
			var elem reflect.Type
			if t != nil && t.Kind() == reflect.Slice {
				elem = t.Elem()
			}
			for i, c := range n.Content {
				walk(c, nil, elem, fmt.Sprintf("%s[%d]", path, i), path, nil, depth+1)
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				if k.Tag == "!!merge" {
					// "<<: *anchor" merges fields into this mapping.
					walk(v, nil, t, path, parentPath, parentType, depth+1)
					continue
				}
				var ft reflect.Type
				if t != nil {
					switch t.Kind() {
					case reflect.Struct:
						ft = fieldType(t, k.Value)
					case reflect.Map:
						ft = t.Elem()
					}
				}
				p := k.Value
				if path != "" {
					p = path + "." + k.Value
				}
				walk(v, k, ft, p, path, t, depth+1)
			}
		}
	}
	walk(root.Content[0], nil, reflect.TypeFor[document](), "", "", nil, 0)
	// Document order, so the first match for a line is the leftmost node.
	slices.SortStableFunc(out, func(a, b site) int {
		if c := cmp.Compare(a.node.Line, b.node.Line); c != 0 {
			return c
		}
		return cmp.Compare(a.node.Column, b.node.Column)
	})
	return out
}
