package e2e

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/meshd/meshd/internal/envoytest"
)

// demoSteps is the number of steps scripts/demo.sh reports.
const demoSteps = 8

// TestFreshClone runs what the README tells a new user to run, from a
// fresh clone of the repository's HEAD (what is committed, nothing else):
// the set-up command that runs meshd, and scripts/demo.sh (with ENVOY_BIN
// set so it does not install Envoy again), which must report every step OK.
// Afterwards no process either started may be left, and the demo's
// temporary directory must be gone. Then the demo again, interrupted by a
// Ctrl-C (SIGINT to its process group) once the mesh is up.
//
// They all use the quickstart's fixed ports, so they run one after another.
func TestFreshClone(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the whole demo")
	}
	envoy := envoytest.Binary(t)
	lockQuickstartPorts(t)
	clone := cloneHEAD(t)

	t.Run("README: meshd on the quickstart", func(t *testing.T) {
		cmdline := readmeSetupCommand(t, clone, "go run ./cmd/meshd")
		r := startInClone(t, clone, "bash", "-c", cmdline)
		if !r.waitFor(t, 3*time.Minute, func() bool {
			tok, _ := os.ReadFile(filepath.Join(r.home, ".local", "state", "meshd", "admin.token"))
			code, body := getURL("http://127.0.0.1:15014/debug/status", strings.TrimSpace(string(tok)))
			return code == 200 && strings.Contains(body, `"ready": true`) && strings.Count(body, `"renderedAt"`) == 6
		}) {
			t.Fatalf("meshd (%s) not ready with the quickstart's 6 proxies on 127.0.0.1:15014:\n%s", cmdline, r.output())
		}
		// Its state went to the default data directory in the user's home,
		// not into the clone, and it had nothing to warn about.
		if _, err := os.Stat(filepath.Join(r.home, ".local", "state", "meshd", "ca", "root-cert.pem")); err != nil {
			t.Errorf("no CA in ~/.local/state/meshd: %v", err)
		}
		if out, _ := exec.Command("git", "-C", clone, "status", "--porcelain", "--ignored").Output(); len(out) != 0 {
			t.Errorf("meshd left files in the clone:\n%s", out)
		}
		if strings.Contains(r.output(), "level=WARN") {
			t.Errorf("meshd warned at start")
		}
		// Ctrl-C, as a user stops it.
		r.signalGroup(t, syscall.SIGINT)
		r.wait(t, time.Minute)
		r.assertNothingLeft(t)
		if t.Failed() {
			t.Logf("output:\n%s", r.output())
		}
	})

	t.Run("scripts/demo.sh: every step OK, nothing left behind", func(t *testing.T) {
		d := startDemo(t, clone, envoy)
		code := d.wait(t, 5*time.Minute)
		out := d.output()
		if code != 0 {
			t.Errorf("demo.sh exited %d", code)
		}
		for n := 1; n <= demoSteps; n++ {
			if !regexp.MustCompile(fmt.Sprintf(`(?m)^\[%d/%d\] OK `, n, demoSteps)).MatchString(out) {
				t.Errorf("step %d/%d not reported OK", n, demoSteps)
			}
		}
		// The outcomes, as the demo printed them (not only its verdicts).
		for _, want := range []string{
			"OK   http GET http://127.0.0.1:9102/ -> 200 service=api caller=spiffe://cluster.local/ns/default/sa/web",
			"-> OK service=greeter caller=spiffe://cluster.local/ns/default/sa/web",
			`-> db echo "hello db" peer=127.0.0.1:`,
			"FAIL http GET http://127.0.0.1:15102/",
			"FAIL tcp 127.0.0.1:15104",
			"FAIL http GET http://127.0.0.1:9102/admin -> 403",
			"[meshd-denied]",
			"rbac_access_denied_matched_policy[default/api-deny-admin/rule-0] peer=spiffe://cluster.local/ns/default/sa/web GET /admin",
			"demo: all 8 steps OK",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("demo output lacks %q", want)
			}
		}
		summaries := regexp.MustCompile(`(?m)^ +(http|grpc|tcp) client: summary: calls=\d+ ok=([1-9]\d*) failed=0$`).FindAllString(out, -1)
		if len(summaries) != 3 {
			t.Errorf("want 3 rotation clients with calls and 0 failures, got %q", summaries)
		}
		if strings.Contains(out, "] FAIL ") {
			t.Errorf("a step failed")
		}
		d.assertNothingLeft(t)
		if t.Failed() {
			t.Logf("demo output:\n%s", out)
		}
	})

	t.Run("scripts/demo.sh: Ctrl-C stops everything", func(t *testing.T) {
		d := startDemo(t, clone, envoy)
		if !d.waitForLine(t, fmt.Sprintf("[3/%d] OK ", demoSteps), 3*time.Minute) {
			t.Fatalf("the mesh did not come up:\n%s", d.output())
		}
		d.signalGroup(t, syscall.SIGINT)
		code := d.wait(t, time.Minute)
		out := d.output()
		if code != 130 || !strings.Contains(out, "interrupted: stopping everything the demo started") {
			t.Errorf("after SIGINT: exit %d, want 130 and the interruption reported", code)
		}
		d.assertNothingLeft(t)
		if t.Failed() {
			t.Logf("demo output:\n%s", out)
		}
	})
}

