package file

import (
	"encoding"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"unicode/utf8"

	"gopkg.in/yaml.v3"

	"github.com/meshd/meshd/internal/yamlkeys"
)

// The JSON fast path.
//
// meshd parses the whole catalog on every change, and on xds-load's M catalog
// (1,000 proxies, 200 services × 10 endpoints) the YAML path takes about
// 70 ms, nearly all of it in yaml.v3: most of the 100 ms an endpoint change
// has to reach the proxies. JSON is valid YAML, so a generated catalog can be
// written as JSON and decoded with encoding/json: about 16 ms for the same
// catalog, validation included (BenchmarkParseM, BenchmarkParseMJSON). The YAML
// decoder stays the definition of what a catalog file means: the JSON path is
// only allowed to answer when it is certain to give exactly the catalog the
// YAML path would, and it never reports an error itself. Anything it is not
// sure about goes to the YAML path, which then gives the usual messages with
// line numbers.
//
// encoding/json alone accepts several things the YAML path refuses or reads
// differently, so checkJSON first walks the bytes once against the schema
// and refuses (sending the file to the YAML path) whenever the two could
// disagree:
//
//   - a key that appears twice in one object (encoding/json keeps the last,
//     yaml.v3 refuses the file), and an object with more keys than a
//     mapping may have (yamlkeys.MaxKeys; the YAML path refuses it, see
//     keys.go, and reports it in linear time);
//   - a key that matches a field only when case is ignored ("Name", which
//     encoding/json matches to name, even with DisallowUnknownFields);
//   - null (yaml.v3 drops a null list item where encoding/json keeps a zero
//     value);
//   - the \/ escape and UTF-16 surrogate escapes (\ud83d\ude00), which
//     yaml.v3 does not know;
//   - characters yaml.v3 refuses (DEL, C1 controls, U+FFFE, U+FFFF) or folds
//     as line breaks inside quoted strings (NEL, U+2028, U+2029), and
//     invalid UTF-8, which encoding/json silently replaces;
//   - a line break between a key and its colon, or a key longer than YAML's
//     1024-character limit for implicit keys;
//   - a tab before or after the top-level object (YAML forbids tabs there,
//     though it accepts them inside the braces).
//
// Every number field is a uint32: checkJSON lets through plain digits only,
// and encoding/json refuses those out of range, as yaml.v3 does. yaml.v3 also
// accepts 8080.0 or 8e3, which go to the YAML path.

// kind is what the schema expects at one place in the document.
type kind uint8

const (
	kindString kind = iota + 1 // a JSON string
	kindUint                   // a JSON integer (every number field is a uint32)
	kindStruct                 // an object with exactly the fields in fields
	kindMap                    // an object of strings with any keys
	kindList                   // an array of elem
)

type schema struct {
	kind   kind
	fields []field // kindStruct
	elem   *schema // kindList and kindMap
}

type field struct {
	name   string
	schema *schema
}

// maxKeyLen is the longest key, counted in bytes from its opening quote to
// the colon, that the JSON path accepts. YAML limits an implicit key to 1024
// characters from its start to the colon; a byte count is never below the
// character count, so this margin keeps every accepted key under the limit.
const maxKeyLen = 1000

// docSchema is the schema of a catalog file, derived from document's field
// tags so that it cannot drift from the YAML format. It is nil, and every
// file takes the YAML path, if some type cannot be decoded the same way by
// both decoders (schemaErr says why; a test keeps it nil).
var docSchema, schemaErr = buildSchema(reflect.TypeFor[document](), map[reflect.Type]*schema{})

var (
	jsonUnmarshaler = reflect.TypeFor[json.Unmarshaler]()
	yamlUnmarshaler = reflect.TypeFor[yaml.Unmarshaler]()
	textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()
)

