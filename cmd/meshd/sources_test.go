package main

import (
	"strings"
	"testing"

	"github.com/meshd/meshd/mesh"
)

// With a file and Consul both configured, a service defined by both is a
// refused merge that keeps the previous catalog, never a silent override.
func TestCatalogSourcesRefuseConflicts(t *testing.T) {
	cat := func(svcs ...string) *mesh.Catalog {
		var s []mesh.Service
		for _, n := range svcs {
			s = append(s, mesh.Service{Name: n})
		}
		c, err := mesh.NewCatalog(s, nil)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	srcs := &catalogSources{latest: map[string]*mesh.Catalog{}}
	if _, err := srcs.set("file", cat("web")); err != nil {
		t.Fatal(err)
	}
	merged, err := srcs.set("consul", cat("api"))
	if err != nil || len(merged.Services()) != 2 {
		t.Fatalf("merge of disjoint sources: %v, %d services", err, len(merged.Services()))
	}
	if _, err := srcs.set("consul", cat("api", "web")); err == nil || !strings.Contains(err.Error(), "web.default is defined by both consul and file") {
		t.Fatalf("conflict not refused: %v", err)
	}
	if cur := srcs.current(); cur != merged {
		t.Error("a refused merge replaced the catalog in force")
	}
	if st := srcs.status(); st.Conflicts != 1 || st.Error == "" {
		t.Errorf("status %+v does not show the conflict", st)
	}
	// Fixing the conflict clears the error.
	if _, err := srcs.set("consul", cat("api", "db")); err != nil {
		t.Fatal(err)
	}
	if st := srcs.status(); st.Error != "" {
		t.Errorf("error not cleared: %+v", st)
	}
}
