package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestEveryFlagIsDocumented: -h lists each flag, and docs/configuration.md
// has a row for each.
func TestEveryFlagIsDocumented(t *testing.T) {
	var out, errb bytes.Buffer
	if code, _ := run(context.Background(), []string{"-h"}, &out, &errb); code != 0 {
		t.Fatalf("-h exit code %d", code)
	}
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "configuration.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, section, _ := strings.Cut(string(doc), "\n## meshd-soak\n")
	section, _, _ = strings.Cut(section, "\n## ")
	n := 0
	for _, line := range strings.Split(errb.String(), "\n") {
		name, ok := strings.CutPrefix(line, "  -")
		if !ok {
			continue
		}
		name, _, _ = strings.Cut(name, " ")
		n++
		if !strings.Contains(section, "`--"+name) && !strings.Contains(section, "`-"+name) {
			t.Errorf("docs/configuration.md, meshd-soak: no row for --%s", name)
		}
	}
	if n < 20 {
		t.Errorf("-h listed %d flags:\n%s", n, errb.String())
	}
}

func TestUsageMistakes(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--fleet-service", "3"}, "did you mean --fleet-services?"},
		{[]string{"-o", "jsn"}, "did you mean json?"},
		{[]string{"--kinds", "mesh-mode,rotate"}, `unknown step kind "rotate"`},
		{[]string{"--modes", "STRICT,OFF"}, `unknown mTLS mode "OFF"`},
		{[]string{"--callers", "1"}, "at least 2"},
		{[]string{"--meshd", "/nonexistent/meshd"}, "--meshd /nonexistent/meshd"},
		{[]string{"extra"}, "takes only flags"},
	}
	for _, c := range cases {
		var out, errb bytes.Buffer
		code, err := run(context.Background(), c.args, &out, &errb)
		if code != 2 || err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: exit %d, error %v; want 2 and %q", c.args, code, err, c.want)
		}
	}
}

func TestPrintSchedule(t *testing.T) {
	var a, b, errb bytes.Buffer
	for _, out := range []*bytes.Buffer{&a, &b} {
		if code, err := run(context.Background(), []string{"--seed", "5", "--print-schedule", "30"}, out, &errb); code != 0 {
			t.Fatalf("exit %d: %v", code, err)
		}
	}
	if a.String() != b.String() || strings.Count(a.String(), "\n") != 31 {
		t.Errorf("schedule not repeatable or not 30 steps:\n%s\n---\n%s", a.String(), b.String())
	}
	if !strings.Contains(a.String(), "rotate-root") {
		t.Errorf("30 steps without a root rotation (the first steps make every kind):\n%s", a.String())
	}
}
