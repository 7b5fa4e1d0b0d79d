package file

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/meshd/meshd/internal/yamlkeys"
	"github.com/meshd/meshd/mesh"
)

// yamlToJSON re-encodes a YAML catalog as JSON, indented with indent ("" for
// compact), the way a generator would write it.
func yamlToJSON(t testing.TB, data []byte, indent string) []byte {
	t.Helper()
	var v any
	if err := yaml.Unmarshal(data, &v); err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetIndent("", indent)
	if err := enc.Encode(v); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// mDocument is the M scenario of internal/loadgen (1,000 proxies, 200
// services × 10 endpoints, 5 upstreams each), built the same way. It is
// repeated here rather than imported because internal/loadgen imports this
// package.
func mDocument() document { return scenarioDocument(1000, 200, 10, 5) }

// scenarioDocument is a catalog generated as internal/loadgen's scenarios
// are: L is scenarioDocument(10000, 1000, 10, 5).
func scenarioDocument(proxies, services, endpoints, upstreams int) document {
	var doc document
	for i := range services {
		proto := mesh.ProtocolHTTP
		switch i % 5 {
		case 0:
			proto = mesh.ProtocolGRPC
		case 1:
			proto = mesh.ProtocolTCP
		}
		svc := mesh.Service{Name: fmt.Sprintf("svc-%05d", i), Namespace: fmt.Sprintf("ns-%d", i%10), Protocol: proto}
		for e := range endpoints {
			svc.Endpoints = append(svc.Endpoints, mesh.Endpoint{
				Address: fmt.Sprintf("10.%d.%d.%d", i/250, i%250, e+1), Port: 15001,
				Locality: mesh.Locality{Region: "r1", Zone: fmt.Sprintf("z%d", e%3)},
			})
		}
		doc.Services = append(doc.Services, svc)
	}
	for i := range proxies {
		own := doc.Services[i%services]
		p := mesh.Proxy{
			ID: fmt.Sprintf("proxy-%05d", i), Service: own.Name, Namespace: own.Namespace,
			Address:    fmt.Sprintf("10.%d.%d.%d", 128+i/62500, (i/250)%250, i%250+1),
			PublicPort: 15001, AppPort: 8080,
		}
		for u, k := 0, 0; k < upstreams; u++ {
			j := (i + 1 + u*7) % services
			if j == i%services || hasUpstream(p.Upstreams, doc.Services[j].Name) {
				continue
			}
			lp := uint32(10001 + k)
			if lp >= 15001 {
				lp++
			}
			p.Upstreams = append(p.Upstreams, mesh.Upstream{Service: doc.Services[j].Name, Namespace: doc.Services[j].Namespace, LocalPort: lp})
			k++
		}
		doc.Proxies = append(doc.Proxies, p)
	}
	return doc
}

func hasUpstream(ups []mesh.Upstream, name string) bool {
	for _, u := range ups {
		if u.Service == name {
			return true
		}
	}
	return false
}

// mCatalogs renders mDocument as internal/loadgen's Catalog.Marshal does: YAML
// with a two-space indent, and JSON with one service or proxy per line.
func mCatalogs(t testing.TB) (yamlData, jsonData []byte) {
	t.Helper()
	return scenarioCatalogs(t, mDocument())
}

// scenarioCatalogs renders doc as mCatalogs renders M.
func scenarioCatalogs(t testing.TB, doc document) (yamlData, jsonData []byte) {
	t.Helper()
	var y bytes.Buffer
	enc := yaml.NewEncoder(&y)
	enc.SetIndent(2)
	if err := enc.Encode(&doc); err != nil {
		t.Fatal(err)
	}
	var j bytes.Buffer
	j.WriteString(`{"services": [`)
	for i := range doc.Services {
		if i > 0 {
			j.WriteByte(',')
		}
		b, err := json.Marshal(&doc.Services[i])
		if err != nil {
			t.Fatal(err)
		}
		j.WriteString("\n  ")
		j.Write(b)
	}
	j.WriteString("\n],\n\"proxies\": [")
	for i := range doc.Proxies {
		if i > 0 {
			j.WriteByte(',')
		}
		b, err := json.Marshal(&doc.Proxies[i])
		if err != nil {
			t.Fatal(err)
		}
		j.WriteString("\n  ")
		j.Write(b)
	}
	j.WriteString("\n]}\n")
	return y.Bytes(), j.Bytes()
}

// sameResult fails unless Parse gives for jsonData exactly what the YAML path
// gives for yamlData: deep-equal catalogs, or identical errors.
func sameResult(t *testing.T, jsonData, yamlData []byte) {
	t.Helper()
	wantCat, wantErr := parseYAML("catalog.yaml", yamlData)
	sameAs(t, jsonData, wantCat, wantErr)
}

func sameAs(t *testing.T, jsonData []byte, wantCat *mesh.Catalog, wantErr error) {
	t.Helper()
	gotCat, gotErr := Parse("catalog.yaml", jsonData)
	switch {
	case (gotErr == nil) != (wantErr == nil):
		t.Fatalf("JSON: %v\nYAML: %v", gotErr, wantErr)
	case gotErr != nil && gotErr.Error() != wantErr.Error():
		t.Fatalf("JSON error:\n  %v\nYAML error:\n  %v", gotErr, wantErr)
	case !reflect.DeepEqual(gotCat, wantCat):
		t.Fatalf("JSON and YAML give different catalogs:\n%s", diffCatalogs(gotCat, wantCat))
	}
}

func diffCatalogs(a, b *mesh.Catalog) string {
	ja, _ := json.MarshalIndent(a.Services(), "", " ")
	jb, _ := json.MarshalIndent(b.Services(), "", " ")
	pa, _ := json.MarshalIndent(a.Proxies(), "", " ")
	pb, _ := json.MarshalIndent(b.Proxies(), "", " ")
	return fmt.Sprintf("JSON: %s\n%s\nYAML: %s\n%s", ja, pa, jb, pb)
}

// TestJSONSchema: every field reached from the catalog's top level has the
// same name in YAML and JSON, and no type decodes itself (buildSchema checks
// both); if this fails, every JSON file silently takes the slow path.
func TestJSONSchema(t *testing.T) {
	if schemaErr != nil {
		t.Fatalf("the JSON fast path is disabled: %v", schemaErr)
	}
	// Every mapping the YAML messages name is in the schema.
	var names []string
	var walk func(s *schema, depth int)
	walk = func(s *schema, depth int) {
		if depth > 8 {
			return
		}
		for _, f := range s.fields {
			names = append(names, f.name)
			walk(f.schema, depth+1)
		}
		if s.elem != nil {
			walk(s.elem, depth+1)
		}
	}
	walk(docSchema, 0)
	for _, want := range []string{"services", "endpoints", "locality", "subZone", "labels", "proxies", "upstreams", "localPort", "sds"} {
		if !strings.Contains(" "+strings.Join(names, " ")+" ", " "+want+" ") {
			t.Errorf("schema lacks field %q; has %v", want, names)
		}
	}

	type withString struct {
		N uint32 `yaml:"n" json:"n,string"`
	}
	type renamed struct {
		N uint32 `yaml:"n" json:"num"`
	}
	type inline struct {
		L mesh.Locality `yaml:",inline" json:"l"`
	}
	for _, typ := range []reflect.Type{
		reflect.TypeFor[withString](), reflect.TypeFor[renamed](), reflect.TypeFor[inline](),
		reflect.TypeFor[yaml.Node](), reflect.TypeFor[map[string]int](), reflect.TypeFor[int](),
	} {
		if _, err := buildSchema(typ, map[reflect.Type]*schema{}); err == nil {
			t.Errorf("buildSchema(%s) accepted a type the two decoders read differently", typ)
		}
	}
}

// TestParseJSONMatchesYAML: the same catalog written as JSON (compact,
// indented with spaces, with tabs, with CRLF line ends) and as YAML loads
// into deep-equal catalogs, and the JSON is read by the fast path.
func TestParseJSONMatchesYAML(t *testing.T) {
	valid, err := os.ReadFile("testdata/valid.yaml")
	if err != nil {
		t.Fatal(err)
	}
	mYAML, mJSON := mCatalogs(t)
	for name, yamlData := range map[string][]byte{"valid.yaml": valid, "M": mYAML} {
		wantCat, err := parseYAML("catalog.yaml", yamlData)
		if err != nil {
			t.Fatal(err)
		}
		variants := map[string][]byte{}
		if name == "M" {
			variants["loadgen layout"] = mJSON
		}
		for _, indent := range []string{"", "  ", "\t"} {
			j := yamlToJSON(t, yamlData, indent)
			variants[fmt.Sprintf("indent %q", indent)] = j
			variants[fmt.Sprintf("indent %q, CRLF", indent)] = bytes.ReplaceAll(j, []byte("\n"), []byte("\r\n"))
		}
		for variant, data := range variants {
			t.Run(name+"/"+variant, func(t *testing.T) {
				if _, err := decodeJSON(data); err != nil {
					t.Fatalf("the fast path refused a plain JSON catalog: %v", err)
				}
				sameAs(t, data, wantCat, nil)
			})
		}
	}
}

func TestDocsJSONExample(t *testing.T) {
	doc, err := os.ReadFile("../../docs/catalog.md")
	if err != nil {
		t.Fatal(err)
	}
	_, after, ok := strings.Cut(string(doc), "## JSON catalogs")
	if !ok {
		t.Fatal(`docs/catalog.md has no "## JSON catalogs" section`)
	}
	_, block, ok := strings.Cut(after, "```json\n")
	block, _, ok2 := strings.Cut(block, "```")
	if !ok || !ok2 {
		t.Fatal("no json block in the JSON catalogs section")
	}
	if _, err := decodeJSON([]byte(block)); err != nil {
		t.Errorf("the fast path refuses the example: %v", err)
	}
	sameResult(t, []byte(block), []byte(block))
	if _, err := Parse("catalog.json", []byte(block)); err != nil {
		t.Errorf("the example does not load: %v", err)
	}
}

func TestLooksLikeJSON(t *testing.T) {
	for in, want := range map[string]bool{
		`{}`:               true,
		" \n\t\r{\"a\":1}": true,
		"services: []":     false,
		"# {\n":            false,
		"\ufeff{}":         false, // a BOM: left to the YAML path
		"":                 false,
		"[{}]":             false,
	} {
		if got := looksLikeJSON([]byte(in)); got != want {
			t.Errorf("looksLikeJSON(%q) = %v, want %v", in, got, want)
		}
	}
}

// jsonService is one valid service, for the error cases below.
const jsonService = `{
  "services": [
    {
      "name": "web",
      "protocol": "http",
      "endpoints": [
        {"address": "10.0.0.1", "port": 8080, "labels": {"version": "v1"}}
      ]
    }
  ]`

// TestParseJSONErrors: a bad JSON catalog is refused by the fast path and
// reported by the YAML path, with the YAML path's line numbers and names.
func TestParseJSONErrors(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []string // each must appear in the error
		is   error
	}{
		{
			name: "unknown field at top level",
			in:   jsonService + ",\n  \"servics\": []\n}\n",
			want: []string{`catalog.json: line 11: unknown field "servics" at the top level; did you mean "services"? see docs/catalog.md`},
		},
		{
			name: "unknown field in endpoint",
			in:   "{\n  \"services\": [\n    {\"name\": \"web\", \"endpoints\": [\n      {\"adress\": \"10.0.0.1\", \"port\": 8080}\n    ]}\n  ]\n}\n",
			want: []string{`catalog.json: line 4: unknown field "adress" in endpoint (services[0].endpoints[0]); did you mean "address"?`},
		},
		{
			// encoding/json alone would match "Name" to name.
			name: "field name in the wrong case",
			in:   "{\n  \"services\": [\n    {\"Name\": \"web\"}\n  ]\n}\n",
			want: []string{`catalog.json: line 3: unknown field "Name" in service (services[0]); did you mean "name"?`},
		},
		{
			// encoding/json alone would keep the second list.
			name: "duplicate key at top level",
			in:   jsonService + ",\n  \"services\": []\n}\n",
			want: []string{`catalog.json: line 11: field "services" appears twice at the top level (first at line 2): keep one`},
		},
		{
			name: "duplicate key in a service",
			in:   "{\n  \"services\": [\n    {\"name\": \"web\",\n     \"protocol\": \"http\",\n     \"protocol\": \"tcp\"}\n  ]\n}\n",
			want: []string{`catalog.json: line 5: field "protocol" appears twice in service (services[0]) (first at line 4): keep one`},
		},
		{
			name: "duplicate label",
			in:   "{\n  \"services\": [\n    {\"name\": \"web\", \"endpoints\": [\n      {\"address\": \"10.0.0.1\", \"port\": 8080,\n       \"labels\": {\"v\": \"1\", \"v\": \"2\"}}\n    ]}\n  ]\n}\n",
			want: []string{`catalog.json: line 5: field "v" appears twice in services[0].endpoints[0].labels (first at line 5): keep one`},
		},
		{
			name: "duplicate key spelt with an escape",
			in:   "{\n  \"services\": [\n    {\"name\": \"web\",\n     \"n\\u0061me\": \"api\"}\n  ]\n}\n",
			want: []string{`catalog.json: line 4: field "name" appears twice in service (services[0]) (first at line 3): keep one`},
		},
		{
			name: "trailing garbage",
			in:   jsonService + "\n}\nx\n",
			// On the line of the x (yaml.v3 says 11, the object's end).
			want: []string{`catalog.json: line 12: YAML syntax error: `},
		},
		{
			name: "a second object",
			in:   jsonService + "\n}\n{\"services\": []}\n",
			want: []string{`catalog.json: line 12: YAML syntax error: `},
		},
		{
			name: "truncated write",
			in:   jsonService[:60],
			want: []string{`catalog.json: line 5: YAML syntax error: `},
		},
		{
			name: "wrong type: string port",
			in:   "{\n  \"services\": [\n    {\"name\": \"web\", \"endpoints\": [\n      {\"address\": \"10.0.0.1\",\n       \"port\": \"abc\"}\n    ]}\n  ]\n}\n",
			want: []string{`catalog.json: line 5: services[0].endpoints[0].port: want a non-negative whole number, got the string "abc"; see docs/catalog.md`},
		},
		{
			name: "wrong type: negative port",
			in:   "{\n  \"services\": [\n    {\"name\": \"web\", \"endpoints\": [\n      {\"address\": \"10.0.0.1\",\n       \"port\": -1}\n    ]}\n  ]\n}\n",
			want: []string{`catalog.json: line 5: services[0].endpoints[0].port: want a non-negative whole number, got the number -1;`},
		},
		{
			name: "wrong type: mapping instead of list",
			in:   "{\n  \"services\": {\"name\": \"web\"}\n}\n",
			want: []string{`catalog.json: line 2: services: want a list of services, got a mapping;`},
		},
		{
			name: "invalid port",
			in:   strings.Replace(jsonService, "8080", "70000", 1) + "\n}\n",
			want: []string{`catalog.json: line 7: services[0] "web.default": field endpoints[0].port: 70000 is not a port: use 1-65535`},
		},
		{
			name: "validation problems, every one",
			in:   strings.Replace(jsonService, `"10.0.0.1", "port": 8080`, `"web.example.com", "port": 0`, 1) + ",\n  \"proxies\": [{\"service\": \"nope\"}]\n}\n",
			want: []string{
				`catalog.json: line 7: services[0] "web.default": field endpoints[0].address: "web.example.com" is not a usable IP address`,
				`catalog.json: line 7: services[0] "web.default": field endpoints[0].port: 0 is not a port: use 1-65535`,
				`catalog.json: line 11: proxies[0] "nope.default": field service: no service nope.default in the catalog`,
			},
		},
		{
			name: "empty object",
			in:   "{}\n",
			want: []string{`catalog.json: catalog is empty`},
			is:   ErrEmpty,
		},
		{
			name: "empty lists",
			in:   "{\"services\": [], \"proxies\": []}",
			want: []string{`catalog.json: catalog is empty`},
			is:   ErrEmpty,
		},
		{
			name: "null lists",
			in:   "{\"services\": null, \"proxies\": null}",
			want: []string{`catalog.json: catalog is empty`},
			is:   ErrEmpty,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := []byte(tt.in)
			if doc, err := decodeJSON(data); err == nil && !doc.empty() {
				if _, err := mesh.NewCatalog(doc.Services, doc.Proxies); err == nil {
					t.Fatal("the fast path accepted a bad catalog")
				}
			}
			_, err := Parse("catalog.json", data)
			if err == nil {
				t.Fatal("Parse succeeded, want an error")
			}
			// The error is exactly the YAML path's, line numbers and all.
			if _, yerr := parseYAML("catalog.json", data); yerr == nil || yerr.Error() != err.Error() {
				t.Errorf("Parse error differs from the YAML path's:\n  %v\n  %v", err, yerr)
			}
			msg := err.Error()
			for _, w := range tt.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error does not contain\n  %s\ngot:\n  %s", w, strings.ReplaceAll(msg, "\n", "\n  "))
				}
			}
			var pe *ParseError
			if !errors.As(err, &pe) || pe.Path != "catalog.json" {
				t.Errorf("error is not a *ParseError for catalog.json: %#v", err)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("errors.Is(err, %v) = false", tt.is)
			}
		})
	}
}