func buildSchema(t reflect.Type, seen map[reflect.Type]*schema) (*schema, error) {
	if s, ok := seen[t]; ok {
		return s, nil
	}
	for _, u := range []reflect.Type{jsonUnmarshaler, yamlUnmarshaler, textUnmarshaler} {
		// A custom decoding method would run on one path only, or run
		// differently on each.
		if t.Implements(u) || reflect.PointerTo(t).Implements(u) {
			return nil, fmt.Errorf("%s implements %s", t, u)
		}
	}
	switch t.Kind() {
	case reflect.String:
		return &schema{kind: kindString}, nil
	case reflect.Uint32:
		return &schema{kind: kindUint}, nil
	case reflect.Slice:
		elem, err := buildSchema(t.Elem(), seen)
		if err != nil {
			return nil, err
		}
		return &schema{kind: kindList, elem: elem}, nil
	case reflect.Map:
		if t.Key().Kind() != reflect.String || t.Elem().Kind() != reflect.String {
			return nil, fmt.Errorf("%s: only maps of strings to strings are supported", t)
		}
		elem, err := buildSchema(t.Elem(), seen)
		if err != nil {
			return nil, err
		}
		return &schema{kind: kindMap, elem: elem}, nil
	case reflect.Struct:
		s := &schema{kind: kindStruct}
		seen[t] = s
		for i := range t.NumField() {
			f := t.Field(i)
			if !f.IsExported() {
				continue
			}
			if f.Anonymous {
				return nil, fmt.Errorf("%s.%s: embedded fields are not supported", t, f.Name)
			}
			yname, jname := yamlName(f), jsonName(f)
			if yname != jname {
				return nil, fmt.Errorf("%s.%s: YAML name %q differs from JSON name %q", t, f.Name, yname, jname)
			}
			if jname == "" {
				continue
			}
			if _, opts, _ := strings.Cut(f.Tag.Get("json"), ","); strings.Contains(opts, "string") {
				return nil, fmt.Errorf("%s.%s: the json ,string option is not supported", t, f.Name)
			}
			if _, opts, _ := strings.Cut(f.Tag.Get("yaml"), ","); strings.Contains(opts, "inline") {
				return nil, fmt.Errorf("%s.%s: the yaml ,inline option is not supported", t, f.Name)
			}
			fs, err := buildSchema(f.Type, seen)
			if err != nil {
				return nil, err
			}
			s.fields = append(s.fields, field{name: jname, schema: fs})
		}
		if len(s.fields) > 64 {
			// checker.object tracks the fields seen in a uint64.
			return nil, fmt.Errorf("%s: more than 64 fields", t)
		}
		return s, nil
	}
	return nil, fmt.Errorf("%s: kind %s is not supported", t, t.Kind())
}

// jsonName is encoding/json's name for f ("" for a field it skips).
func jsonName(f reflect.StructField) string {
	if !f.IsExported() {
		return ""
	}
	name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
	switch name {
	case "-":
		return ""
	case "":
		// encoding/json's default keeps the Go name, yaml.v3's lowercases
		// it; buildSchema refuses the difference.
		return f.Name
	}
	return name
}

// looksLikeJSON reports whether data is meant as JSON: its first
// non-whitespace byte opens an object. (A YAML catalog starts with a key or
// a comment, never with a brace.)
func looksLikeJSON(data []byte) bool {
	i := 0
	for i < len(data) && (data[i] == ' ' || data[i] == '\t' || data[i] == '\n' || data[i] == '\r') {
		i++
	}
	return i < len(data) && data[i] == '{'
}

// errNotPlainJSON is wrapped by every reason checkJSON refuses a file.
var errNotPlainJSON = errors.New("not plain JSON")

// decodeJSON decodes a JSON catalog, or says why the YAML path must decide.
// It never validates: Parse runs mesh.NewCatalog on the result, as the YAML
// path does.
func decodeJSON(data []byte) (document, error) {
	var doc document
	if schemaErr != nil {
		return doc, fmt.Errorf("%w: the catalog types cannot be decoded from JSON: %w", errNotPlainJSON, schemaErr)
	}
	if err := checkJSON(data); err != nil {
		return doc, err
	}
	// json.Unmarshal rather than a json.Decoder with DisallowUnknownFields:
	// checkJSON has already refused every key that is not exactly a field's
	// name, which is stricter than DisallowUnknownFields (that one ignores
	// case), and Unmarshal refuses data after the object by itself. A
	// Decoder would copy the file into a buffer it grows as it reads: on
	// the M catalog 13.8 ms and 6.0 MB against Unmarshal's 10.5 ms and
	// 1.8 MB.
	if err := json.Unmarshal(data, &doc); err != nil {
		return document{}, fmt.Errorf("decoding JSON: %w", err)
	}
	return doc, nil
}

