package file

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/meshd/meshd/internal/inputfile"
	"github.com/meshd/meshd/internal/suggest"
	"github.com/meshd/meshd/mesh"
)

func TestParseValidCatalog(t *testing.T) {
	data, err := os.ReadFile("testdata/valid.yaml")
	if err != nil {
		t.Fatal(err)
	}
	c, err := Parse("testdata/valid.yaml", data)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}

	var keys []string
	for _, s := range c.Services() {
		keys = append(keys, s.Key().String())
	}
	// Canonical order: namespace, then name.
	wantKeys := []string{"db.data", "api.default", "greeter.default", "greeter-client.default", "web.default"}
	if !slices.Equal(keys, wantKeys) {
		t.Errorf("services = %v, want %v", keys, wantKeys)
	}
	var ids []string
	for _, p := range c.Proxies() {
		ids = append(ids, p.ID)
	}
	wantIDs := []string{"api-1", "api-2", "db.data", "greeter-client.default", "greeter.default", "web.default"}
	if !slices.Equal(ids, wantIDs) {
		t.Errorf("proxies = %v, want %v", ids, wantIDs)
	}

	api := c.Service(mesh.ServiceKey{Namespace: "default", Name: "api"})
	if api.Protocol != mesh.ProtocolHTTP || api.ServiceAccount != "api-server" || len(api.Endpoints) != 2 {
		t.Fatalf("api = %+v", api)
	}
	draining := api.Endpoints[1]
	wantEP := mesh.Endpoint{Address: "10.0.0.12", Port: 15001, Health: mesh.HealthDraining, Weight: 2,
		Locality: mesh.Locality{Region: "eu-west", Zone: "eu-west-1b"}}
	if !reflect.DeepEqual(draining, wantEP) {
		t.Errorf("api endpoint[1] = %+v, want %+v", draining, wantEP)
	}
	web := c.Service(mesh.ServiceKey{Namespace: "default", Name: "web"})
	if got := web.Endpoints[0].Labels["version"]; got != "v1" {
		t.Errorf("web label version = %q, want v1", got)
	}
	db := c.Service(mesh.ServiceKey{Namespace: "data", Name: "db"})
	if db.Protocol != mesh.ProtocolTCP || db.ServiceAccount != "db" {
		t.Errorf("db defaults not applied: %+v", db)
	}

	wp := c.Proxy("web.default")
	wantUps := []mesh.Upstream{
		{Service: "api", Namespace: "default", LocalPort: 9001},
		{Service: "db", Namespace: "data", LocalPort: 9002},
		{Service: "greeter", Namespace: "default", LocalPort: 9003},
	}
	if wp.Flavor != mesh.FlavorEnvoy || wp.AppPort != 8080 || !reflect.DeepEqual(wp.Upstreams, wantUps) {
		t.Errorf("web proxy = %+v", wp)
	}
	gp := c.Proxy("greeter.default")
	if gp.Flavor != mesh.FlavorGRPC || gp.Address != "10.0.0.30" || gp.PublicPort != 50051 {
		t.Errorf("greeter proxy = %+v", gp)
	}
}

