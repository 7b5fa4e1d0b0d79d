// Package yamlkeys finds, in time linear in the input, the YAML mappings that
// would make decoding with yaml.v3 cost more than linear time: mappings with
// very many keys, and keys repeated within one mapping.
//
// yaml.v3 checks a mapping for repeated keys, before decoding it into a Go
// value, by comparing every key with every later key (decoder.mapping in
// gopkg.in/yaml.v3 decode.go): a mapping of n keys costs n²/2 string
// comparisons, and every equal pair adds an error message. A catalog with a
// 64,000-key mapping cost 12.7 s of CPU and one of 400,000 keys more than
// six minutes (issue 13); 1,000 copies of one key make 500,000 messages.
// meshd therefore refuses a mapping with more than MaxKeys keys, and many
// repeated keys, before yaml.v3 decodes the document: with every mapping at
// most MaxKeys keys, yaml.v3's check costs at most MaxKeys/2 comparisons per
// key in the file.
//
// Check has two ways of looking. Most files take the first: one pass over
// the lines (quick.go) that reads the block structure meshd's own files use
// (block mappings and sequences, plain and one-line quoted scalars) and
// counts each mapping's keys and compares them, at about the cost of reading
// the bytes. Whenever that pass cannot be sure of what yaml.v3 will read
// (flow collections such as JSON, anchors, tags, block or multi-line
// scalars, or something it found), the document is parsed into yaml.v3
// nodes, which costs linear time and does not check keys, and the nodes are
// counted (exact.go). The fuzz test in this package checks that the first
// way never says "sure" where the second finds a problem.
package yamlkeys

import (
	"fmt"
	"strings"
)

// MaxKeys is the most keys meshd accepts in one YAML mapping of a catalog or
// policy file (docs/catalog.md, docs/policy.md). Real mappings are far
// smaller: a catalog object has at most a dozen fields, and label sets are
// tens of labels (Consul caps service metadata at 64 pairs). At 256, the
// repeated-key check of yaml.v3 costs at most 128 comparisons per key, a
// few hundred nanoseconds: less than parsing the key.
const MaxKeys = 256

// Mapping is a mapping with more keys than the limit.
type Mapping struct {
	// Line and Column are where the mapping starts (1-based): its first key,
	// or its '{'.
	Line, Column int
	// Keys is how many keys it has.
	Keys int
	Place
}

// Duplicate is a key that a mapping holds more than once, as yaml.v3 sees
// it: the same kind of node with the same value.
type Duplicate struct {
	// Key is the repeated key's value.
	Key string
	// Line is where it is repeated and FirstLine where it first appears.
	Line, FirstLine int
	// Place is the mapping's.
	Place
}

// Place is where a mapping is: the document (1-based) and the keys and
// list indexes leading to it from the document's root, so that a caller who
// knows the schema can name it without parsing the file again.
type Place struct {
	Document int
	Path     []Step
}

// Step is one step of a Path: a mapping's key, or (Index >= 0) a list item.
type Step struct {
	Key   string
	Index int
}

// String writes p as a field path: services[0].endpoints[1].labels.
func (p Place) String() string {
	var b strings.Builder
	for _, s := range p.Path {
		if s.Index >= 0 {
			fmt.Fprintf(&b, "[%d]", s.Index)
			continue
		}
		if b.Len() > 0 {
			b.WriteByte('.')
		}
		b.WriteString(s.Key)
	}
	return b.String()
}

// Report is what Check found.
type Report struct {
	// Large are the mappings with more keys than the limit and Duplicates
	// the repeated keys, at most MaxReported of each; LargeCount and
	// DuplicateCount count them all.
	Large          []Mapping
	Duplicates     []Duplicate
	LargeCount     int
	DuplicateCount int
}

// MaxReported bounds the lists of a Report: what a person fixes first.
const MaxReported = 50

// Costly reports whether yaml.v3 must not decode the document: a mapping
// over the limit, or more repeated keys than can be reported (each pair of
// copies of a key is one yaml.v3 error, so a few repeats are cheap and can
// be left to yaml.v3, which then reports them with everything else).
func (r Report) Costly() bool { return r.LargeCount > 0 || r.DuplicateCount > MaxReported }

// Check looks at every YAML document in data and reports the mappings with
// more than maxKeys keys and the keys repeated within one mapping, in time
// linear in len(data). Documents after a syntax error are not looked at
// (yaml.v3 does not decode them either); a syntax error itself is not
// reported, as the decoder will.
func Check(data []byte, maxKeys int) Report {
	if quick(data, maxKeys) {
		return Report{}
	}
	return exact(data, maxKeys)
}

// Quick reports whether the quick pass alone is sure that no mapping in
// data has more than maxKeys keys or a repeated key. False means only that
// Check would have to look closer (or would find something). It costs about
// as much as reading data, whatever data holds.
func Quick(data []byte, maxKeys int) bool { return quick(data, maxKeys) }
