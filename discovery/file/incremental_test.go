package file

import (
	"bytes"
	"errors"
	"log/slog"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/meshd/meshd/internal/yamlkeys"
	"github.com/meshd/meshd/mesh"
)

const (
	incService = `  - name: web
    endpoints:
      - address: 10.0.0.1
        port: 8080
        labels:
          version: v1
`
	incService2 = `  - name: api
    protocol: http
    endpoints:
      - address: 10.0.0.2
        port: 8080
      - address: 10.0.0.3
        port: 8080
`
	incProxy = `  - service: web
    publicPort: 15001
    appPort: 8080
    upstreams:
      - service: api
        localPort: 9001
`
	incBase = "services:\n" + incService + incService2 + "proxies:\n" + incProxy
)

// incrementalCases are compared with the full parse. fast says whether the
// incremental path must answer by itself (true) or leave the file to the
// full parse (false); either way the result must be the full parse's.
var incrementalCases = []struct {
	name string
	data string
	fast bool
}{
	{"basic", incBase, true},
	{"proxies first", "proxies:\n" + incProxy + "services:\n" + incService + incService2, true},
	{"comments and blank lines everywhere", "# header\n\nservices: # the list\n\n# before\n" + incService +
		"\n  # between\n\n# col 0\n" + incService2 + "\n\nproxies:   \n" + incProxy + "\n# trailer\n", true},
	{"indentless lists", "services:\n- name: web\n  endpoints:\n  - address: 10.0.0.1\n    port: 8080\n" +
		"- name: api\n  endpoints:\n  - address: 10.0.0.2\n    port: 8080\nproxies:\n- service: web\n  publicPort: 15001\n  appPort: 8080\n", true},
	{"sections indented differently", "services:\n" + incService + incService2 + "proxies:\n" + indent(incProxy, "  "), true},
	{"multi-line plain scalar", strings.Replace(incBase, "version: v1\n", "version: v1\n            and more\n", 1), true},
	{"literal block scalar with a dash line", strings.Replace(incBase, "version: v1\n",
		"note: |\n            first\n  - name: not an item\n            - also not\n", 1), false},
	{"literal block scalar with deeper dash lines", strings.Replace(incBase, "version: v1\n",
		"note: |\n            first\n            - name: not an item\n\n", 1), true},
	{"keep-chomping block scalar at item end", strings.Replace(incBase, "version: v1\n",
		"note: |+\n            kept\n\n\n  # comment\n\n", 1), true},
	{"keep-chomping block scalar at file end", "proxies:\n" + incProxy + "services:\n" + incService2 +
		strings.Replace(incService, "version: v1\n", "note: |+\n            kept\n\n  \n\n", 1), true},
	{"keep-chomping block scalar before the next item", strings.Replace(incBase, "version: v1\n",
		"note: |+\n            kept\n\n      \n\n", 1), true},
	{"folded block scalar", strings.Replace(incBase, "version: v1\n", "note: >-\n            a\n            b\n\n            c\n", 1), true},
	{"quoted strings containing dashes", strings.Replace(incBase, "version: v1\n",
		"a: \"x - y\"\n          b: '- z'\n          c: \"- \"\n", 1), true},
	{"double-quoted string spanning items", strings.Replace(incBase, "version: v1\n",
		"note: \"start\n  - name: x\n    and end\"\n", 1), false},
	{"single-quoted string spanning lines", strings.Replace(incBase, "version: v1\n",
		"note: 'start\n            end'\n", 1), true},
	{"trailing spaces", strings.ReplaceAll(incBase, "\n", "   \n"), true},
	{"CRLF line endings", strings.ReplaceAll(incBase, "\n", "\r\n"), true},
	{"mixed line endings", strings.Replace(incBase, "\n", "\r\n", 5), true},
	{"no final newline", strings.TrimSuffix(incBase, "\n"), true},
	{"empty services list", "services:\nproxies:\n" + incProxy, false},
	{"empty lists", "services:\nproxies:\n", false},
	{"only comments", "# nothing\n\n  # here\n", false},
	{"empty file", "", false},
	{"third top-level key", incBase + "routes:\n  - name: x\n", false},
	{"services twice", incBase + "services:\n" + strings.Replace(incService, "web", "web2", 1), false},
	{"proxies twice", "proxies:\n" + incProxy + "services:\n" + incService + incService2 + "proxies:\n" + incProxy, false},
	{"duplicate key in an item", strings.Replace(incBase, "    appPort: 8080\n", "    appPort: 8080\n    appPort: 8081\n", 1), false},
	{"unknown field in an item", strings.Replace(incBase, "    appPort: 8080\n", "    appport: 8080\n", 1), false},
	{"wrong type in an item", strings.Replace(incBase, "port: 8080\n", "port: eighty\n", 1), false},
	{"validation error", strings.Replace(incBase, "port: 8080\n", "port: 0\n", 1), false},
	{"null item", strings.Replace(incBase, "proxies:\n", "proxies:\n  - ~\n", 1), false},
	{"item without content", strings.Replace(incBase, "proxies:\n", "proxies:\n  -\n", 1), false},
	{"dash without a space", strings.Replace(incBase, "  - name: api", "  -name: api", 1), false},
	{"items at different columns", strings.Replace(incBase, "  - name: api", " - name: api", 1), false},
	{"item deeper than the first", strings.Replace(incBase, "  - name: api\n", "    - name: api\n", 1), false},
	{"key less indented than its item", strings.Replace(incBase, "    protocol: http\n", " protocol: http\n", 1), false},
	{"key indented inconsistently in an item", strings.Replace(incBase, "    protocol: http\n", "     protocol: http\n", 1), false},
	{"comment at column 0 inside a block scalar", strings.Replace(incBase, "version: v1\n",
		"note: |\n            a\n# c\n            b\n", 1), false},
	{"document start marker", "---\n" + incBase, false},
	{"document end marker", incBase + "...\n", false},
	{"second document", incBase + "---\nservices:\n" + incService, false},
	{"directive", "%YAML 1.2\n---\n" + incBase, false},
	{"visible set of every namespace, quoted", strings.Replace(incBase, "    appPort: 8080\n",
		"    appPort: 8080\n    mode: transparent\n    capturePort: 15006\n    passthrough: allow\n    upstreamNamespaces:\n      - '*'\n", 1), true},
	{"indicators in quoted strings", strings.Replace(incBase, "version: v1\n",
		"version: v1\n          note: \"a & b {c} [d] !e *f\"\n          'k*': '*x'' ''*'\n", 1), true},
	{"alias after a quoted string", strings.Replace(incBase, "version: v1\n", "version: v1\n          note: 'x' *a\n", 1), false},
	{"quoted star spanning lines", strings.Replace(incBase, "version: v1\n", "version: '*\n            more'\n", 1), false},
	{"star in a comment after a value", strings.Replace(incBase, "version: v1\n", "version: v1 # '*'\n", 1), false},
	{"alias list entry", strings.Replace(incBase, "version: v1\n", "version: v1\n          list:\n            - *a\n", 1), false},
	{"anchor and alias", strings.Replace(incBase, "port: 8080\n", "port: &p 8080\n", 1), false},
	{"ampersand in a comment", "# a & b\n" + incBase, false},
	{"tag", strings.Replace(incBase, "port: 8080\n", "port: !!int 8080\n", 1), false},
	{"flow list", strings.Replace(incBase, "services:\n", "services: []\nx:\n", 1), false},
	{"flow mapping in an item", strings.Replace(incBase, "version: v1\n", "{a: b}\n", 1), false},
	{"tab indentation", strings.Replace(incBase, "    protocol: http\n", "\tprotocol: http\n", 1), false},
	{"tab in a value", strings.Replace(incBase, "version: v1\n", "version: \"v\t1\"\n", 1), false},
	{"byte order mark", "\ufeff" + incBase, false},
	{"lone CR", strings.Replace(incBase, "\n", "\r", 3), false},
	{"NEL in a comment", "# a\u0085b\n" + incBase, false},
	{"line separator in a comment", "# a\u2028b: 1\n" + incBase, false},
	{"paragraph separator in a comment", "# a\u2029b: 1\n" + incBase, false},
	{"lone CR in a comment", "# a\rb: 1\n" + incBase, false},
	{"DEL in a comment", "# a\x7fb\n" + incBase, false},
	{"invalid UTF-8 in a comment", "# a\xffb\n" + incBase, false},
	{"comment without a space after the key", strings.Replace(incBase, "services:\n", "services:#x\n", 1), false},
	{"key with a value", strings.Replace(incBase, "proxies:\n", "proxies: x\n", 1), false},
	{"quoted key", strings.Replace(incBase, "services:\n", "\"services\":\n", 1), false},
	{"key with a space before the colon", strings.Replace(incBase, "services:\n", "services :\n", 1), false},
	{"indented top-level key", strings.Replace(incBase, "proxies:\n", " proxies:\n", 1), false},
	{"content before the first item", strings.Replace(incBase, "services:\n", "services:\n  x: 1\n", 1), false},
	{"non-ASCII text", strings.Replace(incBase, "version: v1\n", "note: \"héllo wörld ✓ 😀\"\n", 1), true},
	{"identical items", strings.Replace(incBase, "proxies:\n", incService+"proxies:\n", 1), false},
}

