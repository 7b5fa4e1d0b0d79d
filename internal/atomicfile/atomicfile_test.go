package atomicfile

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// Write replaces the path with a new file: an existing file's mode and
// inode are not reused (os.WriteFile would write a secret into an older
// world-readable file), the umask does not decide the mode, and nothing is
// left behind.
func TestWriteReplacesFileWithItsOwnMode(t *testing.T) {
	old := syscall.Umask(0o077) // would strip 0640's group bit without the explicit chmod
	defer syscall.Umask(old)
	dir := t.TempDir()
	for _, perm := range []os.FileMode{0o600, 0o640} {
		path := filepath.Join(dir, "secret")
		_ = os.Remove(path)
		if err := os.WriteFile(path, []byte("old"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, 0o644); err != nil {
			t.Fatal(err)
		}
		link := path + ".old"
		_ = os.Remove(link)
		if err := os.Link(path, link); err != nil {
			t.Fatal(err)
		}
		if err := Write(path, []byte("new"), perm); err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != perm {
			t.Errorf("mode %04o, want %04o", fi.Mode().Perm(), perm)
		}
		if b, _ := os.ReadFile(path); string(b) != "new" {
			t.Errorf("content %q, want new", b)
		}
		oldFI, err := os.Stat(link)
		if err != nil {
			t.Fatal(err)
		}
		if os.SameFile(fi, oldFI) {
			t.Error("the old inode was written in place")
		}
		if b, _ := os.ReadFile(link); !bytes.Equal(b, []byte("old")) || oldFI.Mode().Perm() != 0o644 {
			t.Errorf("the old file changed: %q %04o", b, oldFI.Mode().Perm())
		}
	}
	if err := Write(filepath.Join(dir, "missing", "f"), []byte("x"), 0o600); err == nil || !strings.Contains(err.Error(), "check the directory exists") {
		t.Errorf("write into a missing directory: %v", err)
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Errorf("temporary file %s left behind", e.Name())
		}
	}
}