// disagreements are JSON catalogs that encoding/json on its own would accept
// but yaml.v3 refuses or reads differently. checkJSON must send each to the
// YAML path, so that the result is the YAML path's.
var disagreements = map[string]string{
	"duplicate key":                `{"services": [{"name": "web"}], "services": [{"name": "api"}]}`,
	"duplicate label":              `{"services": [{"name": "web", "endpoints": [{"address": "10.0.0.1", "port": 1, "labels": {"a": "1", "a": "2"}}]}]}`,
	"key in the wrong case":        `{"Services": [{"name": "web"}]}`,
	"null list item":               `{"services": [null, {"name": "web"}]}`,
	"null field":                   `{"services": [{"name": "web", "namespace": null}]}`,
	"escaped slash":                `{"services": [{"name": "web", "endpoints": [{"address": "10.0.0.1", "port": 1, "labels": {"a": "b\/c"}}]}]}`,
	"surrogate pair escape":        `{"services": [{"name": "web", "endpoints": [{"address": "10.0.0.1", "port": 1, "labels": {"a": "\ud83d\ude00"}}]}]}`,
	"lone surrogate escape":        `{"services": [{"name": "web", "endpoints": [{"address": "10.0.0.1", "port": 1, "labels": {"a": "\udc00"}}]}]}`,
	"NEL":                          "{\"services\": [{\"name\": \"web\", \"endpoints\": [{\"address\": \"10.0.0.1\", \"port\": 1, \"labels\": {\"a\": \"b\u0085c\"}}]}]}",
	"line separator between space": "{\"services\": [{\"name\": \"web\", \"endpoints\": [{\"address\": \"10.0.0.1\", \"port\": 1, \"labels\": {\"a\": \"b \u2028 c\"}}]}]}",
	"DEL":                          "{\"services\": [{\"name\": \"web\", \"endpoints\": [{\"address\": \"10.0.0.1\", \"port\": 1, \"labels\": {\"a\": \"b\x7fc\"}}]}]}",
	"C1 control":                   "{\"services\": [{\"name\": \"web\", \"endpoints\": [{\"address\": \"10.0.0.1\", \"port\": 1, \"labels\": {\"a\": \"b\u0090c\"}}]}]}",
	"U+FFFF":                       "{\"services\": [{\"name\": \"web\", \"endpoints\": [{\"address\": \"10.0.0.1\", \"port\": 1, \"labels\": {\"a\": \"b\uffffc\"}}]}]}",
	"invalid UTF-8":                "{\"services\": [{\"name\": \"web\", \"endpoints\": [{\"address\": \"10.0.0.1\", \"port\": 1, \"labels\": {\"a\": \"b\xffc\"}}]}]}",
	"tab before the object":        "\t{\"services\": [{\"name\": \"web\"}]}",
	"tab line after the object":    "{\"services\": [{\"name\": \"web\"}]}\n\t\n",
	"line break before a colon":    "{\"services\"\n: [{\"name\": \"web\"}]}",
	"key over 1024 characters":     `{"services": [{"name": "web", "endpoints": [{"address": "10.0.0.1", "port": 1, "labels": {"` + strings.Repeat("k", 1030) + `": "v"}}]}]}`,
	"float port":                   `{"services": [{"name": "web", "endpoints": [{"address": "10.0.0.1", "port": 8080.0}]}]}`,
	"exponent port":                `{"services": [{"name": "web", "endpoints": [{"address": "10.0.0.1", "port": 8e3}]}]}`,
	"number for a string":          `{"services": [{"name": "web", "namespace": 7}]}`,
	"trailing comma":               `{"services": [{"name": "web"},]}`,
	"trailing comment":             "{\"services\": [{\"name\": \"web\"}]}\n# generated\n",
	"unquoted keys (YAML flow)":    `{services: [{name: web}]}`,
}

