package xds

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/meshd/meshd/internal/xdstest"
	"github.com/meshd/meshd/mesh"
)

// FuzzTranslate feeds arbitrary catalogs through validation and translation.
// Whatever the model accepts must translate without error into resources
// that pass deep validation and reference checks: the model's validation is
// the only gate, so a gap between it and Envoy's rules would show up here.
// Seeds are the golden inputs; run longer with
//
//	go test ./xds -run '^$' -fuzz FuzzTranslate -fuzztime 60s
func FuzzTranslate(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/in/*.yaml")
	seeds = append(seeds, "../examples/quickstart/catalog.yaml")
	for _, s := range seeds {
		b, err := os.ReadFile(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		if strings.HasSuffix(s, "quickstart/catalog.yaml") {
			// An endpoint with as many labels as a catalog may give it
			// (256, internal/yamlkeys; issue 13).
			var labels []string
			for i := range 256 {
				labels = append(labels, fmt.Sprintf("k%d: v%d", i, i))
			}
			many := bytes.Replace(b, []byte("labels: {version: v1}"), []byte("labels: {"+strings.Join(labels, ", ")+"}"), 1)
			if bytes.Equal(many, b) {
				f.Fatal("the quickstart catalog has no labels to replace")
			}
			f.Add(many)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var in goldenInput
		dec := yaml.NewDecoder(bytes.NewReader(data))
		if err := dec.Decode(&in); err != nil {
			return
		}
		cat, err := mesh.NewCatalog(in.Services, in.Proxies)
		if err != nil {
			return
		}
		td := in.TrustDomain
		if mesh.ValidTrustDomain(td) != nil {
			td = "cluster.local"
		}
		tr := NewTranslator(Options{TrustDomain: td})
		gen := tr.Generation(cat, nil)
		for _, p := range cat.Proxies() {
			r, err := gen.Proxy(p.ID)
			if err != nil {
				t.Fatalf("valid catalog, translation failed: %v", err)
			}
			sets := r.ByType()
			for _, list := range sets {
				for _, res := range list {
					if err := xdstest.DeepValidate(res.Message); err != nil {
						t.Fatalf("%s: %v", res.Name, err)
					}
				}
			}
			// Secrets are added at publish time; everything else must resolve.
			for typ, list := range sets {
				for _, res := range list {
					for _, ref := range res.Refs {
						if shortType(ref.TypeURL) == "Secret" {
							continue
						}
						found := false
						for _, o := range sets[ref.TypeURL] {
							found = found || o.Name == ref.Name
						}
						if !found {
							t.Fatalf("%s %s refers to missing %s", shortType(typ), res.Name, ref.Name)
						}
					}
				}
			}
		}
		gen.Close()
	})
}
