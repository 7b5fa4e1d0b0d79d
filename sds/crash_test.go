package sds

import (
	"bufio"
	"bytes"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/meshd/meshd/internal/atomicfile"
	"github.com/meshd/meshd/mesh"
)

// The crash test (issue 13): meshd's CA steps run in a child process — this
// test binary re-executed as TestCrashChild — which is killed with SIGKILL
// before and after every durable step of first start (new and adopted
// pre-intermediate root), root rotation, intermediate rotation, retirement
// and abort, then at random moments while it rotates in a loop. After every
// kill the data directory is opened again (a restart) and must be healthy
// with the same trust:
//
//   - LoadOrCreate succeeds, without anyone editing a file;
//   - the bundle holds exactly the roots of the generations state.json named
//     at the moment of the kill (no root silently replaced);
//   - every leaf the child handed out ("proxies" hold them as files) that
//     has not expired verifies against the bundle after the restart, and a
//     leaf issued after the restart verifies against the bundle proxies had
//     at the kill;
//   - no private key is left outside the generations state.json names
//     (the whole data directory is scanned), no temporary file, no orphan
//     generation, nothing but certificates under retired/.
//
// The hook (testStep) lets the kills land exactly at step boundaries; the
// random kills are plain SIGKILLs from the parent at arbitrary moments
// (inside atomic writes, key generation, ...).

const (
	crashEnvChild  = "SDS_CRASH_CHILD" // op for TestCrashChild
	crashEnvWork   = "SDS_CRASH_WORK"  // work directory (data/, clock, leaves/)
	crashEnvAt     = "SDS_CRASH_AT"    // "step#n": SIGKILL at the n-th hit of step
	crashEnvRecord = "SDS_CRASH_RECORD"
	crashSeed      = "SDS_CRASH_SEED"
	crashLeafTTL   = time.Hour
)

var crashT0 = time.Date(2026, 6, 1, 8, 0, 0, 0, time.UTC)

func crashData(work string) string { return filepath.Join(work, "data") }

// crashClock is the child's and the verifier's clock: a file in the work
// directory, so time stays consistent across kills and restarts.
func crashClock(work string) time.Time {
	b, err := os.ReadFile(filepath.Join(work, "clock"))
	if err != nil {
		return crashT0
	}
	t, err := time.Parse(time.RFC3339Nano, strings.TrimSpace(string(b)))
	if err != nil {
		return crashT0
	}
	return t
}

func setCrashClock(work string, t time.Time) error {
	return atomicfile.Write(filepath.Join(work, "clock"), []byte(t.Format(time.RFC3339Nano)), 0o644)
}

func crashOptions(work string, now time.Time) Options {
	return Options{DataDir: crashData(work), TrustDomain: "cluster.local", LeafTTL: crashLeafTTL,
		Clock: func() time.Time { return now }, Logger: slog.New(slog.DiscardHandler)}
}