// checkJSON walks data once against docSchema and returns nil only if data
// is a single JSON object that encoding/json and yaml.v3 must read alike (see
// the list at the top of this file). It is not a full JSON validator: what
// it lets through, encoding/json still checks.
func checkJSON(data []byte) error {
	c := checker{data: data}
	return c.check()
}

// splitJSON is checkJSON that also returns the text of every item of the
// services and proxies lists, in file order (subslices of data), for the
// incremental path: an item that checkJSON let through means alone what it
// means in the file, since encoding/json decodes a list element by element
// into zero values and nothing in one element refers to another.
func splitJSON(data []byte) (services, proxies [][]byte, err error) {
	if schemaErr != nil {
		return nil, nil, fmt.Errorf("%w: the catalog types cannot be decoded from JSON: %w", errNotPlainJSON, schemaErr)
	}
	c := checker{data: data, record: true}
	if err := c.check(); err != nil {
		return nil, nil, err
	}
	return c.services, c.proxies, nil
}

func (c *checker) check() error {
	data := c.data
	c.skipTopSpace()
	if c.pos >= len(data) || data[c.pos] != '{' {
		return c.fail("the file does not start with '{'")
	}
	if err := c.object(docSchema, 0); err != nil {
		return err
	}
	c.skipTopSpace()
	if c.pos < len(data) {
		return c.fail("data after the top-level object")
	}
	return nil
}

// maxDepth bounds the walk. The schema is five levels deep, and a value of
// the wrong kind ends the walk where it starts, so this is only a backstop.
const maxDepth = 16

type checker struct {
	data []byte
	pos  int
	// With record set, the walk also keeps the text of every element of
	// the top-level services and proxies lists (splitJSON); top is the
	// top-level field being walked.
	record            bool
	top               string
	services, proxies [][]byte
	// keys holds the keys of the map objects being walked, for the
	// duplicate check; reused so that walking a catalog does not allocate.
	keys []string
}

func (c *checker) fail(why string) error {
	return fmt.Errorf("%w: offset %d: %s", errNotPlainJSON, c.pos, why)
}

// repeatedKeyError is checkJSON's refusal of a key repeated in one object.
// Unlike its other refusals, it is certain to be the YAML path's too (YAML
// refuses a repeated key however it is written), so Parse reports it at
// once (repeatedKeyProblem) rather than have the YAML path decode the whole
// file to find it: on a 5 MB catalog that saves about a second.
type repeatedKeyError struct {
	key    string
	offset int // of the repeated key's opening quote
}

func (e *repeatedKeyError) Error() string {
	return fmt.Sprintf("%v: offset %d: duplicate key %q", errNotPlainJSON, e.offset, e.key)
}

func (e *repeatedKeyError) Unwrap() error { return errNotPlainJSON }

func (c *checker) repeated(key string, start int) error {
	return &repeatedKeyError{key: key, offset: start}
}

// skipSpace skips JSON whitespace inside the top-level object, where YAML's
// flow style allows tabs too.
func (c *checker) skipSpace() {
	for c.pos < len(c.data) {
		switch c.data[c.pos] {
		case ' ', '\t', '\n', '\r':
			c.pos++
		default:
			return
		}
	}
}

// skipTopSpace skips whitespace outside the top-level object, where YAML
// refuses tabs.
func (c *checker) skipTopSpace() {
	for c.pos < len(c.data) {
		switch c.data[c.pos] {
		case ' ', '\n', '\r':
			c.pos++
		default:
			return
		}
	}
}