func indent(s, by string) string {
	lines := strings.SplitAfter(s, "\n")
	for i, l := range lines {
		if l != "" {
			lines[i] = by + l
		}
	}
	return strings.Join(lines, "")
}

// sameAsFull fails unless p.parse gives for data exactly what Parse gives:
// deep-equal catalogs, or identical errors.
func sameAsFull(t *testing.T, p *incremental, data []byte) {
	t.Helper()
	wantCat, wantErr := Parse("catalog.yaml", data)
	gotCat, gotErr := p.parse("catalog.yaml", data)
	switch {
	case (gotErr == nil) != (wantErr == nil):
		t.Fatalf("incremental: %v\nfull: %v\ninput: %q", gotErr, wantErr, data)
	case gotErr != nil && gotErr.Error() != wantErr.Error():
		t.Fatalf("incremental error:\n  %v\nfull error:\n  %v", gotErr, wantErr)
	case !reflect.DeepEqual(gotCat, wantCat):
		t.Fatalf("incremental and full parse give different catalogs:\n%s", diffCatalogs(gotCat, wantCat))
	}
}

// sameDocument fails if p decodes data to anything but what the full parse
// decodes it to, and reports whether p decoded it at all. Unlike comparing
// catalogs, this also covers files that do not validate.
func sameDocument(t *testing.T, p *incremental, data []byte) bool {
	t.Helper()
	got, err := p.decode(data)
	if err != nil {
		if !errors.Is(err, errNotIncremental) {
			t.Fatalf("refusal does not wrap errNotIncremental: %v", err)
		}
		return false
	}
	want, err := decodeYAML("catalog.yaml", data)
	if err != nil {
		t.Fatalf("the incremental path decoded what the full parse refuses (%v):\n%q", err, data)
	}
	// The one difference allowed: a list with no items may be nil in one
	// and empty in the other (a JSON `[]`).
	for _, d := range []*document{&got, &want} {
		if len(d.Services) == 0 {
			d.Services = nil
		}
		if len(d.Proxies) == 0 {
			d.Proxies = nil
		}
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("different documents for %q:\nincremental: %+v\nfull:        %+v", data, got, want)
	}
	return true
}