// handOut issues leaves for a few identities and writes them where the
// "proxies" keep them.
func handOut(ca *Authority, work string) error {
	dir := filepath.Join(work, "leaves")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for _, sa := range []string{"cart", "web"} {
		l, err := ca.Leaf(mesh.Identity{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: sa}, []string{sa})
		if err != nil {
			return err
		}
		if err := atomicfile.Write(filepath.Join(dir, sa+"-"+l.Serial.Text(16)+".pem"), l.CertPEM, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// crashOp runs one CA operation as meshd would. Ops that find the state
// already past them (a restart after the op completed) do nothing.
func crashOp(ca *Authority, work, op string) error {
	st := ca.Status(nil)
	switch op {
	case "start":
		return nil
	case "rotate-root":
		if st.Rotation != nil {
			return nil
		}
		return ca.RotateRoot()
	case "rotate-intermediate":
		if st.Rotation != nil {
			return nil
		}
		return ca.RotateIntermediate()
	case "advance":
		_, err := ca.Advance(nil)
		return err
	case "expire":
		// Move the clock past every retiring generation's leaves.
		if len(st.Retiring) == 0 {
			return nil
		}
		last := st.Retiring[len(st.Retiring)-1].Until
		if err := setCrashClock(work, last.Add(time.Second)); err != nil {
			return err
		}
		return errRestartClock
	case "abort-root", "abort-intermediate":
		if st.Rotation == nil || !st.Rotation.Aborted.IsZero() {
			return nil
		}
		return ca.AbortRotation(strings.TrimPrefix(op, "abort-"))
	}
	return fmt.Errorf("unknown op %q", op)
}

// errRestartClock asks the caller to reopen the CA with the new clock.
var errRestartClock = errors.New("clock moved")

// TestCrashChild is the child process of TestCrashSafety; it does nothing in
// a normal test run.
func TestCrashChild(t *testing.T) {
	op := os.Getenv(crashEnvChild)
	if op == "" {
		t.Skip("child process of TestCrashSafety and TestDataDirLockAcrossProcesses")
	}
	work := os.Getenv(crashEnvWork)
	if err := crashChild(work, op); err != nil {
		fmt.Fprintln(os.Stderr, "crash child:", err)
		os.Exit(3)
	}
	fmt.Println("done")
	os.Exit(0)
}

func crashChild(work, op string) error {
	var record *os.File
	if p := os.Getenv(crashEnvRecord); p != "" {
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			return err
		}
		record = f
	}
	at := os.Getenv(crashEnvAt)
	hits := map[string]int{}
	testStep = func(name string) {
		hits[name]++
		key := name + "#" + strconv.Itoa(hits[name])
		if record != nil {
			fmt.Fprintln(record, key)
		}
		if key == at {
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {} // never reached
		}
	}
	switch op {
	case "hold-lock":
		ca, err := LoadOrCreate(crashOptions(work, crashClock(work)))
		if err != nil {
			return err
		}
		fmt.Println("locked")
		_ = ca
		select {}
	case "loop":
		fmt.Println("up") // the parent's random delay starts now
		return crashLoop(work)
	}
	ca, err := LoadOrCreate(crashOptions(work, crashClock(work)))
	if err != nil {
		return err
	}
	if err := handOut(ca, work); err != nil {
		return err
	}
	if err := crashOp(ca, work, op); err != nil && !errors.Is(err, errRestartClock) {
		return err
	}
	return nil
}

// crashLoop rotates for ever, picking each next operation from the state
// (and at random), so that the parent's random kills land anywhere.
func crashLoop(work string) error {
	seed, _ := strconv.ParseUint(os.Getenv(crashSeed), 10, 64)
	rnd := rand.New(rand.NewPCG(seed, 13))
	for {
		ca, err := LoadOrCreate(crashOptions(work, crashClock(work)))
		if err != nil {
			return err
		}
		for range 50 {
			if err := handOut(ca, work); err != nil {
				return err
			}
			st := ca.Status(nil)
			op := "advance"
			switch {
			case st.Rotation == nil && len(st.Retiring) > 0 && rnd.IntN(2) == 0:
				op = "expire"
			case st.Rotation == nil && len(st.TrustedRoots) < maxTrustedRoots && rnd.IntN(2) == 0:
				op = "rotate-root"
			case st.Rotation == nil:
				op = "rotate-intermediate"
			case st.Rotation.Aborted.IsZero() && rnd.IntN(4) == 0:
				op = "abort-" + st.Rotation.Kind
			}
			err := crashOp(ca, work, op)
			if errors.Is(err, errRestartClock) {
				break
			}
			if err != nil {
				return fmt.Errorf("%s: %w", op, err)
			}
		}
		if err := ca.Close(); err != nil {
			return err
		}
	}
}

// crashRun starts the child for op in work. at ("" for none) is the step to
// die at; record, if set, collects the steps hit.
func crashRun(t *testing.T, work, op, at, record string, extraEnv ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashEnvChild+"="+op, crashEnvWork+"="+work, crashEnvAt+"="+at, crashEnvRecord+"="+record)
	cmd.Env = append(cmd.Env, extraEnv...)
	return cmd
}

func killedBySIGKILL(err error) bool {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
}

// crashStats are the figures the test prints.
type crashStats struct {
	deterministic, random int
	restarts              []time.Duration
	// leavesChecked counts the unexpired leaves proxies held that were
	// verified after a restart: zero would mean the check proved nothing.
	leavesChecked    int
	tempFilesRemoved atomic.Int64
	perOp            map[string]int
	randomAt         map[string]int // where random kills landed (last step point passed)
}

// stateRoots returns the root fingerprints of the generations that
// state.json in data names as trusted, or nil if there is no state.json.
func stateRoots(t *testing.T, data string) ([]string, caState) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(data, caDirName, stateFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, caState{}
	}
	if err != nil {
		t.Fatal(err)
	}
	var st caState
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatalf("state.json after a kill is not JSON (%v): %s", err, b)
	}
	var fps []string
	for _, id := range st.Trusted {
		c, err := readCertFile(filepath.Join(data, caDirName, id, genRootCertFile))
		if err != nil {
			t.Fatalf("state.json names %s but its root is unreadable: %v", id, err)
		}
		if fp := fingerprint(c); !slices.Contains(fps, fp) {
			fps = append(fps, fp)
		}
	}
	return fps, st
}

