package datadir

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDefault(t *testing.T) {
	home := func() (string, error) { return "/home/ann", nil }
	noHome := func() (string, error) { return "", errors.New("$HOME is not defined") }
	for _, tc := range []struct {
		xdg   string
		home  func() (string, error)
		want  string
		isErr bool
	}{
		{"/var/lib", home, "/var/lib/meshd", false},
		{"", home, "/home/ann/.local/state/meshd", false},
		// A relative XDG_STATE_HOME is invalid (XDG base directory spec).
		{"state", home, "/home/ann/.local/state/meshd", false},
		{"/srv/state", noHome, "/srv/state/meshd", false},
		{"", noHome, "", true},
	} {
		got, err := defaultFrom(tc.xdg, tc.home)
		if got != tc.want || (err != nil) != tc.isErr {
			t.Errorf("XDG_STATE_HOME=%q: %q, %v; want %q (error %v)", tc.xdg, got, err, tc.want, tc.isErr)
		}
	}
	t.Setenv("XDG_STATE_HOME", "/x/state")
	if d, err := Default(); d != "/x/state/meshd" || err != nil {
		t.Errorf("Default() = %q, %v", d, err)
	}
}

func TestCheck(t *testing.T) {
	base := t.TempDir() // no .git above it (os.TempDir is not in a work tree)
	private := filepath.Join(base, "private")
	if err := os.Mkdir(private, 0o700); err != nil {
		t.Fatal(err)
	}
	if w := Check(private); len(w) != 0 {
		t.Errorf("a 0700 directory outside any work tree: %q", w)
	}
	if w := Check(filepath.Join(base, "missing")); len(w) != 0 {
		t.Errorf("a missing directory (meshd creates it 0700): %q", w)
	}

	open := filepath.Join(base, "open")
	os.Mkdir(open, 0o700)
	os.Chmod(open, 0o755) // not subject to the umask
	if w := Check(open); len(w) != 1 || !strings.Contains(w[0], "mode 0755") || !strings.Contains(w[0], "chmod 700 "+open) {
		t.Errorf("a 0755 directory: %q", w)
	}

	// Inside a work tree, however deep, and through a symlink.
	repo := filepath.Join(base, "repo")
	state := filepath.Join(repo, "deploy", ".meshd")
	os.MkdirAll(filepath.Join(repo, ".git"), 0o755)
	os.MkdirAll(state, 0o700)
	link := filepath.Join(base, "link")
	if err := os.Symlink(state, link); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{state, link} {
		if w := Check(dir); len(w) != 1 || !strings.Contains(w[0], "inside the git work tree "+repo) {
			t.Errorf("%s: %q", dir, w)
		}
	}
	// A worktree or submodule has a .git file, not a directory.
	wt := filepath.Join(base, "worktree")
	os.MkdirAll(filepath.Join(wt, "data"), 0o700)
	os.WriteFile(filepath.Join(wt, ".git"), []byte("gitdir: /elsewhere\n"), 0o644)
	if w := Check(filepath.Join(wt, "data")); len(w) != 1 || !strings.Contains(w[0], wt) {
		t.Errorf("inside a worktree: %q", w)
	}
}
