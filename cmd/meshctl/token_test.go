package main

import (
	"bytes"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/internal/metrics"
	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/sds"
	"github.com/meshd/meshd/server/admin"
)

func TestTokenCreateBootstrapRevoke(t *testing.T) {
	dataDir := t.TempDir()
	tokFile := filepath.Join(t.TempDir(), "web.token")
	// Without meshd's token key, meshctl refuses rather than minting one.
	r := runArgs("token", "create", "--service", "web", "--data-dir", dataDir, "-o", tokFile)
	if r.code != exitError || !strings.Contains(r.stderr, "start meshd once") {
		t.Fatalf("token create without a key: %d %s", r.code, r.stderr)
	}
	ta, err := sds.LoadOrCreateTokens(dataDir, defaultTrustDomain, false, nil) // what meshd does at start
	if err != nil {
		t.Fatal(err)
	}
	r = runArgs("token", "create", "--service", "web", "--ttl", "1h", "--data-dir", dataDir, "-o", tokFile)
	if r.code != exitOK {
		t.Fatalf("token create: %d %s", r.code, r.stderr)
	}
	if m := fileMode(t, tokFile); m != 0o600 {
		t.Errorf("token file mode %04o, want 0600", m)
	}
	tok, _ := os.ReadFile(tokFile)
	claims, err := ta.Verify(strings.TrimSpace(string(tok)))
	if err != nil || claims.Service != "web" || claims.Namespace != "default" {
		t.Fatalf("meshd does not accept the token: %v %+v", err, claims)
	}
	if strings.Contains(r.stderr, strings.TrimSpace(string(tok))) || !strings.Contains(r.stderr, claims.ID) {
		t.Errorf("stderr should name the token id, never the token: %s", r.stderr)
	}

	out := filepath.Join(t.TempDir(), "web.yaml")
	if err := os.WriteFile(out, nil, 0o644); err != nil { // an older, readable bootstrap
		t.Fatal(err)
	}
	r = runArgs("bootstrap", "--service", "web", "--ca-file", "x.pem", "--token-file", tokFile, "-o", out)
	if r.code != exitOK {
		t.Fatalf("bootstrap --token-file: %d %s", r.code, r.stderr)
	}
	y, _ := os.ReadFile(out)
	if !strings.Contains(string(y), "Bearer "+strings.TrimSpace(string(tok))) {
		t.Error("bootstrap lacks the token metadata")
	}
	if m := fileMode(t, out); m != 0o600 {
		t.Errorf("bootstrap with a token has mode %04o, want 0600", m)
	}
	if r := runArgs("bootstrap", "--flavor", "grpc", "--service", "web", "--cert-dir", "d", "--token-file", tokFile); r.code != exitUsage {
		t.Errorf("--token-file with --flavor grpc: code %d", r.code)
	}

	r = runArgs("token", "revoke", "--token-file", tokFile, "--data-dir", dataDir)
	if r.code != exitOK {
		t.Fatalf("token revoke: %d %s", r.code, r.stderr)
	}
	if _, err := ta.Verify(strings.TrimSpace(string(tok))); err == nil {
		t.Error("revoked token still verifies")
	}
	if r := runArgs("token", "revoke", "--data-dir", dataDir); r.code != exitUsage {
		t.Errorf("revoke without a token: code %d", r.code)
	}
}