// checkRestart opens the killed child's data directory as a restarted meshd
// would and checks everything listed at the top of this file.
func checkRestart(t *testing.T, work string, stats *crashStats, context string) {
	t.Helper()
	data := crashData(work)
	wantRoots, _ := stateRoots(t, data)
	before, _ := os.ReadFile(filepath.Join(data, caDirName, rootCertFile))
	temps := countTemps(t, data)
	now := crashClock(work)
	start := time.Now()
	ca, err := LoadOrCreate(crashOptions(work, now))
	if err != nil {
		t.Fatalf("%s: restart after the kill failed: %v", context, err)
	}
	stats.restarts = append(stats.restarts, time.Since(start))
	stats.tempFilesRemoved.Add(int64(temps))
	defer ca.Close()
	got := bundleRoots(t, ca.RootCertPEM())
	if wantRoots != nil && !slices.Equal(sorted(got), sorted(wantRoots)) {
		t.Fatalf("%s: bundle after restart %v, but state.json at the kill trusted %v", context, got, wantRoots)
	}
	if onDisk, _ := os.ReadFile(filepath.Join(data, caDirName, rootCertFile)); !bytes.Equal(onDisk, ca.RootCertPEM()) {
		t.Fatalf("%s: bundle file differs from the bundle after restart", context)
	}
	pool := ca.RootPool()
	leaves, _ := filepath.Glob(filepath.Join(work, "leaves", "*.pem"))
	for _, p := range leaves {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		c, inters := parseChain(t, b)
		if !now.Before(c.NotAfter) {
			continue
		}
		if _, err := c.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inters, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Fatalf("%s: a leaf a proxy holds (%s, valid until %s) no longer verifies after the restart: %v", context, filepath.Base(p), c.NotAfter, err)
		}
		stats.leavesChecked++
	}
	fresh, err := ca.IssueLeaf(testID, []string{"cart"})
	if err != nil {
		t.Fatalf("%s: issue after restart: %v", context, err)
	}
	if len(before) > 0 {
		old := x509.NewCertPool()
		old.AppendCertsFromPEM(before)
		if err := verifyLeaf(t, fresh.CertPEM, old, now, x509.ExtKeyUsageServerAuth); err != nil {
			t.Fatalf("%s: a leaf issued after the restart does not verify against the bundle proxies had at the kill: %v", context, err)
		}
	}
	scanDataDir(t, ca, context)
}

func sorted(s []string) []string { s = slices.Clone(s); sort.Strings(s); return s }

func countTemps(t *testing.T, data string) int {
	n := 0
	_ = filepath.WalkDir(data, func(p string, d fs.DirEntry, err error) error {
		if err == nil && isTempFile(d.Name()) {
			n++
		}
		return nil
	})
	return n
}

