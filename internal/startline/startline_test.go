package startline

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The line as meshd's slog handlers write it, in both formats.
func logged(t *testing.T, json bool) []byte {
	t.Helper()
	var b bytes.Buffer
	var h slog.Handler = slog.NewTextHandler(&b, nil)
	if json {
		h = slog.NewJSONHandler(&b, nil)
	}
	l := slog.New(h)
	l.Info("watching the catalog", "path", "/tmp/a b/catalog.yaml", "xds", "not this one")
	l.Info(Message, "xds", "127.0.0.1:43121", "admin", "127.0.0.1:40557",
		"catalog", "/tmp/with space/catalog.yaml", "trust_domain", "cluster.local", "services", 6)
	l.Info("after", "xds", "127.0.0.1:1")
	return b.Bytes()
}

func TestScanFindsTheLine(t *testing.T) {
	for _, json := range []bool{false, true} {
		out := logged(t, json)
		x, a, ok := Scan(out)
		if !ok || x != "127.0.0.1:43121" || a != "127.0.0.1:40557" {
			t.Errorf("json=%v: Scan = %q, %q, %v in:\n%s", json, x, a, ok, out)
		}
	}
}

func TestScanIgnoresOtherLines(t *testing.T) {
	log := strings.Join([]string{
		`time=x level=INFO msg="meshd starting" xds=127.0.0.1:1 admin=127.0.0.1:2`,
		`time=x level=INFO msg="meshd started" xds=127.0.0.1:0 admin=127.0.0.1:2`, // not bound
		`time=x level=INFO msg="meshd started" admin=127.0.0.1:2`,
		`{"msg":"meshd started","xds":"nonsense","admin":"127.0.0.1:2"}`,
		`{"msg":"other","xds":"127.0.0.1:1","admin":"127.0.0.1:2"}`,
		`meshd: --catalog is required`,
		// Complete only once its newline is written.
		`time=x level=INFO msg="meshd started" xds=127.0.0.1:5 admin=127.0.0.1:6`,
	}, "\n")
	if x, a, ok := Scan([]byte(log)); ok {
		t.Fatalf("found %q %q in lines that are not a complete start line", x, a)
	}
	if x, a, ok := Scan([]byte(log + "\n")); !ok || x != "127.0.0.1:5" || a != "127.0.0.1:6" {
		t.Errorf("Scan = %q, %q, %v", x, a, ok)
	}
}

// Wait finds the line written after it started looking, past the offset
// (a restart appends to the log), and stops when the process exits.
func TestWait(t *testing.T) {
	path := filepath.Join(t.TempDir(), "meshd.log")
	first := logged(t, false)
	if err := os.WriteFile(path, first, 0o644); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		time.Sleep(20 * time.Millisecond) // the restarted process logs a little later
		f, _ := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
		f.WriteString(`time=y level=INFO msg="meshd started" xds=127.0.0.1:7 admin=127.0.0.1:8` + "\n")
		f.Close()
	}()
	x, a, err := Wait(context.Background(), path, int64(len(first)), exited, 10*time.Second)
	if err != nil || x != "127.0.0.1:7" || a != "127.0.0.1:8" {
		t.Errorf("Wait = %q, %q, %v; want the restart's addresses", x, a, err)
	}
	close(exited)
	if _, _, err := Wait(context.Background(), path, 1<<20, exited, 10*time.Second); err == nil || !strings.Contains(err.Error(), "exited") {
		t.Errorf("Wait after exit = %v, want an error saying meshd exited", err)
	}
	if _, _, err := Wait(context.Background(), path, 1<<20, nil, 50*time.Millisecond); err == nil || !strings.Contains(err.Error(), "within 50ms") {
		t.Errorf("Wait with no line = %v, want a timeout", err)
	}
}
