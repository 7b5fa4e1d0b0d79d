package file

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/meshd/meshd/internal/hostile"
	"github.com/meshd/meshd/internal/yamlkeys"
)

// labelsCatalog is a YAML catalog whose one endpoint has n labels, on lines
// 7 to n+6.
func labelsCatalog(n int) []byte {
	return []byte("services:\n  - name: web\n    endpoints:\n      - address: 10.0.0.1\n        port: 80\n        labels:\n" +
		hostile.Keys(10, n))
}

// labelsCatalogJSONKeys is the same as JSON, the labels one per line from
// line 2, and, if repeat, the first repeated on line n+2.
func labelsCatalogJSONKeys(n int, repeat bool) []byte {
	return []byte(`{"services": [{"name": "web", "endpoints": [{"address": "10.0.0.1", "port": 80, "labels": {` +
		hostile.JSONKeys(n, repeat) + "}}]}]}\n")
}

func TestMappingKeyLimit(t *testing.T) {
	t.Parallel()
	at, over := labelsCatalog(yamlkeys.MaxKeys), labelsCatalog(yamlkeys.MaxKeys+1)
	atJSON, overJSON := labelsCatalogJSONKeys(yamlkeys.MaxKeys, false), labelsCatalogJSONKeys(yamlkeys.MaxKeys+1, false)
	for name, data := range map[string][]byte{"YAML": at, "JSON": atJSON} {
		cat, err := Parse("c", data)
		if err != nil {
			t.Fatalf("%s: %d labels: %v", name, yamlkeys.MaxKeys, err)
		}
		if n := len(cat.Services()[0].Endpoints[0].Labels); n != yamlkeys.MaxKeys {
			t.Errorf("%s: %d labels decoded", name, n)
		}
	}
	if _, err := decodeJSON(atJSON); err != nil {
		t.Errorf("the JSON path refuses a mapping at the limit: %v", err)
	}
	if _, err := decodeJSON(overJSON); err == nil || !strings.Contains(err.Error(), "too many keys") {
		t.Errorf("the JSON path answers for a mapping over the limit: %v", err)
	}
	for name, tc := range map[string]struct {
		data []byte
		want string
	}{
		"YAML": {over, "c: line 7: too many keys in services[0].endpoints[0].labels: 257, more than the 256 one mapping may have; see docs/catalog.md"},
		"JSON": {overJSON, "c: line 1: too many keys in services[0].endpoints[0].labels: 257, more than the 256 one mapping may have; see docs/catalog.md"},
		"service": {
			[]byte("services:\n  - name: web\n" + hostile.Keys(4, 300)),
			"c: line 2: too many keys in service (services[0]): 301, more than the 256 one mapping may have; see docs/catalog.md",
		},
		"top level": {
			[]byte("services: []\n" + hostile.Keys(0, 300)),
			"c: line 1: too many keys at the top level: 301, more than the 256 one mapping may have; see docs/catalog.md",
		},
	} {
		_, err := Parse("c", tc.data)
		if !errors.Is(err, ErrTooManyKeys) || err.Error() != tc.want {
			t.Errorf("%s: Parse = %v, want %q", name, err, tc.want)
		}
		var p incremental
		if _, err := p.parse("c", tc.data); err == nil || err.Error() != tc.want || p.decoded != 0 {
			t.Errorf("%s: incremental parse = %v after decoding %d items, want %q from the full parse", name, err, p.decoded, tc.want)
		}
	}
}

// TestRepeatedKeys: a few repeated keys are reported by yaml.v3 with the
// other problems, as always; many are refused before yaml.v3 sees them
// (each pair of copies would be one yaml.v3 error), the first listed.
func TestRepeatedKeys(t *testing.T) {
	t.Parallel()
	few := "services:\n  - name: web\n    name: api\n  - name: db\n    prot: http\n"
	_, err := Parse("c", []byte(few))
	for _, want := range []string{
		`c: line 3: field "name" appears twice in service (services[0]) (first at line 2): keep one`,
		`c: line 5: unknown field "prot" in service (services[1]); did you mean "protocol"?`,
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("a few repeats: %v, want it to hold %q", err, want)
		}
	}

	var b strings.Builder
	b.WriteString("services:\n  - name: web\n    endpoints:\n      - address: 10.0.0.1\n        port: 80\n        labels:\n")
	for range 200 {
		b.WriteString("          a: b\n")
	}
	_, err = Parse("c", []byte(b.String()))
	var pe *ParseError
	if !errors.As(err, &pe) || len(pe.Problems) != maxProblems+1 || errors.Is(err, ErrTooManyKeys) {
		t.Fatalf("many repeats: %v", err)
	}
	if want := `line 8: field "a" appears twice in services[0].endpoints[0].labels (first at line 7): keep one`; fmt.Sprintf("line %d: %s", pe.Problems[0].Line, pe.Problems[0].Message) != want {
		t.Errorf("first problem %+v, want %q", pe.Problems[0], want)
	}
	if last := pe.Problems[maxProblems].Message; last != "and 149 more problems not shown: fix these first" {
		t.Errorf("last problem %q", last)
	}
}

// TestJSONRepeatedKeyReportedDirectly: the JSON path names a repeated key
// itself, at its line, in the object it is in, even when another object on
// the same line has a key of the same name.
func TestJSONRepeatedKeyReportedDirectly(t *testing.T) {
	t.Parallel()
	data := []byte("{\"services\": [\n" +
		`  {"name": "a", "endpoints": [{"address": "10.0.0.1", "port": 1}, {"address": "10.0.0.2", "port": 2, "port": 3}]}` + ",\n" +
		`  {"name": "b"}` + "\n]}\n")
	_, err := decodeJSON(data)
	var rk *repeatedKeyError
	if !errors.As(err, &rk) || rk.key != "port" {
		t.Fatalf("decodeJSON = %v, want a repeated key", err)
	}
	_, err = Parse("c.json", data)
	want := `c.json: line 2: field "port" appears twice in endpoint (services[0].endpoints[1]) (first at line 2): keep one`
	if err == nil || err.Error() != want {
		t.Errorf("Parse = %v, want %q", err, want)
	}
	// The YAML path agrees, but yaml.v3 gives it a line only, so it names
	// the first endpoint on that line.
	if _, yerr := parseYAML("c.json", data); yerr == nil || !strings.Contains(yerr.Error(), `c.json: line 2: field "port" appears twice in endpoint`) {
		t.Errorf("the YAML path says %v", yerr)
	}
}
