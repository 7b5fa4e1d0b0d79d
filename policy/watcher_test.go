package policy

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshd/meshd/internal/testwait"
	"github.com/meshd/meshd/mesh"
)

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func allowYAML(name, principal string) string {
	return policyYAML("AuthorizationPolicy", "prod", name) +
		"spec:\n  rules:\n    - from: [{source: {principals: [\"" + principal + "\"]}}]\n"
}

func startWatcher(t *testing.T, dir string, opts ...Option) (*Watcher, *syncBuffer) {
	t.Helper()
	logs := &syncBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	w, err := NewWatcher(dir, "", mesh.MTLSStrict, logger, opts...)
	if err != nil {
		t.Fatalf("NewWatcher: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	loaded := w.Status().CheckedAt
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v after cancel", err)
			}
		case <-time.After(testwait.Timeout):
			t.Error("Run did not return after its context was cancelled")
		}
		if t.Failed() {
			t.Logf("watcher logs:\n%s", logs.String())
		}
	})
	testwait.For(t, testwait.Timeout, "the first check", func() bool { return w.Status().CheckedAt.After(loaded) })
	return w, logs
}

func nextUpdate(t *testing.T, w *Watcher) *mesh.PolicySet {
	t.Helper()
	return testwait.Recv(t, w.Updates(), testwait.Timeout, "policy update")
}

func principalOf(ps *mesh.PolicySet, name string) string {
	for _, a := range ps.Authorizations {
		if a.Name == name && len(a.Rules) > 0 && len(a.Rules[0].From) > 0 {
			return a.Rules[0].From[0].Principals[0]
		}
	}
	return ""
}

// replace writes content the way editors and scripts do: to a temporary file
// renamed over the target, so the watcher never sees a half-written file.
func replace(t *testing.T, path, content string) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), ".tmp-"+filepath.Base(path))
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func testWatcherLifecycle(t *testing.T, opts ...Option) {
	dir := t.TempDir()
	a := filepath.Join(dir, "a.yaml")
	writeFiles(t, dir, map[string]string{"a.yaml": allowYAML("a", "cluster.local/ns/prod/sa/v1")})
	w, logs := startWatcher(t, dir, opts...)
	if got := principalOf(w.Current(), "a"); got != "cluster.local/ns/prod/sa/v1" {
		t.Fatalf("initial policy: principal %q", got)
	}
	if ps := w.Current(); ps.RootNamespace != mesh.DefaultRootNamespace || ps.DefaultMode != mesh.MTLSStrict {
		t.Errorf("set settings: root %q, mode %q", ps.RootNamespace, ps.DefaultMode)
	}

	// An edit is picked up and published.
	replace(t, a, allowYAML("a", "cluster.local/ns/prod/sa/v2"))
	if got := principalOf(nextUpdate(t, w), "a"); got != "cluster.local/ns/prod/sa/v2" {
		t.Fatalf("after edit: principal %q", got)
	}

	// A bad edit keeps the previous set in force and is visible.
	replace(t, a, allowYAML("a", "cluster.local/ns/prod/sa/v3")+"  action: CUSTOM\n")
	testwait.For(t, testwait.Timeout, "the bad edit to be rejected", func() bool { return w.Status().Rejected == 1 })
	st := w.Status()
	if !strings.Contains(st.LastError, "a.yaml:7: AuthorizationPolicy prod/a: spec.action: CUSTOM (external authorization) is not supported") {
		t.Errorf("status LastError = %q", st.LastError)
	}
	if got := principalOf(w.Current(), "a"); got != "cluster.local/ns/prod/sa/v2" {
		t.Errorf("after bad edit the policy in force changed: principal %q", got)
	}
	if !strings.Contains(logs.String(), "policy rejected; the previous policy stays in force") {
		t.Errorf("rejection not logged:\n%s", logs)
	}
	select {
	case ps := <-w.Updates():
		t.Errorf("a rejected edit was published: %+v", ps)
	default:
	}

	// The fix is picked up and clears the error.
	replace(t, a, allowYAML("a", "cluster.local/ns/prod/sa/v4"))
	if got := principalOf(nextUpdate(t, w), "a"); got != "cluster.local/ns/prod/sa/v4" {
		t.Fatalf("after fix: principal %q", got)
	}
	if st := w.Status(); st.LastError != "" || st.Accepted != 2 || st.Rejected != 1 {
		t.Errorf("status after fix: %+v", st)
	}

	// A file added, then removed.
	replace(t, filepath.Join(dir, "b.yaml"), allowYAML("b", "cluster.local/ns/prod/sa/b"))
	ps := nextUpdate(t, w)
	if len(ps.Authorizations) != 2 || principalOf(ps, "b") != "cluster.local/ns/prod/sa/b" {
		t.Fatalf("after adding b.yaml: %+v", ps.Authorizations)
	}
	if st := w.Status(); len(st.Files) != 2 || st.AuthorizationPolicies != 2 {
		t.Errorf("status after adding: %+v", st)
	}
	if err := os.Remove(filepath.Join(dir, "b.yaml")); err != nil {
		t.Fatal(err)
	}
	if ps := nextUpdate(t, w); len(ps.Authorizations) != 1 || ps.Authorizations[0].Name != "a" {
		t.Fatalf("after removing b.yaml: %+v", ps.Authorizations)
	}

	// Files that are not policy do not matter. Rewriting a.yaml unchanged
	// afterwards makes the watcher read the directory (events arrive in
	// order), so once it has, the files above were seen too.
	writeFiles(t, dir, map[string]string{"README.md": "x", ".a.yaml.swp": "garbage: ["})
	before := w.Status()
	replace(t, a, allowYAML("a", "cluster.local/ns/prod/sa/v4"))
	testwait.For(t, testwait.Timeout, "the directory to be read again", func() bool { return w.Status().CheckedAt.After(before.CheckedAt) })
	if st := w.Status(); st.LastError != "" || st.Accepted != before.Accepted || st.Rejected != before.Rejected {
		t.Errorf("non-policy files changed the status: %+v", st)
	}
}

