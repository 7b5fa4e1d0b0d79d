package main

import (
	"errors"
	"flag"
	"io"
	"os/exec"
	"strings"
	"testing"

	"github.com/meshd/meshd/internal/flagdoc"
)

func TestParseFlags(t *testing.T) {
	c, err := parseFlags([]string{"--service", "api", "--token-file", "t", "--sds-socket", "/run/s.sock"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.NodeID != "api.default" || c.ServiceAccount != "api" || c.Namespace != "default" {
		t.Errorf("defaults: %+v", c)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--token-file", "t", "--sds-socket", "s"}, "--service is required"},
		{[]string{"--service", "api", "--token-file", "t"}, "--sds-socket"},
		{[]string{"--service", "api", "--cert-dir", "d"}, "--token-file is required"},
		{[]string{"--service", "api", "--token-file", "t", "--cert-dir", "d", "extra"}, "unexpected argument"},
		{[]string{"--service", "api", "--token-file", "t", "--cert-dir", "d", "--bundle-refresh", "0s"}, "--bundle-refresh"},
	} {
		if _, err := parseFlags(tc.args, io.Discard); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: got %v, want %q", tc.args, err, tc.want)
		}
	}
}

// --version needs no other flag.
func TestParseFlagsVersion(t *testing.T) {
	c, err := parseFlags([]string{"--version"}, io.Discard)
	if err != nil || !c.version {
		t.Fatalf("--version: %+v, %v", c, err)
	}
}

// Every flag of mesh-agent is in docs/configuration.md.
func TestEveryFlagIsDocumented(t *testing.T) {
	var help strings.Builder
	if _, err := parseFlags([]string{"-h"}, &help); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("-h: %v", err)
	}
	flagdoc.Check(t, "mesh-agent", help.String(), 10)
}

// mesh-agent runs on workload machines: of the server side it carries only
// the CA service's client (server/caclient), and nothing of meshd's control
// plane (docs/architecture.md, the import table). go list resolves the
// imports without compiling.
func TestImportsOnlyTheCAClientOfTheServer(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	const mod = "github.com/meshd/meshd/"
	meshdOnly := []string{"server", "snapshot", "discovery", "policy", "telemetry", "internal/app", "internal/inputs", "internal/metrics"}
	seen := 0
	for _, pkg := range strings.Fields(string(out)) {
		rel, ok := strings.CutPrefix(pkg, mod)
		if !ok {
			continue
		}
		seen++
		if rel == "server/caclient" {
			continue
		}
		for _, p := range meshdOnly {
			if rel == p || strings.HasPrefix(rel, p+"/") {
				t.Errorf("mesh-agent imports %s (of the server side it may import only server/caclient)", pkg)
			}
		}
	}
	if seen < 3 || !strings.Contains(string(out), mod+"agent\n") || !strings.Contains(string(out), mod+"server/caclient\n") {
		t.Errorf("go list -deps does not show mesh-agent's own packages:\n%s", out)
	}
}
