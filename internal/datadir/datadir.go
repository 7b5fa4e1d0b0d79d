// Package datadir decides where meshd keeps its state (the CA's keys and
// the token signing key) by default, for meshd and meshctl alike, and
// checks a data directory for places where those keys could be published.
//
// The default is outside any working directory: a data directory under the
// directory a user runs meshd from is under whatever that directory is — a
// git work tree a `git add -A` commits, a folder a static file server or a
// demo app serves, a container build context.
package datadir

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// Default is meshd's data directory when --data-dir is not given:
// $XDG_STATE_HOME/meshd, else ~/.local/state/meshd (the XDG base directory
// specification's place for state a program keeps between runs). It fails
// only when neither XDG_STATE_HOME (absolute) nor the home directory is
// known.
func Default() (string, error) {
	return defaultFrom(os.Getenv("XDG_STATE_HOME"), os.UserHomeDir)
}

func defaultFrom(xdgState string, home func() (string, error)) (string, error) {
	// The specification says a relative XDG_STATE_HOME is invalid and must
	// be ignored.
	if xdgState != "" && filepath.IsAbs(xdgState) {
		return filepath.Join(xdgState, "meshd"), nil
	}
	h, err := home()
	if err != nil || h == "" {
		return "", errors.New("no default data directory: neither XDG_STATE_HOME nor HOME is set; give --data-dir")
	}
	return filepath.Join(h, ".local", "state", "meshd"), nil
}

// DefaultOr is Default, or fallback when there is none (for a flag's
// default shown in --help; the command then reports the missing value).
func DefaultOr(fallback string) string {
	d, err := Default()
	if err != nil {
		return fallback
	}
	return d
}

// Check returns a warning for each way dir's keys could reach someone they
// should not: dir readable, writable or searchable by group or others, or
// dir inside a git work tree. A missing dir gives none (meshd creates it
// with mode 0700).
func Check(dir string) []string {
	var warnings []string
	abs, err := filepath.Abs(dir)
	if err != nil {
		return []string{fmt.Sprintf("data directory %s: %v", dir, err)}
	}
	if real, err := filepath.EvalSymlinks(abs); err == nil {
		abs = real
	}
	fi, err := os.Stat(abs)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return []string{fmt.Sprintf("data directory %s: %v", abs, err)}
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		warnings = append(warnings, fmt.Sprintf("data directory %s has mode %04o: other users can list or reach the CA and token keys kept there; run chmod 700 %s", abs, perm, abs))
	}
	if wt := gitWorkTree(abs); wt != "" {
		warnings = append(warnings, fmt.Sprintf("data directory %s is inside the git work tree %s: a git add, a file server or a container build started there can publish the CA and token keys; keep it elsewhere (the default is %s)", abs, wt, DefaultOr("$XDG_STATE_HOME/meshd")))
	}
	return warnings
}

// gitWorkTree returns the work tree holding dir (the nearest ancestor, dir
// included, with a .git directory or file), or "".
func gitWorkTree(dir string) string {
	for d := dir; ; {
		if _, err := os.Lstat(filepath.Join(d, ".git")); err == nil {
			return d
		}
		parent := filepath.Dir(d)
		if parent == d {
			return ""
		}
		d = parent
	}
}