func TestIncrementalMatchesFullParse(t *testing.T) {
	for _, tc := range incrementalCases {
		t.Run(tc.name, func(t *testing.T) {
			data := []byte(tc.data)
			cat, err := (&incremental{}).fast("catalog.yaml", data)
			if (err == nil) != tc.fast {
				t.Fatalf("incremental path answered: %v, want %v (error: %v)", err == nil, tc.fast, err)
			}
			if err != nil && !errors.Is(err, errNotIncremental) {
				t.Fatalf("refusal does not wrap errNotIncremental: %v", err)
			}
			if err == nil {
				want, werr := parseYAML("catalog.yaml", data)
				if werr != nil {
					t.Fatalf("incremental path accepted what the full parse refuses: %v", werr)
				}
				if !reflect.DeepEqual(cat, want) {
					t.Fatalf("different catalogs:\n%s", diffCatalogs(cat, want))
				}
			}
			if tc.fast && !sameDocument(t, &incremental{}, data) {
				t.Fatal("the incremental path did not decode the file")
			}
			warm := &incremental{}
			_, _ = warm.parse("catalog.yaml", []byte(incBase))
			sameDocument(t, warm, data)
			// Cold, then warm (everything cached), then after another file.
			p := &incremental{}
			sameAsFull(t, p, data)
			sameAsFull(t, p, data)
			if tc.fast && p.decoded != 0 {
				t.Errorf("second parse of the same file decoded %d items, want 0", p.decoded)
			}
			q := &incremental{}
			sameAsFull(t, q, []byte(incBase))
			sameAsFull(t, q, data)
		})
	}
}

