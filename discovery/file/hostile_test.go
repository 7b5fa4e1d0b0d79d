//go:build unix

package file

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshd/meshd/internal/hostile"
)

// bigJSONCatalog is a valid JSON catalog of about size bytes, one service
// per line, and the line of service i.
func bigJSONCatalog(size int) (data []byte, line func(i int) int) {
	var b strings.Builder
	b.WriteString("{\"services\": [\n")
	for i := 0; b.Len() < size; i++ {
		if i > 0 {
			b.WriteString(",\n")
		}
		fmt.Fprintf(&b, `  {"name": "svc-%d", "protocol": "http", "endpoints": [{"address": "10.1.%d.%d", "port": 8080}, {"address": "10.2.%d.%d", "port": 8080}]}`,
			i, i/250%250, i%250, i/250%250, i%250)
	}
	b.WriteString("\n]}\n")
	return []byte(b.String()), func(i int) int { return i + 2 }
}

// TestWatcherRefusesHostileFiles puts issue 13's hostile files, one after
// the other, at the path of a catalog being served. Each must be refused
// within hostile.Refuse's bounds (under a second of CPU, the heap bounded),
// with an error naming the file and the problem, and the last good catalog
// still served; a good catalog written afterwards must be served (a named
// pipe used to block the watcher forever, so that later edits were
// ignored).
//
// Not parallel: it measures the whole process.
func TestWatcherRefusesHostileFiles(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "catalog.yaml")
	writeFile(t, path, catalogYAML("10.0.0.1"))
	w, logs := startWatcher(t, path, noPoll, WithHoldoff(10*time.Millisecond))

	jsonCatalog, jsonLine := bigJSONCatalog(1100 << 10)
	const dupService = 2000
	dupJSON := strings.Replace(string(jsonCatalog), fmt.Sprintf(`"name": "svc-%d", "protocol": "http"`, dupService),
		fmt.Sprintf(`"name": "svc-%d", "protocol": "http", "protocol": "tcp"`, dupService), 1)
	if dupJSON == string(jsonCatalog) {
		t.Fatal("the JSON catalog has no service to repeat a key in")
	}
	if _, err := Parse("c.json", jsonCatalog); err != nil {
		t.Fatalf("the JSON catalog without the repeated key: %v", err)
	}

	cases := []hostile.Case{
		{
			Name: "a mapping of 64,000 keys",
			Put:  func() { hostile.PutFile(t, path, labelsCatalog(64000)) },
			Size: int64(len(labelsCatalog(64000))),
			Want: []string{path + ": line 7: too many keys in services[0].endpoints[0].labels: 64000, more than the 256 one mapping may have; see docs/catalog.md"},
		},
		{
			Name: "a JSON mapping of 64,000 keys, one repeated",
			Put:  func() { hostile.PutFile(t, path, labelsCatalogJSONKeys(64000, true)) },
			Size: int64(len(labelsCatalogJSONKeys(64000, true))),
			Want: []string{
				path + ": line 1: too many keys in services[0].endpoints[0].labels: 64001, more than the 256 one mapping may have",
				path + `: line 64002: field "k0" appears twice in services[0].endpoints[0].labels (first at line 2): keep one`,
			},
		},
		{
			Name: "a 1.1 MB JSON catalog with one repeated key",
			Put:  func() { hostile.PutFile(t, path, []byte(dupJSON)) },
			Size: int64(len(dupJSON)),
			Want: []string{fmt.Sprintf(`%s: line %d: field "protocol" appears twice in service (services[%d]) (first at line %[2]d): keep one`,
				path, jsonLine(dupService), dupService)},
		},
	}
	cases = append(cases, hostile.Unreadable(t, path, "cannot read catalog")...)
	watched := hostile.Watcher{
		Rejected:  func() uint64 { return w.Status().Rejected },
		LastError: func() string { return w.Status().LastError },
		Logs:      logs.String,
		Serving:   func() any { return w.Current() },
	}
	for i, tc := range cases {
		hostile.Refuse(t, tc, watched)
		assertNoUpdate(t, w)

		// The watcher is not stuck: the next good catalog is served.
		next := fmt.Sprintf("10.0.9.%d", i)
		hostile.PutFile(t, path, []byte(catalogYAML(next)))
		if got := apiAddr(nextUpdate(t, w)); got != next {
			t.Fatalf("after %s: update has api at %s, want %s", tc.Name, got, next)
		}
		if st := w.Status(); st.LastError != "" {
			t.Errorf("after %s and a good catalog: LastError = %q", tc.Name, st.LastError)
		}
	}
}

// TestNewWatcherRefusesHostileFiles: at start-up the same files are refused
// at once, and meshd does not start (rather than hang on a pipe or read
// /dev/zero until it is killed).
func TestNewWatcherRefusesHostileFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo.yaml")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	zero := filepath.Join(dir, "zero.yaml")
	if err := os.Symlink("/dev/zero", zero); err != nil {
		t.Fatal(err)
	}
	small := filepath.Join(dir, "small.yaml")
	writeFile(t, small, catalogYAML("10.0.0.1"))
	for _, tc := range []struct {
		path string
		opts []Option
		want string
	}{
		{fifo, nil, fifo + ": cannot read catalog: not a regular file: a named pipe (FIFO)"},
		{zero, nil, zero + ": cannot read catalog: not a regular file: a symlink to /dev/zero, a character device"},
		{small, []Option{WithMaxSize(100)}, small + ": cannot read catalog: file too large: "},
	} {
		done := make(chan error, 1)
		go func() {
			_, err := NewWatcher(tc.path, nil, tc.opts...)
			done <- err
		}()
		select {
		case err := <-done:
			if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
				t.Errorf("NewWatcher(%s) = %v, want %q…", tc.path, err, tc.want)
			}
		case <-time.After(hostile.Wait):
			t.Fatalf("NewWatcher(%s) still running after %v", tc.path, hostile.Wait)
		}
	}
}