// agreements are JSON catalogs the fast path reads, and must read exactly as
// the YAML path does.
var agreements = map[string]string{
	"escapes":                `{"services": [{"name": "web", "endpoints": [{"address": "10.0.0.1", "port": 1, "labels": {"a": "\"\\\b\f\n\r\t\u00e9\u0000\u2028\u001f"}}]}]}`,
	"escaped key":            `{"services": [{"n\u0061me": "web"}]}`,
	"merge-looking label":    `{"services": [{"name": "web", "endpoints": [{"address": "10.0.0.1", "port": 1, "labels": {"<<": "x", "": "empty", "~": "null?", "true": "yes", "# no": "comment"}}]}]}`,
	"YAML-looking values":    `{"services": [{"name": "web", "endpoints": [{"address": "10.0.0.1", "port": 1, "labels": {"a": "null", "b": "123", "c": "- x", "d": "a: b", "e": "&anchor", "f": "*alias", "g": "---", "h": " padded "}}]}]}`,
	"non-ASCII":              "{\"services\": [{\"name\": \"web\", \"endpoints\": [{\"address\": \"10.0.0.1\", \"port\": 1, \"labels\": {\"été\": \"naïve \u00a0 ☃ 😀 \ufeff\"}}]}]}",
	"whitespace everywhere":  "  \r\n{ \"services\" \t: [ { \"name\"  :  \"web\" ,\n\t\"endpoints\":\r\n[\n{\"address\":\"10.0.0.1\",\"port\":\n1}\n] }\n\t]\n}\n\n",
	"empty lists and labels": `{"services": [{"name": "web", "endpoints": [{"address": "10.0.0.1", "port": 1, "labels": {}}]}, {"name": "api", "endpoints": []}], "proxies": []}`,
	"key at 1000 bytes":      `{"services": [{"name": "web", "endpoints": [{"address": "10.0.0.1", "port": 1, "labels": {"` + strings.Repeat("k", 998) + `": "v"}}]}]}`,
	"many labels":            `{"services": [{"name": "web", "endpoints": [{"address": "10.0.0.1", "port": 1, "labels": {` + manyLabels(100) + `}}]}]}`,
}