func (c *checker) value(s *schema, depth int) error {
	if depth > maxDepth {
		return c.fail("nested too deeply")
	}
	c.skipSpace()
	if c.pos >= len(c.data) {
		return c.fail("unexpected end of data")
	}
	b := c.data[c.pos]
	switch {
	case b == '{' && (s.kind == kindStruct || s.kind == kindMap):
		return c.object(s, depth)
	case b == '[' && s.kind == kindList:
		return c.list(s, depth)
	case b == '"' && s.kind == kindString:
		_, _, err := c.str()
		return err
	case b >= '0' && b <= '9' && s.kind == kindUint:
		return c.uint()
	case b == 'n':
		return c.fail("null")
	}
	// Including a value of the wrong type: the YAML path will name it.
	return c.fail("unexpected value")
}

// object walks an object at c.pos ('{') whose schema is a struct or a map.
func (c *checker) object(s *schema, depth int) error {
	c.pos++
	var (
		seen  uint64              // struct fields seen, by index
		keys0 = len(c.keys)       // this map's keys are c.keys[keys0:]
		set   map[string]struct{} // replaces the linear search in a large map
		n     int                 // keys of a map so far
	)
	defer func() { c.keys = c.keys[:keys0] }()
	c.skipSpace()
	if c.pos < len(c.data) && c.data[c.pos] == '}' {
		c.pos++
		return nil
	}
	for {
		c.skipSpace()
		if c.pos >= len(c.data) || c.data[c.pos] != '"' {
			return c.fail("expected a key")
		}
		start := c.pos
		key, escaped, err := c.str()
		if err != nil {
			return err
		}
		if escaped {
			// Rare: compare keys by the text they stand for.
			var k string
			if err := json.Unmarshal(c.data[start:c.pos], &k); err != nil {
				return c.fail("bad key")
			}
			key = []byte(k)
		}
		// YAML's implicit keys end on the line they start on, within
		// 1024 characters.
		for c.pos < len(c.data) && (c.data[c.pos] == ' ' || c.data[c.pos] == '\t') {
			c.pos++
		}
		if c.pos >= len(c.data) || c.data[c.pos] != ':' {
			return c.fail("the key's colon is not on the key's line")
		}
		if c.pos-start > maxKeyLen {
			return c.fail("key too long")
		}
		c.pos++

		var vs *schema
		switch s.kind {
		case kindStruct:
			i := -1
			for j := range s.fields {
				// string(key) in a comparison does not allocate.
				if s.fields[j].name == string(key) {
					i = j
					break
				}
			}
			if i < 0 {
				return c.fail(fmt.Sprintf("unknown field %q", key))
			}
			if seen&(1<<i) != 0 {
				return c.repeated(string(key), start)
			}
			seen |= 1 << i
			vs = s.fields[i].schema
			if depth == 0 {
				c.top = s.fields[i].name
			}
		case kindMap:
			if n++; n > yamlkeys.MaxKeys {
				return c.fail("too many keys")
			}
			// Label maps are small, so a linear search beats hashing
			// until one is not.
			k := string(key)
			if set != nil {
				if _, dup := set[k]; dup {
					return c.repeated(k, start)
				}
				set[k] = struct{}{}
			} else {
				for _, prev := range c.keys[keys0:] {
					if prev == k {
						return c.repeated(k, start)
					}
				}
				c.keys = append(c.keys, k)
				if len(c.keys)-keys0 >= 32 {
					set = make(map[string]struct{}, 64)
					for _, prev := range c.keys[keys0:] {
						set[prev] = struct{}{}
					}
				}
			}
			vs = s.elem
		}
		if err := c.value(vs, depth+1); err != nil {
			return err
		}
		if done, err := c.separator('}'); done || err != nil {
			return err
		}
	}
}

func (c *checker) list(s *schema, depth int) error {
	c.pos++
	c.skipSpace()
	if c.pos < len(c.data) && c.data[c.pos] == ']' {
		c.pos++
		return nil
	}
	for {
		c.skipSpace()
		start := c.pos
		if err := c.value(s.elem, depth+1); err != nil {
			return err
		}
		if c.record && depth == 1 {
			switch c.top {
			case "services":
				c.services = append(c.services, c.data[start:c.pos])
			case "proxies":
				c.proxies = append(c.proxies, c.data[start:c.pos])
			}
		}
		if done, err := c.separator(']'); done || err != nil {
			return err
		}
	}
}