// scanDataDir walks the whole data directory: private keys only in the
// generations the state names, no temporary files, no orphan generations,
// retired generations with certificates only.
func scanDataDir(t *testing.T, ca *Authority, context string) {
	t.Helper()
	ca.mu.Lock()
	live := ca.liveGenerationsLocked()
	ca.mu.Unlock()
	caDir := ca.caDir()
	err := filepath.WalkDir(ca.opts.DataDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(ca.opts.DataDir, p)
		if isTempFile(d.Name()) {
			t.Errorf("%s: temporary file left: %s", context, rel)
		}
		if d.IsDir() {
			if filepath.Dir(p) == caDir && strings.HasPrefix(d.Name(), "gen-") && !live[d.Name()] {
				t.Errorf("%s: generation directory no state names: %s", context, rel)
			}
			return nil
		}
		isKey := holdsPrivateKey(p) || strings.Contains(d.Name(), "key")
		if !isKey {
			return nil
		}
		parent := filepath.Base(filepath.Dir(p))
		inLiveGen := filepath.Dir(filepath.Dir(p)) == caDir && live[parent] &&
			(d.Name() == genRootKeyFile || d.Name() == genInterKeyFile)
		if !inLiveGen {
			t.Errorf("%s: key file outside the live generations: %s", context, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if t.Failed() {
		t.FailNow()
	}
}

// copyDir copies a work directory (small: a few files per generation).
func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		if d.IsDir() {
			return os.MkdirAll(target, info.Mode().Perm())
		}
		if d.Name() == LockFileName {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(target, b, info.Mode().Perm())
	})
	if err != nil {
		t.Fatal(err)
	}
}

// runInProcess applies op to work without killing anything (to build the
// state before the next op).
func runInProcess(t *testing.T, work, op string) {
	t.Helper()
	ca, err := LoadOrCreate(crashOptions(work, crashClock(work)))
	if err != nil {
		t.Fatalf("%s: %v", op, err)
	}
	defer ca.Close()
	if err := handOut(ca, work); err != nil {
		t.Fatal(err)
	}
	if err := crashOp(ca, work, op); err != nil && !errors.Is(err, errRestartClock) {
		t.Fatalf("%s: %v", op, err)
	}
}

// legacyDataDir writes a data directory of meshd before intermediates:
// ca/root-cert.pem and ca/root-key.pem.
func legacyDataDir(t *testing.T, work string) string {
	t.Helper()
	donor := newTestCA(t, func(o *Options) { o.Clock = func() time.Time { return crashT0 } })
	dir := filepath.Join(crashData(work), caDirName)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	kb, err := keyPEM(donor.signing().rootKey)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, legacyRootKeyFile), kb, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, rootCertFile), donor.signing().rootPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	return donor.Fingerprint()
}

