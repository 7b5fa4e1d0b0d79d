package file

import (
	"cmp"
	"errors"
	"fmt"
	"reflect"
	"slices"

	"github.com/meshd/meshd/internal/yamlkeys"
)

// ErrTooManyKeys is wrapped by the error for a catalog with a mapping of
// more than yamlkeys.MaxKeys keys.
var ErrTooManyKeys = errors.New("a mapping has too many keys")

// errRepeatedKeys is the cause of the error for a catalog repeating more
// keys than yamlkeys lists; a few repeats are left to yaml.v3 and are a
// *yaml.TypeError like every other field problem.
var errRepeatedKeys = errors.New("many repeated keys")

// checkKeys refuses, before yaml.v3 decodes data, a document whose decoding
// would cost more than linear time: yaml.v3 compares every key of a mapping
// with every other, so a 64,000-key mapping cost 12.7 s and 1,000 copies of
// one key make half a million error messages (issue 13, internal/yamlkeys).
// The check itself is linear, and its problems are named without parsing
// the file again, in the YAML path's words (a repeated key reads the same
// whichever finds it).
func checkKeys(path string, data []byte) error {
	r := yamlkeys.Check(data, yamlkeys.MaxKeys)
	if !r.Costly() {
		return nil
	}
	var problems []Problem
	cause := errRepeatedKeys
	for _, m := range r.Large {
		problems = append(problems, Problem{Line: m.Line, Message: fmt.Sprintf(
			"too many keys %s: %d, more than the %d one mapping may have; %s",
			objectAt(m.Place), m.Keys, yamlkeys.MaxKeys, docsHint)})
		cause = ErrTooManyKeys
	}
	for _, d := range r.Duplicates {
		problems = append(problems, Problem{Line: d.Line, Message: repeatedMessage(d.Key, " "+objectAt(d.Place), d.FirstLine)})
	}
	slices.SortStableFunc(problems, func(a, b Problem) int { return cmp.Compare(a.Line, b.Line) })
	problems = problems[:min(len(problems), maxProblems)]
	if more := r.LargeCount + r.DuplicateCount - len(problems); more > 0 {
		problems = append(problems, Problem{Message: fmt.Sprintf("and %d more problems not shown: fix these first", more)})
	}
	return &ParseError{Path: path, Problems: problems, Err: cause}
}

// objectAt names the mapping at p as the YAML path's messages do: "in
// service (services[0])", "in services[0].endpoints[0].labels", "at the top
// level". It follows the catalog's types along the path, so the file is not
// parsed again to name it.
func objectAt(p yamlkeys.Place) string {
	t := reflect.TypeFor[document]()
	for _, s := range p.Path {
		switch {
		case t == nil:
		case s.Index >= 0 && t.Kind() == reflect.Slice:
			t = t.Elem()
		case s.Index < 0 && t.Kind() == reflect.Struct:
			t = fieldType(t, s.Key)
		case s.Index < 0 && t.Kind() == reflect.Map:
			t = t.Elem()
		default:
			t = nil
		}
	}
	if p.Document > 1 {
		// Past the one document a catalog holds: a path alone.
		t = nil
	}
	if d := describeObject(t, p.String()); d != "" {
		return d
	}
	return "in one mapping"
}
