//go:build unix

package hostile

import (
	"syscall"
	"testing"
)

// PutFIFO puts a named pipe, which nothing ever writes to.
func PutFIFO(t testing.TB, path string) {
	t.Helper()
	put(t, path, func(tmp string) error { return syscall.Mkfifo(tmp, 0o644) })
}
