package startline

import (
	"bytes"
	"log/slog"
	"testing"
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

func TestWatcherFindsTheLine(t *testing.T) {
	for _, json := range []bool{false, true} {
		out := logged(t, json)
		w := New()
		// Written in small pieces, as a pipe may deliver it.
		for i := 0; i < len(out); i += 7 {
			w.Write(out[i:min(i+7, len(out))])
		}
		select {
		case <-w.Started():
		default:
			t.Fatalf("json=%v: start line not noticed in:\n%s", json, out)
		}
		if x, a := w.Addrs(); x != "127.0.0.1:43121" || a != "127.0.0.1:40557" {
			t.Errorf("json=%v: Addrs = %q, %q", json, x, a)
		}
	}
}

func TestWatcherIgnoresOtherLines(t *testing.T) {
	w := New()
	for _, l := range []string{
		`time=x level=INFO msg="meshd starting" xds=127.0.0.1:1 admin=127.0.0.1:2`,
		`time=x level=INFO msg="meshd started" xds=127.0.0.1:0 admin=127.0.0.1:2`, // not bound yet
		`time=x level=INFO msg="meshd started" admin=127.0.0.1:2`,
		`{"msg":"meshd started","xds":"nonsense","admin":"127.0.0.1:2"}`,
		`{"msg":"other","xds":"127.0.0.1:1","admin":"127.0.0.1:2"}`,
		`meshd: --catalog is required`,
	} {
		w.Write([]byte(l + "\n"))
	}
	// A start line is only read once it is complete.
	w.Write([]byte(`time=x level=INFO msg="meshd started" xds=127.0.0.1:5 admin=127.0.0.1:6`))
	select {
	case <-w.Started():
		x, a := w.Addrs()
		t.Fatalf("started on a line that is not a complete start line: %q %q", x, a)
	default:
	}
	w.Write([]byte("\n"))
	<-w.Started()
	if x, a := w.Addrs(); x != "127.0.0.1:5" || a != "127.0.0.1:6" {
		t.Errorf("Addrs = %q, %q", x, a)
	}
}
