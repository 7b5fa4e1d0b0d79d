package file

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/meshd/meshd/internal/inputfile"
	"github.com/meshd/meshd/internal/watchloop"
	"github.com/meshd/meshd/mesh"
)

const (
	// DefaultPollInterval is how often the file is re-read whatever the
	// file-system events say. Events can be lost (queue overflow, network
	// file systems, a watched directory replaced); the poll bounds how long
	// a change can go unseen.
	DefaultPollInterval = 5 * time.Second
	// DefaultHoldoff is how long the file must be quiet before it is read, so
	// that an editor's or a script's burst of writes is read once, complete.
	DefaultHoldoff = 100 * time.Millisecond
)

// Status describes the watcher for operators (an admin endpoint, a CLI).
type Status struct {
	// Path is the catalog file as configured.
	Path string `json:"path"`
	// LoadedAt is when the catalog being served was loaded.
	LoadedAt time.Time `json:"loadedAt"`
	// SHA256 is the hex SHA-256 of the file content being served.
	SHA256 string `json:"sha256"`
	// CheckedAt is when the file was last read, successfully or not.
	CheckedAt time.Time `json:"checkedAt"`
	// LastError is why the last read of the file was not used, or "" when
	// the file on disk is the catalog being served.
	LastError string `json:"lastError"`
	// Accepted counts reloads that replaced the catalog after the initial
	// load; Rejected counts distinct file contents that failed to parse or
	// validate (re-reading the same bad content does not count again), and
	// distinct refusals to read what is at the path: a file over the size
	// limit, or not a regular file.
	Accepted uint64 `json:"accepted"`
	Rejected uint64 `json:"rejected"`
}

// Option configures a Watcher.
type Option func(*Watcher)

// WithPollInterval sets how often the file is re-read as a safety net for
// lost file-system events (default DefaultPollInterval); d <= 0 turns
// polling off.
func WithPollInterval(d time.Duration) Option { return func(w *Watcher) { w.pollInterval = d } }

// WithHoldoff sets how long the file must be quiet after a change before it
// is read (default DefaultHoldoff).
func WithHoldoff(d time.Duration) Option { return func(w *Watcher) { w.holdoff = max(d, 0) } }

// WithMaxSize sets the largest catalog file read, in bytes (default
// inputfile.DefaultMaxSize); a larger one is refused without being read.
func WithMaxSize(n int64) Option { return func(w *Watcher) { w.maxSize = n } }

// Watcher serves the catalog in one file and follows its changes. A change
// that does not parse or validate is logged, counted and otherwise ignored:
// the last good catalog stays in place, because a proxy configured from a
// half-written file is worse than one configured from a stale one.
type Watcher struct {
	path         string // as configured, for messages
	abs          string // absolute and clean, for comparing with event names
	logger       *slog.Logger
	pollInterval time.Duration
	holdoff      time.Duration
	notify       bool // false only in tests of the polling fallback
	maxSize      int64
	readFile     func(path string, maxSize int64) ([]byte, error)

	updates chan *mesh.Catalog
	running atomic.Bool

	mu      sync.Mutex
	current *mesh.Catalog
	status  Status

	// Owned by the goroutine in Run (and NewWatcher before it).
	acceptedSum [sha256.Size]byte
	rejectedSum [sha256.Size]byte
	hasRejected bool
	readErr     string // the read failure last logged, so that it is logged once
	target      string // where abs resolved through symlinks at the last look; "" if it did not
	// read is the file's state when it was last read: a poll finding it
	// unchanged does not read and hash the whole file again (stat.go).
	read fileState
	// parser reuses the items of the last file read, so that an edit to
	// one service is not a full yaml.v3 parse of a large catalog
	// (incremental.go).
	parser incremental
}

