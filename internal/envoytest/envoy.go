package envoytest

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/meshd/meshd/bootstrap"
	"github.com/meshd/meshd/internal/testport"
	"github.com/meshd/meshd/internal/testwait"
)

// Envoy is one running Envoy process owned by a test.
type Envoy struct {
	// LogPath is where its stdout and stderr go.
	LogPath string

	configPort uint32 // the admin port the config names; 0: any
	adminPath  string // where Envoy writes its admin address (--admin-address-path)
	adminMu    sync.Mutex
	admin      string // host:port read from adminPath, once there

	cmd    *exec.Cmd
	exited chan struct{} // closed when the process has been reaped
	err    error         // Wait's result, valid after exited is closed
	client *http.Client
}

// SidecarFlags are the command-line flags every Envoy sidecar runs with,
// here and wherever the project starts one for users: scripts/demo.sh and
// examples/quickstart start Envoy with exactly these (e2e
// TestDemoStartsEnvoyLikeTheTests), so what the tests prove is what users run.
// They end with the drain settings meshctl bootstrap prints
// (bootstrap.EnvoyDrainArgs), which bound how long a connection opened
// before an mTLS mode or tcp policy change is still served.
var SidecarFlags = append([]string{"--concurrency", "1", "--disable-hot-restart"}, bootstrap.EnvoyDrainArgs(0)...)

// startCount makes --base-id unique per call within this process.
var startCount atomic.Uint32

// logTailLines is how much of a failed test's Envoy log is shown.
const logTailLines = 100

// Start runs Envoy on configPath, whose admin listens on 127.0.0.1:adminPort,
// or on 127.0.0.1:0 if adminPort is 0 (then no port has to be reserved).
// Either way the admin address is the one Envoy reports it bound
// (--admin-address-path). The process is stopped (by PID) when the test
// ends; if the test failed, the end of Envoy's log is printed.
func Start(t testing.TB, configPath string, adminPort uint32) *Envoy {
	t.Helper()
	bin := Binary(t)
	dir := t.TempDir() // before t.Cleanup below, so the log outlives the process
	logPath := filepath.Join(dir, "envoy.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatalf("creating Envoy log: %v", err)
	}
	// Several Envoys run at once (parallel tests, several test binaries).
	// --disable-hot-restart means no shared memory or domain socket is
	// created, so they cannot collide; the unique --base-id is belt and
	// braces in case a config or a future flag re-enables hot restart.
	// pid_max is at most 2^22, so pid*100+n fits in uint32 with room for
	// Envoy's base_id*10 arithmetic.
	baseID := uint32(os.Getpid())*100 + startCount.Add(1)%100
	adminPath := filepath.Join(dir, "admin-address")
	args := append([]string{"-c", configPath, "--admin-address-path", adminPath}, SidecarFlags...)
	args = append(args, "--base-id", strconv.FormatUint(uint64(baseID), 10), "--log-level", "info",
		// Access logs (the denial lines tests look for) reach the log
		// file within 200 ms instead of Envoy's default 10 s.
		"--file-flush-interval-msec", "200")
	cmd := exec.Command(bin, args...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	if err := cmd.Start(); err != nil {
		logFile.Close()
		t.Fatalf("starting %s: %v", bin, err)
	}
	e := &Envoy{
		LogPath:    logPath,
		configPort: adminPort,
		adminPath:  adminPath,
		cmd:        cmd,
		exited:     make(chan struct{}),
		client:     &http.Client{},
	}
	go func() {
		e.err = cmd.Wait()
		logFile.Close()
		close(e.exited)
	}()
	t.Cleanup(func() {
		e.stop(t)
		if t.Failed() {
			t.Logf("last %d lines of Envoy log %s:\n%s", logTailLines, logPath, tail(logPath, logTailLines))
		}
	})
	return e
}

// Stop stops Envoy before the test ends (a restart with another
// bootstrap); the test's clean-up then has nothing left to do.
func (e *Envoy) Stop(t testing.TB) { e.stop(t) }

// stop asks Envoy to exit (SIGTERM lets it flush logs), then kills it.
func (e *Envoy) stop(t testing.TB) {
	select {
	case <-e.exited:
		return
	default:
	}
	// Signal only our own child, by PID.
	_ = e.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-e.exited:
		return
	case <-time.After(5 * time.Second):
	}
	_ = e.cmd.Process.Kill()
	select {
	case <-e.exited:
	case <-time.After(10 * time.Second):
		t.Errorf("Envoy (pid %d) did not exit after SIGKILL", e.cmd.Process.Pid)
	}
}

// PID is the Envoy process id.
func (e *Envoy) PID() int { return e.cmd.Process.Pid }

