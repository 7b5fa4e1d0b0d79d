//go:build unix

package policy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/internal/hostile"
	"github.com/meshd/meshd/internal/inputfile"
	"github.com/meshd/meshd/internal/testwait"
)

// TestWatcherRefusesHostileFiles puts issue 13's hostile files, one after
// the other, in a policy directory being served. Each must be refused
// within hostile.Refuse's bounds (under a second of CPU, the heap bounded),
// with an error naming the file and the problem, and the policy in force
// kept; once it is gone, an edit must still be picked up.
//
// Not parallel: it measures the whole process.
func TestWatcherRefusesHostileFiles(t *testing.T) {
	dir := t.TempDir()
	a := filepath.Join(dir, "a.yaml")
	writeFiles(t, dir, map[string]string{"a.yaml": allowYAML("a", "cluster.local/ns/prod/sa/v0")})
	w, logs := startWatcher(t, dir, WithPollInterval(0), WithHoldoff(10*time.Millisecond))

	bad := filepath.Join(dir, "b.yaml")
	// 64,000 unknown fields: before issue 13, 15 s of CPU and a 12 MB error.
	big := []byte(policyYAML("AuthorizationPolicy", "prod", "b") + "spec:\n" + hostile.Keys(2, 64000))
	cases := []hostile.Case{
		{
			Name: "a mapping of 64,000 keys",
			Put:  func() { hostile.PutFile(t, bad, big) },
			Size: int64(len(big)),
			Want: []string{bad + ":5: document 1: spec: too many keys: 64000, more than the 256 a mapping may have; see docs/policy.md"},
		},
	}
	cases = append(cases, hostile.Unreadable(t, bad, "cannot read policy file")...)
	watched := hostile.Watcher{
		Rejected:  func() uint64 { return w.Status().Rejected },
		LastError: func() string { return w.Status().LastError },
		Logs:      logs.String,
		Serving:   func() any { return w.Current() },
	}
	for i, tc := range cases {
		hostile.Refuse(t, tc, watched)
		testwait.Quiet(t, w.Updates(), tc.Name+": policy update")

		// Gone again, the directory holds the policy in force; and the
		// watcher is not stuck: an edit is picked up.
		if err := os.Remove(bad); err != nil {
			t.Fatal(err)
		}
		testwait.For(t, testwait.Timeout, "the error to clear", func() bool { return w.Status().LastError == "" })
		principal := "cluster.local/ns/prod/sa/v" + string(rune('1'+i))
		replace(t, a, allowYAML("a", principal))
		if got := principalOf(nextUpdate(t, w), "a"); got != principal {
			t.Fatalf("after %s: principal %q, want %q", tc.Name, got, principal)
		}
	}
}

// TestReadFilesLimitsTheSet: the size limit is for the policy files
// together, since they are held and parsed as one set.
func TestReadFilesLimitsTheSet(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"a.yaml": strings.Repeat("#", 600),
		"b.yaml": strings.Repeat("#", 600),
		"c.yaml": strings.Repeat("#", 600),
	})
	if files, err := readDir(dir, 1800); err != nil || len(files) != 3 {
		t.Fatalf("three files at the limit: %d files, %v", len(files), err)
	}
	_, err := readDir(dir, 1000)
	want := filepath.Join(dir, "b.yaml") + ": cannot read policy file: file too large: with the files before it, the policy files hold more than 1000 B, the limit for all of them together (--max-file-size)"
	if err == nil || err.Error() != want || !inputfile.Refused(err) {
		t.Fatalf("over the limit together: %v, want %q", err, want)
	}
	_, err = readDir(dir, 500)
	want = filepath.Join(dir, "a.yaml") + ": cannot read policy file: file too large: 600 bytes, more than 500 B, the limit (--max-file-size)"
	if err == nil || err.Error() != want {
		t.Fatalf("one file over the limit: %v, want %q", err, want)
	}
	if _, err := NewWatcher(dir, "", "", nil, WithMaxSize(1000)); err == nil || !strings.Contains(err.Error(), "the limit for all of them together") {
		t.Errorf("NewWatcher over the limit: %v", err)
	}
}
