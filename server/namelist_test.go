package server

import (
	"fmt"
	"runtime"
	"slices"
	"testing"

	"github.com/meshd/meshd/internal/testwait"
	"github.com/meshd/meshd/xds"
)

// Streams subscribing to the same names share one list, and a list no
// stream holds any more leaves the table.
func TestNameListsAreSharedAndForgotten(t *testing.T) {
	a := internNameList([]string{"outbound|a.ns", "outbound|b.ns"})
	b := internNameList([]string{"outbound|a.ns", "outbound|b.ns"})
	c := internNameList([]string{"outbound|a.ns"})
	if a != b {
		t.Fatal("identical subscriptions got two lists")
	}
	if a == c || !slices.Equal(c.list(), []string{"outbound|a.ns"}) {
		t.Fatalf("different subscriptions share a list: %v %v", a.list(), c.list())
	}
	if !a.contains("outbound|b.ns") || a.contains("outbound|c.ns") || (*nameList)(nil).contains("x") {
		t.Fatal("contains")
	}
	if internNameList(nil) != nil {
		t.Fatal("an empty subscription got a list")
	}
	before := internedNameLists()
	a, b, c = nil, nil, nil
	testwait.Until(t, testwait.Timeout, func() error {
		runtime.GC()
		if n := internedNameLists(); n > before-2 {
			return fmt.Errorf("%d lists still interned, had %d with the two dropped ones", n, before)
		}
		return nil
	})
}

// A delta stream's record of what the proxy has: the resources it was
// last answered from, overridden by declared versions and by names it
// unsubscribed.
func TestDeltaHeldOverrides(t *testing.T) {
	r := func(name, hash string) *xds.Resource { return &xds.Resource{Name: name, Hash: hash} }
	dt := &deltaType{have: []*xds.Resource{r("a", "1"), r("b", "2"), r("c", "3")}}
	dt.setVersion("b", "")  // tell it again
	dt.setVersion("d", "9") // declared by a reconnecting proxy
	dt.forget("c")
	dt.forget("zz") // never had: nothing to forget
	for _, tc := range []struct {
		name, version string
		had           bool
	}{{"a", "1", true}, {"b", "", true}, {"c", "", false}, {"d", "9", true}, {"zz", "", false}} {
		if v, had := dt.version(tc.name); v != tc.version || had != tc.had {
			t.Errorf("version(%s) = %q %v, want %q %v", tc.name, v, had, tc.version, tc.had)
		}
	}
	var names []string
	dt.had(func(n string) { names = append(names, n) })
	slices.Sort(names)
	if !slices.Equal(names, []string{"a", "b", "d"}) {
		t.Fatalf("had %v, want a b d", names)
	}
}