func manyLabels(n int) string {
	var b strings.Builder
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, `"k%d": "v%d"`, i, i)
	}
	return b.String()
}

func TestJSONFastPathRefusesWhatYAMLReadsDifferently(t *testing.T) {
	for name, in := range disagreements {
		t.Run(name, func(t *testing.T) {
			data := []byte(in)
			if !looksLikeJSON(data) {
				t.Fatal("not detected as JSON")
			}
			if err := checkJSON(data); err == nil {
				t.Fatal("checkJSON accepted it")
			} else if !errors.Is(err, errNotPlainJSON) {
				t.Fatalf("checkJSON error %v does not wrap errNotPlainJSON", err)
			}
			sameResult(t, data, data)
		})
	}
	// A repeated label among many takes the map-based search.
	dup := []byte(`{"services": [{"name": "web", "endpoints": [{"address": "10.0.0.1", "port": 1, "labels": {` + manyLabels(100) + `, "k57": "again"}}]}]}`)
	if err := checkJSON(dup); err == nil || !strings.Contains(err.Error(), `duplicate key "k57"`) {
		t.Errorf("repeated label among 100: checkJSON = %v", err)
	}
}

func TestJSONFastPathAgreesWithYAML(t *testing.T) {
	for name, in := range agreements {
		t.Run(name, func(t *testing.T) {
			data := []byte(in)
			if _, err := decodeJSON(data); err != nil {
				t.Fatalf("the fast path refused it: %v", err)
			}
			sameResult(t, data, data)
		})
	}
}

