package flagdoc

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"
)

// pflagLine is how cobra (pflag) starts the line of each flag: "-o, --output"
// or "--timeout", indented.
var pflagLine = regexp.MustCompile(`(?m)^\s+(?:-([a-zA-Z0-9]), )?--([a-z0-9][a-z0-9-]*)`)

// subcommandLine is a cobra help's "Available Commands:" entry.
var subcommandLine = regexp.MustCompile(`(?m)^  ([a-z][a-z0-9-]*)\s{2,}\S`)

// Every binary under cmd/, built and asked for -h (a command with
// subcommands: each of them, recursively), has each flag it lists in
// docs/configuration.md. A binary added later is checked without anyone
// remembering to: this test lists cmd/ itself. The binaries' own tests
// check more closely where each flag is documented (meshctl: in its
// command's section); this one holds for all of them.
func TestEveryBinaryUnderCmdHasItsFlagsDocumented(t *testing.T) {
	if testing.Short() {
		t.Skip("builds every binary under cmd/")
	}
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	entries, err := os.ReadDir(filepath.Join(root, "cmd"))
	if err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	build := exec.Command("go", "build", "-o", bin+string(filepath.Separator), "./cmd/...")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/...: %v\n%s", err, out)
	}
	doc := read(t)
	binaries := 0
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		binaries++
		name := e.Name()
		path := filepath.Join(bin, name)
		if _, err := os.Stat(path); err != nil {
			t.Errorf("cmd/%s built no binary %s: %v", name, name, err)
			continue
		}
		flags := map[string]string{} // flag -> the command line that lists it
		var walk func(args ...string)
		walk = func(args ...string) {
			help := helpText(t, path, args...)
			cmdline := strings.Join(append([]string{name}, args...), " ")
			if std := Names(help); len(std) > 0 {
				// The standard flag package (-name): no subcommands.
				for _, f := range std {
					flags[f] = cmdline
				}
				return
			}
			for _, m := range pflagLine.FindAllStringSubmatch(help, -1) {
				if m[2] == "help" {
					continue
				}
				key := m[2]
				if m[1] != "" {
					key += "|" + m[1]
				}
				flags[key] = cmdline
			}
			_, subs, ok := strings.Cut(help, "\nAvailable Commands:\n")
			if !ok || len(args) > 3 {
				return
			}
			subs, _, _ = strings.Cut(subs, "\n\n")
			for _, m := range subcommandLine.FindAllStringSubmatch(subs, -1) {
				if m[1] != "help" && m[1] != "completion" {
					walk(append(args, m[1])...)
				}
			}
		}
		walk()
		if len(flags) < 3 {
			t.Errorf("%s -h lists %d flags: is this a help text this test can read?", name, len(flags))
		}
		for f, where := range flags {
			long, short, _ := strings.Cut(f, "|")
			if len(long) == 1 {
				short = long // a one-letter flag of the flag package, -o
			}
			// Named anywhere as --flag (a table row, or an example such
			// as `meshctl tap api --denied`), or by its shorthand.
			if regexp.MustCompile(`--`+regexp.QuoteMeta(long)+`(?:[^a-z0-9-]|$)`).MatchString(doc) ||
				short != "" && strings.Contains(doc, "`-"+short) {
				continue
			}
			t.Errorf("%s: --%s (from %s -h) is not in docs/configuration.md", name, long, where)
		}
	}
	if binaries < 5 {
		t.Errorf("found %d directories under cmd/: is %s the repository?", binaries, root)
	}
}

// helpText runs a binary's -h: standard flag packages print it on stderr
// (exit status 0 or 2), cobra on stdout.
func helpText(t *testing.T, path string, args ...string) string {
	t.Helper()
	cmd := exec.Command(path, append(args, "-h")...)
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
	cmd.WaitDelay = 10 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 {
			t.Fatalf("%s %s -h: %v\n%s", path, strings.Join(args, " "), err, out)
		}
	}
	return string(out)
}
