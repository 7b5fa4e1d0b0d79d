package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/meshd/meshd/internal/race"
	"github.com/meshd/meshd/internal/startline"
	"github.com/meshd/meshd/internal/testwait"
)

var binDir string

// TestMain builds the real binaries once; every test runs them as users do.
func TestMain(m *testing.M) {
	if os.Getenv(proxylessChildEnv) != "" {
		// This process is a helper another test started (it runs one
		// test function); it needs no binaries.
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "meshd-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	for c, pkg := range map[string]string{"meshd": "../cmd/meshd", "meshctl": "../cmd/meshctl", "mesh-agent": "../cmd/mesh-agent", "demoapp": "../examples/demoapp"} {
		args := []string{"build", "-o", filepath.Join(dir, c)}
		if race.Enabled {
			// go test -race ./e2e: the binaries under test run with the
			// race detector too (each meshd's log is checked at exit).
			args = append(args, "-race")
		}
		cmd := exec.Command("go", append(args, pkg)...)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "building", c, ":", err)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// meshd is one running control plane.
type meshd struct {
	t           testing.TB
	dir         string
	dataDir     string
	catalogPath string
	xdsAddr     string // bound by the first start (port 0), reused by restarts
	adminAddr   string
	cmd         *exec.Cmd
	logPath     string
	done        chan struct{}
}

// startMeshd writes catalog into a temp dir and starts meshd, its xDS and
// admin servers on ports the kernel picks (127.0.0.1:0), read back from its
// start line.
func startMeshd(t testing.TB, catalog string, extraArgs ...string) *meshd {
	t.Helper()
	dir := t.TempDir()
	m := &meshd{
		t: t, dir: dir,
		dataDir:     filepath.Join(dir, "data"),
		catalogPath: filepath.Join(dir, "catalog.yaml"),
		xdsAddr:     "127.0.0.1:0",
		adminAddr:   "127.0.0.1:0",
		logPath:     filepath.Join(dir, "meshd.log"),
		done:        make(chan struct{}),
	}
	// An empty catalog means no catalog file: the test passes another
	// source (--consul-address).
	if catalog != "" {
		m.writeCatalog(catalog)
	} else {
		m.catalogPath = ""
	}
	m.start(extraArgs...)
	return m
}

func (m *meshd) start(extraArgs ...string) {
	t := m.t
	t.Helper()
	logf, err := os.OpenFile(m.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if d := flagValue(extraArgs, "--data-dir"); d != "" {
		m.dataDir = d // the test's own (the last flag wins), for the admin token
	}
	args := append([]string{
		"--catalog", m.catalogPath, "--data-dir", m.dataDir,
		"--xds-listen", m.xdsAddr, "--admin-listen", m.adminAddr,
		"--debounce-holdoff", "20ms", "--debounce-max", "200ms",
		"--catalog-poll", "1s", "--log-level", "debug",
		// Tests that exercise PERMISSIVE or DISABLE pass their own
		// --mtls-mode (the last one wins).
		"--mtls-mode", "STRICT",
	}, extraArgs...)
	m.cmd = exec.Command(filepath.Join(binDir, "meshd"), args...)
	// meshd writes its log file itself (no pipe we copy from), so a test
	// that reads it after an action finds everything meshd logged before.
	m.cmd.Stdout, m.cmd.Stderr = logf, logf
	logStart, err := logf.Seek(0, io.SeekEnd) // a restart appends
	if err != nil {
		t.Fatal(err)
	}
	if err := m.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	m.done = make(chan struct{})
	go func() { m.cmd.Wait(); logf.Close(); close(m.done) }()
	t.Cleanup(func() {
		m.stop()
		if b, _ := os.ReadFile(m.logPath); bytes.Contains(b, []byte("WARNING: DATA RACE")) {
			t.Errorf("meshd reported a data race:\n%s", b[bytes.Index(b, []byte("WARNING: DATA RACE")):])
		}
		if t.Failed() {
			b, _ := os.ReadFile(m.logPath)
			lines := strings.Split(string(b), "\n")
			if len(lines) > 80 {
				lines = lines[len(lines)-80:]
			}
			t.Logf("meshd log (last lines):\n%s", strings.Join(lines, "\n"))
		}
	})
	m.waitReady(logStart)
}

func (m *meshd) stop() {
	select {
	case <-m.done:
		return
	default:
	}
	m.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-m.done:
	case <-time.After(10 * time.Second):
		m.cmd.Process.Kill()
		<-m.done
	}
}

// waitReady waits for the start line after logStart in meshd's log (and
// learns the bound addresses from it), then for /readyz.
func (m *meshd) waitReady(logStart int64) {
	m.t.Helper()
	exited := func() {
		b, _ := os.ReadFile(m.logPath)
		m.t.Fatalf("meshd exited during start:\n%s", b)
	}
	xds, admin, err := startline.Wait(context.Background(), m.logPath, logStart, m.done, 20*time.Second)
	if err != nil {
		select {
		case <-m.done:
			exited()
		default:
		}
		m.t.Fatal(err)
	}
	m.xdsAddr, m.adminAddr = xds, admin
	testwait.Until(m.t, 20*time.Second, func() error {
		select {
		case <-m.done:
			exited()
		default:
		}
		if code, body := m.adminGET("/readyz"); code != 200 {
			return fmt.Errorf("meshd not ready: /readyz %d %s", code, body)
		}
		return nil
	})
}

// writeCatalog replaces the catalog atomically (write + rename), as a
// deployment tool would.
func (m *meshd) writeCatalog(content string) {
	m.t.Helper()
	tmp := m.catalogPath + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		m.t.Fatal(err)
	}
	if err := os.Rename(tmp, m.catalogPath); err != nil {
		m.t.Fatal(err)
	}
}