// FuzzParseJSON checks the fast path's promise on arbitrary input: whatever
// it decodes, yaml.v3 decodes to the same document. Run it with
//
//	go test -run '^$' -fuzz FuzzParseJSON -fuzztime 30s ./discovery/file/
func FuzzParseJSON(f *testing.F) {
	for _, in := range disagreements {
		f.Add([]byte(in))
	}
	for _, in := range agreements {
		f.Add([]byte(in))
	}
	f.Add([]byte(jsonService + "\n}\n"))
	// Issue 13's shapes, small: a label map one key over the limit, and
	// one with a repeated key after many.
	f.Add(labelsCatalogJSONKeys(yamlkeys.MaxKeys+1, false))
	f.Add(labelsCatalogJSONKeys(40, true))
	f.Fuzz(func(t *testing.T, data []byte) {
		jdoc, err := decodeJSON(data)
		var rk *repeatedKeyError
		if errors.As(err, &rk) {
			// The JSON path reports this one itself: it must be right
			// that the YAML path refuses the file too.
			if _, yerr := decodeYAML("f", data); yerr == nil {
				t.Fatalf("the fast path reported a repeated key %q the YAML path accepts:\n%q", rk.key, data)
			}
			return
		}
		if err != nil {
			return
		}
		ydoc, err := decodeYAML("f", data)
		if err != nil {
			t.Fatalf("the fast path decoded what the YAML path refuses (%v):\n%q", err, data)
		}
		if !reflect.DeepEqual(normalize(jdoc), normalize(ydoc)) {
			t.Fatalf("the fast path and the YAML path decode differently:\n%q\nJSON: %+v\nYAML: %+v", data, jdoc, ydoc)
		}
	})
}