// separator reads what follows an object member or list element: a comma
// (more to come) or the closing byte (done).
func (c *checker) separator(closing byte) (done bool, err error) {
	c.skipSpace()
	if c.pos >= len(c.data) {
		return false, c.fail("unexpected end of data")
	}
	switch c.data[c.pos] {
	case ',':
		c.pos++
		return false, nil
	case closing:
		c.pos++
		return true, nil
	}
	return false, c.fail("expected ',' or '" + string(closing) + "'")
}

// uint walks a non-negative integer: digits only, no leading zero. A
// fraction or exponent is refused here; encoding/json would refuse it too,
// but yaml.v3 accepts 8080.0, so the YAML path should be the one to decide.
func (c *checker) uint() error {
	start := c.pos
	for c.pos < len(c.data) && c.data[c.pos] >= '0' && c.data[c.pos] <= '9' {
		c.pos++
	}
	if c.data[start] == '0' && c.pos-start > 1 {
		return c.fail("leading zero")
	}
	if c.pos < len(c.data) {
		switch c.data[c.pos] {
		case ' ', '\t', '\n', '\r', ',', '}', ']':
		default:
			return c.fail("not a whole number")
		}
	}
	return nil
}

// plain marks the bytes that stand for themselves in a JSON string and in a
// YAML double-quoted one: printable ASCII apart from '"' and '\\'.
var plain = func() (t [256]bool) {
	for b := 0x20; b < 0x7f; b++ {
		t[b] = b != '"' && b != '\\'
	}
	return t
}()

// str walks a string at c.pos ('"'), leaving c.pos after its closing quote.
// It returns the raw bytes between the quotes and whether they contain an
// escape.
func (c *checker) str() (raw []byte, escaped bool, err error) {
	c.pos++
	start := c.pos
	data := c.data
	for {
		i := c.pos
		for i < len(data) && plain[data[i]] {
			i++
		}
		c.pos = i
		if i >= len(data) {
			return nil, false, c.fail("unterminated string")
		}
		switch b := data[i]; {
		case b == '"':
			c.pos++
			return data[start:i], escaped, nil
		case b == '\\':
			escaped = true
			if err := c.escape(); err != nil {
				return nil, false, err
			}
		case b < 0x20:
			return nil, false, c.fail("control character in a string")
		case b == 0x7f:
			return nil, false, c.fail("DEL in a string")
		default:
			r, size := utf8.DecodeRune(data[i:])
			switch {
			case r == utf8.RuneError && size <= 1:
				return nil, false, c.fail("invalid UTF-8")
			case r <= 0x9f, r == 0x2028, r == 0x2029, r == 0xfffe, r == 0xffff:
				// C1 controls and U+FFFE/U+FFFF: yaml.v3 refuses them.
				// NEL (U+0085), U+2028, U+2029: yaml.v3 folds them as
				// line breaks inside a quoted string.
				return nil, false, c.fail(fmt.Sprintf("character %U in a string", r))
			}
			c.pos += size
		}
	}
}

// escape walks one escape sequence at c.pos ('\\').
func (c *checker) escape() error {
	if c.pos+1 >= len(c.data) {
		return c.fail("unterminated escape")
	}
	switch c.data[c.pos+1] {
	case '"', '\\', 'b', 'f', 'n', 'r', 't':
		c.pos += 2
		return nil
	case 'u':
		if c.pos+6 > len(c.data) {
			return c.fail("short \\u escape")
		}
		var r rune
		for _, h := range c.data[c.pos+2 : c.pos+6] {
			switch {
			case h >= '0' && h <= '9':
				r = r<<4 | rune(h-'0')
			case h >= 'a' && h <= 'f':
				r = r<<4 | rune(h-'a'+10)
			case h >= 'A' && h <= 'F':
				r = r<<4 | rune(h-'A'+10)
			default:
				return c.fail("bad \\u escape")
			}
		}
		if r >= 0xd800 && r <= 0xdfff {
			return c.fail("UTF-16 surrogate escape, which YAML does not accept")
		}
		c.pos += 6
		return nil
	}
	// Including \/, which JSON allows and yaml.v3 does not.
	return c.fail("escape YAML does not share with JSON")
}