func TestSplitCatalog(t *testing.T) {
	data := "# c\nservices:\n" + incService + "\n# x\n" + incService2 + "proxies:\n" + incProxy
	svcs, proxies, err := splitCatalog([]byte(data))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{incService + "\n# x\n", incService2}
	if len(svcs) != len(want) || len(proxies) != 1 {
		t.Fatalf("got %d services and %d proxies, want 2 and 1", len(svcs), len(proxies))
	}
	for i := range want {
		if string(svcs[i]) != want[i] {
			t.Errorf("services item %d = %q, want %q", i, svcs[i], want[i])
		}
	}
	if string(proxies[0]) != incProxy {
		t.Errorf("proxies item = %q, want %q", proxies[0], incProxy)
	}
}

// editOneEndpoint changes the address of svc-00000's first endpoint in the
// M catalog.
func editOneEndpoint(t testing.TB, data []byte) []byte {
	t.Helper()
	old := []byte("address: 10.0.0.1\n")
	if bytes.Count(data, old) != 1 {
		t.Fatalf("the M catalog has %d %q lines, want 1", bytes.Count(data, old), old)
	}
	return bytes.Replace(data, old, []byte("address: 10.0.0.99\n"), 1)
}

// firstThenOneEndpoint has p read the M catalog m (every item decoded),
// then edited, which differs in one endpoint: one item decoded, and the
// catalog built from the last one (Catalog.WithEndpoints), not validated
// whole: the proxies and the other services are the same objects.
func firstThenOneEndpoint(t *testing.T, p *incremental, m, edited []byte) {
	t.Helper()
	sameAsFull(t, p, m)
	if p.decoded != 1200 {
		t.Fatalf("first parse decoded %d items, want 1200", p.decoded)
	}
	first := p.cat
	sameAsFull(t, p, edited)
	if p.decoded != 1 {
		t.Fatalf("parse after a one-endpoint edit decoded %d items, want 1", p.decoded)
	}
	if first == nil || p.cat == nil {
		t.Fatal("the fast path kept no catalog")
	}
	if p.cat.Proxies()[0] != first.Proxies()[0] || p.cat.Services()[1] != first.Services()[1] || p.cat.Services()[0] == first.Services()[0] {
		t.Error("a one-endpoint edit did not share the unchanged services and proxies with the last catalog")
	}
}

