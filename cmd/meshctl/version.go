package main

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
)

// version is set at release build time:
// go build -ldflags "-X main.version=v0.1.0" ./cmd/meshctl
var version = "dev"

func runVersion(args []string, stdout, stderr io.Writer) int {
	flags := newFlagSet("meshctl version", "Print meshctl's version, the commit it was built from and the Go version.", "  meshctl version", stderr)
	if code, ok := parseFlags(flags, args, stdout); !ok {
		return code
	}
	v, commit := version, ""
	if bi, ok := debug.ReadBuildInfo(); ok {
		// `go install module@version` records the module version; a build
		// from a checkout records the commit instead.
		if v == "dev" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				commit = s.Value
			case "vcs.modified":
				if s.Value == "true" && commit != "" {
					commit += "-dirty"
				}
			}
		}
	}
	fmt.Fprintf(stdout, "meshctl %s", v)
	if commit != "" {
		fmt.Fprintf(stdout, " (commit %s)", commit)
	}
	fmt.Fprintf(stdout, " %s\n", runtime.Version())
	return exitOK
}
