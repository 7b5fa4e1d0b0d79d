package file

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshd/meshd/internal/hostile"
	"github.com/meshd/meshd/internal/inputfile"
	"github.com/meshd/meshd/internal/testwait"
	"github.com/meshd/meshd/mesh"
)

// catalogYAML is a small valid catalog whose api endpoint address varies, so
// that each version is recognisable in an update.
func catalogYAML(apiAddr string) string {
	return fmt.Sprintf(`services:
  - name: web
    protocol: http
    endpoints:
      - address: 10.0.0.10
        port: 15001
  - name: api
    protocol: http
    endpoints:
      - address: %s
        port: 15001
proxies:
  - service: web
    address: 10.0.0.10
    publicPort: 15001
    appPort: 8080
    upstreams:
      - service: api
        localPort: 9001
`, apiAddr)
}

func apiAddr(c *mesh.Catalog) string {
	s := c.Service(mesh.ServiceKey{Namespace: "default", Name: "api"})
	if s == nil || len(s.Endpoints) == 0 {
		return ""
	}
	return s.Endpoints[0].Address
}

func sha(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// syncBuffer collects log output written from the watcher's goroutine.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// noPoll makes a test prove that file-system events alone see the change.
var noPoll = WithPollInterval(0)

// startWatcher creates a watcher on path, runs it until the test ends, and
// returns once Run is watching (its first check has completed).
func startWatcher(t *testing.T, path string, opts ...Option) (*Watcher, *syncBuffer) {
	t.Helper()
	logs := &syncBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	w, err := NewWatcher(path, logger, opts...)
	if err != nil {
		t.Fatalf("NewWatcher: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	loaded := w.Status().CheckedAt
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v, want nil after cancel", err)
			}
		case <-time.After(testwait.Timeout):
			t.Error("Run did not return after its context was cancelled")
		}
		if t.Failed() {
			t.Logf("watcher logs:\n%s", logs.String())
		}
	})
	waitChecked(t, w, loaded)
	return w, logs
}

// waitChecked waits until the watcher has read the file after since.
func waitChecked(t *testing.T, w *Watcher, since time.Time) {
	t.Helper()
	testwait.For(t, testwait.Timeout, "the watcher to read the file", func() bool { return w.Status().CheckedAt.After(since) })
}

// nextUpdate waits for an update and returns it.
func nextUpdate(t *testing.T, w *Watcher) *mesh.Catalog {
	t.Helper()
	return testwait.Recv(t, w.Updates(), testwait.Timeout, "catalog update")
}

func assertNoUpdate(t *testing.T, w *Watcher) {
	t.Helper()
	select {
	case c := <-w.Updates():
		t.Fatalf("unexpected update (api at %s)", apiAddr(c))
	default:
	}
}

func newCatalogFile(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "catalog.yaml")
	writeFile(t, path, content)
	return path
}

func TestWatcherDeliversValidWrite(t *testing.T) {
	t.Parallel()
	path := newCatalogFile(t, catalogYAML("10.0.0.1"))
	w, logs := startWatcher(t, path, noPoll)
	if got := apiAddr(w.Current()); got != "10.0.0.1" {
		t.Fatalf("initial api address = %s", got)
	}

	writeFile(t, path, catalogYAML("10.0.0.2"))
	c := nextUpdate(t, w)
	if got := apiAddr(c); got != "10.0.0.2" {
		t.Errorf("update has api at %s, want 10.0.0.2", got)
	}
	if w.Current() != c {
		t.Error("Current() is not the catalog just delivered")
	}
	st := w.Status()
	if st.Accepted != 1 || st.Rejected != 0 || st.LastError != "" || st.SHA256 != sha(catalogYAML("10.0.0.2")) || st.Path != path {
		t.Errorf("status = %+v", st)
	}
	if !strings.Contains(logs.String(), "catalog reloaded") {
		t.Errorf("reload not logged:\n%s", logs)
	}
}

