// Package startline learns the addresses a meshd process bound from its
// "meshd started" log line. Whoever starts meshd (the e2e tests, xds-load)
// passes --xds-listen 127.0.0.1:0 and --admin-listen 127.0.0.1:0, so the
// kernel picks free ports and no port is chosen, released and raced for,
// then waits for the line with Wait.
//
// meshd's output goes straight to its log file (the file is its stdout and
// stderr), never through a pipe the starter copies: tests read that file
// right after an action and must find every line meshd wrote before it.
// So the line is looked for in the file.
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
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"
)

// Message is the log message that carries the bound addresses.
const Message = "meshd started"

// Wait reads the log file at path until it holds the start line (after
// offset: a restarted meshd appends to its log), and returns the addresses.
// It gives up when exited is closed (the process ended), when ctx is done,
// or after timeout.
func Wait(ctx context.Context, path string, offset int64, exited <-chan struct{}, timeout time.Duration) (xds, admin string, err error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	poll := time.Millisecond
	for {
		b, err := os.ReadFile(path)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return "", "", fmt.Errorf("reading meshd's log: %w", err)
		}
		if int64(len(b)) > offset {
			if xds, admin, ok := Scan(b[offset:]); ok {
				return xds, admin, nil
			}
		}
		select {
		case <-exited:
			return "", "", fmt.Errorf("meshd exited before logging %q; see %s", Message, path)
		case <-ctx.Done():
			return "", "", fmt.Errorf("meshd did not log %q within %v: %w; see %s", Message, timeout, ctx.Err(), path)
		case <-time.After(poll):
			poll = min(2*poll, 50*time.Millisecond)
		}
	}
}

// Scan returns the addresses from the first start line among the complete
// lines of log (an unfinished last line is not read: it may be cut short).
func Scan(log []byte) (xds, admin string, ok bool) {
	for {
		i := bytes.IndexByte(log, '\n')
		if i < 0 {
			return "", "", false
		}
		if xds, admin, ok := Parse(log[:i]); ok {
			return xds, admin, true
		}
		log = log[i+1:]
	}
}

// Parse reads the addresses from one line of meshd's log, text or JSON; ok
// is false for any other line, or if either address is not host:port with
// a port other than 0.
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
