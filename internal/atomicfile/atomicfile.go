// Package atomicfile replaces files so that readers (meshd's watchers,
// proxies reading certificate files) see the old content or the complete
// new one, never a partial write.
package atomicfile

import (
	"fmt"
	"os"
	"path/filepath"
)

// Write writes data to path via a temp file in the same directory
// (rename is atomic only within one file system) that is chmod-ed, written
// and fsynced before the rename, so readers see the old file or the complete
// new one, with the final permissions from the first byte.
func Write(path string, data []byte, perm os.FileMode) (err error) {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: create temp file: %w (check the directory exists and is writable)", path, err)
	}
	tmpName := tmp.Name()
	defer func() {
		if err != nil {
			_ = tmp.Close()
			_ = os.Remove(tmpName)
		}
	}()
	// Explicit chmod: CreateTemp uses 0600 and the umask must not decide a
	// key file's mode.
	if err := tmp.Chmod(perm); err != nil {
		return fmt.Errorf("write %s: chmod temp file: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("write %s: sync: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: close: %w", path, err)
	}
	if err := os.Rename(tmpName, path); err != nil {
		return fmt.Errorf("write %s: rename into place: %w", path, err)
	}
	// Persist the rename itself, so a crash cannot leave the old file (or
	// none) after we reported success. Best effort: not every platform
	// can fsync a directory.
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}
