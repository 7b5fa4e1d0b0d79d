package main

import (
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"

	"github.com/meshd/meshd/internal/testwait"
)

// The SDS socket hands out the private key: from the moment its path
// exists it is 0600 (never the umask's mode), it serves, and it is gone
// after shutdown.
func TestSDSSocketIsPrivateFromTheStart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sds.sock")
	a := &agent{log: slog.New(slog.DiscardHandler), cache: cachev3.NewSnapshotCache(false, oneNode{}, nil)}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- a.serveSDS(ctx, path) }()
	// Watch the path as closely as a client could: the first time it
	// exists, its mode must already be 0600.
	deadline := time.Now().Add(testwait.Timeout)
	for {
		fi, err := os.Stat(path)
		if err == nil {
			if m := fi.Mode(); m&fs.ModeSocket == 0 || m.Perm() != 0o600 {
				t.Fatalf("socket first seen with mode %v, want a 0600 socket", m)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no socket at %s: %v", path, err)
		}
	}
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
	if _, err := os.Stat(path + ".new"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("temporary socket left behind: %v", err)
	}
}
