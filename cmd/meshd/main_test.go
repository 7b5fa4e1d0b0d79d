package main

import (
	"io"
	"strings"
	"testing"
	"time"
)

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
