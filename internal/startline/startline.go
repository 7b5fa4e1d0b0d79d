// Package startline learns the addresses a meshd process bound from its
// "meshd started" log line, as the process writes it. Whoever starts meshd
// (the e2e tests, xds-load) passes --xds-listen 127.0.0.1:0 and
// --admin-listen 127.0.0.1:0, so the kernel picks free ports and no port
// is chosen, released and raced for, then tees meshd's output through a
// Watcher and waits for Started.
//
// The line is meshd's (cmd/meshd logs it once both listeners are bound):
//
//	time=… level=INFO msg="meshd started" xds=127.0.0.1:43121 admin=127.0.0.1:40557 …
//
// or, with --log-format json, {"msg":"meshd started","xds":"…","admin":"…",…}.
// Changing its message or the xds and admin attributes breaks this package
// (its tests and the e2e tests say so).
package startline

import (
	"bytes"
	"encoding/json"
	"net"
	"strings"
	"sync"
)

// Message is the log message that carries the bound addresses.
const Message = "meshd started"

// Watcher is an io.Writer for a meshd process's output (stdout and stderr
// together) that notices the start line. It is safe for concurrent writes.
type Watcher struct {
	mu         sync.Mutex
	partial    []byte // an unfinished last line
	xds, admin string
	started    chan struct{}
}

// New returns a Watcher that has seen nothing yet.
func New() *Watcher { return &Watcher{started: make(chan struct{})} }

// Write scans p for complete lines; it never fails, so meshd's output keeps
// flowing to the other writers it is teed to.
func (w *Watcher) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.xds != "" {
		return len(p), nil // found already: nothing more to learn
	}
	w.partial = append(w.partial, p...)
	for {
		i := bytes.IndexByte(w.partial, '\n')
		if i < 0 {
			break
		}
		line := w.partial[:i]
		w.partial = w.partial[i+1:]
		if xds, admin, ok := Parse(line); ok {
			w.xds, w.admin = xds, admin
			w.partial = nil
			close(w.started)
			break
		}
	}
	// A line longer than any meshd writes at start: drop it rather than
	// grow without bound.
	if len(w.partial) > 1<<16 {
		w.partial = nil
	}
	return len(p), nil
}

// Started is closed once the start line has been seen.
func (w *Watcher) Started() <-chan struct{} { return w.started }

// Addrs returns the xDS and admin addresses (host:port) from the start
// line, or empty strings before Started is closed.
func (w *Watcher) Addrs() (xds, admin string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.xds, w.admin
}

// Parse reads the addresses from one line of meshd's log, text or JSON; ok
// is false for any other line, or if either address is not host:port.
func Parse(line []byte) (xds, admin string, ok bool) {
	line = bytes.TrimSpace(line)
	if len(line) > 0 && line[0] == '{' {
		var rec struct{ Msg, XDS, Admin string }
		if json.Unmarshal(line, &rec) != nil || rec.Msg != Message {
			return "", "", false
		}
		xds, admin = rec.XDS, rec.Admin
	} else {
		s := string(line)
		if !strings.Contains(s, ` msg="`+Message+`" `) && !strings.HasPrefix(s, `msg="`+Message+`" `) {
			return "", "", false
		}
		xds, admin = textAttr(s, "xds"), textAttr(s, "admin")
	}
	if !hostPort(xds) || !hostPort(admin) {
		return "", "", false
	}
	return xds, admin, true
}

// textAttr returns the value of key=value in a slog text line (addresses
// are never quoted: they hold no spaces, quotes or equals signs).
func textAttr(line, key string) string {
	for f := range strings.FieldsSeq(line) {
		if v, ok := strings.CutPrefix(f, key+"="); ok {
			return v
		}
	}
	return ""
}

func hostPort(s string) bool {
	_, port, err := net.SplitHostPort(s)
	return err == nil && port != "" && port != "0"
}
