package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"

	"github.com/meshd/meshd/internal/testwait"
)

// The SDS socket hands out the private key: no socket that serves it can
// be reached by another user at any moment (a client that connects while
// the mode is the umask's stays connected after a chmod), it serves, and
// it is gone after shutdown with nothing left beside it.
func TestSDSSocketIsPrivateFromTheStart(t *testing.T) {
	// A directory others may enter, as /run/meshd usually is (t.TempDir's
	// is private already, which would hide the problem).
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "sds.sock")
	a := &agent{log: slog.New(slog.DiscardHandler), cache: cachev3.NewSnapshotCache(false, oneNode{}, nil)}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- a.serveSDS(ctx, path) }()
	// Watch the directory as closely as a client could: every socket in it,
	// or in a directory under it, is either 0600 or in a directory only
	// its owner may enter (tests run as root, who can look inside anyway).
	deadline := time.Now().Add(testwait.Timeout)
	for {
		if bad := reachableSockets(t, dir); bad != "" {
			t.Fatal(bad)
		}
		if _, err := os.Stat(path); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("no socket at %s: %v", path, err)
		}
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode()&fs.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket at %s: %v, %v; want a 0600 socket", path, fi.Mode(), err)
	}
	// The private directory it was made in goes right after the rename
	// into place, so it may still be seen for a moment.
	testwait.For(t, testwait.Timeout, "the socket alone in its directory", func() bool {
		if bad := reachableSockets(t, dir); bad != "" {
			t.Fatal(bad)
		}
		entries, _ := os.ReadDir(dir)
		return len(entries) == 1 && entries[0].Name() == "sds.sock"
	})
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("dialling the socket: %v", err)
	}
	c.Close()
	cancel()
	if err := testwait.Recv(t, served, testwait.Timeout, "return from serveSDS after cancel"); err != nil {
		t.Errorf("serveSDS: %v", err)
	}
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket left behind after shutdown: %v", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("left behind after shutdown: %v", entries)
	}
}

// reachableSockets describes a socket under dir (one level of directories
// deep) that another user could connect to: not 0600, in a directory that
// others may enter. Entries that vanish while it looks are skipped.
func reachableSockets(t *testing.T, dir string) string {
	t.Helper()
	var check func(d string, depth int) string
	check = func(d string, depth int) string {
		entries, err := os.ReadDir(d)
		if err != nil {
			return ""
		}
		dfi, err := os.Stat(d)
		if err != nil {
			return ""
		}
		for _, e := range entries {
			p := filepath.Join(d, e.Name())
			fi, err := os.Lstat(p)
			if err != nil {
				continue
			}
			switch {
			case fi.Mode()&fs.ModeSocket != 0 && fi.Mode().Perm() != 0o600 && dfi.Mode().Perm()&0o077 != 0:
				return fmt.Sprintf("socket %s has mode %v in %s (mode %v), which others may enter", p, fi.Mode(), d, dfi.Mode())
			case fi.IsDir() && depth > 0:
				if bad := check(p, depth-1); bad != "" {
					return bad
				}
			}
		}
		return ""
	}
	return check(dir, 1)
}

// A socket whose temporary path (in a directory beside it) would not fit
// Linux's limit is refused with a message that says so, and leaves nothing.
func TestSDSSocketPathTooLong(t *testing.T) {
	// A directory of 95 bytes: the socket's own path (102 bytes) fits,
	// the temporary one beside it does not.
	dir := filepath.Join(t.TempDir(), "d")
	dir += strings.Repeat("d", 95-len(dir))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "s.sock")
	if _, err := listenPrivate(path); err == nil || !strings.Contains(err.Error(), "too long for a Unix socket") {
		t.Fatalf("listenPrivate(%d-byte path) = %v, want the length named", len(path), err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("left behind: %v", entries)
	}
}
