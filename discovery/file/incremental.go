package file

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"

	"gopkg.in/yaml.v3"

	"github.com/meshd/meshd/internal/yamlkeys"
	"github.com/meshd/meshd/mesh"
)

// The incremental path (YAML here; JSON catalogs the same way through
// splitJSON and decodeJSON below).
//
// The Watcher re-parses the whole file on every change, and on the M catalog
// (1,000 proxies, 200 services × 10 endpoints) yaml.v3 takes about 70 ms,
// although successive versions usually differ in one service's endpoints.
// An incremental parser keeps, from the last parse, every top-level list
// item's text with what it decoded to, and runs yaml.v3 only on the items
// whose text is new.
//
// That is only correct if an item means the same alone as in the file. It
// does when the file's structure can be read off its lines without a YAML
// parser, so splitCatalog accepts only such files and every doubt sends the
// file to the full parse (parseYAML), which stays the definition of what a
// catalog means and the only source of error messages:
//
//   - the top level is exactly `services:` and/or `proxies:` at column 0,
//     each at most once, with nothing after the colon but spaces and a
//     comment, each followed by a block sequence whose items all start with
//     "- " at one column;
//   - an item is its "- " line and every following line up to the next item
//     or top-level key: lines more indented than the dash, blank lines and
//     comment lines. A construct inside an item (a block or multi-line
//     scalar, a nested list) cannot run into the next "- " line, which is
//     not more indented than the item; a quoted scalar could, but then the
//     item alone ends inside the quotes and fails to decode;
//   - nothing that can tie one item to another or change how lines are
//     read: no anchors, aliases or tags (any '&', '*' or '!' outside a
//     quoted scalar that starts and ends on its line), no flow collections
//     (any '{', '}', '[' or ']', with the same exception), no document markers or
//     directives, no tabs, no BOM, no line breaks other than LF and CRLF (YAML
//     also breaks lines at CR, NEL, U+2028 and U+2029), and no character
//     yaml.v3 refuses, so that the lines the decoder never sees (top-level
//     keys, comments and blank lines outside items) are harmless.
//
// These tests refuse some valid files (an '&' in a comment, a flow list),
// which then simply take the full parse. So does an item holding a mapping
// with too many or repeated keys, which yaml.v3's repeated-key check must
// not see (keys.go). A new or changed item is decoded as
// the only item of a one-key document, with the same strictness as the full
// parse (KnownFields, duplicate keys refused); if any item fails to decode
// alone, or the catalog does not validate, the full parse runs and reports.
// yaml.v3 decodes a list element by element, and without aliases nothing
// carries from one element to the next, so the lists of the full parse are
// the items decoded alone, in file order; the tests and fuzz targets in
// incremental_test.go compare the two paths document by document.
//
// On the M catalog a re-read after a one-endpoint change takes about 7 ms
// (BenchmarkParseMIncremental), most of it validation, against 63 ms for a
// full parse (BenchmarkParseM); the first read, every item decoded alone,
// costs about as much as a full parse (BenchmarkParseMIncrementalCold).

// incremental is a catalog parser that remembers decoded items between
// calls. It is owned by one goroutine (the Watcher's), and its memory is
// bounded by one file: each successful pass keeps only the items of the file
// it just read.
type incremental struct {
	services map[string]cached[mesh.Service] // item text → decoded service
	proxies  map[string]cached[mesh.Proxy]   // item text → decoded proxy

	// cat is the catalog the fast path built from the items above, nil
	// when the last call did not build one, and svcText the text of each
	// of its services' items. With them a file whose only new items are
	// services that differ in their endpoints alone is built by
	// cat.WithEndpoints, in time proportional to those items, instead of
	// validating the whole catalog again (issue 14: at 10,000 proxies that
	// validation was most of a one-endpoint edit).
	cat     *mesh.Catalog
	svcText map[mesh.ServiceKey]string

	// What the last decode found: the services items it decoded (not
	// reused), whether every services item's text was distinct, and
	// whether the proxies items were exactly the previous call's.
	fresh            []freshService
	distinctServices bool
	sameProxies      bool

	// decoded counts the items yaml.v3 decoded in the last call, so that
	// tests can see what was reused.
	decoded int
}

// freshService is a services item decoded in the last call.
type freshService struct {
	text string
	svc  mesh.Service
}

// parse is Parse, reusing what earlier calls decoded: for every input it
// returns exactly what Parse returns.
func (p *incremental) parse(path string, data []byte) (*mesh.Catalog, error) {
	p.decoded = 0
	if cat, err := p.fast(path, data); err == nil {
		return cat, nil
	}
	// Whatever the reason, the full parse decides and explains.
	return Parse(path, data)
}

