// Package flagdoc checks, for tests, that every flag a command defines is
// in docs/configuration.md (the project's rule: every flag documented).
// Commands built on the standard flag package print their flags with -h;
// the flags are read from that text, so a test needs nothing but the
// command's own parser.
package flagdoc

import (
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
)

// flagLine is how flag.PrintDefaults starts the line of each flag: the
// name, then its type or the end of the line (not cobra's "-o, --output").
var flagLine = regexp.MustCompile(`(?m)^  -([a-z0-9][a-z0-9-]*)(?:[ \t]|$)`)

// Names are the flags in a standard flag package's -h output, in order.
func Names(help string) []string {
	var out []string
	for _, m := range flagLine.FindAllStringSubmatch(help, -1) {
		out = append(out, m[1])
	}
	return out
}

// Check fails t for every flag in help (a -h output) that
// docs/configuration.md does not name as `--flag`, and when help lists
// fewer than min flags (a help text this cannot read would prove nothing).
func Check(t *testing.T, command, help string, min int) {
	t.Helper()
	names := Names(help)
	if len(names) < min {
		t.Fatalf("%s -h lists %d flags, want at least %d: is this its help text?\n%s", command, len(names), min, help)
	}
	doc := read(t)
	for _, n := range names {
		if !strings.Contains(doc, "`--"+n) {
			t.Errorf("%s --%s is not in docs/configuration.md: add it to the flag table", command, n)
		}
	}
}

func read(t *testing.T) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	b, err := os.ReadFile(filepath.Join(filepath.Dir(file), "..", "..", "docs", "configuration.md"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