// bootstrap --token-ttl signs a token and embeds it in one command: meshd
// accepts it, the file is 0600, stderr names the id (never the token), and
// nothing is signed when the bootstrap cannot be made.
func TestBootstrapSignsToken(t *testing.T) {
	dataDir := t.TempDir()
	out := filepath.Join(t.TempDir(), "web.yaml")
	args := []string{"bootstrap", "--service", "web", "--ca-file", "x.pem", "--data-dir", dataDir, "--token-ttl", "2h", "-o", out}
	if r := runArgs(args...); r.code != exitError || !strings.Contains(r.stderr, "start meshd once") {
		t.Fatalf("--token-ttl without meshd's token key: %d %s", r.code, r.stderr)
	}
	ta, err := sds.LoadOrCreateTokens(dataDir, defaultTrustDomain, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	r := runArgs(args...)
	if r.code != exitOK {
		t.Fatalf("bootstrap --token-ttl: %d %s", r.code, r.stderr)
	}
	if m := fileMode(t, out); m != 0o600 {
		t.Errorf("bootstrap with a token has mode %04o, want 0600", m)
	}
	y, _ := os.ReadFile(out)
	_, tok, ok := strings.Cut(string(y), "Bearer ")
	if !ok {
		t.Fatalf("bootstrap carries no token:\n%s", y)
	}
	tok, _, _ = strings.Cut(tok, "\n")
	tok = strings.Trim(strings.TrimSpace(tok), `"'`)
	claims, err := ta.Verify(tok)
	if err != nil || claims.Service != "web" || claims.Namespace != "default" {
		t.Fatalf("meshd does not accept the embedded token: %v %+v", err, claims)
	}
	if left := time.Until(claims.Expires); left < 119*time.Minute || left > 2*time.Hour {
		t.Errorf("token valid for %s, want 2h", left)
	}
	if strings.Contains(r.stderr, tok) || !strings.Contains(r.stderr, claims.ID) {
		t.Errorf("stderr should name the token id, never the token: %s", r.stderr)
	}
	// A bootstrap that cannot be made (inline CA missing) signs nothing.
	r = runArgs("bootstrap", "--service", "web", "--inline-ca", "--ca-file", filepath.Join(dataDir, "none.pem"), "--data-dir", dataDir, "--token-ttl", "2h")
	if r.code != exitError || strings.Contains(r.stderr, "token ") {
		t.Errorf("failed bootstrap: %d %s", r.code, r.stderr)
	}
	for _, bad := range [][]string{
		{"--token-ttl", "1h", "--token-file", "f"},
		{"--token-ttl", "-1h"},
		{"--flavor", "grpc", "--cert-dir", "d", "--token-ttl", "1h"},
	} {
		if r := runArgs(append([]string{"bootstrap", "--service", "web", "--data-dir", dataDir}, bad...)...); r.code != exitUsage {
			t.Errorf("bootstrap %v: code %d, want usage error", bad, r.code)
		}
	}
}

func fileMode(t *testing.T, p string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func TestCAStatusAndRotate(t *testing.T) {
	ca, err := sds.LoadOrCreate(sds.Options{DataDir: t.TempDir(), TrustDomain: defaultTrustDomain})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ca.Leaf(sdsTestID, nil); err != nil {
		t.Fatal(err)
	}
	admin := &admin.Admin{CA: ca, Metrics: metrics.New(), Logger: slog.New(slog.DiscardHandler)}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: admin.Handler(), ReadHeaderTimeout: time.Second}
	go srv.Serve(lis)
	t.Cleanup(func() { srv.Close() })
	addr := lis.Addr().String()

	r := runArgs("ca", "status", "--admin-address", addr)
	if r.code != exitOK || !strings.Contains(r.stdout, "rotation:      none") || !strings.Contains(r.stdout, sdsTestID.SPIFFEID()) {
		t.Fatalf("ca status: %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	r = runArgs("ca", "rotate-root", "--admin-address", addr)
	if r.code != exitOK || !strings.Contains(r.stdout, "phase propagating") || !strings.Contains(r.stdout, "trust bundle:  2 root(s)") {
		t.Fatalf("ca rotate-root: %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	r = runArgs("ca", "rotate-root", "--admin-address", addr)
	if r.code != exitError || !strings.Contains(r.stderr, "409") {
		t.Errorf("second rotate-root: %d %s", r.code, r.stderr)
	}
	// Abort: the kind must match; then the bundle is back to one root.
	r = runArgs("ca", "rotate-intermediate", "--abort", "--admin-address", addr)
	if r.code != exitError || !strings.Contains(r.stderr, "409") || !strings.Contains(r.stderr, "rotate-root --abort") {
		t.Errorf("rotate-intermediate --abort during a root rotation: %d %s", r.code, r.stderr)
	}
	r = runArgs("ca", "rotate-root", "--abort", "--admin-address", addr)
	if r.code != exitOK || !strings.Contains(r.stdout, "root rotation aborted") || !strings.Contains(r.stdout, "rotation:      none") || !strings.Contains(r.stdout, "trust bundle:  1 root(s)") {
		t.Fatalf("ca rotate-root --abort: %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	r = runArgs("ca", "rotate-root", "--abort", "--admin-address", addr)
	if r.code != exitError || !strings.Contains(r.stderr, "no CA rotation is in progress") {
		t.Errorf("abort with nothing running: %d %s", r.code, r.stderr)
	}
	// After the switch an abort rolls back.
	if r = runArgs("ca", "rotate-root", "--admin-address", addr); r.code != exitOK {
		t.Fatalf("rotate-root: %d %s", r.code, r.stderr)
	}
	if _, err := ca.Advance(nil); err != nil {
		t.Fatal(err)
	}
	r = runArgs("ca", "rotate-root", "--abort", "--admin-address", addr)
	if r.code != exitOK || !strings.Contains(r.stdout, "rolling back to") {
		t.Fatalf("abort after the switch: %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if _, err := ca.Leaf(sdsTestID, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ca.Advance(nil); err != nil {
		t.Fatal(err)
	}
	r = runArgs("ca", "status", "--admin-address", addr)
	if r.code != exitOK || !strings.Contains(r.stdout, "rotation:      none") || !strings.Contains(r.stdout, "retiring:      root sha256") {
		t.Errorf("status after the rollback: %d\n%s", r.code, r.stdout)
	}
	r = runArgs("ca", "status", "--admin-address", "127.0.0.1:1")
	if r.code != exitUnreachable || !strings.Contains(r.stderr, "is meshd running") {
		t.Errorf("no meshd: %d %s", r.code, r.stderr)
	}
}

var sdsTestID = mustID("spiffe://cluster.local/ns/default/sa/web")

func mustID(s string) mesh.Identity {
	id, err := mesh.ParseSPIFFEID(s)
	if err != nil {
		panic(err)
	}
	return id
}

// A token written over an existing world-readable file never lands in that
// file: token create -o and bootstrap -o replace the path with a new file of
// mode 0600 (internal/atomicfile), so the old inode (here kept reachable by a
// hard link, as a reader holding it open would) keeps its old content, and
// no reader of the old 0644 file can see the token even for a moment.
// os.WriteFile kept the old file's mode; WriteFile then Chmod left the token
// readable between the two.
func TestSecretOutputReplacesReadableFile(t *testing.T) {
	dataDir := t.TempDir()
	if _, err := sds.LoadOrCreateTokens(dataDir, defaultTrustDomain, false, nil); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	tokFile := filepath.Join(dir, "web.token")
	bootFile := filepath.Join(dir, "web.yaml")
	for _, c := range []struct {
		name string
		path string
		args []string
	}{
		{"token create", tokFile, []string{"token", "create", "--service", "web", "--ttl", "1h", "--data-dir", dataDir, "-o", tokFile}},
		{"bootstrap --token-file", bootFile, []string{"bootstrap", "--service", "web", "--ca-file", "x.pem", "--token-file", tokFile, "-o", bootFile}},
		{"bootstrap --token-ttl", bootFile, []string{"bootstrap", "--service", "web", "--ca-file", "x.pem", "--data-dir", dataDir, "--token-ttl", "1h", "-o", bootFile}},
	} {
		t.Run(c.name, func(t *testing.T) {
			old := []byte("an older, readable file\n")
			_ = os.Remove(c.path)
			if err := os.WriteFile(c.path, old, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(c.path, 0o644); err != nil { // whatever the umask
				t.Fatal(err)
			}
			link := c.path + ".old"
			_ = os.Remove(link)
			if err := os.Link(c.path, link); err != nil {
				t.Fatal(err)
			}
			if r := runArgs(c.args...); r.code != exitOK {
				t.Fatalf("%v: %d %s", c.args, r.code, r.stderr)
			}
			if m := fileMode(t, c.path); m != 0o600 {
				t.Errorf("%s has mode %04o, want 0600", c.path, m)
			}
			got, err := os.ReadFile(link)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, old) {
				t.Errorf("the old 0644 file was written in place (it now holds %d bytes, not the %d it had): the token was world-readable", len(got), len(old))
			}
			if m := fileMode(t, link); m != 0o644 {
				t.Errorf("the old file's mode changed to %04o: it was written in place", m)
			}
			newFI, err := os.Stat(c.path)
			if err != nil {
				t.Fatal(err)
			}
			oldFI, err := os.Stat(link)
			if err != nil {
				t.Fatal(err)
			}
			if os.SameFile(newFI, oldFI) {
				t.Errorf("%s is still the old inode", c.path)
			}
			if b, _ := os.ReadFile(c.path); bytes.Equal(b, old) || len(b) == 0 {
				t.Errorf("%s was not rewritten (%d bytes)", c.path, len(b))
			}
			// No temporary file is left beside it.
			ents, err := os.ReadDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range ents {
				if strings.Contains(e.Name(), ".tmp-") {
					t.Errorf("temporary file %s left behind", e.Name())
				}
			}
		})
	}
}