// errNotIncremental is wrapped by every reason the incremental path leaves a
// file to the full parse. Those reasons are never shown to users.
var errNotIncremental = errors.New("not incremental")

// fast decodes the new items of data and builds the catalog, or says why the
// full parse must run.
func (p *incremental) fast(path string, data []byte) (*mesh.Catalog, error) {
	prev, prevText := p.cat, p.svcText
	p.cat, p.svcText = nil, nil
	doc, err := p.decode(data)
	if err != nil {
		return nil, err
	}
	if cat, ok := p.endpointsOnly(prev, prevText, len(doc.Services)); ok {
		return cat, nil
	}
	cat, err := buildCatalog(path, nil, doc) // problems go to the full parse
	if err != nil {
		// The full parse reports the same problems, and any YAML problem
		// that might come before them.
		return nil, fmt.Errorf("%w: %w", errNotIncremental, err)
	}
	p.svcText = make(map[mesh.ServiceKey]string, len(p.services))
	for text, s := range p.services {
		p.svcText[catalogKey(&s.v)] = text
	}
	p.cat = cat
	return cat, nil
}

// endpointsOnly builds the catalog of the file decode just read from prev,
// the catalog of the file before, when the two differ only in the
// endpoints of some services: the proxies items are the same, there are as
// many services items, all distinct, and each new one replaces the item
// that had its service's key. Then the new file's services items are
// exactly prev's minus the replaced ones plus the new ones, and
// prev.WithEndpoints gives what NewCatalog would. Anything else (or new
// endpoints that do not validate) is left to the whole build.
func (p *incremental) endpointsOnly(prev *mesh.Catalog, prevText map[mesh.ServiceKey]string, services int) (*mesh.Catalog, bool) {
	if prev == nil || !p.sameProxies || !p.distinctServices || services != len(prev.Services()) {
		return nil, false
	}
	changed := make([]mesh.Service, len(p.fresh))
	for i, f := range p.fresh {
		old, ok := prevText[catalogKey(&f.svc)]
		if _, kept := p.services[old]; !ok || kept {
			return nil, false
		}
		changed[i] = f.svc
	}
	cat, err := prev.WithEndpoints(changed)
	if err != nil {
		return nil, false
	}
	for _, f := range p.fresh {
		prevText[catalogKey(&f.svc)] = f.text
	}
	p.cat, p.svcText = cat, prevText
	return cat, true
}

// catalogKey is the key a decoded service has in a catalog (NewCatalog
// defaults its namespace).
func catalogKey(s *mesh.Service) mesh.ServiceKey {
	k := s.Key()
	if k.Namespace == "" {
		k.Namespace = mesh.DefaultNamespace
	}
	return k
}

// decode returns the document decodeYAML would return for data, decoding
// only the items not seen in the last call, or says why the full parse must
// run. It never returns an empty document.
func (p *incremental) decode(data []byte) (document, error) {
	if looksLikeJSON(data) {
		return p.decodeJSON(data)
	}
	svcItems, proxyItems, err := splitCatalog(data)
	if err != nil {
		return document{}, err
	}
	if len(svcItems) == 0 && len(proxyItems) == 0 {
		// Empty: the full parse words the error.
		return document{}, fmt.Errorf("%w: no items", errNotIncremental)
	}
	services, svcs, freshSvcs, err := reuseOrDecode(svcItems, p.services, func(text []byte) (mesh.Service, error) {
		item, err := p.decodeItem("services:\n", text)
		if err == nil && (len(item.Services) != 1 || len(item.Proxies) != 0) {
			err = fmt.Errorf("%w: a services item decoded to %d services and %d proxies",
				errNotIncremental, len(item.Services), len(item.Proxies))
		}
		if err != nil {
			return mesh.Service{}, err
		}
		return item.Services[0], nil
	})
	if err != nil {
		return document{}, err
	}
	proxies, pxs, freshProxies, err := reuseOrDecode(proxyItems, p.proxies, func(text []byte) (mesh.Proxy, error) {
		item, err := p.decodeItem("proxies:\n", text)
		if err == nil && (len(item.Proxies) != 1 || len(item.Services) != 0) {
			err = fmt.Errorf("%w: a proxies item decoded to %d services and %d proxies",
				errNotIncremental, len(item.Services), len(item.Proxies))
		}
		if err != nil {
			return mesh.Proxy{}, err
		}
		return item.Proxies[0], nil
	})
	if err != nil {
		return document{}, err
	}
	return p.keep(svcItems, proxyItems, services, proxies, svcs, pxs, freshSvcs, freshProxies), nil
}

