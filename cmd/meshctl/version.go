package main

import (
	"fmt"
	"io"

	"github.com/meshd/meshd/internal/buildinfo"
)

// runVersion prints the build: release version (set with -ldflags "-X
// github.com/meshd/meshd/internal/buildinfo.version=v0.1.0", or recorded
// by go install module@version), commit and Go version. Also meshctl
// --version.
func runVersion(args []string, stdout, stderr io.Writer) int {
	flags := newFlagSet("meshctl version", "Print meshctl's version, the commit it was built from and the Go version.", "  meshctl version\n  meshctl --version", stderr)
	if code, ok := parseFlags(flags, args, stdout); !ok {
		return code
	}
	fmt.Fprintln(stdout, buildinfo.Read().String("meshctl"))
	return exitOK
}
