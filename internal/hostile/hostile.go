// Package hostile makes the hostile inputs of issue 13 for tests of meshd's
// file inputs (the catalog, the policy directory): mappings with tens of
// thousands of keys, and things at a file's path that are not files.
package hostile

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/internal/costtest"
	"github.com/meshd/meshd/internal/race"
	"github.com/meshd/meshd/internal/testwait"
)

// Keys is a block mapping of n keys "k0: v" … at the given indentation, one
// per line.
func Keys(indent, n int) string {
	var b strings.Builder
	pad := strings.Repeat(" ", indent)
	for i := range n {
		fmt.Fprintf(&b, "%sk%d: v\n", pad, i)
	}
	return b.String()
}

// JSONKeys is the members of a JSON object of n keys, "k0": "v" …, one per
// line (the first on the line after the brace), and, if repeat, a last
// member repeating "k0". The repeated key is then on line n+2 of the object
// and its first appearance on line 2.
func JSONKeys(n int, repeat bool) string {
	var b strings.Builder
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "\n  \"k%d\": \"v\"", i)
	}
	if repeat {
		b.WriteString(",\n  \"k0\": \"again\"")
	}
	b.WriteByte('\n')
	return b.String()
}

// The Put functions make something at path+".new" and rename it onto path,
// as deployment tools replace files, so that a watcher sees one atomic
// change.

// PutFile writes content to path.
func PutFile(t testing.TB, path string, content []byte) {
	t.Helper()
	put(t, path, func(tmp string) error { return os.WriteFile(tmp, content, 0o644) })
}

// PutSparse puts a file of size bytes that takes no disk space (zeros).
func PutSparse(t testing.TB, path string, size int64) {
	t.Helper()
	put(t, path, func(tmp string) error {
		f, err := os.Create(tmp)
		if err != nil {
			return err
		}
		if err := f.Truncate(size); err != nil {
			f.Close()
			return err
		}
		return f.Close()
	})
}

// PutDevZero puts a symlink to /dev/zero, which reads as endless zeros.
func PutDevZero(t testing.TB, path string) {
	t.Helper()
	put(t, path, func(tmp string) error { return os.Symlink("/dev/zero", tmp) })
}

func put(t testing.TB, path string, make func(tmp string) error) {
	t.Helper()
	tmp := path + ".new"
	_ = os.Remove(tmp)
	if err := make(tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// CPU is how much CPU time refusing one hostile input may cost: under a
// second (issue 13, where one cost 12.7 s), ten under the race detector,
// which makes yaml.v3 about ten times slower. CPU time rather than wall
// time, so that a busy machine does not fail a test; Wait bounds the wall
// time, generously, to catch a watcher that hangs.
var (
	CPU  = map[bool]time.Duration{false: time.Second, true: 10 * time.Second}[race.Enabled]
	Wait = 4 * CPU
)

// Case is one hostile input for a watcher.
type Case struct {
	Name string
	// Put places it where the watcher reads.
	Put func()
	// Size is the size of what Put wrote when the watcher must read it to
	// refuse it, or 0 when it must refuse it without reading it.
	Size int64
	// Want are texts the watcher's error must hold (and its log, with
	// quotes escaped as slog's text handler writes them).
	Want []string
}

// Watcher is what Refuse looks at.
type Watcher struct {
	Rejected  func() uint64
	LastError func() string
	Logs      func() string
	// Serving is what the watcher serves (a pointer), which a refused file
	// must leave as it is.
	Serving func() any
}

// Refuse puts c and waits until w counts it as rejected. It fails t unless
// that cost less than CPU of CPU time and the heap grew by less than 4 MiB
// (nothing read) or 64 bytes per byte of c.Size (what yaml.v3's node tree
// takes for a file of one-line keys, with room), and w's error and log hold
// every c.Want, and what w serves is what it served before.
func Refuse(t *testing.T, c Case, w Watcher) {
	t.Helper()
	rejected, serving := w.Rejected(), w.Serving()
	var took time.Duration
	use := costtest.Measure(func() {
		start := time.Now()
		c.Put()
		testwait.For(t, Wait, c.Name+" to be refused", func() bool { return w.Rejected() != rejected })
		took = time.Since(start)
	})
	t.Logf("%s: refused in %v (%v of CPU), heap +%.1f MiB at most, %.1f MiB allocated", c.Name, took.Round(time.Millisecond),
		use.CPU.Round(time.Millisecond), float64(use.Peak)/(1<<20), float64(use.Allocated)/(1<<20))
	if use.CPU > CPU {
		t.Errorf("%s: refusing it cost %v of CPU, want under %v", c.Name, use.CPU, CPU)
	}
	maxHeap := uint64(4 << 20)
	if c.Size > 0 {
		maxHeap = 64 * uint64(c.Size)
	}
	if use.Peak > maxHeap {
		t.Errorf("%s: the heap grew by %d bytes, want at most %d", c.Name, use.Peak, maxHeap)
	}
	if w.Serving() != serving {
		t.Errorf("%s: what the watcher serves changed", c.Name)
	}
	if n := w.Rejected(); n != rejected+1 {
		t.Errorf("%s: Rejected went from %d to %d, want one more", c.Name, rejected, n)
	}
	last, logs := w.LastError(), w.Logs()
	for _, want := range c.Want {
		if !strings.Contains(last, want) {
			t.Errorf("%s: the error is %.600q, want it to hold %q", c.Name, last, want)
		}
		if !strings.Contains(logs, strings.ReplaceAll(want, `"`, `\"`)) {
			t.Errorf("%s: not logged: %q", c.Name, want)
		}
	}
}
