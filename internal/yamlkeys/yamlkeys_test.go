package yamlkeys

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/meshd/meshd/internal/hostile"
	"github.com/meshd/meshd/internal/race"
)

// labels is a catalog whose one endpoint has n labels, the shape of the
// 64,000-key catalog of issue 13; dup repeats the first label at the end.
func labels(n int, dup bool) []byte {
	b := "services:\n  - name: web\n    endpoints:\n      - address: 10.0.0.1\n        port: 80\n        labels:\n" + hostile.Keys(10, n)
	if dup {
		b += "          k0: again\n"
	}
	return []byte(b)
}

// labelsJSON is the same catalog written as JSON, one label per line.
func labelsJSON(n int, dup bool) []byte {
	return []byte(`{"services": [{"name": "web", "endpoints": [{"address": "10.0.0.1", "port": 80, "labels": {` + hostile.JSONKeys(n, dup) + "}}]}]}\n")
}

func TestCheck(t *testing.T) {
	for _, tc := range []struct {
		name  string
		in    string
		max   int
		quick bool // the quick pass is sure
		want  Report
	}{
		{name: "empty", in: "", max: 3, quick: true},
		{name: "catalog", in: "services:\n  - name: web\n    endpoints:\n      - address: a\n        port: 1\n      - address: b\n        port: 2\n", max: 3, quick: true},
		{name: "at the limit", in: "a: 1\nb: 2\nc: 3\n", max: 3, quick: true},
		{name: "over the limit", in: "a: 1\nb: 2\nc: 3\nd: 4\n", max: 3,
			want: Report{LargeCount: 1, Large: []Mapping{{Line: 1, Column: 1, Keys: 4}}}},
		{name: "over the limit in an item", in: "- x: 1\n  a: 1\n  b: 2\n  c: 3\n- y: 1\n", max: 3,
			want: Report{LargeCount: 1, Large: []Mapping{{Line: 1, Column: 3, Keys: 4}}}},
		{name: "items are separate mappings", in: "- a: 1\n  b: 2\n- a: 1\n  b: 2\n- a: 1\n", max: 2, quick: true},
		{name: "mapping around an indentless sequence", in: "a:\n- x: 1\n  y: 1\nb: 1\nc: 1\n", max: 3, quick: true},
		{name: "mapping around an indentless sequence, over", in: "a:\n- x: 1\n  y: 1\nb: 1\nc: 1\nd: 1\n", max: 3,
			want: Report{LargeCount: 1, Large: []Mapping{{Line: 1, Column: 1, Keys: 4}}}},
		{name: "repeated key", in: "a: 1\nb: 2\na: 3\n", max: 3,
			want: Report{Duplicates: []Duplicate{{Key: "a", Line: 3, FirstLine: 1}}, DuplicateCount: 1}},
		{name: "repeated key, quoted once", in: "a: 1\n\"a\": 3\n", max: 3,
			want: Report{Duplicates: []Duplicate{{Key: "a", Line: 2, FirstLine: 1}}, DuplicateCount: 1}},
		{name: "repeated key in a flow mapping", in: "{a: 1, b: 2, a: 3}\n", max: 3,
			want: Report{Duplicates: []Duplicate{{Key: "a", Line: 1, FirstLine: 1}}, DuplicateCount: 1}},
		{name: "same key in two mappings", in: "x:\n  a: 1\ny:\n  a: 1\n", max: 3, quick: true},
		{name: "comments and blank lines", in: "a: 1 # c: d\n\n# e: f\n  # g\nb: 'x' # y\n", max: 2, quick: true},
		{name: "documents are separate", in: "a: 1\nb: 1\n---\na: 1\nb: 1\n...\na: 1\n", max: 2, quick: true},
		{name: "over the limit in the second document", in: "a: 1\n---\na: 1\nb: 1\nc: 1\n", max: 2,
			want: Report{LargeCount: 1, Large: []Mapping{{Line: 3, Column: 1, Keys: 3}}}},
		{name: "JSON", in: `{"a": {"x": 1, "y": 2, "z": 3, "w": 4}}`, max: 3,
			want: Report{LargeCount: 1, Large: []Mapping{{Line: 1, Column: 7, Keys: 4}}}},
		{name: "anchored mapping counted once", in: "a: &x {p: 1, q: 2}\nb: *x\nc: *x\n", max: 3},
		// A quoted scalar over two lines could hide the lines it spans.
		{name: "multi-line quoted scalar", in: "a: \"x\nb: y\"\nc: 1\nd: 1\n", max: 3},
		{name: "block scalar", in: "a: |\n  b: 1\n  b: 1\nc: 1\n", max: 3},
		{name: "syntax error: nothing after it", in: "a: 1\na: 2\n---\n[\n", max: 3,
			want: Report{Duplicates: []Duplicate{{Key: "a", Line: 2, FirstLine: 1}}, DuplicateCount: 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := quick([]byte(tc.in), tc.max); got != tc.quick {
				t.Errorf("quick = %v, want %v", got, tc.quick)
			}
			got := Check([]byte(tc.in), tc.max)
			// Places have their own test.
			for i := range got.Large {
				got.Large[i].Place = Place{}
			}
			for i := range got.Duplicates {
				got.Duplicates[i].Place = Place{}
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Check = %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestPlaces: what Check reports says where it is, for naming it without
// parsing the file again.
func TestPlaces(t *testing.T) {
	in := "a: 1\n---\nservices:\n- name: x\n- name: y\n  labels: {p: 1, q: 2, p: 3, r: 4}\n"
	r := Check([]byte(in), 3)
	want := Place{Document: 2, Path: []Step{{Key: "services", Index: -1}, {Index: 1}, {Key: "labels", Index: -1}}}
	if len(r.Large) != 1 || !reflect.DeepEqual(r.Large[0].Place, want) || len(r.Duplicates) != 1 || !reflect.DeepEqual(r.Duplicates[0].Place, want) {
		t.Fatalf("Check = %+v, want both at %+v", r, want)
	}
	if got := want.String(); got != "services[1].labels" {
		t.Errorf("String() = %q", got)
	}
	if got := (Place{Document: 1}).String(); got != "" {
		t.Errorf("the root's String() = %q", got)
	}
}

func TestReportCostly(t *testing.T) {
	few := Report{DuplicateCount: MaxReported}
	many := Report{DuplicateCount: MaxReported + 1}
	large := Report{LargeCount: 1, Large: []Mapping{{Line: 1, Column: 1, Keys: MaxKeys + 1}}}
	if few.Costly() || !many.Costly() || !large.Costly() || (Report{}).Costly() {
		t.Errorf("Costly: few %v, many %v, large %v, none %v", few.Costly(), many.Costly(), large.Costly(), (Report{}).Costly())
	}
}

// TestCheckIsLinear: the hostile shapes of issue 13 are found in well under
// a second, where yaml.v3 alone spent 12.7 s (YAML) and 16.5 s (JSON). The
// bound is generous for a loaded machine; the figures are in
// docs/performance.md (BenchmarkCheck).
func TestCheckIsLinear(t *testing.T) {
	for name, in := range map[string][]byte{
		"YAML, 64,000 keys":              labels(64000, false),
		"YAML, 64,000 keys and a repeat": labels(64000, true),
		"JSON, 64,000 keys and a repeat": labelsJSON(64000, true),
		"YAML, one key 20,000 times":     bytes.Repeat([]byte("a: 1\n"), 20000),
	} {
		start := time.Now()
		r := Check(in, MaxKeys)
		took := time.Since(start)
		if !r.Costly() {
			t.Errorf("%s: not found: %+v", name, r)
		}
		if bound := time.Second * time.Duration(map[bool]int{false: 1, true: 10}[race.Enabled]); took > bound {
			t.Errorf("%s: %v, want under %v", name, took, bound)
		}
		t.Logf("%s (%d bytes): %v", name, len(in), took)
	}
	r := Check(labelsJSON(64000, true), MaxKeys)
	if len(r.Large) != 1 || r.Large[0].Keys != 64001 || r.DuplicateCount != 1 ||
		r.Duplicates[0].Key != "k0" || r.Duplicates[0].Line != 64002 || r.Duplicates[0].FirstLine != 2 {
		t.Errorf("JSON report: %+v", r)
	}
	r = Check(bytes.Repeat([]byte("a: 1\n"), 20000), MaxKeys)
	if r.DuplicateCount != 19999 || len(r.Duplicates) != MaxReported {
		t.Errorf("repeated key: %d repeats, %d listed", r.DuplicateCount, len(r.Duplicates))
	}
}

// seeds are the inputs of the fuzz targets: meshd's own example files and
// the shapes the quick pass must not be fooled by.
func seeds(t testing.TB) [][]byte {
	var out [][]byte
	for _, pattern := range []string{
		"../../examples/quickstart/*.yaml", "../../examples/quickstart/policy/*.yaml",
		"../../xds/testdata/in/*.yaml", "../../discovery/file/testdata/*.yaml",
	} {
		files, _ := filepath.Glob(pattern)
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, b)
		}
	}
	if len(out) < 5 {
		t.Fatalf("only %d seed files found", len(out))
	}
	for _, s := range []string{
		"a: 1\nb: 2\nc: 3\nd: 4\n", "- a: 1\n  b: 2\n  c: 3\n  d: 4\n", "a:\n- x: 1\nb: 1\nc: 1\nd: 1\n",
		"a: 1\n\"a\": 2\n", "a: 1\n'a': 2\n", "a : 1\na: 2\n", "a: 1\n  b: 2\nc: 1\n",
		"a: \"x\nb: 1\nc: 1\n  d\"\ne: 1\n", "a: 'x\n''b: 1\nc: 1'\nd: 1\n", "a: \"\\\"\nb: 1\"\n",
		"a: |\n b: 1\nc: 1\nd: 1\ne: 1\n", "a: >\n  x\n b: 1\nc: 1\nd: 1\n", "- - a: 1\n    b: 1\n    c: 1\n    d: 1\n",
		"a: b\n  - c\nd: 1\ne: 1\nf: 1\n", "? a\n: 1\nb: 1\nc: 1\nd: 1\n", "a: 1\n---\nb: 1\nc: 1\nd: 1\ne: 1\n",
		"a: 1\r\nb: 1\r\nc: 1\r\nd: 1\r\n", "a: 1\rb: 1\rc: 1\rd: 1\r", "a: 1\u2028b: 1\u2028c: 1\u2028d: 1\n",
		"x: it's\ny: 'a': b\n", "- 'a': 1\n  'b': 2\n  c: 3\n  \"d\": 4\n", "a:\n  b: 1\n # c\n  c: 1\n  d: 1\n  e: 1\n",
		"{a: 1, b: 2, c: 3, d: 4}", "[{a: 1, a: 2}]", "a: &x\n  b: 1\nc: *x\n", "a: !!str 1\nb: 1\nc: 1\nd: 1\n",
	} {
		out = append(out, []byte(s))
	}
	return append(out, labels(5, true), labelsJSON(5, true))
}

// FuzzQuick checks the quick pass's promise: when it is sure, the exact
// pass finds nothing, for every input yaml.v3 can parse. It also checks the
// exact pass against yaml.v3 itself: a repeated key yaml.v3 reports is one
// the exact pass finds. Run it longer with
//
//	go test ./internal/yamlkeys -run '^$' -fuzz FuzzQuick -fuzztime 60s
func FuzzQuick(f *testing.F) {
	for _, s := range seeds(f) {
		f.Add(s, uint8(3))
	}
	f.Fuzz(func(t *testing.T, data []byte, max uint8) {
		if len(data) > 16<<10 {
			return
		}
		n := int(max)%8 + 1
		if quick(data, n) {
			if r := exact(data, n); len(r.Large) > 0 || r.DuplicateCount > 0 {
				t.Fatalf("the quick pass is sure, the exact pass finds %+v (max %d):\n%q", r, n, data)
			}
		}
		r := exact(data, n)
		dec := yaml.NewDecoder(bytes.NewReader(data))
		for {
			var v any
			err := dec.Decode(&v)
			if err == nil {
				continue
			}
			if strings.Contains(err.Error(), "already defined") && r.DuplicateCount == 0 {
				t.Fatalf("yaml.v3 reports a repeated key (%v), the exact pass none:\n%q", err, data)
			}
			break
		}
	})
}

// BenchmarkCheck: the quick pass on a catalog it is sure about, and the
// exact pass on the hostile shapes.
//
//	go test ./internal/yamlkeys -run '^$' -bench Check -benchmem
func BenchmarkCheck(b *testing.B) {
	var catalog bytes.Buffer
	catalog.WriteString("services:\n")
	for i := range 2000 {
		fmt.Fprintf(&catalog, "  - name: svc-%d\n    namespace: ns\n    protocol: grpc\n    endpoints:\n", i)
		for j := range 10 {
			fmt.Fprintf(&catalog, "      - address: 10.0.%d.%d\n        port: 15001\n        locality:\n          region: r1\n          zone: z%d\n", i%250, j, j%3)
		}
	}
	for name, in := range map[string][]byte{
		"catalog":         catalog.Bytes(),
		"yaml-64000-keys": labels(64000, false),
		"json-64000-keys": labelsJSON(64000, true),
	} {
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(len(in)))
			b.ReportAllocs()
			for b.Loop() {
				Check(in, MaxKeys)
			}
		})
	}
}