func TestWatcherKeepsPreviousCatalogOnInvalidEdit(t *testing.T) {
	t.Parallel()
	path := newCatalogFile(t, catalogYAML("10.0.0.1"))
	// Polling on, fast: re-reading the same bad file must not count it again.
	w, logs := startWatcher(t, path, WithPollInterval(20*time.Millisecond))
	before := w.Current()

	// Each edit replaces the file whole (write and rename): a poll every
	// 20 ms could otherwise read an in-place write half-way, an empty file
	// that is one more rejection (TestWatcherPartialWrite covers those).
	hostile.PutFile(t, path, []byte(strings.Replace(catalogYAML("10.0.0.2"), "protocol: http", "prot: http", 1)))
	testwait.For(t, testwait.Timeout, "the bad edit to be rejected", func() bool { return w.Status().Rejected == 1 })
	st := w.Status()
	wantErr := path + `: line 3: unknown field "prot" in service (services[0]); did you mean "protocol"?`
	if !strings.Contains(st.LastError, wantErr) {
		t.Errorf("LastError = %q, want it to contain %q", st.LastError, wantErr)
	}
	if w.Current() != before {
		t.Error("Current() changed after an invalid edit")
	}
	assertNoUpdate(t, w)
	out := logs.String()
	if !strings.Contains(out, "level=WARN") || !strings.Contains(out, "catalog rejected") || !strings.Contains(out, `unknown field \"prot\"`) {
		t.Errorf("rejection not logged as a warning with the error:\n%s", out)
	}

	// Several polls later the same content is still rejected just once.
	for range 3 {
		waitChecked(t, w, w.Status().CheckedAt)
	}
	if st := w.Status(); st.Rejected != 1 || st.LastError == "" {
		t.Errorf("after re-reading the same bad file: status = %+v, want Rejected 1 and the error kept", st)
	}
	if n := strings.Count(logs.String(), "catalog rejected"); n != 1 {
		t.Errorf("rejection logged %d times, want once", n)
	}

	hostile.PutFile(t, path, []byte(catalogYAML("10.0.0.3")))
	c := nextUpdate(t, w)
	if got := apiAddr(c); got != "10.0.0.3" {
		t.Errorf("update has api at %s, want 10.0.0.3", got)
	}
	if st := w.Status(); st.LastError != "" || st.Accepted != 1 || st.Rejected != 1 {
		t.Errorf("after the fix: status = %+v", st)
	}
}

func TestWatcherSeesRenameIntoPlace(t *testing.T) {
	t.Parallel()
	path := newCatalogFile(t, catalogYAML("10.0.0.1"))
	w, _ := startWatcher(t, path, noPoll)

	tmp := filepath.Join(filepath.Dir(path), ".catalog.yaml.tmp")
	writeFile(t, tmp, catalogYAML("10.0.0.2"))
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	if got := apiAddr(nextUpdate(t, w)); got != "10.0.0.2" {
		t.Errorf("update has api at %s, want 10.0.0.2", got)
	}

	// The watch survives the replacement: a second rename is seen too.
	writeFile(t, tmp, catalogYAML("10.0.0.3"))
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	if got := apiAddr(nextUpdate(t, w)); got != "10.0.0.3" {
		t.Errorf("second update has api at %s, want 10.0.0.3", got)
	}
}

// TestWatcherRenameSkipsHoldoff: a file renamed onto the catalog's name is
// complete, so it is read at once; an in-place write still waits for the
// holdoff (partial writes).
func TestWatcherRenameSkipsHoldoff(t *testing.T) {
	t.Parallel()
	const holdoff = 2 * time.Second // well inside testwait.Timeout
	path := newCatalogFile(t, catalogYAML("10.0.0.1"))
	w, _ := startWatcher(t, path, noPoll, WithHoldoff(holdoff))

	tmp := filepath.Join(filepath.Dir(path), ".catalog.yaml.tmp")
	writeFile(t, tmp, catalogYAML("10.0.0.2"))
	start := time.Now()
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	if got := apiAddr(nextUpdate(t, w)); got != "10.0.0.2" {
		t.Errorf("update has api at %s, want 10.0.0.2", got)
	}
	if took := time.Since(start); took > holdoff/2 {
		t.Errorf("a rename into place was read after %v, not at once (holdoff %v)", took, holdoff)
	}

	start = time.Now()
	writeFile(t, path, catalogYAML("10.0.0.3"))
	if got := apiAddr(nextUpdate(t, w)); got != "10.0.0.3" {
		t.Errorf("update has api at %s, want 10.0.0.3", got)
	}
	if took := time.Since(start); took < holdoff {
		t.Errorf("an in-place write was read after %v, before the %v holdoff", took, holdoff)
	}
}

