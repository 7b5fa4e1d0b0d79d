package xds

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"gopkg.in/yaml.v3"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/meshd/meshd/internal/xdstest"
	"github.com/meshd/meshd/mesh"
)

var update = flag.Bool("update", false, "rewrite golden files under testdata/out and delete stale ones")

// goldenInput is a test case: a catalog plus the mesh options, and for error
// cases the message translation (or catalog validation) must produce.
type goldenInput struct {
	TrustDomain string         `yaml:"trustDomain"`
	Services    []mesh.Service `yaml:"services"`
	Proxies     []mesh.Proxy   `yaml:"proxies"`
	// Policy is the normalised policy set (policy.Parse produces it from
	// Istio YAML; the translation tests start from the model).
	Policy      *mesh.PolicySet `yaml:"policy"`
	ExpectError string          `yaml:"expectError"`
	// Telemetry renders with Options.Telemetry (the access log stream to
	// meshd).
	Telemetry bool `yaml:"telemetry"`
}

func loadCase(t *testing.T, path string) goldenInput {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var in goldenInput
	if err := dec.Decode(&in); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if in.TrustDomain == "" {
		in.TrustDomain = "cluster.local"
	}
	return in
}

// cases are every testdata/in file plus the quickstart example, so the
// catalog users run first is always covered.
func cases(t *testing.T) map[string]string {
	files, err := filepath.Glob("testdata/in/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{"quickstart": "../examples/quickstart/catalog.yaml"}
	for _, f := range files {
		out[strings.TrimSuffix(filepath.Base(f), ".yaml")] = f
	}
	return out
}

func TestGolden(t *testing.T) {
	written := map[string]bool{}
	for name, path := range cases(t) {
		t.Run(name, func(t *testing.T) {
			in := loadCase(t, path)
			cat, err := mesh.NewCatalog(in.Services, in.Proxies)
			var results map[string]*ProxyResources
			if err == nil {
				results = map[string]*ProxyResources{}
				gen := NewTranslator(Options{TrustDomain: in.TrustDomain, Telemetry: in.Telemetry}).Generation(cat, in.Policy)
				for _, p := range cat.Proxies() {
					r, terr := gen.Proxy(p.ID)
					if terr != nil {
						err = terr
						break
					}
					results[p.ID] = r
				}
			}
			if in.ExpectError != "" {
				if err == nil || !strings.Contains(err.Error(), in.ExpectError) {
					t.Fatalf("want error containing %q, got %v", in.ExpectError, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for id, r := range results {
				checkProxy(t, id, r)
				if len(r.Warnings) > 0 {
					file := filepath.Join("testdata", "out", name, id+".warnings.txt")
					written[file] = true
					compareGolden(t, file, []byte(strings.Join(r.Warnings, "\n")+"\n"))
				}
				for kind, list := range map[string][]*Resource{"listeners": r.Listeners, "clusters": r.Clusters, "routes": r.Routes, "endpoints": r.Endpoints, "secrets": r.Secrets} {
					if len(list) == 0 {
						continue
					}
					file := filepath.Join("testdata", "out", name, id+"."+kind+".yaml")
					written[file] = true
					compareGolden(t, file, renderYAML(t, list))
				}
			}
		})
	}
	if *update {
		stale, _ := filepath.Glob("testdata/out/*/*.*")
		for _, f := range stale {
			if !written[f] {
				os.Remove(f)
			}
		}
	}
}

// checkProxy validates every resource deeply and checks references twice:
// with the builders' declared refs and with refs read from the protos, which
// must agree.
func checkProxy(t *testing.T, id string, r *ProxyResources) {
	t.Helper()
	sets := r.ByType()
	// Secrets translation renders itself (file references) are checked
	// like the rest; the CA's are stood in for by name below.
	sets["type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"] = r.Secrets
	msgs := map[string][]proto.Message{}
	for typ, list := range sets {
		for _, res := range list {
			if err := xdstest.DeepValidate(res.Message); err != nil {
				t.Errorf("%s: %s %q: %v", id, shortType(typ), res.Name, err)
			}
			var declared []xdstest.Ref
			for _, ref := range res.Refs {
				declared = append(declared, xdstest.Ref{TypeURL: ref.TypeURL, Name: ref.Name})
			}
			slices.SortFunc(declared, func(a, b xdstest.Ref) int { return strings.Compare(a.TypeURL+a.Name, b.TypeURL+b.Name) })
			found := xdstest.References(res.Message)
			slices.SortFunc(found, func(a, b xdstest.Ref) int { return strings.Compare(a.TypeURL+a.Name, b.TypeURL+b.Name) })
			if !slices.Equal(declared, found) {
				t.Errorf("%s: %s %q declares refs %v but contains %v", id, shortType(typ), res.Name, declared, found)
			}
			msgs[typ] = append(msgs[typ], res.Message)
		}
	}
	// Secrets come from the CA at publish time; stand in for them by name.
	secrets := map[string]bool{}
	for _, n := range r.SecretNames() {
		secrets[n] = true
	}
	for _, list := range sets {
		for _, res := range list {
			for _, ref := range res.Refs {
				if shortType(ref.TypeURL) == "Secret" {
					if !secrets[ref.Name] {
						t.Errorf("%s: %q refers to secret %q the proxy is not served", id, res.Name, ref.Name)
					}
					continue
				}
				found := false
				for _, other := range sets[ref.TypeURL] {
					found = found || other.Name == ref.Name
				}
				if !found {
					t.Errorf("%s: %q refers to missing %s %q", id, res.Name, shortType(ref.TypeURL), ref.Name)
				}
			}
		}
	}
}

func renderYAML(t *testing.T, list []*Resource) []byte {
	t.Helper()
	var docs []string
	for _, r := range list {
		j, err := protojson.Marshal(r.Message)
		if err != nil {
			t.Fatal(err)
		}
		// Round-trip through encoding/json so key order is stable regardless
		// of protojson's deliberately unstable whitespace.
		var v any
		if err := json.Unmarshal(j, &v); err != nil {
			t.Fatal(err)
		}
		y, err := sigsyaml.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		docs = append(docs, string(y))
	}
	return []byte(strings.Join(docs, "---\n"))
}

func compareGolden(t *testing.T, file string, got []byte) {
	t.Helper()
	if *update {
		if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(file, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("%v (run go test ./xds -update to create it)", err)
	}
	if !bytes.Equal(want, got) {
		t.Errorf("%s differs from the rendered output (run go test ./xds -update and review the diff):\n%s", file, diffLines(string(want), string(got)))
	}
}

func diffLines(a, b string) string {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	var out []string
	for i := 0; i < max(len(al), len(bl)) && len(out) < 20; i++ {
		var x, y string
		if i < len(al) {
			x = al[i]
		}
		if i < len(bl) {
			y = bl[i]
		}
		if x != y {
			out = append(out, "- "+x, "+ "+y)
		}
	}
	return strings.Join(out, "\n")
}