// NewWatcher loads the file once and returns its error if it is invalid:
// meshd refuses to start on a bad catalog rather than start with none.
// A nil logger means slog.Default().
func NewWatcher(path string, logger *slog.Logger, opts ...Option) (*Watcher, error) {
	if logger == nil {
		logger = slog.Default()
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("%s: resolving catalog path: %w", path, err)
	}
	w := &Watcher{
		path:         path,
		abs:          abs,
		logger:       logger,
		pollInterval: DefaultPollInterval,
		maxSize:      inputfile.DefaultMaxSize,
		readFile:     inputfile.Read,
		holdoff:      DefaultHoldoff,
		notify:       true,
		updates:      make(chan *mesh.Catalog, 1),
	}
	for _, o := range opts {
		o(w)
	}
	data, err := readFile(path, w.maxSize)
	if err != nil {
		return nil, err
	}
	cat, err := w.parser.parse(path, data)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	w.acceptedSum = sha256.Sum256(data)
	w.current = cat
	w.status = Status{Path: path, LoadedAt: now, CheckedAt: now, SHA256: hex.EncodeToString(w.acceptedSum[:])}
	logger.Info("catalog loaded", "path", path, "sha256", w.status.SHA256,
		"services", len(cat.Services()), "proxies", len(cat.Proxies()))
	return w, nil
}

// Current returns the catalog being served: the last valid content of the file.
func (w *Watcher) Current() *mesh.Catalog {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.current
}

// Updates delivers each new valid catalog while Run runs. It has latest-value
// semantics: the channel holds at most one catalog, and a newer catalog
// replaces one the consumer has not taken yet, so a slow consumer never
// blocks the watcher and never sees a stale catalog after a fresh one. The
// channel is never closed.
func (w *Watcher) Updates() <-chan *mesh.Catalog { return w.updates }

// Status returns a snapshot of the watcher's state.
func (w *Watcher) Status() Status {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.status
}

// Run follows the file until ctx is done, then returns nil. It watches the
// file's parent directory rather than the file: editors, `mv tmp catalog.yaml`
// and Kubernetes ConfigMap updates all replace the file instead of writing
// it, which a watch on the file itself would not survive. Symlinks are
// re-resolved on every change in the directory, and the directory of the
// resolved file is watched too. If file-system events are unavailable, Run
// falls back to polling. Run must not be called concurrently with itself.
func (w *Watcher) Run(ctx context.Context) error {
	if !w.running.CompareAndSwap(false, true) {
		return errors.New("file: Watcher.Run is already running")
	}
	defer w.running.Store(false)
	w.resolve()
	return watchloop.Run(ctx, (*source)(w), watchloop.Options{
		Holdoff: w.holdoff, Poll: w.pollInterval, FallbackPoll: DefaultPollInterval,
		Notify: w.notify, Logger: w.logger, What: "catalog", Attrs: []any{"path", w.path},
	})
}

// source adapts the Watcher to watchloop without exporting the methods.
type source Watcher

// Check re-reads the file. It re-resolves symlinks first so that a poll
// also picks up a link that moved while an event was lost.
func (s *source) Check(trigger string) {
	w := (*Watcher)(s)
	w.resolve()
	w.check(trigger)
}

// Relevant reports whether an event in a watched directory may have changed
// what the catalog path reads as.
func (s *source) Relevant(ev fsnotify.Event) bool {
	w := (*Watcher)(s)
	previous := w.target
	// Any entry may be a link on the way to the file: Kubernetes updates a
	// ConfigMap volume by swapping a "..data" symlink, and the file's own
	// name sees no event at all. Re-resolving on every event also keeps the
	// watch on a symlink target's directory current.
	moved := w.resolve()
	name := filepath.Clean(ev.Name)
	return moved || name == w.abs || (previous != "" && name == previous)
}

// Dirs are the file's directory and, if the file is a symlink into another
// directory, that directory too (edits to the target file happen there).
func (s *source) Dirs() []string {
	w := (*Watcher)(s)
	parent := filepath.Dir(w.abs)
	dirs := []string{parent}
	if w.target != "" {
		dir := filepath.Dir(w.target)
		// The same directory reached through a symlinked path is one inotify
		// watch; adding it twice would only confuse event names.
		if real, err := filepath.EvalSymlinks(parent); err != nil || real != dir {
			dirs = append(dirs, dir)
		}
	}
	return dirs
}

// resolve re-evaluates the symlinks on the way to the file and reports
// whether the file now resolves somewhere else.
func (w *Watcher) resolve() bool {
	target, err := filepath.EvalSymlinks(w.abs)
	if err != nil {
		target = "" // missing for now; the parent directory's events will say when it is back
	}
	if target == w.target {
		return false
	}
	w.target = target
	return true
}