func TestCrashSafety(t *testing.T) {
	if testing.Short() {
		t.Skip("starts ~100 child processes")
	}
	started := time.Now()
	stats := &crashStats{perOp: map[string]int{}, randomAt: map[string]int{}}
	// Each scenario is a sequence of ops from a fresh work directory; every
	// step boundary of every op is a kill point.
	scenarios := []struct {
		name   string
		legacy bool
		ops    []string
	}{
		{"first start, root rotation, retirement, intermediate rotation", false,
			[]string{"start", "rotate-root", "advance", "advance", "expire", "advance", "rotate-intermediate", "advance"}},
		// "=op" only builds the state: its kill points are covered above.
		{"aborts", false,
			[]string{"=start", "=rotate-root", "abort-root", "=rotate-root", "=advance", "abort-root", "advance", "=rotate-intermediate", "abort-intermediate", "advance"}},
		{"adopting a pre-intermediate root", true, []string{"start"}},
	}
	for _, sc := range scenarios {
		base := t.TempDir()
		legacyFP := ""
		if sc.legacy {
			legacyFP = legacyDataDir(t, base)
		}
		if err := setCrashClock(base, crashT0); err != nil {
			t.Fatal(err)
		}
		for i, op := range sc.ops {
			if build, ok := strings.CutPrefix(op, "="); ok {
				runInProcess(t, base, build)
				continue
			}
			// Record the steps op passes through, in a child like the
			// killed ones.
			rec := filepath.Join(t.TempDir(), "steps")
			probe := t.TempDir()
			copyDir(t, base, probe)
			if out, err := crashRun(t, probe, op, "", rec).CombinedOutput(); err != nil {
				t.Fatalf("%s: op %d %s without a kill: %v\n%s", sc.name, i, op, err, out)
			}
			steps := readLines(t, rec)
			for _, at := range steps {
				work := t.TempDir()
				copyDir(t, base, work)
				out, err := crashRun(t, work, op, at, "").CombinedOutput()
				if !killedBySIGKILL(err) {
					t.Fatalf("%s: op %s: the child was to die at %q but ended with %v:\n%s", sc.name, op, at, err, out)
				}
				stats.deterministic++
				stats.perOp[op]++
				checkRestart(t, work, stats, fmt.Sprintf("%s, op %s, SIGKILL at %q", sc.name, op, at))
				if legacyFP != "" {
					if _, st := stateRoots(t, crashData(work)); st.Signing != "" {
						ca, err := LoadOrCreate(crashOptions(work, crashClock(work)))
						if err != nil {
							t.Fatal(err)
						}
						if ca.Fingerprint() != legacyFP {
							t.Fatalf("%s: SIGKILL at %q: the pre-intermediate root was replaced", sc.name, at)
						}
						ca.Close()
					}
				}
			}
			// Move base on to the state after op.
			runInProcess(t, base, op)
		}
	}

	// Random kills: a child rotating in a loop, killed at a random moment,
	// restarted (checked) and killed again, on one data directory.
	work := t.TempDir()
	if err := setCrashClock(work, crashT0); err != nil {
		t.Fatal(err)
	}
	seed := uint64(time.Now().UnixNano())
	rnd := rand.New(rand.NewPCG(seed, 1))
	const randomKills = 30
	for stats.random < randomKills {
		progress := filepath.Join(work, "progress")
		_ = os.Remove(progress)
		cmd := crashRun(t, work, "loop", "", progress, crashSeed+"="+strconv.FormatUint(rnd.Uint64(), 10))
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// The delay runs from the child's "up" (process start-up is not
		// what is tested) over a range that covers LoadOrCreate and a few
		// rotations; the sleep is the random kill time itself.
		up := bufio.NewReader(stdout)
		if line, err := up.ReadString('\n'); err != nil || line != "up\n" {
			t.Fatalf("loop child did not start: %q %v\n%s", line, err, stderr.String())
		}
		delay := time.Duration(rnd.IntN(100_000)) * time.Microsecond
		time.Sleep(delay)
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_, _ = io.Copy(io.Discard, up)
		err = cmd.Wait()
		if !killedBySIGKILL(err) {
			t.Fatalf("random kill (seed %d): the loop ended by itself: %v\n%s", seed, err, stderr.String())
		}
		stats.random++
		last := "(no step point yet)"
		if steps := readLines(t, progress); len(steps) > 0 {
			last = strings.SplitN(steps[len(steps)-1], "#", 2)[0]
		}
		stats.randomAt[last]++
		checkRestart(t, work, stats, fmt.Sprintf("random SIGKILL %d after %s (seed %d)", stats.random, delay, seed))
	}

	total := stats.deterministic + stats.random
	d := slices.Clone(stats.restarts)
	slices.Sort(d)
	t.Logf("SIGKILLs: %d (%d at step boundaries: %v; %d at random moments, by the last step point passed: %v); every restart healthy; proxies' leaves verified after restarts: %d; temporary files found after kills and removed: %d; restart (LoadOrCreate incl. cleanup) p50 %s, max %s; test took %s",
		total, stats.deterministic, stats.perOp, stats.random, stats.randomAt, stats.leavesChecked, stats.tempFilesRemoved.Load(),
		d[len(d)/2].Round(time.Microsecond), d[len(d)-1].Round(time.Microsecond), time.Since(started).Round(time.Millisecond))
	fmt.Printf("crash test: %d SIGKILLs, every restart healthy\n", total)
	if total < 50 {
		t.Fatalf("only %d kills; the issue asks for at least 50", total)
	}
	// Every restart after the first op's issues checks the leaves handed
	// out before it; far fewer than one per kill means they went missing.
	if stats.leavesChecked < total {
		t.Fatalf("only %d leaves held by proxies were verified after %d restarts: the leaf check proved nothing", stats.leavesChecked, total)
	}
}

func readLines(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // the op passed no step
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if l != "" {
			out = append(out, l)
		}
	}
	return out
}
