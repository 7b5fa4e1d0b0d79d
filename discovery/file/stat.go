package file

import (
	"os"
	"time"
)

// fileState is what a stat says about a file's content: the file itself
// (device and inode), its size, and its modification and change times. A
// write changes the change time even when it restores the size and the
// modification time, and a replacement (rename, ConfigMap swap) changes the
// file.
type fileState struct {
	info         os.FileInfo
	size         int64
	mtime, ctime time.Time
}

// statFile stats path (following symlinks); ok is false if it cannot.
func statFile(path string) (fileState, bool) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileState{}, false
	}
	return fileState{info: fi, size: fi.Size(), mtime: fi.ModTime(), ctime: changeTime(fi)}, true
}

// same reports whether two stats describe the same, unchanged file.
func (a fileState) same(b fileState) bool {
	return a.info != nil && b.info != nil && os.SameFile(a.info, b.info) &&
		a.size == b.size && a.mtime.Equal(b.mtime) && a.ctime.Equal(b.ctime)
}