func TestWatcherPartialWrite(t *testing.T) {
	t.Parallel()
	path := newCatalogFile(t, catalogYAML("10.0.0.1"))
	w, _ := startWatcher(t, path, noPoll)
	before := w.Current()

	full := catalogYAML("10.0.0.99")
	// Cut half-way through the new address: "address: 10.0." is invalid.
	cut := strings.Index(full, "10.0.0.99") + len("10.0.")
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(full[:cut]); err != nil {
		t.Fatal(err)
	}
	// Let the watcher read the half-written file before finishing it.
	testwait.For(t, testwait.Timeout, "the half-written file to be rejected", func() bool { return w.Status().Rejected >= 1 })
	if w.Current() != before {
		t.Fatal("a half-written file replaced the catalog")
	}
	assertNoUpdate(t, w)

	if _, err := f.WriteString(full[cut:]); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	c := nextUpdate(t, w)
	if got := apiAddr(c); got != "10.0.0.99" {
		t.Errorf("update has api at %s, want 10.0.0.99", got)
	}
	want, err := Parse(path, []byte(full))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Services()) != len(want.Services()) || len(c.Proxies()) != len(want.Proxies()) {
		t.Errorf("final catalog has %d services and %d proxies, want %d and %d",
			len(c.Services()), len(c.Proxies()), len(want.Services()), len(want.Proxies()))
	}
	if st := w.Status(); st.SHA256 != sha(full) || st.LastError != "" {
		t.Errorf("final status = %+v, want the full file's hash and no error", st)
	}
}

func TestWatcherDeleteAndRecreate(t *testing.T) {
	t.Parallel()
	path := newCatalogFile(t, catalogYAML("10.0.0.1"))
	w, logs := startWatcher(t, path, noPoll)
	before := w.Current()

	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, testwait.Timeout, "the deletion to be noticed", func() bool {
		return strings.Contains(w.Status().LastError, "no such file or directory")
	})
	if w.Current() != before {
		t.Error("Current() changed after the file was deleted")
	}
	if !strings.Contains(logs.String(), "catalog file is missing") {
		t.Errorf("deletion not logged:\n%s", logs)
	}
	assertNoUpdate(t, w)

	// Back with the content being served: nothing to deliver, error cleared.
	writeFile(t, path, catalogYAML("10.0.0.1"))
	testwait.For(t, testwait.Timeout, "the restored file to clear the error", func() bool { return w.Status().LastError == "" })
	assertNoUpdate(t, w)

	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, testwait.Timeout, "the second deletion to be noticed", func() bool { return w.Status().LastError != "" })
	writeFile(t, path, catalogYAML("10.0.0.2"))
	if got := apiAddr(nextUpdate(t, w)); got != "10.0.0.2" {
		t.Errorf("update has api at %s, want 10.0.0.2", got)
	}
}

func TestWatcherIgnoresIdenticalRewrite(t *testing.T) {
	t.Parallel()
	path := newCatalogFile(t, catalogYAML("10.0.0.1"))
	w, _ := startWatcher(t, path, noPoll)

	checked := w.Status().CheckedAt
	writeFile(t, path, catalogYAML("10.0.0.1"))
	waitChecked(t, w, checked)
	assertNoUpdate(t, w)
	if st := w.Status(); st.Accepted != 0 {
		t.Errorf("identical rewrite accepted: %+v", st)
	}

	// The next real change is the next update.
	writeFile(t, path, catalogYAML("10.0.0.2"))
	if got := apiAddr(nextUpdate(t, w)); got != "10.0.0.2" {
		t.Errorf("update has api at %s, want 10.0.0.2", got)
	}
	if st := w.Status(); st.Accepted != 1 {
		t.Errorf("Accepted = %d, want 1", st.Accepted)
	}
}