func TestParseErrors(t *testing.T) {
	const validService = "services:\n  - name: web\n    endpoints:\n      - address: 10.0.0.1\n        port: 8080\n"
	tests := []struct {
		name   string
		in     string
		want   []string // each must appear in the error
		is     error    // if set, errors.Is must hold
		nLines int      // if set, the error must have this many lines
	}{
		{
			name: "unknown field at top level",
			in:   validService + "servics: []\n",
			want: []string{`catalog.yaml: line 6: unknown field "servics" at the top level; did you mean "services"? see docs/catalog.md`},
		},
		{
			name: "unknown field in service",
			in:   "services:\n  - name: web\n    prot: http\n",
			want: []string{`catalog.yaml: line 3: unknown field "prot" in service (services[0]); did you mean "protocol"? see docs/catalog.md`},
		},
		{
			name: "unknown field in second service without a close match",
			in:   validService + "  - name: api\n    colour: blue\n",
			want: []string{`catalog.yaml: line 7: unknown field "colour" in service (services[1]); valid fields are name, namespace, protocol, serviceAccount, endpoints, address, port; see docs/catalog.md`},
		},
		{
			name: "unknown field in endpoint",
			in:   "services:\n  - name: web\n    endpoints:\n      - adress: 10.0.0.1\n        port: 8080\n",
			want: []string{`catalog.yaml: line 4: unknown field "adress" in endpoint (services[0].endpoints[0]); did you mean "address"?`},
		},
		{
			name: "unknown field in proxy, wrong case",
			in:   validService + "proxies:\n  - service: web\n    public_port: 15001\n",
			want: []string{`catalog.yaml: line 8: unknown field "public_port" in proxy (proxies[0]); did you mean "publicPort"?`},
		},
		{
			name: "unknown field in upstream",
			in:   validService + "proxies:\n  - service: web\n    upstreams:\n      - service: web\n        port: 9000\n",
			want: []string{`catalog.yaml: line 10: unknown field "port" in upstream (proxies[0].upstreams[0]); valid fields are service, namespace, localPort;`},
		},
		{
			name: "unknown fields in a gateway's listener, tls and route",
			in: validService + "proxies:\n  - service: web\n    flavor: gateway\n    listeners:\n      - port: 8443\n" +
				"        tls: {certFile: /etc/x.crt}\n        routes:\n          - {pathPrefx: /api, service: web}\n        rout: []\n",
			want: []string{
				`catalog.yaml: line 11: unknown field "certFile" in tls (proxies[0].listeners[0].tls); valid fields are certificateFile, keyFile, sdsSecret, sdsSocket;`,
				`catalog.yaml: line 13: unknown field "pathPrefx" in route (proxies[0].listeners[0].routes[0]); did you mean "pathPrefix"?`,
				`catalog.yaml: line 14: unknown field "rout" in listener (proxies[0].listeners[0]); did you mean "routes"?`,
			},
		},
		{
			name:   "every unknown field at once",
			in:     "services:\n  - name: web\n    prot: http\n    endpoints:\n      - adress: 10.0.0.1\n",
			want:   []string{`line 3: unknown field "prot"`, `line 5: unknown field "adress"`},
			nLines: 2,
		},
		{
			name: "syntax error",
			in:   "services:\n  - name: web\n    endpoints: [\n",
			want: []string{`catalog.yaml: line 3: YAML syntax error: did not find expected node content`},
		},
		{
			name: "tab indentation",
			in:   "services:\n\t- name: web\n",
			want: []string{`catalog.yaml: line 2: YAML syntax error: found character that cannot start any token (indent with spaces: YAML does not allow tabs for indentation)`},
		},
		{
			name: "wrong type: string port",
			in:   "services:\n  - name: web\n    endpoints:\n      - address: 10.0.0.1\n        port: \"abc\"\n",
			want: []string{`catalog.yaml: line 5: services[0].endpoints[0].port: want a non-negative whole number, got the string "abc"; see docs/catalog.md`},
		},
		{
			name: "wrong type: negative port, long value in flow style",
			in:   "services:\n  - name: web\n    endpoints:\n      - {address: 10.0.0.1, port: -123456789012}\n",
			want: []string{`catalog.yaml: line 4: services[0].endpoints[0].port: want a non-negative whole number, got the number -123456789012;`},
		},
		{
			name: "wrong type: mapping instead of list",
			in:   "services:\n  web:\n    protocol: http\n",
			want: []string{`catalog.yaml: line 2: services: want a list of services, got a mapping;`},
		},
		{
			name: "wrong type: not a mapping at all",
			in:   "just some text\n",
			want: []string{`catalog.yaml: line 1: the catalog: want a mapping with services: and proxies:, got the string "just some text";`},
		},
		{
			name: "repeated field",
			in:   "services:\n  - name: web\n    protocol: http\n    protocol: tcp\n",
			want: []string{`catalog.yaml: line 4: field "protocol" appears twice in service (services[0]) (first at line 3)`},
		},
		{
			name: "empty file",
			in:   "",
			want: []string{`catalog.yaml: catalog is empty`},
			is:   ErrEmpty,
		},
		{
			name: "only comments",
			in:   "# the catalog\n# nothing yet\n",
			want: []string{`catalog.yaml: catalog is empty`},
			is:   ErrEmpty,
		},
		{
			name: "only a document marker",
			in:   "---\n",
			want: []string{`catalog.yaml: catalog is empty`},
			is:   ErrEmpty,
		},
		{
			name: "empty lists (a write caught after its first line looks like this)",
			in:   "services:\n",
			want: []string{`catalog.yaml: catalog is empty`},
			is:   ErrEmpty,
		},
		{
			name: "two documents",
			in:   validService + "---\n" + validService,
			want: []string{`catalog.yaml: line 6: a second YAML document starts here, but a catalog file holds exactly one`},
			is:   ErrMultipleDocuments,
		},
		{
			name: "validation errors",
			in: "services:\n" +
				"  - name: web\n" +
				"    endpoints:\n" +
				"      - address: 10.0.0.1\n" +
				"        port: 8080\n" +
				"  - name: web\n" +
				"    endpoints:\n" +
				"      - address: web.example.com\n" +
				"        port: 0\n" +
				"proxies:\n" +
				"  - service: nope\n",
			want: []string{
				// Each on the line of its field (issue 15: they had none).
				`catalog.yaml: line 6: services[1] "web.default": field name: duplicate service web.default`,
				`catalog.yaml: line 8: services[1] "web.default": field endpoints[0].address: "web.example.com" is not a usable IP address`,
				`catalog.yaml: line 9: services[1] "web.default": field endpoints[0].port: 0 is not a port: use 1-65535`,
				`catalog.yaml: line 11: proxies[0] "nope.default": field service: no service nope.default in the catalog`,
			},
			nLines: 4,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse("catalog.yaml", []byte(tt.in))
			if err == nil {
				t.Fatalf("Parse succeeded (%d services), want an error", len(c.Services()))
			}
			msg := err.Error()
			for _, w := range tt.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error does not contain\n  %s\ngot:\n  %s", w, strings.ReplaceAll(msg, "\n", "\n  "))
				}
			}
			lines := strings.Split(msg, "\n")
			for _, l := range lines {
				if !strings.HasPrefix(l, "catalog.yaml: ") {
					t.Errorf("error line does not start with the path: %q", l)
				}
			}
			if tt.nLines != 0 && len(lines) != tt.nLines {
				t.Errorf("error has %d lines, want %d:\n%s", len(lines), tt.nLines, msg)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("errors.Is(err, %v) = false", tt.is)
			}
			var pe *ParseError
			if !errors.As(err, &pe) || pe.Path != "catalog.yaml" {
				t.Errorf("error is not a *ParseError for catalog.yaml: %#v", err)
			}
		})
	}
}