// lockQuickstartPorts waits until no other test process on this machine
// (another package run, another checkout) uses the quickstart's fixed
// ports, and holds them until the test ends. The lock is an flock the
// kernel drops if the process dies.
func lockQuickstartPorts(t *testing.T) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(os.TempDir(), "meshd-quickstart-ports.lock"), os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatalf("locking the quickstart's ports: %v", err)
	}
	t.Cleanup(func() { f.Close() })
}

// readmeSetupCommand returns the command in the README's "Set up" section
// that starts with prefix, exactly as written.
func readmeSetupCommand(t *testing.T, clone, prefix string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(clone, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, setup, ok := strings.Cut(string(b), "\n## Set up\n")
	setup, _, _ = strings.Cut(setup, "\n## ")
	for _, line := range strings.Split(setup, "\n") {
		if ok && strings.HasPrefix(line, prefix) {
			return line
		}
	}
	t.Fatalf("README.md's Set up section has no command starting with %q", prefix)
	return ""
}

// goCaches pins the Go build and module caches (and GOPATH) to the ones in
// use now, as environment variables.
func goCaches(t *testing.T) []string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOCACHE", "GOMODCACHE", "GOPATH").Output()
	if err != nil {
		t.Fatalf("go env: %v", err)
	}
	v := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(v) != 3 {
		t.Fatalf("go env printed %q", out)
	}
	return []string{"GOCACHE=" + v[0], "GOMODCACHE=" + v[1], "GOPATH=" + v[2]}
}

// getURL fetches url with meshd's admin token (unless token is empty).
func getURL(url, token string) (int, string) {
	c := &http.Client{Timeout: 2 * time.Second}
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return 0, err.Error()
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// cloneHEAD clones the repository's committed HEAD into a temporary
// directory, as a user's `git clone` would get it.
func cloneHEAD(t *testing.T) string {
	t.Helper()
	root, err := envoytest.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "meshd")
	if out, err := exec.Command("git", "clone", "--quiet", "--no-hardlinks", root, dir).CombinedOutput(); err != nil {
		t.Fatalf("git clone %s: %v\n%s", root, err, out)
	}
	return dir
}

// A cloneRun is a command run from the fresh clone, in its own process
// group as a job in a terminal is.
type cloneRun struct {
	cmd    *exec.Cmd
	marker string // in the environment of the command and everything it starts
	tmp    string // its TMPDIR
	home   string // its HOME
	mu     sync.Mutex
	out    bytes.Buffer
	lines  chan string // output lines, closed at the end of the output
	done   chan struct{}
	err    error // Wait's result, once done is closed
}

func startDemo(t *testing.T, clone, envoy string) *cloneRun {
	t.Helper()
	// Not from the clone's root: it must work from any directory.
	return startIn(t, t.TempDir(), []string{"ENVOY_BIN=" + envoy, "MESHD_DEMO_KEEP="}, filepath.Join(clone, "scripts", "demo.sh"))
}

