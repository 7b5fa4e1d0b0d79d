// Package yamlsyntax explains yaml.v3's syntax errors for the catalog and
// policy files: on the line where the error is, in words that say what to
// do. yaml.v3 reports the line where the construct the error is in began —
// the block mapping above a wrongly indented key, the line before a tab —
// which can be many lines above the mistake; the line is found by parsing
// growing prefixes of the file until one fails the same way.
package yamlsyntax

import (
	"bytes"
	"errors"
	"io"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

var syntaxRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// maxSearch bounds the file size the line is searched in (each step parses
// a prefix; a larger file keeps yaml.v3's line).
const maxSearch = 4 << 20

// Explain returns the line (1-based; 0 when unknown) of a yaml.v3 syntax
// error err on data, and what to tell the user.
func Explain(data []byte, err error) (int, string) {
	msg := err.Error()
	m := syntaxRE.FindStringSubmatch(msg)
	if m == nil {
		return 0, "YAML syntax error: " + strings.TrimPrefix(msg, "yaml: ")
	}
	reported, _ := strconv.Atoi(m[1])
	line := locate(data, reported, m[2])
	text := "YAML syntax error: " + m[2]
	if hasLeadingTab(data, line) {
		// yaml.v3's words do not always say the character is a tab.
		text += " (indent with spaces: YAML does not allow tabs for indentation)"
	}
	return line, text
}

// locate finds the first line at or after reported whose prefix of the
// file (up to and including it) fails with the same error: the line that
// made the file wrong.
func locate(data []byte, reported int, what string) int {
	if len(data) > maxSearch {
		return reported
	}
	ends := lineEnds(data)
	fails := func(n int) bool { // the first n lines fail with what
		got := parseError(data[:ends[n-1]])
		return got == what
	}
	lo, hi := max(reported, 1), len(ends)
	if lo > hi || !fails(hi) {
		return reported
	}
	for lo < hi {
		mid := (lo + hi) / 2
		if fails(mid) {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return lo
}

// lineEnds[i] is the offset just past line i+1 (its newline included).
func lineEnds(data []byte) []int {
	var out []int
	for i, b := range data {
		if b == '\n' {
			out = append(out, i+1)
		}
	}
	if len(data) > 0 && data[len(data)-1] != '\n' {
		out = append(out, len(data))
	}
	return out
}

// parseError is the message (without its line) of the first syntax error
// in data, "" if there is none.
func parseError(data []byte) string {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var n yaml.Node
		err := dec.Decode(&n)
		if errors.Is(err, io.EOF) {
			return ""
		}
		if err != nil {
			if m := syntaxRE.FindStringSubmatch(err.Error()); m != nil {
				return m[2]
			}
			return err.Error()
		}
	}
}

func hasLeadingTab(data []byte, line int) bool {
	lines := strings.Split(string(data), "\n")
	if line < 1 || line > len(lines) {
		return false
	}
	l := lines[line-1]
	return strings.Contains(l[:len(l)-len(strings.TrimLeft(l, " \t"))], "\t")
}
