package policy

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/meshd/meshd/internal/inputfile"
	"github.com/meshd/meshd/internal/watchloop"
	"github.com/meshd/meshd/mesh"
)

const (
	// DefaultPollInterval is how often the directory is re-read whatever the
	// file-system events say: events can be lost (queue overflow, network
	// file systems, a directory replaced), and the poll bounds how long a
	// change can go unseen.
	DefaultPollInterval = 5 * time.Second
	// DefaultHoldoff is how long the directory must be quiet before it is
	// read, so that a burst of writes (an editor, `cp *.yaml`, a ConfigMap
	// swap) is read once, complete.
	DefaultHoldoff = 100 * time.Millisecond
)

// Status describes the watcher for operators (an admin endpoint, a CLI).
type Status struct {
	// Dir is the policy directory as configured.
	Dir string `json:"dir"`
	// Files are the files of the policy set being served.
	Files []string `json:"files"`
	// PeerAuthentications and AuthorizationPolicies count the policies
	// being served.
	PeerAuthentications   int `json:"peerAuthentications"`
	AuthorizationPolicies int `json:"authorizationPolicies"`
	// Linkerd counts Linkerd's resources (and Namespace documents) by kind.
	Linkerd map[string]int `json:"linkerd,omitempty"`
	// LoadedAt is when the set being served was loaded.
	LoadedAt time.Time `json:"loadedAt"`
	// SHA256 identifies the content (file names and bytes) being served.
	SHA256 string `json:"sha256"`
	// CheckedAt is when the directory was last read, successfully or not.
	CheckedAt time.Time `json:"checkedAt"`
	// LastError is why the directory's current content is not being
	// served, or "" when it is.
	LastError string `json:"lastError"`
	// Accepted counts reloads that replaced the set after the initial load;
	// Rejected counts distinct contents that were refused (re-reading the
	// same bad content does not count again), and distinct refusals to read
	// a file: too large, or not a regular file.
	Accepted uint64 `json:"accepted"`
	Rejected uint64 `json:"rejected"`
}

// Option configures a Watcher.
type Option func(*Watcher)

// WithPollInterval sets how often the directory is re-read as a safety net
// for lost file-system events (default DefaultPollInterval); d <= 0 turns
// polling off.
func WithPollInterval(d time.Duration) Option { return func(w *Watcher) { w.pollInterval = d } }

// WithLinkerd sets what Linkerd's resources are completed with: the mesh's
// trust domain (for ServiceAccount references), the default inbound policy
// of ports no Server selects ("" all-unauthenticated) and the cluster
// networks (nil DefaultClusterNetworks). See Settings.
func WithLinkerd(trustDomain string, defaultInbound mesh.DefaultInboundPolicy, clusterNetworks []string) Option {
	return func(w *Watcher) {
		w.settings.TrustDomain, w.settings.DefaultInboundPolicy, w.settings.ClusterNetworks = trustDomain, defaultInbound, clusterNetworks
	}
}

// WithHoldoff sets how long the directory must be quiet after a change
// before it is read (default DefaultHoldoff).
func WithHoldoff(d time.Duration) Option { return func(w *Watcher) { w.holdoff = max(d, 0) } }

// WithMaxSize sets how many bytes the policy files may hold together
// (default inputfile.DefaultMaxSize); more are refused without being read
// in full.
func WithMaxSize(n int64) Option { return func(w *Watcher) { w.maxSize = n } }

// Watcher serves the policy in a directory and follows its changes. A change
// that does not load is logged, shown in Status and otherwise ignored: the
// last good set stays in force, because a half-applied edit of security
// policy may allow what the whole one denies.
type Watcher struct {
	dir          string // as configured, for messages
	abs          string
	settings     Settings
	logger       *slog.Logger
	pollInterval time.Duration
	holdoff      time.Duration
	notify       bool // false only in tests of the polling fallback
	maxSize      int64

	updates chan *mesh.PolicySet
	running atomic.Bool

	mu      sync.Mutex
	current *mesh.PolicySet
	status  Status

	// Owned by the goroutine in Run (and NewWatcher before it).
	acceptedSum [sha256.Size]byte
	rejectedSum [sha256.Size]byte
	hasRejected bool
	readErr     string // the read failure last logged, so it is logged once
}

// NewWatcher loads dir once and returns its error if it does not load:
// meshd refuses to start on bad policy rather than start without it.
// rootNamespace "" means mesh.DefaultRootNamespace; defaultMode "" means
// PERMISSIVE. A nil logger means slog.Default().
func NewWatcher(dir, rootNamespace string, defaultMode mesh.MTLSMode, logger *slog.Logger, opts ...Option) (*Watcher, error) {
	if logger == nil {
		logger = slog.Default()
	}
	if rootNamespace == "" {
		rootNamespace = mesh.DefaultRootNamespace
	}
	if err := mesh.ValidName(rootNamespace); err != nil {
		return nil, fmt.Errorf("policy root namespace: %w", err)
	}
	if defaultMode == "" {
		defaultMode = mesh.MTLSPermissive
	}
	if m, err := ParseMode(string(defaultMode)); err != nil || m != defaultMode {
		return nil, fmt.Errorf("policy default mode %q: use STRICT, PERMISSIVE or DISABLE", defaultMode)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("%s: resolving policy directory: %w", dir, err)
	}
	w := &Watcher{
		dir:          dir,
		abs:          abs,
		settings:     Settings{RootNamespace: rootNamespace, DefaultMode: defaultMode},
		logger:       logger,
		pollInterval: DefaultPollInterval,
		holdoff:      DefaultHoldoff,
		notify:       true,
		maxSize:      inputfile.DefaultMaxSize,
		updates:      make(chan *mesh.PolicySet, 1),
	}
	for _, o := range opts {
		o(w)
	}
	files, err := readDir(dir, w.maxSize)
	if err != nil {
		return nil, err
	}
	p, err := parseFiles(files)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	w.acceptedSum = digest(files)
	w.current = p.SetWith(w.settings)
	w.status = Status{Dir: dir, LoadedAt: now, CheckedAt: now, SHA256: hex.EncodeToString(w.acceptedSum[:])}
	w.setCounts(p)
	logger.Info("policy loaded", "dir", dir, "sha256", w.status.SHA256, "files", len(p.Files),
		"peer_authentications", len(p.Peer), "authorization_policies", len(p.Authorizations), "linkerd", p.LinkerdCounts(),
		"root_namespace", rootNamespace, "default_mode", defaultMode, "default_inbound_policy", cmp.Or(string(w.settings.DefaultInboundPolicy), string(mesh.DefaultAllUnauthenticated)))
	return w, nil
}

