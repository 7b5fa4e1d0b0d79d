// Package inputfile reads the files meshd is configured from (the catalog,
// the policy files) with the checks a long-running daemon needs from a path
// it does not control. The path must lead to a regular file (a symlink is
// followed, so a Kubernetes ConfigMap volume works), and the file must not be
// larger than a limit. Without these checks a named pipe left at the catalog
// path blocked the watcher forever (later edits ignored while /readyz said
// ready), a symlink to /dev/zero got meshd OOM-killed, and a 64 MiB file
// made it peak at 530 MB (issue 13).
package inputfile

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// DefaultMaxSize is the size limit used when none is configured. The largest
// catalog meshd is measured with (docs/performance.md, scenario L: 10,000
// proxies, 1,000 services × 10 endpoints) is 6.4 MB as YAML and 5.3 MB as
// JSON; 16 MiB leaves room for about 25,000 proxies while bounding what one
// file can cost to parse (about 8 bytes of memory per byte of YAML).
const DefaultMaxSize int64 = 16 << 20

var (
	// ErrTooLarge is wrapped by the error for a file over the size limit.
	ErrTooLarge = errors.New("file too large")
	// ErrNotRegular is wrapped by the error for a path that is not, or does
	// not lead to, a regular file.
	ErrNotRegular = errors.New("not a regular file")
)

// Refused reports whether err is Read refusing a file (too large, or not a
// regular file) rather than failing to read it: a problem with what is at
// the path, which a watcher counts as a rejected input.
func Refused(err error) bool {
	return errors.Is(err, ErrTooLarge) || errors.Is(err, ErrNotRegular)
}

// SizeError is the error for a file over the size limit.
type SizeError struct {
	// Size is the file's size, or -1 when it is not known (the file grew
	// while it was read, or it is one whose stat size says nothing, such as
	// a file in /proc).
	Size  int64
	Limit int64
}

func (e *SizeError) Error() string {
	if e.Size < 0 {
		return fmt.Sprintf("%v: more than %s, the limit (--max-file-size)", ErrTooLarge, FormatSize(e.Limit))
	}
	return fmt.Sprintf("%v: %s bytes, more than %s, the limit (--max-file-size)", ErrTooLarge, strconv.FormatInt(e.Size, 10), FormatSize(e.Limit))
}

// Is makes errors.Is(err, ErrTooLarge) true.
func (e *SizeError) Is(target error) bool { return target == ErrTooLarge }

// Read returns the content of the file at path. It refuses, without reading
// them, a path that leads to anything but a regular file (a named pipe, a
// device, a socket, a directory) and a file larger than maxSize bytes; it
// never reads more than maxSize+1 bytes, so a file that grows while it is read, or one whose size a stat
// does not tell, costs at most that much. It never blocks on a named pipe:
// the path is opened non-blocking and checked again once open, so a pipe
// swapped in between the first check and the open is refused too.
//
// Errors from the file system are returned as they come (*fs.PathError,
// so errors.Is(err, fs.ErrNotExist) works); the others wrap ErrNotRegular
// or are a *SizeError, and do not repeat the path.
func Read(path string, maxSize int64) ([]byte, error) {
	maxSize = max(maxSize, 0)
	// Stat first: opening a named pipe for reading waits for a writer, and
	// a socket cannot be opened at all, so both get a clear error here.
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if err := check(path, fi, maxSize); err != nil {
		return nil, err
	}
	return openAndRead(path, maxSize)
}

// openAndRead is Read after the first check: it must be safe alone, because
// the path can change between that check and the open.
func openAndRead(path string, maxSize int64) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|nonBlock, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	// What counts is the file now open: the path may have been replaced
	// since the stat.
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if err := check(path, fi, maxSize); err != nil {
		return nil, err
	}
	return readAtMost(f, fi.Size(), maxSize)
}

// check refuses what Read does not read.
func check(path string, fi fs.FileInfo, maxSize int64) error {
	if !fi.Mode().IsRegular() {
		what := describe(fi.Mode())
		if lfi, err := os.Lstat(path); err == nil && lfi.Mode()&fs.ModeSymlink != 0 {
			if target, err := filepath.EvalSymlinks(path); err == nil {
				what = "a symlink to " + target + ", " + what
			}
		}
		return fmt.Errorf("%w: %s; give the path of a regular file (or of a symlink to one)", ErrNotRegular, what)
	}
	if fi.Size() > maxSize {
		return &SizeError{Size: fi.Size(), Limit: maxSize}
	}
	return nil
}

// describe names a file type the way ls and stat(1) users know it.
func describe(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&fs.ModeNamedPipe != 0:
		return "a named pipe (FIFO)"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeCharDevice != 0:
		return "a character device"
	case m&fs.ModeDevice != 0:
		return "a block device"
	}
	return "not a regular file (mode " + m.String() + ")"
}

// readAtMost reads f to its end, or fails once it has read more than
// maxSize bytes. size is what a stat said, used only to size the buffer.
func readAtMost(f *os.File, size, maxSize int64) ([]byte, error) {
	// One read more than a file whose stat size is exact, so that the end
	// is seen without growing the buffer.
	n := min(max(size, 511), maxSize) + 1
	data := make([]byte, 0, n)
	for {
		if len(data) == cap(data) {
			data = append(data, 0)[:len(data)]
		}
		room := min(int64(cap(data)-len(data)), maxSize+1-int64(len(data)))
		m, err := f.Read(data[len(data) : len(data)+int(room)])
		data = data[:len(data)+m]
		if int64(len(data)) > maxSize {
			return nil, &SizeError{Size: -1, Limit: maxSize}
		}
		if errors.Is(err, io.EOF) {
			return data, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

// units are the suffixes of a size written for people, largest first: those
// of GOMEMLIMIT, so that one spelling works for every size meshd takes.
var units = []struct {
	suffix string
	bytes  int64
}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}}

// FormatSize writes a byte count with the largest unit that divides it
// ("16 MiB"), as ParseSize reads it back.
func FormatSize(n int64) string {
	for _, u := range units {
		if n >= u.bytes && n%u.bytes == 0 {
			return strconv.FormatInt(n/u.bytes, 10) + " " + u.suffix
		}
	}
	return strconv.FormatInt(n, 10) + " B"
}

// ParseSize reads a non-negative byte count written as a number with an
// optional unit B, KiB, MiB, GiB or TiB ("900MiB", "16 MiB", "4096"), the
// spelling of GOMEMLIMIT.
func ParseSize(s string) (int64, error) {
	s = strings.TrimSpace(s)
	num, mult := s, int64(1)
	for _, u := range units {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			num, mult = strings.TrimSpace(n), u.bytes
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || n > math.MaxInt64/mult {
		return 0, fmt.Errorf("%q: use a byte count with an optional unit B, KiB, MiB, GiB or TiB (e.g. 16MiB)", s)
	}
	return n * mult, nil
}

// Size is a size limit as a command-line flag (flag.Value): written as
// ParseSize reads it, printed as FormatSize writes it, and more than 0.
type Size int64

func (s *Size) String() string { return FormatSize(int64(*s)) }

// Type names the value in help texts that show one (spf13/pflag).
func (s *Size) Type() string { return "size" }

func (s *Size) Set(v string) error {
	n, err := ParseSize(v)
	if err == nil && n == 0 {
		err = fmt.Errorf("%q: a limit of 0 bytes would refuse every file", v)
	}
	if err != nil {
		return err
	}
	*s = Size(n)
	return nil
}
