//go:build unix

package inputfile

import (
	"bytes"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// within runs f and fails the test if it does not return in time: the
// failures this package prevents are reads that never return.
func within(t *testing.T, d time.Duration, f func() ([]byte, error)) ([]byte, error) {
	t.Helper()
	type result struct {
		data []byte
		err  error
	}
	done := make(chan result, 1)
	go func() {
		data, err := f()
		done <- result{data, err}
	}()
	select {
	case r := <-done:
		return r.data, r.err
	case <-time.After(d):
		t.Fatalf("still reading after %v", d)
		return nil, nil
	}
}

func TestReadRegular(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "catalog.yaml")
	want := bytes.Repeat([]byte("services: []\n"), 1000)
	if err := os.WriteFile(p, want, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, limit := range []int64{int64(len(want)), 1 << 20} {
		got, err := Read(p, limit)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("Read(limit %d) = %d bytes, %v; want %d bytes", limit, len(got), err, len(want))
		}
	}
	// A symlink to a regular file is followed (a ConfigMap volume is made
	// of them).
	link := filepath.Join(dir, "link.yaml")
	if err := os.Symlink(p, link); err != nil {
		t.Fatal(err)
	}
	if got, err := Read(link, DefaultMaxSize); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("Read(symlink) = %d bytes, %v", len(got), err)
	}
	empty := filepath.Join(dir, "empty.yaml")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := Read(empty, 0); err != nil || len(got) != 0 {
		t.Fatalf("Read(empty, limit 0) = %q, %v", got, err)
	}
	if _, err := Read(p, 0); !errors.Is(err, ErrTooLarge) || !Refused(err) {
		t.Fatalf("Read(limit 0) = %v, want ErrTooLarge", err)
	}
	if _, err := Read(filepath.Join(dir, "missing"), DefaultMaxSize); !errors.Is(err, fs.ErrNotExist) || Refused(err) {
		t.Fatalf("Read(missing) = %v, want fs.ErrNotExist", err)
	}
}

func TestReadTooLarge(t *testing.T) {
	p := filepath.Join(t.TempDir(), "big.yaml")
	if err := os.WriteFile(p, make([]byte, 3<<20+1), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Read(p, 3<<20)
	var se *SizeError
	if !errors.Is(err, ErrTooLarge) || !errors.As(err, &se) || se.Size != 3<<20+1 || se.Limit != 3<<20 {
		t.Fatalf("Read = %v, want a SizeError of 3145729 bytes over 3 MiB", err)
	}
	if want := "file too large: 3145729 bytes, more than 3 MiB, the limit (--max-file-size)"; err.Error() != want {
		t.Errorf("message %q, want %q", err, want)
	}
}

// TestReadAtMostStopsAtTheLimit covers files whose stat size is wrong: one
// that grows while it is read, or one in /proc (size 0, content unbounded).
func TestReadAtMostStopsAtTheLimit(t *testing.T) {
	for _, size := range []int64{0, 10, 4000} {
		f := fileOf(t, 5000)
		_, err := readAtMost(f, size, 4096)
		var se *SizeError
		if !errors.As(err, &se) || se.Size != -1 || se.Limit != 4096 {
			t.Errorf("stat size %d: readAtMost = %v, want a SizeError of unknown size", size, err)
		}
		if off, _ := f.Seek(0, 1); off != 4097 {
			t.Errorf("stat size %d: read %d bytes, want limit+1 = 4097", size, off)
		}
		f = fileOf(t, 4096)
		if data, err := readAtMost(f, size, 4096); err != nil || len(data) != 4096 {
			t.Errorf("stat size %d: a file at the limit: %d bytes, %v", size, len(data), err)
		}
	}
}

func fileOf(t *testing.T, n int) *os.File {
	t.Helper()
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, bytes.Repeat([]byte("x"), n), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// TestReadRefusesNonRegular: every kind of file that is not a regular one is
// refused at once, with the kind named.
func TestReadRefusesNonRegular(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo.yaml")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "sock.yaml")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	zero := filepath.Join(dir, "zero.yaml")
	if err := os.Symlink("/dev/zero", zero); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ path, want string }{
		{fifo, "not a regular file: a named pipe (FIFO)"},
		{sock, "not a regular file: a socket"},
		{zero, "not a regular file: a symlink to /dev/zero, a character device"},
		{"/dev/zero", "not a regular file: a character device"},
		{dir, "not a regular file: a directory"},
	} {
		_, err := within(t, 5*time.Second, func() ([]byte, error) { return Read(tc.path, DefaultMaxSize) })
		if !errors.Is(err, ErrNotRegular) || !Refused(err) || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("Read(%s) = %v, want %q…", tc.path, err, tc.want)
		}
	}
}

// TestOpenAndReadRefusesFIFO: a named pipe swapped in between the first
// check and the open neither blocks the open nor is read.
func TestOpenAndReadRefusesFIFO(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "catalog.yaml")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := within(t, 5*time.Second, func() ([]byte, error) { return openAndRead(fifo, 1<<20) })
	if !errors.Is(err, ErrNotRegular) {
		t.Fatalf("openAndRead(FIFO) = %v, want ErrNotRegular", err)
	}
}

func TestParseAndFormatSize(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "4096": 4096, "16MiB": 16 << 20, " 16 MiB ": 16 << 20, "1GiB": 1 << 30, "3B": 3, "2KiB": 2048} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "-1", "16MB", "1.5MiB", "x", "9999999999TiB"} {
		if _, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) accepted", in)
		}
	}
	for n, want := range map[int64]string{16 << 20: "16 MiB", 3 << 10: "3 KiB", 1536: "1536 B", 1000: "1000 B", 1 << 40: "1 TiB", 0: "0 B"} {
		if got := FormatSize(n); got != want {
			t.Errorf("FormatSize(%d) = %q, want %q", n, got, want)
		}
		if back, err := ParseSize(FormatSize(n)); err != nil || back != n {
			t.Errorf("ParseSize(FormatSize(%d)) = %d, %v", n, back, err)
		}
	}
}

func TestSizeFlag(t *testing.T) {
	s := Size(DefaultMaxSize)
	if s.String() != "16 MiB" {
		t.Errorf("String() = %q", s.String())
	}
	if err := s.Set("64MiB"); err != nil || s != 64<<20 {
		t.Errorf("Set(64MiB) = %v, %d", err, s)
	}
	for _, bad := range []string{"0", "-1", "lots"} {
		if err := s.Set(bad); err == nil {
			t.Errorf("Set(%q) accepted", bad)
		}
	}
	if s != 64<<20 {
		t.Errorf("a refused Set changed the value to %d", s)
	}
}