func startInClone(t *testing.T, clone string, args ...string) *cloneRun {
	t.Helper()
	return startIn(t, clone, nil, args...)
}

// startIn runs args in dir with env added to the environment, a fresh
// HOME and TMPDIR, and a marker variable its processes inherit.
func startIn(t *testing.T, dir string, env []string, args ...string) *cloneRun {
	t.Helper()
	b := make([]byte, 8)
	rand.Read(b)
	d := &cloneRun{marker: "MESHD_E2E_CLONE_RUN=" + hex.EncodeToString(b), tmp: t.TempDir(), home: t.TempDir(),
		lines: make(chan string, 1024), done: make(chan struct{})}
	d.cmd = exec.Command(args[0], args[1:]...)
	d.cmd.Dir = dir
	// A new user's HOME, but this machine's Go caches: a fresh HOME would
	// download and build every module again.
	d.cmd.Env = append(append(os.Environ(), goCaches(t)...), "HOME="+d.home, "XDG_STATE_HOME=", "TMPDIR="+d.tmp, d.marker)
	d.cmd.Env = append(d.cmd.Env, env...)
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	pr, pw := io.Pipe()
	d.cmd.Stdout, d.cmd.Stderr = pw, pw
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			d.mu.Lock()
			d.out.WriteString(sc.Text() + "\n")
			d.mu.Unlock()
			select {
			case d.lines <- sc.Text():
			default: // nobody is waiting for lines; output() has them
			}
		}
		close(d.lines)
	}()
	go func() { d.err = d.cmd.Wait(); pw.Close(); close(d.done) }()
	t.Cleanup(func() {
		select {
		case <-d.done:
		default:
			syscall.Kill(-d.cmd.Process.Pid, syscall.SIGTERM)
			<-d.done
		}
		// Whatever a failed run left behind: stop it, by PID.
		for _, p := range processesWith(d.marker) {
			syscall.Kill(p.pid, syscall.SIGKILL)
		}
	})
	return d
}

func (d *cloneRun) output() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.out.String()
}

// signalGroup sends sig to the run's process group, as a terminal does
// for Ctrl-C.
func (d *cloneRun) signalGroup(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := syscall.Kill(-d.cmd.Process.Pid, sig); err != nil {
		t.Fatal(err)
	}
}

// waitFor polls cond every 100 ms until it holds, the run ends, or timeout
// passes.
func (d *cloneRun) waitFor(t *testing.T, timeout time.Duration, cond func() bool) bool {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if cond() {
			return true
		}
		select {
		case <-d.done:
			return cond()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return false
}

// waitForLine waits until the demo prints a line starting with prefix.
func (d *cloneRun) waitForLine(t *testing.T, prefix string, timeout time.Duration) bool {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case l, ok := <-d.lines:
			if !ok {
				return false
			}
			if strings.HasPrefix(l, prefix) {
				return true
			}
		case <-deadline:
			return false
		}
	}
}

// wait waits for the script to exit and returns its exit status.
func (d *cloneRun) wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-d.done:
	case <-time.After(timeout):
		t.Fatalf("%s still running after %v:\n%s", d.cmd.Path, timeout, d.output())
	}
	var ee *exec.ExitError
	if errors.As(d.err, &ee) {
		return ee.ExitCode()
	}
	if d.err != nil {
		t.Fatalf("%s: %v", d.cmd.Path, d.err)
	}
	return 0
}

// assertNothingLeft fails if a process the demo started still runs, or its
// temporary directory remains.
func (d *cloneRun) assertNothingLeft(t *testing.T) {
	t.Helper()
	for _, p := range processesWith(d.marker) {
		t.Errorf("left running: pid %d %s", p.pid, p.cmdline)
	}
	entries, err := os.ReadDir(d.tmp)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		t.Errorf("left behind in TMPDIR: %s", e.Name())
	}
}

type process struct {
	pid     int
	cmdline string
}

