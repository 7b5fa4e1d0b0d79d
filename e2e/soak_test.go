package e2e

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/internal/envoytest"
	"github.com/meshd/meshd/internal/soak"
	"github.com/meshd/meshd/mesh"
)

// TestSoakShort runs the soak (cmd/meshd-soak, docs/operations.md) for a
// minute on the binaries under test, so that the soak itself cannot rot:
// every kind of step is made at least once (the schedule starts with one
// of each), against real Envoy sidecars, continuous callers and a small
// simulated fleet, and the run must end with no hang, no NACK and no call
// whose outcome the policy in force did not allow. The seed is random and
// logged: a failure is repeated with meshd-soak --seed.
//
// Left out until defects the soak found are fixed (docs/performance.md,
// "Soak"): DISABLE (a root rotation waits forever for a sidecar whose
// plaintext-only listener dropped its SDS subscription; callers' plaintext
// connections opened during a DISABLE → PERMISSIVE migration outlive it,
// so principal policies miss them) and the replica toggle (callers reach a
// replica whose endpoint comes back before its sidecar has the policies
// its labels select).
func TestSoakShort(t *testing.T) {
	envoy := envoytest.Binary(t)
	seed := rand.Uint64N(1<<53) + 1
	kinds := slices.DeleteFunc(slices.Clone(soak.AllKinds), func(k soak.Kind) bool { return k == soak.KindReplicaToggle })
	t.Logf("soak seed %d (repeat: meshd-soak --seed %d --fleet 20 --duration 60s --modes STRICT,PERMISSIVE --kinds %s)", seed, seed, kindList(kinds))
	cfg := soak.Config{
		MeshdBinary:   filepath.Join(binDir, "meshd"),
		DemoappBinary: filepath.Join(binDir, "demoapp"),
		EnvoyBinary:   envoy,
		WorkDir:       t.TempDir(),
		Duration:      60 * time.Second,
		Seed:          seed,
		Modes:         []mesh.MTLSMode{mesh.MTLSStrict, mesh.MTLSPermissive},
		Kinds:         kinds,
		Fleet:         20,
		Logger:        slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	sum, err := soak.Run(ctx, cfg)
	if sum != nil {
		t.Logf("summary:\n%s", sum.Table())
	}
	if err != nil {
		// The work dir goes with the test: show the dump's account.
		if sum != nil && sum.DumpDir != "" {
			for _, f := range []string{"violations.txt", "steps.txt"} {
				if b, rerr := os.ReadFile(filepath.Join(sum.DumpDir, f)); rerr == nil {
					t.Logf("%s:\n%s", f, tailLines(string(b), 60))
				}
			}
		}
		t.Fatalf("soak failed (seed %d): %v", seed, err)
	}
	for _, k := range kinds {
		f := sum.Kinds[k]
		if f == nil || f.Applied+f.Refused == 0 {
			t.Errorf("no %s step was made", k)
		}
	}
	var ok, denied int
	for _, l := range sum.Loops {
		if l.OK == 0 && l.ExpectedDenied == 0 {
			t.Errorf("caller %s → %s made no call", l.Caller, l.Server)
		}
		ok += l.OK
		denied += l.ExpectedDenied
	}
	if ok == 0 || denied == 0 {
		t.Errorf("%d calls allowed, %d denied: the schedule never exercised both", ok, denied)
	}
	if sum.LiveHeapStart == 0 || sum.LiveHeapEnd == 0 || sum.Goroutines.Last == 0 {
		t.Errorf("meshd's live heap %.0f → %.0f bytes, %.0f goroutines at the end: the soak did not read meshd's figures",
			sum.LiveHeapStart, sum.LiveHeapEnd, sum.Goroutines.Last)
	}
	if sum.FleetStreams <= int64(cfg.Fleet) {
		t.Errorf("the fleet opened %d streams for %d proxies: no reconnect storm reached it", sum.FleetStreams, cfg.Fleet)
	}
}

func kindList(ks []soak.Kind) string {
	s := make([]string, len(ks))
	for i, k := range ks {
		s[i] = string(k)
	}
	return strings.Join(s, ",")
}

func tailLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// testWriter sends log lines to the test's log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}