func TestParseValidationErrorUnwraps(t *testing.T) {
	_, err := Parse("c.yaml", []byte("services:\n  - name: Web\n    serviceAccount: web\n"))
	var verrs mesh.ValidationErrors
	if !errors.As(err, &verrs) {
		t.Fatalf("error %v does not unwrap to mesh.ValidationErrors", err)
	}
	want := mesh.FieldError{Object: `services[0] "Web.default"`, Field: "name"}
	if len(verrs) != 1 || verrs[0].Object != want.Object || verrs[0].Field != want.Field {
		t.Errorf("validation errors = %+v, want one for %s field %s", verrs, want.Object, want.Field)
	}
}

func TestLoad(t *testing.T) {
	if _, err := Load("testdata/valid.yaml", inputfile.DefaultMaxSize); err != nil {
		t.Errorf("Load(valid) = %v", err)
	}
	missing := filepath.Join(t.TempDir(), "nope.yaml")
	_, err := Load(missing, inputfile.DefaultMaxSize)
	if err == nil || !strings.HasPrefix(err.Error(), missing+": cannot read catalog: ") || !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Load(missing) = %v, want %q prefix wrapping fs.ErrNotExist", err, missing+": cannot read catalog: ")
	}
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(bad, []byte("services:\n  - name: web\n    prot: http\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(bad, inputfile.DefaultMaxSize); err == nil || !strings.HasPrefix(err.Error(), bad+": line 3: unknown field") {
		t.Errorf("Load(bad) = %v", err)
	}
}