func TestIncrementalDecodesOnlyChangedItems(t *testing.T) {
	y, _ := mCatalogs(t)
	edited := editOneEndpoint(t, y)

	var p incremental
	firstThenOneEndpoint(t, &p, y, edited)
	if len(p.services) != 200 || len(p.proxies) != 1000 {
		t.Fatalf("cache holds %d services and %d proxies, want only the latest file's 200 and 1000",
			len(p.services), len(p.proxies))
	}
	cat, err := p.parse("catalog.yaml", edited)
	if err != nil {
		t.Fatal(err)
	}
	ep := cat.Service(mesh.ServiceKey{Namespace: "ns-0", Name: "svc-00000"}).Endpoints
	found := false
	for _, e := range ep {
		found = found || e.Address == "10.0.0.99"
	}
	if !found {
		t.Fatalf("the edited endpoint is missing: %+v", ep)
	}
	// The old version of the item was dropped with the file it was in.
	sameAsFull(t, &p, y)
	if p.decoded != 1 {
		t.Fatalf("parse back to the original decoded %d items, want 1", p.decoded)
	}
	// A broken edit falls back to the full parse and keeps the cache.
	broken := bytes.Replace(edited, []byte("port: 15001\n"), []byte("prot: 15001\n"), 1)
	sameAsFull(t, &p, broken)
	sameAsFull(t, &p, y)
	if p.decoded != 0 {
		t.Fatalf("parse after a rejected edit decoded %d items, want 0", p.decoded)
	}
}

// TestIncrementalCacheNotMutated checks that building a catalog from cached
// items leaves them as decoded (NewCatalog applies defaults, which must
// land on its copies only).
func TestIncrementalCacheNotMutated(t *testing.T) {
	var p incremental
	if _, err := p.parse("catalog.yaml", []byte(incBase)); err != nil {
		t.Fatal(err)
	}
	if len(p.services) != 2 || len(p.proxies) != 1 {
		t.Fatalf("cache holds %d services and %d proxies, want 2 and 1", len(p.services), len(p.proxies))
	}
	var fresh incremental
	for text, got := range p.services {
		doc, err := fresh.decodeItem("services:\n", []byte(text))
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got.v, doc.Services[0]) {
			t.Errorf("cached service changed:\n got %+v\nwant %+v", got, doc.Services[0])
		}
	}
	for text, got := range p.proxies {
		doc, err := fresh.decodeItem("proxies:\n", []byte(text))
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got.v, doc.Proxies[0]) {
			t.Errorf("cached proxy changed:\n got %+v\nwant %+v", got, doc.Proxies[0])
		}
	}
}

// FuzzIncremental checks the incremental path's promise on arbitrary input:
// after any earlier file, parsing a file gives exactly what Parse gives.
// Run it with
//
//	go test -run '^$' -fuzz FuzzIncremental -fuzztime 60s ./discovery/file/
func FuzzIncremental(f *testing.F) {
	for _, tc := range incrementalCases {
		f.Add([]byte(incBase), []byte(tc.data))
		f.Add([]byte(tc.data), []byte(incBase))
	}
	// Issue 13's shapes, small: an item with a mapping over the key limit,
	// and one repeating a key many times.
	f.Add([]byte(incBase), labelsCatalog(yamlkeys.MaxKeys+1))
	f.Add(labelsCatalog(3), []byte(strings.Repeat("services:\n", 60)))
	// JSON catalogs take the incremental path too (splitJSON).
	for _, set := range []map[string]string{agreements, disagreements} {
		for _, in := range set {
			f.Add([]byte(agreements["whitespace everywhere"]), []byte(in))
		}
	}
	f.Fuzz(func(t *testing.T, before, data []byte) {
		if len(before)+len(data) > 8<<10 {
			// See FuzzIncrementalEdits: large broken files only slow the
			// full parse down.
			return
		}
		sameDocument(t, &incremental{}, data)
		var p incremental
		_, _ = p.parse("f", before)
		sameDocument(t, &p, data)
		p = incremental{}
		_, _ = p.parse("f", before)
		if cat, err := p.fast("f", data); err == nil {
			want, werr := parseYAML("f", data)
			if werr != nil {
				t.Fatalf("the incremental path accepted what the full parse refuses (%v):\n%q", werr, data)
			}
			if !reflect.DeepEqual(cat, want) {
				t.Fatalf("different catalogs for %q:\n%s", data, diffCatalogs(cat, want))
			}
		}
		_, _ = p.parse("f", before)
		sameAsFull(t, &p, data)
	})
}

