package auth

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/internal/watchloop"
)

// Revocation that ends access (issue 13).
//
// Every authenticated stream holds a Session on its credential's grant:
// one grant per credential (a token by its id, a certificate by its serial)
// shared by all the streams that present it — every sidecar of a service
// presents the same token. A grant ends, once, when its credential is
// revoked or expires: its Done channel closes, which wakes every stream loop
// holding it (server/sotw.go, server/delta.go select on it), and they end
// their streams with the grant's error. Nothing depends on the client
// sending anything.
//
// Run notices revocations: it watches the tokens directory (a revocation is
// an atomic rename of the list, seen at once) and sweeps every
// RecheckEvery anyway (lost events, and expiry), re-reading the list only
// when its file changed and checking each grant with a map lookup. A stream
// loop checks its session before every push (an atomic load), and before
// pushing a secret also re-reads the list if the file changed (one stat), so
// no private key leaves meshd for a credential revoked before the push.
//
// A certificate issued through a token carries the token's id (sds
// CertOrigin), so its grant ends with the token: revoking a token ends the
// streams of the certificates a node agent renewed with it, and refuses
// their CSRs.

// DefaultRecheck is how often Run sweeps the grants when no file event
// arrives: the bound on how long a revoked or expired credential's streams
// stay open when events are lost, and on expiry.
const DefaultRecheck = time.Second

// grant is one credential's hold on the streams it authenticated.
type grant struct {
	key      string // "token <id>" or "certificate <serial>"
	desc     string // the credential, for logs
	tokenID  string // the token it is, or was issued through; "" for an operator's certificate
	notAfter time.Time

	done chan struct{}
	once sync.Once
	err  atomic.Pointer[error]

	// nodes counts the grant's open streams per node (Authenticator.mu).
	nodes map[string]int
}

func (g *grant) streams() int {
	n := 0
	for _, c := range g.nodes {
		n += c
	}
	return n
}

// Session is an authenticated stream's hold on its credential. Its methods
// are safe on a nil Session (a stream served without authentication,
// --insecure-xds), which never ends.
type Session struct {
	a    *Authenticator
	g    *grant
	node string
}

type sessionKey struct{}

// SessionFrom returns the session of the stream whose context ctx is, or
// nil for a stream that was not authenticated.
func SessionFrom(ctx context.Context) *Session {
	s, _ := ctx.Value(sessionKey{}).(*Session)
	return s
}

// Done is closed when the credential is revoked or expires.
func (s *Session) Done() <-chan struct{} {
	if s == nil {
		return nil
	}
	return s.g.done
}

// Err is nil while the credential is valid, then the status the stream
// ends with. An atomic load: cheap enough for every push.
func (s *Session) Err() error {
	if s == nil {
		return nil
	}
	if e := s.g.err.Load(); e != nil {
		return *e
	}
	return nil
}

// Check is Err after a fresh look at the credential: its expiry, and the
// revocation list re-read if its file changed. For pushes that carry
// private keys, so none goes out after a revocation the sweep has not yet
// seen.
func (s *Session) Check() error {
	if s == nil {
		return nil
	}
	if err := s.Err(); err != nil {
		return err
	}
	s.a.checkGrant(s.g, time.Now(), true)
	return s.Err()
}

// acquire adds a stream of cred for node to cred's grant, refusing it if
// the credential already holds MaxStreamsPerNode streams for the node.
func (a *Authenticator) acquire(c *credential, node string) (*Session, error) {
	a.mu.Lock()
	if a.grants == nil {
		a.grants = map[string]*grant{}
	}
	g := a.grants[c.key]
	if g == nil {
		g = &grant{key: c.key, desc: c.String(), tokenID: c.tokenID, notAfter: c.notAfter,
			done: make(chan struct{}), nodes: map[string]int{}}
		a.grants[c.key] = g
	}
	if max := a.MaxStreamsPerNode; max > 0 && g.nodes[node] >= max {
		a.mu.Unlock()
		a.refusals.Warn("xDS stream refused: the credential already holds the most streams allowed for this node",
			"node", node, "credential", c.String(), "limit", max, "peer", c.peer)
		return nil, a.refuse("too_many_streams", codes.ResourceExhausted,
			"xDS: %s already holds %d streams for node %q, the most --max-streams-per-proxy allows", c, max, node)
	}
	g.nodes[node]++
	a.mu.Unlock()
	s := &Session{a: a, g: g, node: node}
	// A grant created just after its credential was revoked is ended by
	// the next sweep; one found ended already ends the stream at once.
	return s, nil
}

