package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshd/meshd/discovery/file"
)

func TestHelpDocumentsEveryFlag(t *testing.T) {
	var out, errb bytes.Buffer
	code, _ := run([]string{"-h"}, &out, &errb)
	if code != 2 && code != 0 {
		t.Fatalf("-h exit code %d", code)
	}
	for _, f := range []string{"-scenario", "-meshd", "-xds-address", "-admin-address", "-catalog-file", "-catalog-format", "-ca-file",
		"-plaintext", "-delta", "-streams-per-conn", "-node-id-template", "-node-metadata", "-idle", "-churn", "-all-services", "-upstreams"} {
		if !strings.Contains(errb.String(), f+" ") && !strings.Contains(errb.String(), f+"\n") {
			t.Errorf("--help does not document %s", f)
		}
	}
}

func TestWriteCatalog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cat.yaml")
	var out, errb bytes.Buffer
	if code, err := run([]string{"--scenario", "s", "--upstreams", "2", "--write-catalog", path}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %v %s", code, err, errb.String())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cat, err := file.Parse(path, b)
	if err != nil {
		t.Fatalf("meshd rejects the written catalog: %v", err)
	}
	if len(cat.Proxies()) != 100 || len(cat.Proxies()[0].Upstreams) != 2 {
		t.Errorf("got %d proxies with %d upstreams", len(cat.Proxies()), len(cat.Proxies()[0].Upstreams))
	}
}

func TestRejectsBadInput(t *testing.T) {
	for _, args := range [][]string{
		{"--scenario", "XL"},
		{},                               // neither --meshd nor --xds-address
		{"--xds-address", "127.0.0.1:1"}, // generic mode without --proxies
		{"--meshd", "x", "--node-metadata", "[1]"}, // not a JSON object
		{"--meshd", "x", "--streams-per-conn", "0"},
	} {
		var out, errb bytes.Buffer
		if code, err := run(args, &out, &errb); code != 2 || err == nil {
			t.Errorf("%v: exit %d, err %v; want 2 and an error", args, code, err)
		}
	}
}
