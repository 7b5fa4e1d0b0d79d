package sds

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

// LockFileName is the lock file meshd holds in its data directory while it
// runs, so that a second meshd cannot share the directory (two CAs would
// rotate, retire and clean up each other's generations).
const LockFileName = "meshd.lock"

// ErrDataDirLocked is returned by LoadOrCreate when another process holds
// the data directory.
var ErrDataDirLocked = errors.New("data directory in use")

// dataDirLock is an exclusive advisory lock (flock) on DataDir/meshd.lock,
// which also records the holder's pid for the error the next process shows.
// The kernel drops it when the process exits, however it exits (SIGKILL
// included), so a crash never leaves a stale lock behind.
type dataDirLock struct {
	path string
	f    *os.File
	refs int
}

// Locks are per process: a second LoadOrCreate of the same directory in one
// process (tests, meshctl helpers) shares the first one's lock instead of
// failing against itself. The guarantee is between processes.
var (
	locksMu sync.Mutex
	locks   = map[string]*dataDirLock{}
)

// lockDataDir takes the lock on dir, creating dir (0700) if needed.
func lockDataDir(dir string) (*dataDirLock, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("data directory %s: %w", dir, err)
	}
	locksMu.Lock()
	defer locksMu.Unlock()
	if l := locks[abs]; l != nil {
		l.refs++
		return l, nil
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return nil, fmt.Errorf("create data directory %s: %w (check that it is writable)", abs, err)
	}
	path := filepath.Join(abs, LockFileName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock file %s: %w", path, err)
	}
	if err := flock(f); err != nil {
		_ = f.Close()
		holder := "another process"
		if b, rerr := os.ReadFile(path); rerr == nil {
			if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); perr == nil && pid > 0 {
				holder = "process " + strconv.Itoa(pid)
			}
		}
		return nil, fmt.Errorf("%w: %s is held by %s (lock file %s): stop that meshd first, or give this one its own --data-dir (%v)",
			ErrDataDirLocked, abs, holder, path, err)
	}
	// Record our pid for whoever finds the directory locked. Written after
	// the lock is held, so a reader never sees a pid that does not hold it
	// (at worst an empty file during these two calls).
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	l := &dataDirLock{path: abs, f: f, refs: 1}
	locks[abs] = l
	return l, nil
}

// release drops one reference; the last one unlocks and closes the file
// (the file stays: removing it would let two processes lock two different
// inodes under the same name).
func (l *dataDirLock) release() {
	if l == nil {
		return
	}
	locksMu.Lock()
	defer locksMu.Unlock()
	if l.refs--; l.refs > 0 {
		return
	}
	delete(locks, l.path)
	_ = l.f.Close()
}
