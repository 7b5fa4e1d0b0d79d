package buildinfo

import (
	"runtime"
	"runtime/debug"
	"testing"
)

func TestFromBuildInfo(t *testing.T) {
	checkout := &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"},
		Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "0123abcd"}, {Key: "vcs.modified", Value: "true"}}}
	installed := &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v0.3.0"}}
	for _, tc := range []struct {
		name     string
		bi       *debug.BuildInfo
		xv, xr   string
		want     Info
		wantLine string
	}{
		{"checkout with local changes", checkout, "", "",
			Info{Version: "dev", Revision: "0123abcd", Modified: true, GoVersion: "go1.26.8"},
			"meshd dev (commit 0123abcd, modified) go1.26.8"},
		{"go install module@version", installed, "", "",
			Info{Version: "v0.3.0", GoVersion: "go1.26.8"},
			"meshd v0.3.0 go1.26.8"},
		{"-ldflags -X wins over the toolchain's record", checkout, "v0.4.0", "fedcba98",
			Info{Version: "v0.4.0", Revision: "fedcba98", Modified: true, GoVersion: "go1.26.8"},
			"meshd v0.4.0 (commit fedcba98, modified) go1.26.8"},
		{"no build info at all", nil, "", "",
			Info{Version: "dev", GoVersion: runtime.Version()},
			"meshd dev " + runtime.Version()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := fromBuildInfo(tc.bi, tc.xv, tc.xr)
			if got != tc.want {
				t.Errorf("fromBuildInfo = %+v, want %+v", got, tc.want)
			}
			if line := got.String("meshd"); line != tc.wantLine {
				t.Errorf("String = %q, want %q", line, tc.wantLine)
			}
		})
	}
}

// The test binary itself has build info: Read must report the toolchain
// that built it.
func TestReadRunningBinary(t *testing.T) {
	in := Read()
	if in.GoVersion != runtime.Version() {
		t.Errorf("GoVersion %q, want %q", in.GoVersion, runtime.Version())
	}
	if in.Version == "" {
		t.Error("empty Version")
	}
}