// Log returns Envoy's output so far.
func (e *Envoy) Log() string {
	b, err := os.ReadFile(e.LogPath)
	if err != nil {
		return fmt.Sprintf("(cannot read Envoy log: %v)", err)
	}
	return string(b)
}

// Exited reports whether the process has ended, and how.
func (e *Envoy) Exited() (bool, error) {
	select {
	case <-e.exited:
		return true, e.err
	default:
		return false, nil
	}
}

// WaitReady polls the admin /ready endpoint until it answers 200 "LIVE"
// (all initial xDS fetches done, listeners ready), failing the test if the
// timeout passes or Envoy exits first.
func (e *Envoy) WaitReady(t testing.TB, timeout time.Duration) {
	t.Helper()
	testwait.Until(t, timeout, func() error {
		if done, err := e.Exited(); done {
			t.Fatalf("Envoy exited before becoming ready (%v); last %d log lines:\n%s", err, logTailLines, tail(e.LogPath, logTailLines))
		}
		status, body, err := e.getWithin("/ready", time.Second)
		switch {
		case err != nil:
			return fmt.Errorf("Envoy not ready (last /ready: %w)", err)
		case status != http.StatusOK || strings.TrimSpace(body) != "LIVE":
			return fmt.Errorf("Envoy not ready (last /ready: %d %s)", status, strings.TrimSpace(body))
		}
		return nil
	})
}

// AdminAddr is Envoy's admin address (host:port) as Envoy reported it, or
// an error while Envoy has not bound it yet.
func (e *Envoy) AdminAddr() (string, error) {
	e.adminMu.Lock()
	defer e.adminMu.Unlock()
	if e.admin != "" {
		return e.admin, nil
	}
	b, err := os.ReadFile(e.adminPath)
	if errors.Is(err, fs.ErrNotExist) {
		return "", errors.New("admin not listening yet")
	}
	if err != nil {
		return "", err
	}
	addr := strings.TrimSpace(string(b))
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("admin address not (completely) written yet: %q", addr)
	}
	if e.configPort != 0 && port != strconv.FormatUint(uint64(e.configPort), 10) {
		return "", fmt.Errorf("Envoy's admin listens on %s, not on port %d as the test said", addr, e.configPort)
	}
	e.admin = addr
	return addr, nil
}

// AdminGET fetches an admin path such as "/config_dump" or
// "/stats?filter=^cluster\." and fails the test unless it answers 200.
func (e *Envoy) AdminGET(t testing.TB, path string) string {
	t.Helper()
	status, body, err := e.getWithin(path, 10*time.Second)
	if err != nil {
		t.Fatalf("Envoy admin GET %s: %v", path, err)
	}
	if status != http.StatusOK {
		t.Fatalf("Envoy admin GET %s: status %d: %s", path, status, body)
	}
	return body
}

// getWithin bounds each admin request, so that a poll cannot hang on an
// Envoy that accepts but does not answer.
func (e *Envoy) getWithin(path string, timeout time.Duration) (int, string, error) {
	addr, err := e.AdminAddr()
	if err != nil {
		return 0, "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := e.client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, "", err
	}
	return resp.StatusCode, string(b), nil
}

// Stat returns the current value of the counter or gauge called name (an
// exact name, e.g. "cluster.meshd_xds.upstream_cx_total"), and whether
// Envoy has such a stat.
func (e *Envoy) Stat(t testing.TB, name string) (int64, bool) {
	t.Helper()
	q := url.Values{"format": {"json"}, "filter": {"^" + regexp.QuoteMeta(name) + "$"}}
	body := e.AdminGET(t, "/stats?"+q.Encode())
	var doc struct {
		Stats []struct {
			Name  string           `json:"name"`
			Value *json.RawMessage `json:"value"`
		} `json:"stats"`
	}
	if err := json.Unmarshal([]byte(body), &doc); err != nil {
		t.Fatalf("parsing Envoy /stats JSON: %v\n%s", err, body)
	}
	for _, s := range doc.Stats {
		// Histograms come as an entry without name/value; skip them.
		if s.Name != name || s.Value == nil {
			continue
		}
		v, err := strconv.ParseInt(string(*s.Value), 10, 64)
		if err != nil {
			t.Fatalf("stat %s has non-integer value %s", name, *s.Value)
		}
		return v, true
	}
	return 0, false
}

// FreePort returns a loopback port reserved for this test process, for
// Envoy listeners and apps whose port must be known before they start
// (meshd puts it into xDS from the catalog). No other test process gets it
// while this one runs; see internal/testport. A server that can report the
// port it bound (Envoy's admin: pass 0 to Start) needs none.
func FreePort(t testing.TB) uint32 {
	t.Helper()
	return uint32(testport.Get(t))
}

// tail returns the last n lines of the file at path.
func tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}
