//go:build unix

package hostile

import (
	"syscall"
	"testing"

	"github.com/meshd/meshd/internal/inputfile"
)

// PutFIFO puts a named pipe, which nothing ever writes to.
func PutFIFO(t testing.TB, path string) {
	t.Helper()
	put(t, path, func(tmp string) error { return syscall.Mkfifo(tmp, 0o644) })
}

// Unreadable are the cases every file input must refuse without reading:
// a file over inputfile's default size limit, a named pipe and a symlink to
// /dev/zero, each put at path. Their errors are expected to start with the
// path and then reading, e.g. "cannot read catalog".
func Unreadable(t testing.TB, path, reading string) []Case {
	prefix := path + ": " + reading + ": "
	return []Case{
		{
			Name: "a file over the size limit",
			Put:  func() { PutSparse(t, path, inputfile.DefaultMaxSize+1) },
			Want: []string{prefix + "file too large: 16777217 bytes, more than 16 MiB, the limit (--max-file-size)"},
		},
		{
			Name: "a named pipe",
			Put:  func() { PutFIFO(t, path) },
			Want: []string{prefix + "not a regular file: a named pipe (FIFO)"},
		},
		{
			Name: "a symlink to /dev/zero",
			Put:  func() { PutDevZero(t, path) },
			Want: []string{prefix + "not a regular file: a symlink to /dev/zero, a character device"},
		},
	}
}
