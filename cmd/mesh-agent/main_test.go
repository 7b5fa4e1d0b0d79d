package main

import (
	"errors"
	"flag"
	"io"
	"strings"
	"testing"

	"github.com/meshd/meshd/internal/flagdoc"
)

func TestParseFlags(t *testing.T) {
	c, err := parseFlags([]string{"--service", "api", "--token-file", "t", "--sds-socket", "/run/s.sock"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.nodeID != "api.default" || c.serviceAccount != "api" || c.namespace != "default" {
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