// check reads the file and, if it holds a new valid catalog, serves and
// publishes it.
func (w *Watcher) check(trigger string) {
	// The poll is a safety net for lost events: if the file is the one
	// last read and unchanged, reading and hashing all of it again (7.5 MB
	// every 5 s for 10,000 proxies) would only make garbage and CPU while
	// idle. Events always read. Stat before reading: a write in between
	// is then seen by the next poll, never missed.
	st, statOK := statFile(w.abs)
	if trigger == "poll" && statOK && st.same(w.read) {
		w.mu.Lock()
		w.status.CheckedAt = time.Now()
		w.mu.Unlock()
		return
	}
	data, err := w.readFile(w.abs, w.maxSize)
	now := time.Now()
	w.read = fileState{}
	if err == nil && statOK {
		w.read = st
	}
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		msg := fmt.Sprintf("%s: cannot read catalog: %v", w.path, err)
		// Logged once: the poll would otherwise repeat it every few seconds.
		// Logged before the status changes, so that whoever sees the status
		// can find the log line.
		refused := false
		if msg != w.readErr {
			w.readErr = msg
			switch {
			case errors.Is(err, fs.ErrNotExist):
				w.logger.Warn("catalog file is missing; still serving the previous catalog until it reappears",
					"path", w.path, "trigger", trigger)
			case inputfile.Refused(err):
				// Too large, or a pipe, a device, a directory: not a
				// catalog, and counted as a rejection (the metric), once.
				refused = true
				w.logger.Warn("catalog file refused; still serving the previous catalog",
					"path", w.path, "trigger", trigger, "error", msg)
			default:
				w.logger.Warn("cannot read the catalog file; still serving the previous catalog",
					"path", w.path, "trigger", trigger, "error", msg)
			}
		}
		w.mu.Lock()
		w.status.CheckedAt = now
		w.status.LastError = msg
		if refused {
			w.status.Rejected++
		}
		w.mu.Unlock()
		return
	}
	w.readErr = ""
	sum := sha256.Sum256(data)

	if sum == w.acceptedSum {
		// Nothing to serve. If the file was broken or missing before, the
		// operator has put back what is being served: say so once.
		w.hasRejected = false
		if w.Status().LastError != "" {
			w.logger.Info("catalog file is back to the catalog being served", "path", w.path, "sha256", hex.EncodeToString(sum[:]))
		}
		w.mu.Lock()
		w.status.CheckedAt = now
		w.status.LastError = ""
		w.mu.Unlock()
		return
	}
	if w.hasRejected && sum == w.rejectedSum {
		// Already rejected and logged; polling must not count it again.
		w.mu.Lock()
		w.status.CheckedAt = now
		w.mu.Unlock()
		return
	}

	cat, err := w.parser.parse(w.path, data)
	if err != nil {
		w.rejectedSum, w.hasRejected = sum, true
		w.logger.Warn("catalog rejected; still serving the previous catalog",
			"path", w.path, "trigger", trigger, "sha256", hex.EncodeToString(sum[:]),
			"serving_sha256", w.Status().SHA256, "error", err.Error())
		w.mu.Lock()
		w.status.CheckedAt = now
		w.status.LastError = err.Error()
		w.status.Rejected++
		w.mu.Unlock()
		return
	}

	w.acceptedSum, w.hasRejected = sum, false
	hash := hex.EncodeToString(sum[:])
	w.logger.Info("catalog reloaded", "path", w.path, "trigger", trigger, "sha256", hash,
		"services", len(cat.Services()), "proxies", len(cat.Proxies()))
	w.mu.Lock()
	w.current = cat
	w.status.LoadedAt = now
	w.status.CheckedAt = now
	w.status.SHA256 = hash
	w.status.LastError = ""
	w.status.Accepted++
	w.mu.Unlock()
	w.publish(cat)
}

// publish hands c to the consumer without ever blocking: if an older catalog
// is still waiting in the channel, it is replaced.
func (w *Watcher) publish(c *mesh.Catalog) {
	for {
		select {
		case w.updates <- c:
			return
		default:
		}
		select {
		case <-w.updates:
		default:
		}
	}
}