func TestSuggest(t *testing.T) {
	fields := []string{"id", "flavor", "service", "namespace", "address", "publicPort", "appPort", "upstreams"}
	for in, want := range map[string]string{
		"publicport":  "publicPort",
		"public-port": "publicPort",
		"adress":      "address",
		"upstream":    "upstreams",
		"flavour":     "flavor",
		"ns":          "",
		"color":       "",
		"x":           "",
	} {
		if got := suggest.Closest(in, fields); got != want {
			t.Errorf("suggest.Closest(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestDocsExample keeps docs/catalog.md honest: its complete example must be
// the catalog in testdata (which TestParseValidCatalog checks), and every
// field of the file format must be documented.
func TestDocsExample(t *testing.T) {
	doc, err := os.ReadFile("../../docs/catalog.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(doc)
	_, after, ok := strings.Cut(text, "## Complete example")
	if !ok {
		t.Fatal(`docs/catalog.md has no "## Complete example" section`)
	}
	_, block, ok := strings.Cut(after, "```yaml\n")
	block, _, ok2 := strings.Cut(block, "```")
	if !ok || !ok2 {
		t.Fatal("no yaml block in the complete example")
	}
	want, err := os.ReadFile("testdata/valid.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(block) != strings.TrimSpace(string(want)) {
		t.Error("the complete example in docs/catalog.md differs from testdata/valid.yaml; keep them identical")
	}

	seen := map[reflect.Type]bool{}
	var check func(t2 reflect.Type)
	check = func(ty reflect.Type) {
		if ty.Kind() == reflect.Slice || ty.Kind() == reflect.Map {
			check(ty.Elem())
			return
		}
		if ty.Kind() != reflect.Struct || seen[ty] {
			return
		}
		seen[ty] = true
		for i := range ty.NumField() {
			f := ty.Field(i)
			if name := yamlName(f); name != "" && !strings.Contains(text, "`"+name+"`") {
				t.Errorf("docs/catalog.md does not document field %s (of %s)", name, ty)
			}
			check(f.Type)
		}
	}
	check(reflect.TypeFor[document]())
}

// TestParseCapsProblems: a file that makes yaml.v3 report a flood of errors
// (one key repeated at many depths, found by fuzzing) gets a bounded list of
// problems and says how many more there are, instead of minutes of work and
// a message of tens of megabytes.
func TestParseCapsProblems(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("testdata", "pathological-duplicates.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = Parse("catalog.yaml", data)
	var pe *ParseError
	if !errors.As(err, &pe) {
		t.Fatalf("want a ParseError, got %v", err)
	}
	if n := len(pe.Problems); n > maxProblems+1 {
		t.Fatalf("%d problems listed, want at most %d", n, maxProblems+1)
	}
	last := pe.Problems[len(pe.Problems)-1].Message
	if !strings.Contains(last, "more problems not shown") {
		t.Errorf("the list does not say that problems were left out; last: %q", last)
	}
	if n := len(err.Error()); n > 64<<10 {
		t.Errorf("error message of %d bytes", n)
	}
}
