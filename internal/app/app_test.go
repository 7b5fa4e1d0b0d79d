package app

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/policy"
	"github.com/meshd/meshd/sds"
	"github.com/meshd/meshd/server/admin"
)

// testConfig is meshd's defaults (cmd/meshd's flags) on loopback ports
// chosen by the kernel, with the catalog file and data under dir.
func testConfig(dir, catalog string) *Config {
	return &Config{
		Catalog: catalog, DataDir: filepath.Join(dir, "data"), TrustDomain: mesh.DefaultTrustDomain,
		XDSListen: "127.0.0.1:0", AdminListen: "127.0.0.1:0",
		LeafTTL: 24 * time.Hour, Holdoff: 100 * time.Millisecond, MaxDelay: time.Second,
		CatalogHoldoff: 100 * time.Millisecond, MTLSMode: string(mesh.MTLSPermissive), RootNS: mesh.DefaultRootNamespace,
		DefaultInbound: string(mesh.DefaultAllUnauthenticated), ClusterNetworks: strings.Join(policy.DefaultClusterNetworks, ","),
		MigrationOverdue: time.Minute, LivenessTimeout: 30 * time.Second, ConsulDefaultIntention: "allow", ConsulSyncTimeout: 30 * time.Second,
		AuthTimeout: 10 * time.Second, HandshakeTimeout: 5 * time.Second, MaxStreamsPerProxy: 128, CredentialCheck: time.Second,
	}
}

// Run returns only once everything it started has stopped: no watcher,
// combiner, publisher, rotation or server goroutine outlives it (they would
// read and write the data directory of a meshd that has returned), and the
// data directory's lock is free again.
func TestRunStopsEverythingItStarted(t *testing.T) {
	dir := t.TempDir()
	catPath := filepath.Join(dir, "catalog.yaml")
	if err := os.WriteFile(catPath, []byte("services:\n  - {name: api, protocol: http}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	policyDir := filepath.Join(dir, "policies")
	if err := os.Mkdir(policyDir, 0o755); err != nil {
		t.Fatal(err)
	}
	c := testConfig(dir, catPath)
	c.PolicyDir, c.InsecureXDS = policyDir, true
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	started := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, c, slog.New(slog.DiscardHandler), func(string, string) { close(started) })
	}()
	select {
	case <-started:
	case err := <-done:
		t.Fatalf("meshd stopped during start: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("meshd did not start within 30s")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return within 30s of cancel")
	}
	var dump strings.Builder
	if err := pprof.Lookup("goroutine").WriteTo(&dump, 1); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{
		"discovery/file.(*Watcher).Run", "policy.(*Watcher).Run", "inputs.(*Combiner).Run",
		"snapshot.(*Publisher).Run", "sds.(*Authority).RunRotation", "auth.(*Authenticator).Run",
		"grpc.(*Server).Serve", "http.(*Server).Serve",
	} {
		if strings.Contains(dump.String(), f) {
			t.Errorf("%s still runs after Run returned", f)
		}
	}
	if t.Failed() {
		t.Logf("goroutines:\n%s", dump.String())
	}
	// The data directory's lock is free: a lock on a file description of
	// our own would conflict with meshd's, even in this process.
	f, err := os.Open(filepath.Join(c.DataDir, sds.LockFileName))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Errorf("the data directory is still locked after Run returned: %v", err)
	}
}

// adminToken is the admin token meshd made in c's data directory.
func adminToken(t testing.TB, c *Config) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(c.DataDir, admin.TokenFileName))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}