// editFragments are line contents FuzzIncrementalEdits splices into
// catalogs: scalars and indicators that can reach across lines.
var editFragments = []string{
	"", "# c", "-", "- ", "- x", "  - name: z", "    port: 1", "note: |", "note: |+", "note: >-", "note: |2",
	"a: 'x", "a: \"x", "x'", "x\"", "? k", ": v", "<<:", "  version: v2", "services:", "proxies:", "...", "---",
	"a: b # c", "a: b#c", "- - x", "labels:", "  x: |", "\\", "a: \"\\", "%TAG", "@x", "`x", "a:b", "- ? x",
}

// FuzzIncrementalEdits applies line edits to the table's catalogs, which
// keeps the result close enough to a catalog for the incremental path to
// answer for much of it, unlike FuzzIncremental's byte mutations. ops is
// read three bytes at a time: the edit, the line, an argument.
func FuzzIncrementalEdits(f *testing.F) {
	for i := range incrementalCases {
		f.Add(uint8(i), []byte{})
		f.Add(uint8(i), []byte{byte(i), byte(i * 7), byte(i * 13), byte(i + 3), byte(i * 5), byte(i * 11)})
	}
	f.Fuzz(func(t *testing.T, base uint8, ops []byte) {
		tc, data := applyEdits(base, ops)
		sameDocument(t, &incremental{}, data)
		var warm incremental
		_, _ = warm.parse("f", []byte(tc))
		sameDocument(t, &warm, data)
		if cat, err := (&incremental{}).fast("f", data); err == nil {
			want, werr := parseYAML("f", data)
			if werr != nil {
				t.Fatalf("the incremental path accepted what the full parse refuses (%v):\n%q", werr, data)
			}
			if !reflect.DeepEqual(cat, want) {
				t.Fatalf("different catalogs for %q:\n%s", data, diffCatalogs(cat, want))
			}
		}
		var p incremental
		_, _ = p.parse("f", []byte(tc))
		sameAsFull(t, &p, data)
	})
}

// applyEdits is FuzzIncrementalEdits's input: table case base with ops applied.
func applyEdits(base uint8, ops []byte) (string, []byte) {
	// A few dozen edits are enough to move item boundaries; many more
	// build files with hundreds of errors, on which the full parse's
	// error explanations (yamlerrors.go) are slow enough to stall the
	// fuzzer.
	ops = ops[:min(len(ops), 60)]
	tc := incrementalCases[int(base)%len(incrementalCases)]
	lines := strings.SplitAfter(tc.data, "\n")
	for ; len(ops) >= 3 && len(lines) > 0; ops = ops[3:] {
		i, arg := int(ops[1])%len(lines), int(ops[2])
		frag := editFragments[arg%len(editFragments)]
		switch ops[0] % 8 {
		case 0:
			lines = slices.Delete(lines, i, i+1)
		case 1:
			lines = slices.Insert(lines, i, lines[i])
		case 2:
			lines[i] = strings.Repeat(" ", arg%5) + lines[i]
		case 3:
			lines[i] = lines[i][min(arg%5, len(lines[i])-len(strings.TrimLeft(lines[i], " "))):]
		case 4:
			ind := len(lines[i]) - len(strings.TrimLeft(lines[i], " "))
			lines = slices.Insert(lines, i, lines[i][:ind]+frag+"\n")
		case 5:
			ind := len(lines[i]) - len(strings.TrimLeft(lines[i], " "))
			lines[i] = lines[i][:ind] + frag + "\n"
		case 6:
			lines[i] = strings.TrimSuffix(lines[i], "\n") + " " + frag + "\n"
		case 7:
			lines = slices.Insert(lines, i, strings.Repeat(" ", arg%9)+frag+"\n")
		}
	}
	return tc.data, []byte(strings.Join(lines, ""))
}