// TestWatcherKubernetesConfigMap replays how the kubelet updates a ConfigMap
// volume: catalog.yaml -> ..data/catalog.yaml, ..data -> ..<timestamp>, and
// an update swaps ..data atomically; catalog.yaml itself sees no event.
func TestWatcherKubernetesConfigMap(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	version := func(name, content string) {
		if err := os.Mkdir(filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(dir, name, "catalog.yaml"), content)
	}
	swap := func(name string) {
		tmp := filepath.Join(dir, "..data_tmp")
		if err := os.Symlink(name, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	version("..v1", catalogYAML("10.0.0.1"))
	if err := os.Symlink("..v1", filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "catalog.yaml")
	if err := os.Symlink(filepath.Join("..data", "catalog.yaml"), path); err != nil {
		t.Fatal(err)
	}
	w, _ := startWatcher(t, path, noPoll)

	version("..v2", catalogYAML("10.0.0.2"))
	swap("..v2")
	if err := os.RemoveAll(filepath.Join(dir, "..v1")); err != nil {
		t.Fatal(err)
	}
	if got := apiAddr(nextUpdate(t, w)); got != "10.0.0.2" {
		t.Errorf("update has api at %s, want 10.0.0.2", got)
	}

	version("..v3", catalogYAML("10.0.0.3"))
	swap("..v3")
	if got := apiAddr(nextUpdate(t, w)); got != "10.0.0.3" {
		t.Errorf("second update has api at %s, want 10.0.0.3", got)
	}
}

// TestWatcherSymlinkToAnotherDirectory edits the target of a symlink in
// place: the event happens in the target's directory, not the link's.
func TestWatcherSymlinkToAnotherDirectory(t *testing.T) {
	t.Parallel()
	real := filepath.Join(t.TempDir(), "real.yaml")
	writeFile(t, real, catalogYAML("10.0.0.1"))
	path := filepath.Join(t.TempDir(), "catalog.yaml")
	if err := os.Symlink(real, path); err != nil {
		t.Fatal(err)
	}
	w, _ := startWatcher(t, path, noPoll)

	writeFile(t, real, catalogYAML("10.0.0.2"))
	if got := apiAddr(nextUpdate(t, w)); got != "10.0.0.2" {
		t.Errorf("update has api at %s, want 10.0.0.2", got)
	}
}

func TestWatcherPollsWithoutEvents(t *testing.T) {
	t.Parallel()
	path := newCatalogFile(t, catalogYAML("10.0.0.1"))
	w, _ := startWatcher(t, path, WithPollInterval(20*time.Millisecond), func(w *Watcher) { w.notify = false })

	writeFile(t, path, catalogYAML("10.0.0.2"))
	if got := apiAddr(nextUpdate(t, w)); got != "10.0.0.2" {
		t.Errorf("update has api at %s, want 10.0.0.2", got)
	}
}

// The poll does not read a file that has not changed since it was read, but
// reads it after any write — even one that keeps its size and puts its
// modification time back (the change time still moves; Linux).
func TestWatcherPollReadsOnlyChangedFiles(t *testing.T) {
	t.Parallel()
	path := newCatalogFile(t, catalogYAML("10.0.0.1"))
	var reads atomic.Int64
	countReads := func(w *Watcher) {
		w.notify = false
		w.readFile = func(p string, n int64) ([]byte, error) { reads.Add(1); return inputfile.Read(p, n) }
	}
	const interval = 10 * time.Millisecond
	w, _ := startWatcher(t, path, WithPollInterval(interval), countReads)
	// The first poll reads once (the start-up load is not counted), then
	// the file is known. Wait for the watcher's own record of 20 polls.
	t0 := w.Status().CheckedAt
	testwait.For(t, testwait.Timeout, "20 polls", func() bool { return w.Status().CheckedAt.Sub(t0) >= 20*interval })
	if n := reads.Load(); n != 1 {
		t.Fatalf("%d reads in 20 polls of an unchanged file, want 1", n)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	next := catalogYAML("10.0.0.9")
	if len(next) != int(fi.Size()) {
		t.Fatalf("test catalogs differ in size: %d vs %d", len(next), fi.Size())
	}
	// Written in place (same inode, no truncation) and the time put back
	// at once, so that a poll in between is unlikely to see a different
	// modification time.
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte(next), 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(path, fi.ModTime(), fi.ModTime()); err != nil {
		t.Fatal(err)
	}
	if runtime.GOOS != "linux" {
		return // only Linux's change time tells this write apart
	}
	if got := apiAddr(nextUpdate(t, w)); got != "10.0.0.9" {
		t.Errorf("update has api at %s, want 10.0.0.9", got)
	}
	if n := reads.Load(); n < 2 {
		t.Errorf("%d reads, want the changed file read", n)
	}
}

func TestWatcherUpdatesKeepsOnlyTheLatest(t *testing.T) {
	path := newCatalogFile(t, catalogYAML("10.0.0.1"))
	w, err := NewWatcher(path, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	older, _ := Parse(path, []byte(catalogYAML("10.0.0.2")))
	newer, _ := Parse(path, []byte(catalogYAML("10.0.0.3")))
	done := make(chan struct{})
	go func() {
		// Nobody is reading: publish must not block.
		w.publish(older)
		w.publish(newer)
		close(done)
	}()
	testwait.Recv(t, done, testwait.Timeout, "return from publish with nobody reading (it must not block)")
	if got := <-w.Updates(); got != newer {
		t.Errorf("received the api at %s, want the newer catalog", apiAddr(got))
	}
	assertNoUpdate(t, w)
}

func TestNewWatcherRefusesBadCatalog(t *testing.T) {
	path := newCatalogFile(t, "services:\n  - name: web\n    endpoints:\n      - address: 10.0.0.1\n        port: 70000\n")
	_, err := NewWatcher(path, slog.New(slog.DiscardHandler))
	want := path + `: line 5: services[0] "web.default": field endpoints[0].port: 70000 is not a port: use 1-65535`
	if err == nil || err.Error() != want {
		t.Errorf("NewWatcher(invalid) = %v, want %q", err, want)
	}

	missing := filepath.Join(t.TempDir(), "catalog.yaml")
	if _, err := NewWatcher(missing, nil); err == nil || !strings.HasPrefix(err.Error(), missing+": cannot read catalog") {
		t.Errorf("NewWatcher(missing) = %v", err)
	}
}

func TestWatcherRunTwice(t *testing.T) {
	path := newCatalogFile(t, catalogYAML("10.0.0.1"))
	w, _ := startWatcher(t, path, noPoll)
	if err := w.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "already running") {
		t.Errorf("second concurrent Run = %v, want an error", err)
	}
}

// TestWatcherSettlesBeforeReading writes a burst of invalid intermediate
// versions, each sooner than the holdoff after the previous one but spanning
// several holdoffs in all. Since every write restarts the holdoff, only the
// final, valid version is read.
func TestWatcherSettlesBeforeReading(t *testing.T) {
	t.Parallel()
	const holdoff = 400 * time.Millisecond
	path := newCatalogFile(t, catalogYAML("10.0.0.1"))
	w, _ := startWatcher(t, path, noPoll, WithHoldoff(holdoff))

	var maxGap time.Duration
	last := time.Now()
	for i := range 25 { // 25 × 40 ms ≈ 2.5 holdoffs
		// Invalid: the endpoint has no port yet.
		writeFile(t, path, fmt.Sprintf("# draft %d\nservices:\n  - name: api\n    endpoints:\n      - address: 10.0.0.%d\n", i, i))
		now := time.Now()
		maxGap = max(maxGap, now.Sub(last))
		last = now
		time.Sleep(40 * time.Millisecond) // pacing only
	}
	writeFile(t, path, catalogYAML("10.0.0.2"))
	maxGap = max(maxGap, time.Since(last))
	if maxGap > holdoff/2 {
		t.Skipf("the machine paused %v between writes, too close to the %v holdoff for this test to mean anything", maxGap, holdoff)
	}
	if got := apiAddr(nextUpdate(t, w)); got != "10.0.0.2" {
		t.Errorf("update has api at %s, want 10.0.0.2", got)
	}
	if st := w.Status(); st.Rejected != 0 {
		t.Errorf("an intermediate version was read during the burst: %+v", st)
	}
}