// decodeJSON is decode for a JSON catalog: splitJSON checks the file as
// the JSON fast path does (decodeJSON in json.go) and cuts it into items,
// and a new item is decoded alone by encoding/json (issue 14: a
// one-endpoint edit of a JSON catalog decoded and validated the whole file).
func (p *incremental) decodeJSON(data []byte) (document, error) {
	svcItems, proxyItems, err := splitJSON(data)
	if err != nil {
		return document{}, fmt.Errorf("%w: %w", errNotIncremental, err)
	}
	if len(svcItems) == 0 && len(proxyItems) == 0 {
		return document{}, fmt.Errorf("%w: no items", errNotIncremental)
	}
	services, svcs, freshSvcs, err := reuseOrDecode(svcItems, p.services, jsonItem[mesh.Service](p))
	if err != nil {
		return document{}, err
	}
	proxies, pxs, freshProxies, err := reuseOrDecode(proxyItems, p.proxies, jsonItem[mesh.Proxy](p))
	if err != nil {
		return document{}, err
	}
	return p.keep(svcItems, proxyItems, services, proxies, svcs, pxs, freshSvcs, freshProxies), nil
}

// jsonItem decodes one JSON item, as json.Unmarshal decodes it inside the
// whole file (the keys are exactly the fields' names: splitJSON checked).
func jsonItem[T any](p *incremental) func([]byte) (T, error) {
	return func(text []byte) (T, error) {
		p.decoded++
		var v T
		if err := json.Unmarshal(text, &v); err != nil {
			return v, fmt.Errorf("%w: decoding an item alone: %w", errNotIncremental, err)
		}
		return v, nil
	}
}

// keep records what a decode found, for the next call and for fast, and
// returns the document.
func (p *incremental) keep(svcItems, proxyItems [][]byte, services map[string]cached[mesh.Service], proxies map[string]cached[mesh.Proxy],
	svcs []mesh.Service, pxs []mesh.Proxy, freshSvcs, freshProxies []int) document {
	doc := document{Services: svcs, Proxies: pxs}
	// Every item decoded, so the next call can reuse them whether or not
	// the catalog validates (a fix usually follows a bad edit). Items of
	// older files are dropped here, which bounds the cache to one file.
	//
	// The cached values share label maps and upstream lists with doc, which
	// is safe because mesh.NewCatalog copies what it is given and changes
	// only its copies (TestIncrementalCacheNotMutated checks it).
	p.sameProxies = len(freshProxies) == 0 && len(proxies) == len(proxyItems) && len(proxyItems) == len(p.proxies)
	p.distinctServices = len(services) == len(svcItems)
	p.fresh = p.fresh[:0]
	for _, i := range freshSvcs {
		p.fresh = append(p.fresh, freshService{text: services[string(svcItems[i])].text, svc: svcs[i]})
	}
	p.services, p.proxies = services, proxies
	return doc
}

// cached is an item's decoded value with its text, the key it is cached
// under: a reused item is cached again under the same string, not a copy
// of the text (7.5 MB per edit at 10,000 proxies).
type cached[T any] struct {
	text string
	v    T
}

// reuseOrDecode returns the values of items in order, taking each from this
// call's earlier items or from prev (the last call's) when its text was seen
// before, and decoding it otherwise, and the indices of the items it
// decoded; the map it returns holds exactly these items, for the next call.
func reuseOrDecode[T any](items [][]byte, prev map[string]cached[T], decode func([]byte) (T, error)) (map[string]cached[T], []T, []int, error) {
	next := make(map[string]cached[T], len(items))
	out := make([]T, 0, len(items))
	var fresh []int
	for i, text := range items {
		c, ok := next[string(text)]
		if !ok {
			c, ok = prev[string(text)]
		}
		if !ok {
			v, err := decode(text)
			if err != nil {
				return nil, nil, nil, err
			}
			c = cached[T]{text: string(text), v: v}
			fresh = append(fresh, i)
		}
		next[c.text] = c
		out = append(out, c.v)
	}
	return next, out, fresh, nil
}

// maxCheckedItem is the largest item whose keys decodeItem checks closely
// when the quick look is not sure of them; items are rarely over a few
// hundred bytes.
const maxCheckedItem = 64 << 10

