package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/meshd/meshd/internal/envoytest"
)

// configurationDoc reads docs/configuration.md.
func configurationDoc(t *testing.T) string {
	t.Helper()
	root, err := envoytest.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "docs", "configuration.md"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// meshctlChunks splits the doc's meshctl part into the pieces a command's
// flags may be documented in: the part's introduction (flags every command
// of a kind shares), each ### section and each table row.
func meshctlChunks(t *testing.T, doc string) (intro string, sections, rows []string) {
	t.Helper()
	start := strings.Index(doc, "\n## meshctl\n")
	if start < 0 {
		t.Fatal("docs/configuration.md has no ## meshctl section")
	}
	part := doc[start+1:]
	if end := strings.Index(part[3:], "\n## "); end >= 0 {
		part = part[:end+3]
	}
	secs := regexp.MustCompile(`(?m)^### `).Split(part, -1)
	intro, sections = secs[0], secs[1:]
	for _, l := range strings.Split(part, "\n") {
		if strings.HasPrefix(l, "|") {
			rows = append(rows, l)
		}
	}
	return intro, sections, rows
}

// TestEveryMeshctlFlagIsDocumented: every flag of every meshctl command is
// in docs/configuration.md, in a table row or section that names the
// command (or, for the flags whole groups of commands share, in the
// meshctl introduction).
func TestEveryMeshctlFlagIsDocumented(t *testing.T) {
	intro, sections, rows := meshctlChunks(t, configurationDoc(t))
	checked := 0
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, sub := range c.Commands() {
			walk(sub)
		}
		if !c.Runnable() || c.Hidden || len(c.Commands()) > 0 {
			return
		}
		path := c.CommandPath()
		var where []string
		for _, s := range sections {
			// A section of the command, or of its group (### meshctl ca).
			heading, _, _ := strings.Cut(s, "\n")
			if strings.Contains(heading, path) || (c.Parent() != c.Root() && strings.HasSuffix(strings.TrimSpace(heading), c.Parent().CommandPath())) {
				where = append(where, s)
			}
		}
		for _, r := range rows {
			if strings.Contains(r, "`"+path) {
				where = append(where, r)
			}
		}
		if len(where) == 0 && !strings.Contains(intro, path) {
			t.Errorf("%s is not documented: no ### section or table row of docs/configuration.md names it", path)
			return
		}
		text := strings.Join(append(where, intro), "\n")
		c.LocalFlags().VisitAll(func(f *pflag.Flag) {
			if f.Name == "help" || f.Hidden || f.Deprecated != "" {
				return
			}
			checked++
			named := regexp.MustCompile(`--` + regexp.QuoteMeta(f.Name) + `(?:[^a-z0-9-]|$)`).MatchString(text)
			if !named && !(f.Shorthand != "" && strings.Contains(text, "`-"+f.Shorthand)) {
				t.Errorf("%s --%s is not in docs/configuration.md where %s is documented", path, f.Name, path)
			}
		})
	}
	walk(newRoot())
	if checked < 60 {
		t.Errorf("only %d flags checked: is the command tree walked?", checked)
	}
}

// TestDocsQuoteCurrentHelp: the meshctl help docs/configuration.md quotes
// is what meshctl help prints.
func TestDocsQuoteCurrentHelp(t *testing.T) {
	doc := configurationDoc(t)
	const start = "```text\n$ bin/meshctl help\n"
	i := strings.Index(doc, start)
	if i < 0 {
		t.Fatal("docs/configuration.md does not quote meshctl help")
	}
	quoted := doc[i+len(start):]
	quoted = quoted[:strings.Index(quoted, "```\n")]
	if r := runArgs("help"); quoted != r.stdout {
		t.Errorf("docs/configuration.md quotes an old meshctl help; meshctl help prints:\n%s", r.stdout)
	}
}