// normalize makes empty slices and maps nil, a difference no reader of a
// catalog can see (and NewCatalog's defaults do not depend on).
func normalize(doc document) document {
	var walk func(v reflect.Value)
	walk = func(v reflect.Value) {
		switch v.Kind() {
		case reflect.Slice:
			if v.Len() == 0 {
				v.Set(reflect.Zero(v.Type()))
				return
			}
			for i := range v.Len() {
				walk(v.Index(i))
			}
		case reflect.Map:
			if v.Len() == 0 {
				v.Set(reflect.Zero(v.Type()))
			}
		case reflect.Struct:
			for i := range v.NumField() {
				if v.Type().Field(i).IsExported() {
					walk(v.Field(i))
				}
			}
		}
	}
	walk(reflect.ValueOf(&doc).Elem())
	return doc
}

// BenchmarkParseM and BenchmarkParseMJSON parse the same M-sized catalog
// (1,000 proxies, 200 services × 10 endpoints) from YAML and from JSON:
//
//	go test -run '^$' -bench ParseM -benchmem -benchtime 5x ./discovery/file/
func BenchmarkParseM(b *testing.B) {
	y, _ := mCatalogs(b)
	benchParse(b, y)
}

func BenchmarkParseMJSON(b *testing.B) {
	_, j := mCatalogs(b)
	if _, err := decodeJSON(j); err != nil {
		b.Fatalf("the fast path refused the catalog: %v", err)
	}
	benchParse(b, j)
}

// BenchmarkCheckJSONM is the fast path's own check alone (duplicate keys,
// exact field names, YAML-safe text), the part encoding/json does not do.
func BenchmarkCheckJSONM(b *testing.B) {
	_, j := mCatalogs(b)
	b.SetBytes(int64(len(j)))
	b.ReportAllocs()
	for b.Loop() {
		if err := checkJSON(j); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCheckKeysM is the check every YAML parse now starts with
// (keys.go): mapping sizes and repeated keys, in one pass over the lines of
// a block-style catalog such as M.
func BenchmarkCheckKeysM(b *testing.B) {
	y, _ := mCatalogs(b)
	if !yamlkeys.Quick(y, yamlkeys.MaxKeys) {
		b.Fatal("the quick pass is not sure of the M catalog")
	}
	b.SetBytes(int64(len(y)))
	b.ReportAllocs()
	for b.Loop() {
		if err := checkKeys("catalog", y); err != nil {
			b.Fatal(err)
		}
	}
}

func benchParse(b *testing.B, data []byte) {
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse("catalog", data); err != nil {
			b.Fatal(err)
		}
	}
}