// decodeItem decodes one item's text as the only item of a document with one
// top-level key (prefix), as strictly as decodeYAML decodes a whole file.
// prefix puts the item in the same context as in the file: a block sequence
// at the item's column, the value of a key at column 0.
func (p *incremental) decodeItem(prefix string, text []byte) (document, error) {
	buf := make([]byte, 0, len(prefix)+len(text))
	buf = append(append(buf, prefix...), text...)
	// yaml.v3 must not see a mapping with too many or repeated keys
	// (keys.go). A large item the quick look is not sure of is left to the
	// full parse, which checks the whole file once, and explains; checking
	// it here too would double the cost of refusing a hostile file.
	if !yamlkeys.Quick(buf, yamlkeys.MaxKeys) &&
		(len(buf) > maxCheckedItem || yamlkeys.Check(buf, yamlkeys.MaxKeys).Costly()) {
		return document{}, fmt.Errorf("%w: an item with a mapping of too many or repeated keys, or a large item not sure not to have one", errNotIncremental)
	}
	p.decoded++
	dec := yaml.NewDecoder(bytes.NewReader(buf))
	dec.KnownFields(true)
	var doc document
	if err := dec.Decode(&doc); err != nil {
		return document{}, fmt.Errorf("%w: decoding an item alone: %w", errNotIncremental, err)
	}
	// splitCatalog refuses document markers, so this cannot happen; it is
	// checked because the consequence (a silently ignored document) would
	// be wrong.
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return document{}, fmt.Errorf("%w: an item is more than one document", errNotIncremental)
	}
	return doc, nil
}

// splitCatalog returns the text of every item of the services and proxies
// lists, in file order, or an error wrapping errNotIncremental if the file
// is not one whose structure can be read line by line (see the top of this
// file). Each item's text is a subslice of data.
func splitCatalog(data []byte) (services, proxies [][]byte, err error) {
	if err := checkIncrementalText(data); err != nil {
		return nil, nil, err
	}
	const (
		none = iota
		inServices
		inProxies
	)
	var (
		section      = none
		seen         [3]bool
		itemIndent   = -1 // column of the current section's dashes; -1 before its first item
		itemStart    = -1 // offset of the current item; -1 outside items
		lineNo       = 0
		closeCurrent = func(end int) {
			if itemStart < 0 {
				return
			}
			if section == inServices {
				services = append(services, data[itemStart:end])
			} else {
				proxies = append(proxies, data[itemStart:end])
			}
			itemStart = -1
		}
	)
	for start := 0; start < len(data); {
		lineNo++
		end := bytes.IndexByte(data[start:], '\n')
		next := len(data)
		if end < 0 {
			end = len(data)
		} else {
			end += start
			next = end + 1
		}
		line := bytes.TrimSuffix(data[start:end], []byte{'\r'})
		indent := 0
		for indent < len(line) && line[indent] == ' ' {
			indent++
		}
		rest := line[indent:]
		switch {
		case len(rest) == 0 || rest[0] == '#':
			// Blank or comment: part of the current item, if any, and
			// meaningless otherwise.
		case bytes.HasPrefix(rest, []byte("---")) || bytes.HasPrefix(rest, []byte("...")):
			// A document marker at column 0, and refused anywhere else too,
			// out of caution.
			return nil, nil, fmt.Errorf("%w: line %d: a document marker", errNotIncremental, lineNo)
		case itemStart >= 0 && indent > itemIndent:
			// Inside the current item.
		case indent == 0 && topKey(line) != none:
			k := topKey(line)
			if seen[k] {
				return nil, nil, fmt.Errorf("%w: line %d: a repeated top-level key", errNotIncremental, lineNo)
			}
			closeCurrent(start)
			seen[k] = true
			section, itemIndent = k, -1
		case section != none && (itemIndent < 0 || indent == itemIndent) && bytes.HasPrefix(rest, []byte("- ")):
			closeCurrent(start)
			itemIndent, itemStart = indent, start
		default:
			return nil, nil, fmt.Errorf("%w: line %d: not a top-level key or list item", errNotIncremental, lineNo)
		}
		start = next
	}
	closeCurrent(len(data))
	return services, proxies, nil
}

// topKey says which top-level key line is (1 services, 2 proxies, 0 neither):
// the key at column 0, a colon, then only spaces and perhaps a comment.
func topKey(line []byte) int {
	var k int
	switch {
	case bytes.HasPrefix(line, []byte("services:")):
		k, line = 1, line[len("services:"):]
	case bytes.HasPrefix(line, []byte("proxies:")):
		k, line = 2, line[len("proxies:"):]
	default:
		return 0
	}
	rest := bytes.TrimLeft(line, " ")
	// A '#' starts a comment only after a space: "services:#x" is a key.
	if len(rest) == 0 || (rest[0] == '#' && len(rest) < len(line)) {
		return k
	}
	return 0
}