// BenchmarkParseMIncremental re-parses the M catalog after a one-endpoint
// edit, alternating between the two versions, as the Watcher does:
//
//	go test -run '^$' -bench 'ParseM$|ParseMIncremental' -benchmem ./discovery/file/
func BenchmarkParseMIncremental(b *testing.B) {
	y, _ := mCatalogs(b)
	benchIncremental(b, y)
}

// BenchmarkParseLIncremental is BenchmarkParseMIncremental on the L catalog
// (10,000 proxies, 1,000 services × 10 endpoints, 5 upstreams each).
func BenchmarkParseLIncremental(b *testing.B) {
	y, _ := scenarioCatalogs(b, scenarioDocument(10000, 1000, 10, 5))
	benchIncremental(b, y)
}

func benchIncremental(b *testing.B, y []byte) {
	benchIncrementalVersions(b, y, editOneEndpoint(b, y))
}

// benchIncrementalVersions re-parses alternately y and edited, which
// differ in one service's item.
func benchIncrementalVersions(b *testing.B, y, edited []byte) {
	versions := [2][]byte{y, edited}
	var p incremental
	if _, err := p.parse("catalog", y); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(y)))
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		if _, err := p.parse("catalog", versions[i%2]); err != nil {
			b.Fatal(err)
		}
		if p.decoded != 1 {
			b.Fatalf("decoded %d items, want 1", p.decoded)
		}
	}
}

// TestIncrementalLineMutations compares the two paths on every file one line
// edit away from each table case the incremental path answers for: a line
// deleted, repeated, indented one or two columns more or one less, turned
// into a list item, or joined with the next. These are the edits that move
// item boundaries, where the line-level reading and yaml.v3 could disagree.
func TestIncrementalLineMutations(t *testing.T) {
	mutations := []struct {
		name string
		f    func(lines []string, i int) []string
	}{
		{"delete", func(l []string, i int) []string { return append(l[:i:i], l[i+1:]...) }},
		{"repeat", func(l []string, i int) []string { return append(append(l[:i+1:i+1], l[i]), l[i+1:]...) }},
		{"indent+1", func(l []string, i int) []string { return replaceLine(l, i, " "+l[i]) }},
		{"indent+2", func(l []string, i int) []string { return replaceLine(l, i, "  "+l[i]) }},
		{"indent-1", func(l []string, i int) []string { return replaceLine(l, i, strings.TrimPrefix(l[i], " ")) }},
		{"dash", func(l []string, i int) []string {
			trimmed := strings.TrimLeft(l[i], " ")
			return replaceLine(l, i, l[i][:len(l[i])-len(trimmed)]+"- "+trimmed)
		}},
		{"join", func(l []string, i int) []string {
			if i+1 >= len(l) {
				return l
			}
			return append(append(l[:i:i], strings.TrimSuffix(l[i], "\n")+" "+strings.TrimLeft(l[i+1], " ")), l[i+2:]...)
		}},
	}
	var tried, answered int
	for _, tc := range incrementalCases {
		if !tc.fast {
			continue
		}
		lines := strings.SplitAfter(tc.data, "\n")
		for i := range lines {
			for _, m := range mutations {
				data := []byte(strings.Join(m.f(slices.Clone(lines), i), ""))
				tried++
				if _, err := (&incremental{}).fast("catalog.yaml", data); err == nil {
					answered++
				}
				var p incremental
				if _, err := p.parse("catalog.yaml", []byte(tc.data)); err != nil {
					t.Fatalf("%s: %v", tc.name, err)
				}
				t.Run(tc.name+"/"+m.name, func(t *testing.T) {
					sameDocument(t, &incremental{}, data)
					sameAsFull(t, &p, data)
				})
			}
		}
	}
	// Otherwise the test would compare the full parse with itself.
	if answered < tried/10 {
		t.Fatalf("the incremental path answered for only %d of %d edited files", answered, tried)
	}
	t.Logf("the incremental path answered for %d of %d edited files", answered, tried)
}

func replaceLine(lines []string, i int, s string) []string {
	lines[i] = s
	return lines
}