// processesWith lists the processes whose environment holds marker
// (KEY=VALUE): the script and everything it started inherit it.
func processesWith(marker string) []process {
	var found []process
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, dir := range dirs {
		env, err := os.ReadFile(filepath.Join(dir, "environ"))
		if err != nil || !bytes.Contains(append([]byte{0}, env...), []byte("\x00"+marker+"\x00")) {
			continue
		}
		pid, _ := strconv.Atoi(filepath.Base(dir))
		cmd, _ := os.ReadFile(filepath.Join(dir, "cmdline"))
		found = append(found, process{pid, strings.Join(strings.Split(strings.TrimRight(string(cmd), "\x00"), "\x00"), " ")})
	}
	return found
}

// scripts/demo.sh and the quickstart start Envoy with the flags the tests
// run it with (envoytest.SidecarFlags), so the demo shows what the tests
// prove.
func TestDemoStartsEnvoyLikeTheTests(t *testing.T) {
	root, err := envoytest.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	want := strings.Join(envoytest.SidecarFlags, " ")
	for _, f := range []string{"scripts/demo.sh", "examples/quickstart/README.md", "envoy-configs/README.md"} {
		b, err := os.ReadFile(filepath.Join(root, f))
		if err != nil {
			t.Fatal(err)
		}
		starts := 0
		// Join continued lines, then look at every line that starts Envoy.
		for _, line := range strings.Split(strings.ReplaceAll(string(b), "\\\n", " "), "\n") {
			if !strings.Contains(line, `"$ENVOY" -c `) {
				continue
			}
			starts++
			if !strings.Contains(strings.Join(strings.Fields(line), " "), want) {
				t.Errorf("%s starts Envoy without %q: %s", f, want, strings.TrimSpace(line))
			}
		}
		if starts == 0 {
			t.Errorf("%s: no line starts Envoy (\"$ENVOY\" -c ...); this test is stale", f)
		}
	}
}

// The leftover check must see a process that carries the marker.
func TestProcessesWithFindsMarkedProcesses(t *testing.T) {
	marker := "MESHD_E2E_CLONE_RUN=selftest" + strconv.Itoa(os.Getpid())
	cmd := exec.Command("sleep", "60")
	cmd.Env = append(os.Environ(), marker)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	found := processesWith(marker)
	if len(found) != 1 || found[0].pid != cmd.Process.Pid || found[0].cmdline != "sleep 60" {
		t.Fatalf("processesWith found %+v, want pid %d sleep 60", found, cmd.Process.Pid)
	}
	if other := processesWith(marker + "x"); len(other) != 0 {
		t.Fatalf("a different marker matched %+v", other)
	}
}

// Every binary prints its build for --version, without other flags.
func TestVersionFlags(t *testing.T) {
	for _, b := range []string{"meshd", "meshctl", "mesh-agent"} {
		out, err := exec.Command(filepath.Join(binDir, b), "--version").CombinedOutput()
		if err != nil || !regexp.MustCompile(`^`+b+` \S+( \(.*\))? go\d`).Match(out) {
			t.Errorf("%s --version: %v %q", b, err, out)
		}
	}
}

// meshd warns at start when its data directory is open to other users or
// inside a git work tree, and starts anyway.
func TestMeshdWarnsAboutExposedDataDir(t *testing.T) {
	repo := t.TempDir()
	state := filepath.Join(repo, "deploy", "state")
	if err := os.MkdirAll(filepath.Join(repo, ".git"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(state, 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chmod(state, 0o755) // whatever the umask
	m := startMeshd(t, "services:\n  - name: web\n    endpoints: [{address: 127.0.0.1, port: 8080}]\n", "--data-dir", state)
	m.stop()
	log, err := os.ReadFile(m.logPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"level=WARN msg=\"data directory " + state + " has mode 0755",
		"level=WARN msg=\"data directory " + state + " is inside the git work tree " + repo,
	} {
		if !strings.Contains(string(log), want) {
			t.Errorf("meshd log lacks %q:\n%s", want, log)
		}
	}
}
