// Package docs holds tests that keep the documentation true to the code:
// the log messages it quotes are ones meshd logs.
package docs

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// goSource is every non-test Go file of the repository, concatenated.
func goSource(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	err := filepath.WalkDir("..", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (strings.HasPrefix(d.Name(), ".") && path != "..") {
			return filepath.SkipDir
		}
		if !d.IsDir() && strings.HasSuffix(path, ".go") && !strings.HasSuffix(path, "_test.go") {
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			b.Write(data)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func markdown(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	files, _ := filepath.Glob("*.md")
	files = append(files, "../README.md")
	more, _ := filepath.Glob("../examples/*/README.md")
	for _, f := range append(files, more...) {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		out[f] = string(data)
	}
	return out
}

// TestQuotedLogLinesAreLogged: every msg="…" a document quotes is a message
// meshd's code logs (a string literal of the source).
func TestQuotedLogLinesAreLogged(t *testing.T) {
	src := goSource(t)
	quoted := regexp.MustCompile(`msg="([^"]+)"`)
	n := 0
	for f, text := range markdown(t) {
		for _, m := range quoted.FindAllStringSubmatch(text, -1) {
			n++
			if !strings.Contains(src, `"`+m[1]+`"`) {
				t.Errorf("%s quotes the log message %q, which no code logs", f, m[1])
			}
		}
	}
	if n < 10 {
		t.Errorf("only %d quoted log lines found", n)
	}
}

// TestLogTableMessages: the messages operations.md's log table lists (with
// … for the variable parts) are in the code.
func TestLogTableMessages(t *testing.T) {
	src := goSource(t)
	text := markdown(t)["operations.md"]
	i := strings.Index(text, "\n## Logs")
	if i < 0 {
		t.Fatal("operations.md has no ## Logs section")
	}
	section := text[i+1:]
	if j := strings.Index(section[3:], "\n## "); j >= 0 {
		section = section[:j+3]
	}
	code := regexp.MustCompile("`([^`]+)`")
	n := 0
	for _, line := range strings.Split(section, "\n") {
		cols := strings.Split(line, "|")
		if len(cols) < 4 || !regexp.MustCompile(`^\s*(DEBUG|INFO|WARN|ERROR)\s*$`).MatchString(cols[1]) {
			continue
		}
		for _, m := range code.FindAllStringSubmatch(cols[2], -1) {
			n++
			for _, part := range strings.Split(m[1], "…") {
				if part = strings.Trim(part, " ;,:"); part != "" && !strings.Contains(src, part) {
					t.Errorf("operations.md lists the log message %q; no code logs %q", m[1], part)
				}
			}
		}
	}
	if n < 10 {
		t.Errorf("only %d messages in the log table", n)
	}
}
