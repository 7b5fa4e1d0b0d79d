package policy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshd/meshd/internal/hostile"
	"github.com/meshd/meshd/internal/yamlkeys"
	"github.com/meshd/meshd/mesh"
)

// FuzzLoad feeds arbitrary files through the parser and, when they load,
// through SetWith: nothing may panic, and every Linkerd decision must hold
// only what translation accepts (principals and IP blocks the Istio checks
// pass). Seeds are the golden inputs; run longer with
//
//	go test ./policy -run '^$' -fuzz FuzzLoad -fuzztime 60s
func FuzzLoad(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/in/*.yaml")
	for _, s := range seeds {
		b, err := os.ReadFile(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	// Issue 13's shapes, small: a mapping one key over the limit, and a
	// key repeated more often than is listed (both refused before Parse).
	f.Add([]byte(policyYAML("AuthorizationPolicy", "prod", "a") + "spec:\n" + hostile.Keys(2, yamlkeys.MaxKeys+1)))
	f.Add([]byte(policyYAML("AuthorizationPolicy", "prod", "a") + "spec:\n" + strings.Repeat("  action: DENY\n", yamlkeys.MaxReported+2)))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := parseFiles([]file{{"p.yaml", data}})
		if err != nil {
			return
		}
		ps := p.SetWith(Settings{})
		ps.EachAuthorization(func(a *mesh.AuthorizationPolicy) {
			for _, r := range a.Rules {
				for _, s := range r.NotFrom {
					for _, v := range s.Principals {
						if err := checkPrincipal(v); err != nil {
							t.Fatalf("%s/%s: principal %q: %v", a.Namespace, a.Name, v, err)
						}
					}
					for _, v := range append(append([]string(nil), s.IPBlocks...), s.NotIPBlocks...) {
						if err := checkIPBlock(v); err != nil {
							t.Fatalf("%s/%s: %v", a.Namespace, a.Name, err)
						}
					}
				}
			}
		})
	})
}