// setCounts records what p holds in the status; the caller holds mu or
// owns w exclusively.
func (w *Watcher) setCounts(p *Policies) {
	w.status.Files = slices.Clone(p.Files)
	w.status.PeerAuthentications = len(p.Peer)
	w.status.AuthorizationPolicies = len(p.Authorizations)
	w.status.Linkerd = p.LinkerdCounts()
	if len(w.status.Linkerd) == 0 {
		w.status.Linkerd = nil
	}
}

// Current returns the policy set in force: the last content of the
// directory that loaded. Callers must not modify it.
func (w *Watcher) Current() *mesh.PolicySet {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.current
}

// Updates delivers each new policy set while Run runs, with latest-value
// semantics: the channel holds at most one set, and a newer one replaces a
// set the consumer has not taken yet, so a slow consumer never blocks the
// watcher and never sees a stale set after a fresh one. It is never closed.
func (w *Watcher) Updates() <-chan *mesh.PolicySet { return w.updates }

// Status returns a snapshot of the watcher's state.
func (w *Watcher) Status() Status {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := w.status
	s.Files = slices.Clone(s.Files)
	s.Linkerd = maps.Clone(s.Linkerd)
	return s
}

// Run follows the directory until ctx is done, then returns nil. Every
// event in the directory leads, once it has been quiet for the holdoff, to
// a re-read of all its policy files; content identical to what is served is
// not reloaded. Events in the directory itself (rather than on each file)
// are what survive editors and `mv tmp policy.yaml` replacing files and
// Kubernetes swapping a ConfigMap's ..data symlink. If file-system events
// are unavailable, Run polls. Run must not be called concurrently with
// itself.
func (w *Watcher) Run(ctx context.Context) error {
	if !w.running.CompareAndSwap(false, true) {
		return errors.New("policy: Watcher.Run is already running")
	}
	defer w.running.Store(false)
	return watchloop.Run(ctx, (*source)(w), watchloop.Options{
		Holdoff: w.holdoff, Poll: w.pollInterval, FallbackPoll: DefaultPollInterval,
		Notify: w.notify, Logger: w.logger, What: "policy directory", Attrs: []any{"dir", w.dir},
	})
}

// source adapts the Watcher to watchloop without exporting the methods.
type source Watcher

func (s *source) Check(trigger string) { (*Watcher)(s).check(trigger) }

// Relevant: any event in the directory may change the policy set; reading
// it is cheap and identical content is not reloaded.
func (s *source) Relevant(fsnotify.Event) bool { return true }

func (s *source) Dirs() []string { return []string{s.abs} }

// check reads the directory and, if it holds a new valid policy set, puts
// it in force and publishes it.
func (w *Watcher) check(trigger string) {
	files, err := readDir(w.dir, w.maxSize)
	now := time.Now()
	if err != nil {
		msg := err.Error()
		// Logged once: polling would otherwise repeat it every few seconds.
		// Logged before the status changes, so that whoever sees the status
		// can find the log line. A file refused for what it is (too large,
		// a pipe, a device) counts as a rejection, once.
		refused := false
		if msg != w.readErr {
			w.readErr = msg
			refused = inputfile.Refused(err)
			w.logger.Warn("cannot read the policy directory; the previous policy stays in force",
				"dir", w.dir, "trigger", trigger, "error", msg)
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
	sum := digest(files)
	if sum == w.acceptedSum {
		w.hasRejected = false
		if w.Status().LastError != "" {
			w.logger.Info("policy directory is back to the policy in force", "dir", w.dir, "sha256", hex.EncodeToString(sum[:]))
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
	p, err := parseFiles(files)
	if err != nil {
		w.rejectedSum, w.hasRejected = sum, true
		w.logger.Warn("policy rejected; the previous policy stays in force",
			"dir", w.dir, "trigger", trigger, "sha256", hex.EncodeToString(sum[:]),
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
	set := p.SetWith(w.settings)
	w.logger.Info("policy reloaded", "dir", w.dir, "trigger", trigger, "sha256", hash, "files", len(p.Files),
		"peer_authentications", len(p.Peer), "authorization_policies", len(p.Authorizations), "linkerd", p.LinkerdCounts())
	w.mu.Lock()
	w.current = set
	w.status.LoadedAt = now
	w.status.CheckedAt = now
	w.status.SHA256 = hash
	w.status.LastError = ""
	w.status.Accepted++
	w.setCounts(p)
	w.mu.Unlock()
	w.publish(set)
}

// publish hands ps to the consumer without ever blocking: an older set still
// waiting in the channel is replaced.
func (w *Watcher) publish(ps *mesh.PolicySet) {
	for {
		select {
		case w.updates <- ps:
			return
		default:
		}
		select {
		case <-w.updates:
		default:
		}
	}
}