func TestWatcherEvents(t *testing.T) {
	testWatcherLifecycle(t, WithPollInterval(0), WithHoldoff(20*time.Millisecond))
}

func TestWatcherPollingOnly(t *testing.T) {
	testWatcherLifecycle(t, func(w *Watcher) { w.notify = false }, WithPollInterval(50*time.Millisecond))
}

func TestWatcherDirectoryRemoved(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "policy")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFiles(t, dir, map[string]string{"a.yaml": allowYAML("a", "cluster.local/ns/prod/sa/v1")})
	w, _ := startWatcher(t, dir, WithPollInterval(50*time.Millisecond), WithHoldoff(20*time.Millisecond))
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, testwait.Timeout, "the missing directory in the status", func() bool {
		return strings.Contains(w.Status().LastError, "cannot read policy directory")
	})
	if principalOf(w.Current(), "a") != "cluster.local/ns/prod/sa/v1" {
		t.Error("the policy in force changed when the directory disappeared")
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFiles(t, dir, map[string]string{"a.yaml": allowYAML("a", "cluster.local/ns/prod/sa/v5")})
	if got := principalOf(nextUpdate(t, w), "a"); got != "cluster.local/ns/prod/sa/v5" {
		t.Fatalf("after the directory came back: %q", got)
	}
	testwait.For(t, testwait.Timeout, "the error to clear", func() bool { return w.Status().LastError == "" })
}

func TestNewWatcherRefusesBadInput(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"a.yaml": "kind: Nope\n"})
	if _, err := NewWatcher(dir, "", "", nil); err == nil || !strings.Contains(err.Error(), `unknown kind "Nope"`) {
		t.Errorf("bad policy: %v", err)
	}
	good := t.TempDir()
	if _, err := NewWatcher(good, "Bad", "", nil); err == nil || !strings.Contains(err.Error(), "root namespace") {
		t.Errorf("bad root namespace: %v", err)
	}
	if _, err := NewWatcher(good, "", mesh.MTLSUnset, nil); err == nil || !strings.Contains(err.Error(), "default mode") {
		t.Errorf("UNSET default mode: %v", err)
	}
	if _, err := NewWatcher(filepath.Join(good, "missing"), "", "", nil); err == nil {
		t.Error("missing directory accepted")
	}
	w, err := NewWatcher(good, "mesh-root", "", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if ps := w.Current(); ps.RootNamespace != "mesh-root" || ps.DefaultMode != mesh.MTLSPermissive || len(ps.Peer)+len(ps.Authorizations) != 0 {
		t.Errorf("empty directory: %+v", ps)
	}
}

func TestUpdatesKeepsOnlyTheLatest(t *testing.T) {
	w := &Watcher{updates: make(chan *mesh.PolicySet, 1)}
	first, second := &mesh.PolicySet{RootNamespace: "a"}, &mesh.PolicySet{RootNamespace: "b"}
	w.publish(first)
	w.publish(second)
	if got := <-w.Updates(); got != second {
		t.Errorf("got %q, want the latest set", got.RootNamespace)
	}
}

// A watcher completes Linkerd's resources with its settings (trust domain,
// default inbound policy, cluster networks), counts them in its status,
// and follows a change of a Linkerd document like any other.
func TestWatcherLinkerd(t *testing.T) {
	dir := t.TempDir()
	server := "apiVersion: policy.linkerd.io/v1beta3\nkind: Server\nmetadata: {name: api, namespace: prod}\nspec: {podSelector: {}, port: 8080}\n"
	writeFiles(t, dir, map[string]string{"api.yaml": server + "---\napiVersion: policy.linkerd.io/v1beta1\nkind: ServerAuthorization\n" +
		"metadata: {name: web, namespace: prod}\nspec: {server: {name: api}, client: {meshTLS: {serviceAccounts: [{name: web}]}}}\n"})
	w, _ := startWatcher(t, dir, WithLinkerd("example.org", mesh.DefaultClusterAuthenticated, []string{"10.0.0.0/8"}))
	ps := w.Current()
	if ps.Linkerd == nil || ps.Linkerd.Default != mesh.DefaultClusterAuthenticated || len(ps.Linkerd.Servers) != 1 {
		t.Fatalf("Linkerd policy %+v", ps.Linkerd)
	}
	got := ps.Linkerd.Servers[0].Decision.Rules[0].NotFrom
	if len(got) != 1 || !slices.Equal(got[0].Principals, []string{"example.org/ns/prod/sa/web"}) || !slices.Equal(got[0].IPBlocks, []string{"10.0.0.0/8"}) {
		t.Fatalf("decision admits %+v", got)
	}
	if st := w.Status(); st.Linkerd["Server"] != 1 || st.Linkerd["ServerAuthorization"] != 1 {
		t.Fatalf("status counts %v", st.Linkerd)
	}
	// Dropping the authorization: the Server now denies everybody.
	writeFiles(t, dir, map[string]string{"api.yaml": server})
	testwait.For(t, testwait.Timeout, "the reload", func() bool {
		l := w.Current().Linkerd
		return len(l.Servers) == 1 && len(l.Servers[0].Decision.Rules) == 1 && len(l.Servers[0].Decision.Rules[0].NotFrom) == 0
	})
	if st := w.Status(); st.Linkerd["ServerAuthorization"] != 0 || st.Accepted != 1 {
		t.Fatalf("status %+v", st)
	}
}
