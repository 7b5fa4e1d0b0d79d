// Package suggest finds the word a user most likely meant: the "did you
// mean" of meshctl's commands and flags, the catalog's fields and the policy
// files' fields, kinds and modes, so every typo is answered alike.
package suggest

import "strings"

// Closest returns the word of words the user most likely meant by name, or
// "": the same word in another case or separator style (ipblocks,
// ip_blocks), a prefix of at least three letters (prin), or a typo within a
// small edit distance (principles; at most 1 for words under five letters,
// 2 otherwise).
func Closest(name string, words []string) string {
	n := norm(name)
	for _, w := range words {
		if norm(w) == n {
			return w
		}
	}
	if len(n) >= 3 {
		for _, w := range words {
			if strings.HasPrefix(norm(w), n) {
				return w
			}
		}
	}
	best, bestDist := "", 3
	if len(n) < 5 {
		bestDist = 2
	}
	for _, w := range words {
		if d := Distance(n, norm(w)); d < bestDist {
			best, bestDist = w, d
		}
	}
	return best
}

func norm(s string) string {
	return strings.ToLower(strings.NewReplacer("_", "", "-", "").Replace(s))
}

// Distance is the optimal-string-alignment distance: Levenshtein plus the
// swap of two neighbouring letters ("form" for "from"), the commonest typo
// of all.
func Distance(a, b string) int {
	d := make([][]int, len(a)+1)
	for i := range d {
		d[i] = make([]int, len(b)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(a); i++ {
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(a)][len(b)]
}