// plainASCII marks the ASCII bytes checkIncrementalText lets through without
// a second look: printable, and not one of the indicators it refuses.
var plainASCII = func() (t [utf8.RuneSelf]bool) {
	for b := byte(0x20); b < 0x7f; b++ {
		t[b] = !strings.ContainsRune("&*!{}[]", rune(b))
	}
	t['\n'] = true
	return t
}()

// inQuotedScalar reports whether data[pos] is inside a quoted scalar that
// starts and ends on pos's line, where a node may start (at the start of
// the line's content, after "- " or after ": "): there an indicator is
// just a character of a string (`upstreamNamespaces: ['*']` is written
// `- '*'`, every sidecar seeing every namespace, issue 14). Anything else
// answers false, and the caller refuses the file as before.
func inQuotedScalar(data []byte, pos int) bool {
	start := bytes.LastIndexByte(data[:pos], '\n') + 1
	end := bytes.IndexByte(data[pos:], '\n')
	if end < 0 {
		end = len(data)
	} else {
		end += pos
	}
	line, pos := bytes.TrimSuffix(data[start:end], []byte{'\r'}), pos-start
	canStart := true // a node may start here
	for j := 0; j < len(line) && j <= pos; {
		c := line[j]
		switch {
		case c == ' ':
			j++
		case c == '-' && canStart && (j+1 == len(line) || line[j+1] == ' '):
			j++ // a sequence entry: a node may start after it
		case c == ':' && (j+1 == len(line) || line[j+1] == ' '):
			j, canStart = j+1, true
		case (c == '\'' || c == '"') && canStart:
			close := closingQuote(line, j)
			if close < 0 {
				return false // runs on to another line
			}
			if pos > j && pos < close {
				return true
			}
			j, canStart = close+1, false
		default:
			j, canStart = j+1, false
		}
	}
	return false
}

// closingQuote returns the index of the quote that ends the quoted scalar
// opening at line[open], or -1 if it does not end on the line.
func closingQuote(line []byte, open int) int {
	q := line[open]
	for j := open + 1; j < len(line); j++ {
		switch {
		case q == '\'' && line[j] == '\'':
			if j+1 < len(line) && line[j+1] == '\'' {
				j++ // '' is a quote inside
				continue
			}
			return j
		case q == '"' && line[j] == '\\':
			j++ // an escaped character
		case q == '"' && line[j] == '"':
			return j
		}
	}
	return -1
}

// checkIncrementalText refuses every byte or character that could make
// splitCatalog's reading of the lines differ from yaml.v3's, or that yaml.v3
// would refuse in a line the incremental path never decodes.
func checkIncrementalText(data []byte) error {
	for i := 0; i < len(data); {
		b := data[i]
		if b < utf8.RuneSelf {
			if plainASCII[b] {
				// Most of a catalog; the switch below is for the rest.
				i++
				continue
			}
			switch {
			case b == '\n':
			case b == '\r':
				// A lone CR is a line break to YAML.
				if i+1 >= len(data) || data[i+1] != '\n' {
					return fmt.Errorf("%w: offset %d: a CR not followed by LF", errNotIncremental, i)
				}
			case b < 0x20 || b == 0x7f:
				// Tabs included: out of caution, not only in indentation.
				return fmt.Errorf("%w: offset %d: control character %#x", errNotIncremental, i, b)
			case b == '&' || b == '*' || b == '!' || b == '{' || b == '}' || b == '[' || b == ']':
				if !inQuotedScalar(data, i) {
					return fmt.Errorf("%w: offset %d: %q may be an anchor, alias, tag or flow collection", errNotIncremental, i, b)
				}
			}
			i++
			continue
		}
		r, size := utf8.DecodeRune(data[i:])
		// YAML's printable set, without NEL, U+2028 and U+2029 (line breaks
		// to YAML) and without U+FEFF (a byte order mark).
		ok := (r >= 0xA0 && r <= 0xD7FF && r != 0x2028 && r != 0x2029) ||
			(r >= 0xE000 && r <= 0xFFFD && r != 0xFEFF) ||
			(r >= 0x10000 && r <= utf8.MaxRune)
		if r == utf8.RuneError && size == 1 || !ok {
			return fmt.Errorf("%w: offset %d: character %U", errNotIncremental, i, r)
		}
		i += size
	}
	return nil
}
