package sds

import (
	"bufio"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// TestStartupCleansLeftovers: what interrupted CA changes (and meshd before
// issue 13) leave in a data directory is removed at start, each removal
// logged by path; what the state names is untouched.
func TestStartupCleansLeftovers(t *testing.T) {
	ca := newTestCA(t)
	if err := ca.RotateIntermediate(); err != nil { // a root key copy in two generations
		t.Fatal(err)
	}
	if _, err := ca.Advance(nil); err != nil {
		t.Fatal(err)
	}
	caDir := filepath.Join(ca.opts.DataDir, "ca")
	live := ca.signing().id
	rootKey := mustRead(t, genPath(ca, genRootKeyFile))
	write := func(rel string, data []byte) string {
		p := filepath.Join(caDir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	leftovers := []string{
		// An orphan generation from an interrupted rotation, with keys.
		filepath.Dir(write("gen-00000000deadbeef/"+genInterKeyFile, rootKey)),
		// Temporary files of interrupted atomic writes.
		write(".state.json.tmp-123", []byte("{")),
		write(live+"/.intermediate-key.pem.tmp-9", rootKey),
		write(retiredDir+"/.x.tmp-1", nil),
		// meshd before issue 13 kept the root key of a retired generation.
		write(retiredDir+"/gen-0123456789abcdef/"+genRootKeyFile, rootKey),
		write(retiredDir+"/gen-0123456789abcdef/renamed.pem", rootKey),
		// An adopted pre-intermediate root key (adoption done, not removed).
		write(legacyRootKeyFile, rootKey),
	}
	tok := filepath.Join(ca.opts.DataDir, tokensDirName, "."+tokenKeyFile+".tmp-5")
	if err := os.MkdirAll(filepath.Dir(tok), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tok, rootKey, 0o600); err != nil {
		t.Fatal(err)
	}
	leftovers = append(leftovers, tok)
	keep := write(retiredDir+"/gen-0123456789abcdef/"+genRootCertFile, ca.signing().rootPEM)

	logs := &syncBuffer{}
	opts := ca.opts
	opts.Logger = testOptions("", ca.clock, logs).Logger
	re, err := LoadOrCreate(opts)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range leftovers {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("leftover %s still there (%v)", p, err)
		}
		if !strings.Contains(logs.String(), p) {
			t.Errorf("removal of %s not logged", p)
		}
	}
	if _, err := os.Stat(keep); err != nil {
		t.Errorf("a retired certificate was removed: %v", err)
	}
	assertNoKeyMaterial(t, "cleanup logs", logs.String(), rootKey)
	if re.Fingerprint() != ca.Fingerprint() || !re.IntermediateCert().Equal(ca.IntermediateCert()) {
		t.Error("cleanup changed the CA")
	}
	scanDataDir(t, re, "after cleanup")
}

// TestDataDirLockAcrossProcesses: a second process cannot open the data
// directory while another holds it, and is told the holder's pid; a killed
// holder leaves no stale lock.
func TestDataDirLockAcrossProcesses(t *testing.T) {
	work := t.TempDir()
	if err := setCrashClock(work, crashT0); err != nil {
		t.Fatal(err)
	}
	cmd := crashRun(t, work, "hold-lock", "", "")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	t.Cleanup(func() {
		if !killed {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "locked" {
		t.Fatalf("child did not take the lock: %q %v", line, err)
	}
	_, err = LoadOrCreate(crashOptions(work, crashT0))
	if !errors.Is(err, ErrDataDirLocked) {
		t.Fatalf("second process opened a locked data directory: %v", err)
	}
	if msg := err.Error(); !strings.Contains(msg, "process "+strconv.Itoa(cmd.Process.Pid)) || !strings.Contains(msg, LockFileName) {
		t.Errorf("error does not name the holder's pid %d and the lock file: %v", cmd.Process.Pid, err)
	}
	// Read-only opens (meshctl) do not need the lock.
	ro := crashOptions(work, crashT0)
	ro.NoCreate = true
	if _, err := LoadOrCreate(ro); err != nil {
		t.Errorf("read-only open of a locked directory: %v", err)
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	_ = cmd.Wait()
	killed = true
	ca, err := LoadOrCreate(crashOptions(work, crashT0))
	if err != nil {
		t.Fatalf("the lock outlived its killed holder: %v", err)
	}
	if b := mustRead(t, filepath.Join(crashData(work), LockFileName)); strings.TrimSpace(string(b)) != strconv.Itoa(os.Getpid()) {
		t.Errorf("lock file holds %q, want our pid", b)
	}
	// Within one process, a second open shares the lock; Close releases it.
	same, err := LoadOrCreate(crashOptions(work, crashT0))
	if err != nil {
		t.Fatalf("second open in the same process: %v", err)
	}
	same.Close()
	ca.Close()
	if locks[filepath.Clean(crashData(work))] != nil {
		t.Error("lock still registered after every Authority closed")
	}
}
