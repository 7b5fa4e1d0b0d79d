package main

import (
	"errors"
	"flag"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/internal/flagdoc"
	"github.com/meshd/meshd/internal/inputfile"
)

func TestMaxFileSizeFlag(t *testing.T) {
	c, err := parseFlags([]string{"--catalog", "c.yaml"}, io.Discard)
	if err != nil || int64(c.maxFileSize) != inputfile.DefaultMaxSize {
		t.Fatalf("default: %v, %v; want %d", err, c, inputfile.DefaultMaxSize)
	}
	c, err = parseFlags([]string{"--catalog", "c.yaml", "--max-file-size", "64MiB"}, io.Discard)
	if err != nil || c.maxFileSize != 64<<20 {
		t.Fatalf("--max-file-size 64MiB: %v, %d", err, c.maxFileSize)
	}
	for _, bad := range []string{"0", "-1", "16MB", "lots"} {
		if _, err := parseFlags([]string{"--catalog", "c.yaml", "--max-file-size", bad}, io.Discard); err == nil || !strings.Contains(err.Error(), "max-file-size") {
			t.Errorf("--max-file-size %s: %v", bad, err)
		}
	}
	// --memory-limit shares the size syntax.
	c, err = parseFlags([]string{"--catalog", "c.yaml", "--memory-limit", "900MiB"}, io.Discard)
	if err != nil || c.memoryLimit.bytes != 900<<20 || !c.memoryLimit.set {
		t.Fatalf("--memory-limit 900MiB: %v, %+v", err, c.memoryLimit)
	}
	for in, want := range map[string]int64{"0": 0, "off": 0, " 1 GiB ": 1 << 30} {
		if c, err := parseFlags([]string{"--catalog", "c.yaml", "--memory-limit", in}, io.Discard); err != nil || c.memoryLimit.bytes != want {
			t.Errorf("--memory-limit %q: %v", in, err)
		}
	}
	if _, err := parseFlags([]string{"--catalog", "c.yaml", "--memory-limit", "9XB"}, io.Discard); err == nil || !strings.Contains(err.Error(), "or 0 for no limit") {
		t.Errorf("--memory-limit 9XB: %v", err)
	}
	// --gc-percent: GOGC's values; unset, the default applies at start.
	for in, want := range map[string]int{"50": 50, " 400 ": 400, "off": -1} {
		if c, err := parseFlags([]string{"--catalog", "c.yaml", "--gc-percent", in}, io.Discard); err != nil || c.gcPercent.percent != want || !c.gcPercent.set {
			t.Errorf("--gc-percent %q: %v, %+v", in, err, c.gcPercent)
		}
	}
	for _, bad := range []string{"0", "-5", "lots"} {
		if _, err := parseFlags([]string{"--catalog", "c.yaml", "--gc-percent", bad}, io.Discard); err == nil || !strings.Contains(err.Error(), "gc-percent") {
			t.Errorf("--gc-percent %s: %v", bad, err)
		}
	}
	if c, _ := parseFlags([]string{"--catalog", "c.yaml"}, io.Discard); c.gcPercent.set {
		t.Errorf("--gc-percent set without the flag: %+v", c.gcPercent)
	}
}

// The flags fill meshd's configuration with the documented defaults, and
// bad values are refused with the flag named.
func TestFlags(t *testing.T) {
	c, err := parseFlags([]string{"--catalog", "c.yaml"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.Catalog != "c.yaml" || c.MigrationOverdue != time.Minute || c.LivenessTimeout != 30*time.Second || c.Holdoff != 100*time.Millisecond {
		t.Errorf("defaults: %+v", c.Config)
	}
	for _, bad := range [][]string{
		{"--catalog", "c.yaml", "--liveness-timeout", "10ms"},
		{"--catalog", "c.yaml", "--mtls-migration-overdue", "0s"},
		{"--catalog", "c.yaml", "--debounce-holdoff", "2s"},
		{},
	} {
		_, err := parseFlags(bad, io.Discard)
		if err == nil {
			t.Errorf("%v accepted", bad)
			continue
		}
		if len(bad) > 2 && !strings.Contains(err.Error(), bad[2]) {
			t.Errorf("%v: error %q does not name %s", bad, err, bad[2])
		}
	}
}

// Every flag of meshd is in docs/configuration.md.
func TestEveryFlagIsDocumented(t *testing.T) {
	var help strings.Builder
	if _, err := parseFlags([]string{"-h"}, &help); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("-h: %v", err)
	}
	flagdoc.Check(t, "meshd", help.String(), 30)
}