// release removes a stream from its grant.
func (a *Authenticator) release(s *Session) {
	a.mu.Lock()
	defer a.mu.Unlock()
	g := s.g
	if g.nodes[s.node]--; g.nodes[s.node] <= 0 {
		delete(g.nodes, s.node)
	}
	if len(g.nodes) == 0 && a.grants[g.key] == g {
		delete(a.grants, g.key)
	}
}

// end ends a grant's streams with err (once), counting and logging them.
func (a *Authenticator) end(g *grant, reason string, err error) {
	a.mu.Lock()
	if a.grants[g.key] == g {
		// New streams of the credential get a new grant (and are refused
		// by authentication first).
		delete(a.grants, g.key)
	}
	n := g.streams()
	nodes := make([]string, 0, len(g.nodes))
	for node := range g.nodes {
		nodes = append(nodes, node)
	}
	a.mu.Unlock()
	g.once.Do(func() {
		g.err.Store(&err)
		close(g.done)
		slices.Sort(nodes)
		a.ended.WithLabelValues(reason).Add(float64(n))
		a.Logger.Warn("closing the xDS streams of a credential that is no longer valid",
			"credential", g.desc, "reason", reason, "streams", n, "nodes", nodes, "err", err)
	})
}

// checkGrant ends g if its credential expired or was revoked; fresh
// re-reads the revocation list if its file changed (else the list as last
// read is used).
func (a *Authenticator) checkGrant(g *grant, now time.Time, fresh bool) {
	if !g.notAfter.IsZero() && !now.Before(g.notAfter) {
		a.end(g, "expired", status.Errorf(codes.Unauthenticated, "xDS: %s expired at %s", g.desc, g.notAfter.UTC().Format(time.RFC3339)))
		return
	}
	if g.tokenID == "" {
		return
	}
	var revoked bool
	if fresh {
		var err error
		if revoked, err = a.Tokens.IsRevoked(g.tokenID); err != nil {
			// Fail closed, as authentication does: an unreadable list must
			// not let a revoked credential keep receiving keys.
			a.end(g, "revocation_list_unreadable", status.Errorf(codes.Unavailable, "xDS: cannot read the token revocation list: %v", err))
			return
		}
	} else {
		revoked = a.Tokens.RevokedCached(g.tokenID)
	}
	if revoked {
		a.end(g, "revoked", status.Errorf(codes.Unauthenticated, "xDS: %s: bootstrap token %s has been revoked (meshctl token create makes a new one)", g.desc, g.tokenID))
	}
}

// Sweep re-reads the revocation list if it changed and ends the grants of
// revoked and expired credentials.
func (a *Authenticator) Sweep(now time.Time) {
	a.init()
	if _, err := a.Tokens.Refresh(); err != nil {
		// New streams are refused meanwhile (authentication fails closed);
		// open ones keep what they have until their next secret push.
		a.refusals.Error("cannot read the token revocation list; new streams are refused until it is readable", "err", err)
	}
	a.mu.Lock()
	gs := make([]*grant, 0, len(a.grants))
	for _, g := range a.grants {
		gs = append(gs, g)
	}
	a.mu.Unlock()
	for _, g := range gs {
		a.checkGrant(g, now, false)
	}
}

// Grants returns how many credentials hold streams, and how many streams
// they hold (for tests and metrics).
func (a *Authenticator) Grants() (credentials, streams int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, g := range a.grants {
		credentials++
		streams += g.streams()
	}
	return credentials, streams
}

// Run watches the token revocation list and sweeps the grants whenever it
// changes and every RecheckEvery, until ctx ends.
func (a *Authenticator) Run(ctx context.Context) error {
	a.init()
	every := a.RecheckEvery
	if every <= 0 {
		every = DefaultRecheck
	}
	if a.Tokens == nil {
		return errors.New("revocation watcher: no token verifier")
	}
	return watchloop.Run(ctx, revocationSource{a}, watchloop.Options{
		Holdoff: 10 * time.Millisecond, Poll: every, FallbackPoll: every, Notify: true,
		Logger: a.Logger, What: "token revocation list", Attrs: []any{"path", a.Tokens.RevocationListPath()},
	})
}

type revocationSource struct{ a *Authenticator }

func (s revocationSource) Dirs() []string {
	return []string{filepath.Dir(s.a.Tokens.RevocationListPath())}
}
func (s revocationSource) Relevant(ev fsnotify.Event) bool {
	return ev.Name == s.a.Tokens.RevocationListPath()
}
func (s revocationSource) Check(string) { s.a.Sweep(time.Now()) }