// TestWatcherReparsesIncrementally checks that the Watcher's re-read of a
// changed file goes through its incremental parser.
func TestWatcherReparsesIncrementally(t *testing.T) {
	path := newCatalogFile(t, catalogYAML("10.0.0.1"))
	w, err := NewWatcher(path, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if w.parser.decoded != 3 {
		t.Fatalf("the initial load decoded %d items, want all 3", w.parser.decoded)
	}
	edited := catalogYAML("10.0.0.2")
	writeFile(t, path, edited)
	w.check("test")
	if w.parser.decoded != 1 {
		t.Fatalf("the reload decoded %d items, want 1 (the api service)", w.parser.decoded)
	}
	want, err := Parse(path, []byte(edited))
	if err != nil {
		t.Fatal(err)
	}
	if got := w.Current(); !reflect.DeepEqual(got, want) {
		t.Fatalf("served catalog differs from Parse's:\n%s", diffCatalogs(got, want))
	}
}

// BenchmarkParseMIncrementalCold is the first read of the M catalog (the
// Watcher's start-up, or a file in which everything changed): every item
// decoded on its own.
func BenchmarkParseMIncrementalCold(b *testing.B) {
	y, _ := mCatalogs(b)
	b.SetBytes(int64(len(y)))
	b.ReportAllocs()
	for b.Loop() {
		var p incremental
		if _, err := p.parse("catalog", y); err != nil {
			b.Fatal(err)
		}
		if p.decoded != 1200 {
			b.Fatalf("decoded %d items, want 1200", p.decoded)
		}
	}
}

// TestIncrementalEndpointsOnlyEdits walks one parser through edits that the
// endpoints-only build (Catalog.WithEndpoints) must take or must leave to
// the whole build; after each, the result is the full parse's.
func TestIncrementalEndpointsOnlyEdits(t *testing.T) {
	web2 := strings.Replace(incService, "10.0.0.1", "10.0.0.9", 1)
	steps := []struct {
		name     string
		data     string
		withEnds bool // built from the last catalog
	}{
		{"base", incBase, false},
		{"web's endpoint moved", "services:\n" + web2 + incService2 + "proxies:\n" + incProxy, true},
		{"items reordered", "services:\n" + incService2 + web2 + "proxies:\n" + incProxy, true},
		{"web's endpoint invalid", "services:\n" + strings.Replace(web2, "10.0.0.9", "web-1", 1) + incService2 + "proxies:\n" + incProxy, false},
		{"back to base", incBase, false},
		{"web replaced by a second api", "services:\n" + strings.Replace(incService2, "10.0.0.3", "10.0.0.4", 1) + incService2 + "proxies:\n" + incProxy, false},
		{"back to base again", incBase, false},
		{"web's protocol", "services:\n" + strings.Replace(incService, "name: web\n", "name: web\n    protocol: http\n", 1) + incService2 + "proxies:\n" + incProxy, false},
		{"web's endpoint back, api's moved", "services:\n" + incService + strings.Replace(incService2, "10.0.0.3", "10.0.0.5", 1) + "proxies:\n" + incProxy, false},
		{"api's moved again", "services:\n" + incService + strings.Replace(incService2, "10.0.0.3", "10.0.0.6", 1) + "proxies:\n" + incProxy, true},
		{"and a proxy changed", "services:\n" + incService + strings.Replace(incService2, "10.0.0.3", "10.0.0.7", 1) + "proxies:\n" + strings.Replace(incProxy, "9001", "9002", 1), false},
		{"a service removed and another added", "services:\n" + incService + strings.Replace(incService2, "name: api", "name: db", 1) + "proxies:\n" + strings.Replace(incProxy, "service: api", "service: db", 1), false},
	}
	var p incremental
	for _, st := range steps {
		prev := p.cat
		sameAsFull(t, &p, []byte(st.data))
		shared := prev != nil && p.cat != nil && p.cat.Proxies()[0] == prev.Proxies()[0]
		if shared != st.withEnds {
			t.Errorf("%s: built from the last catalog = %v, want %v", st.name, shared, st.withEnds)
		}
	}
}
