package suggest

import "testing"

func TestClosest(t *testing.T) {
	words := []string{"principals", "ipBlocks", "namespaces", "from", "status", "stat", "edges"}
	for _, c := range []struct{ in, want string }{
		{"ip_blocks", "ipBlocks"},    // separator and case
		{"prin", "principals"},       // prefix
		{"principles", "principals"}, // typo
		{"form", "from"},             // swap
		{"stats", "status"},          // equally close to stat: the first listed wins
		{"edgse", "edges"},
		{"xyz", ""},
		{"sta", "status"},
	} {
		if got := Closest(c.in, words); got != c.want {
			t.Errorf("Closest(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

func TestDistance(t *testing.T) {
	for _, c := range []struct {
		a, b string
		want int
	}{{"", "abc", 3}, {"abc", "abc", 0}, {"abc", "acb", 1}, {"kitten", "sitting", 3}} {
		if got := Distance(c.a, c.b); got != c.want {
			t.Errorf("Distance(%q, %q) = %d, want %d", c.a, c.b, got, c.want)
		}
	}
}