// adminGET reads an admin endpoint with meshd's admin token, as meshctl
// does (the token is meshd's <data-dir>/admin.token).
func (m *meshd) adminGET(path string) (int, string) {
	return m.adminDo(http.MethodGet, path)
}

// adminPOST asks for an admin action, with the token and the content type
// meshd requires of actions.
func (m *meshd) adminPOST(path string) (int, string) {
	return m.adminDo(http.MethodPost, path)
}

func (m *meshd) adminDo(method, path string) (int, string) {
	req, err := http.NewRequest(method, "http://"+m.adminAddr+path, nil)
	if err != nil {
		return 0, err.Error()
	}
	req.Header.Set("Authorization", "Bearer "+m.adminToken())
	if method == http.MethodPost {
		req.Header.Set("Content-Type", "application/json")
	}
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// adminTokenFile is where meshd keeps its admin token.
func (m *meshd) adminTokenFile() string { return filepath.Join(m.dataDir, "admin.token") }

func (m *meshd) adminToken() string {
	b, err := os.ReadFile(m.adminTokenFile())
	if err != nil {
		m.t.Fatalf("meshd's admin token: %v", err)
	}
	return strings.TrimSpace(string(b))
}

func (m *meshd) rootCAFile() string { return filepath.Join(m.dataDir, "ca", "root-cert.pem") }

// meshctl runs the real CLI against this meshd's data dir and xDS address.
func (m *meshd) meshctl(args ...string) string {
	m.t.Helper()
	// meshd authenticates proxies: Envoy bootstraps get a token for their
	// service unless the test passes its own (identity_test.go).
	args = m.withAdminToken(m.withToken(args))
	cmd := exec.Command(filepath.Join(binDir, "meshctl"), args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		m.t.Fatalf("meshctl %s: %v\n%s", strings.Join(args, " "), err, errb.String())
	}
	return out.String()
}

type statusDoc struct {
	Ready bool `json:"ready"`
	// Migrations are the mTLS mode changes in progress.
	Migrations []struct {
		Proxy     string   `json:"proxy"`
		Phase     string   `json:"phase"`
		WaitingOn []string `json:"waitingOn"`
		Overdue   bool     `json:"overdue"`
	} `json:"migrations"`
	Catalog struct {
		LastError string `json:"lastError"`
		Rejected  int    `json:"rejected"`
		Accepted  int    `json:"accepted"`
	} `json:"catalog"`
	Proxies []struct {
		ID       string            `json:"id"`
		Versions map[string]string `json:"versions"`
		Error    string            `json:"error"`
		XDS      *struct {
			Connected bool `json:"connected"`
			Types     map[string]struct {
				Sent, Acked, Nacked, NackError string
			} `json:"types"`
		} `json:"xds"`
	} `json:"proxies"`
}

func (m *meshd) status() statusDoc {
	m.t.Helper()
	code, body := m.adminGET("/debug/status")
	if code != 200 {
		m.t.Fatalf("/debug/status: %d %s", code, body)
	}
	var s statusDoc
	if err := json.Unmarshal([]byte(body), &s); err != nil {
		m.t.Fatalf("/debug/status: %v\n%s", err, body)
	}
	return s
}

// assertAllACKed checks meshd's own view: every connected proxy has ACKed
// the current version of every type and none has NACKed anything.
func (m *meshd) assertAllACKed(ids ...string) {
	m.t.Helper()
	eventually(m.t, 10*time.Second, func() error {
		s := m.status()
		byID := map[string]int{}
		for i, p := range s.Proxies {
			byID[p.ID] = i
		}
		for _, id := range ids {
			i, ok := byID[id]
			if !ok {
				return fmt.Errorf("proxy %s not in status", id)
			}
			p := s.Proxies[i]
			if p.XDS == nil || !p.XDS.Connected {
				return fmt.Errorf("proxy %s not connected", id)
			}
			for typ, ts := range p.XDS.Types {
				if ts.Nacked != "" || ts.NackError != "" {
					return fmt.Errorf("proxy %s NACKed %s %s: %s", id, typ, ts.Nacked, ts.NackError)
				}
				if want := p.Versions[typ]; ts.Acked != want {
					return fmt.Errorf("proxy %s: %s acked %q, current %q", id, typ, ts.Acked, want)
				}
			}
		}
		return nil
	})
}

// eventually retries f until it succeeds or the timeout passes.
func eventually(t testing.TB, timeout time.Duration, f func() error) {
	t.Helper()
	testwait.Until(t, timeout, f)
}

// waitLog waits until meshd's log contains every one of wants, and returns
// the log. Reading it once is a race: meshd writes some lines after it
// serves (the --insecure-xds warning follows "meshd started", a refusal is
// logged as the client is answered).
func (m *meshd) waitLog(t testing.TB, wants ...string) string {
	t.Helper()
	var log string
	testwait.Until(t, testwait.Timeout, func() error {
		b, err := os.ReadFile(m.logPath)
		if err != nil {
			return err
		}
		log = string(b)
		for _, w := range wants {
			if !strings.Contains(log, w) {
				return fmt.Errorf("no %q in meshd's log:\n%s", w, log)
			}
		}
		return nil
	})
	return log
}

// logWatcher is an io.Writer sink for processes whose output tests inspect.
type logWatcher struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logWatcher) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logWatcher) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

var _ = context.Background
