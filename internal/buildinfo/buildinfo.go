// Package buildinfo tells which build of a meshd binary is running: the
// version, the commit it was built from (and whether the tree had local
// changes), and the Go version. Every binary prints it for --version, so a
// bug report names exactly what ran.
//
// A build from a checkout records the commit by itself (Go's VCS stamping,
// unless -buildvcs=false); `go install module@version` records the module
// version. Builds without either — a container build whose context has no
// .git — set them explicitly:
//
//	go build -ldflags "-X github.com/meshd/meshd/internal/buildinfo.version=v0.3.0 \
//	    -X github.com/meshd/meshd/internal/buildinfo.revision=$(git rev-parse HEAD)" ./cmd/meshd
package buildinfo

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
)

// Set with -ldflags -X (see the package comment). A value set this way wins
// over what the Go toolchain recorded.
var (
	version  string
	revision string
)

// Info is what is known about the running binary.
type Info struct {
	// Version is the release version, or "dev" for an unversioned build.
	Version string `json:"version"`
	// Revision is the VCS commit, empty if unknown.
	Revision string `json:"revision,omitempty"`
	// Modified reports uncommitted changes in the tree it was built from.
	Modified bool `json:"modified,omitempty"`
	// GoVersion is the toolchain that built it.
	GoVersion string `json:"goVersion"`
}

// Read returns the running binary's build information.
func Read() Info {
	bi, _ := debug.ReadBuildInfo()
	return fromBuildInfo(bi, version, revision)
}

// fromBuildInfo combines the toolchain's record with the -X overrides; bi
// may be nil (a binary built without module support).
func fromBuildInfo(bi *debug.BuildInfo, xVersion, xRevision string) Info {
	in := Info{Version: "dev", GoVersion: runtime.Version()}
	if bi != nil {
		in.GoVersion = bi.GoVersion
		// "(devel)" is what a build from a checkout records: no release.
		if v := bi.Main.Version; v != "" && v != "(devel)" {
			in.Version = v
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				in.Revision = s.Value
			case "vcs.modified":
				in.Modified = s.Value == "true"
			}
		}
	}
	if xVersion != "" {
		in.Version = xVersion
	}
	if xRevision != "" {
		in.Revision = xRevision
	}
	return in
}

// String is the one-line form every binary prints for --version:
// "meshd v0.3.0 (commit 0123abcd…, modified) go1.26.8".
func (in Info) String(program string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", program, in.Version)
	switch {
	case in.Revision != "" && in.Modified:
		fmt.Fprintf(&b, " (commit %s, modified)", in.Revision)
	case in.Revision != "":
		fmt.Fprintf(&b, " (commit %s)", in.Revision)
	case in.Modified:
		b.WriteString(" (modified)")
	}
	fmt.Fprintf(&b, " %s", in.GoVersion)
	return b.String()
}
