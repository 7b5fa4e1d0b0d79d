// Package netnstest runs tests across several "hosts" on one machine: each
// host is a Linux network namespace with its own address on a private L2
// segment (a bridge inside a namespace of its own, one veth per host), so
// that meshd, Consul, Envoy and applications talk over a real network, as
// in a docker-compose lab or on VMs, without a container engine.
//
// It needs root (creating namespaces) and iproute2's `ip`; New skips the
// test with the reason otherwise. Everything it creates is named
// "<Prefix><pid>-…" and removed when the test ends, failed or not:
// processes are stopped by their own pid, then the namespaces are deleted.
// Namespaces left behind by a test binary that was killed (its pid is gone)
// are swept at the next New. Addresses are only ever configured inside these
// namespaces: the machine's own network is not touched.
package netnstest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Prefix starts the name of every namespace this package creates.
const Prefix = "meshdt"

// Network is a set of hosts on one private segment.
type Network struct {
	t      testing.TB
	name   string // "<Prefix><pid>-<n>", unique per Network in this process
	sw     string // the switch namespace (holds the bridge)
	subnet netip.Prefix
	dir    string
	mu     sync.Mutex
	hosts  []*Host
}

// Host is one network namespace on a Network.
type Host struct {
	// Name is the host's name in the test ("meshd", "vm1").
	Name string
	// NS is the network namespace's name (for `ip netns exec`).
	NS string
	// Addr is the host's address on the segment.
	Addr netip.Addr
	// Hostname, if set before the host runs anything, is the host name its
	// processes see (each runs in a UTS namespace of its own with this
	// name), as on a VM of that name.
	Hostname string

	net   *Network
	mu    sync.Mutex
	procs []*Proc
}

var networks struct {
	sync.Mutex
	n int
}

// New creates the switch of a new network whose hosts take addresses in
// subnet. The test is skipped, with the reason, unless it runs as root with
// `ip` available.
func New(t testing.TB, subnet netip.Prefix) *Network {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: network namespaces need root (run the tests as root, as CI does)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("skipping: iproute2's ip is not installed (apt-get install -y iproute2)")
	}
	sweepStale(t)
	networks.Lock()
	networks.n++
	n := networks.n
	networks.Unlock()
	nw := &Network{
		t:      t,
		name:   fmt.Sprintf("%s%d-%d", Prefix, os.Getpid(), n),
		subnet: subnet.Masked(),
		dir:    t.TempDir(),
	}
	nw.sw = nw.name + "-switch"
	t.Cleanup(nw.destroy)
	nw.ip("netns", "add", nw.sw)
	nw.ip("-n", nw.sw, "link", "add", "br0", "type", "bridge")
	nw.ip("-n", nw.sw, "link", "set", "br0", "up")
	return nw
}

// ip runs one iproute2 command and fails the test if it fails.
func (n *Network) ip(args ...string) {
	n.t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		n.t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
}

// AddHost creates a namespace called name with addr on the segment and
// loopback up. With the zero addr, the host has loopback only (a
// container without a network).
func (n *Network) AddHost(name string, addr netip.Addr) *Host {
	n.t.Helper()
	if addr.IsValid() && !n.subnet.Contains(addr) {
		n.t.Fatalf("host %s: %s is not in the network's subnet %s", name, addr, n.subnet)
	}
	n.mu.Lock()
	idx := len(n.hosts)
	h := &Host{Name: name, NS: n.name + "-" + name, Addr: addr, net: n}
	n.hosts = append(n.hosts, h)
	n.mu.Unlock()
	port := "p" + strconv.Itoa(idx) // the switch side; names are per namespace
	n.ip("netns", "add", h.NS)
	if !addr.IsValid() {
		n.ip("-n", h.NS, "link", "set", "lo", "up")
		return h
	}
	n.ip("-n", n.sw, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", h.NS)
	n.ip("-n", n.sw, "link", "set", port, "master", "br0", "up")
	n.ip("-n", h.NS, "addr", "add", netip.PrefixFrom(addr, n.subnet.Bits()).String(), "dev", "eth0")
	n.ip("-n", h.NS, "link", "set", "eth0", "up")
	n.ip("-n", h.NS, "link", "set", "lo", "up")
	return h
}

// Dir is a directory for the network's files (logs, state), removed with
// the test.
func (n *Network) Dir() string { return n.dir }

// destroy stops every process (newest first), then deletes the namespaces.
func (n *Network) destroy() {
	n.mu.Lock()
	hosts := n.hosts
	n.mu.Unlock()
	for i := len(hosts) - 1; i >= 0; i-- {
		hosts[i].stopAll()
	}
	for _, h := range hosts {
		deleteNS(h.NS)
	}
	deleteNS(n.sw)
}

// deleteNS kills whatever still runs in a namespace of ours (children our
// processes started) by pid, then deletes it.
func deleteNS(ns string) {
	if out, err := exec.Command("ip", "netns", "pids", ns).Output(); err == nil {
		for _, f := range strings.Fields(string(out)) {
			if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	_ = exec.Command("ip", "netns", "del", ns).Run()
}

// sweepStale deletes namespaces of this package whose creating process no
// longer exists (a test binary killed by a timeout cannot clean up).
func sweepStale(t testing.TB) {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], Prefix) {
			continue
		}
		rest := strings.TrimPrefix(f[0], Prefix)
		pidText, _, ok := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidText)
		if !ok || err != nil || pid == os.Getpid() {
			continue
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
			continue // its test is still running
		}
		t.Logf("netnstest: removing namespace %s left by an earlier test run (pid %d is gone)", f[0], pid)
		deleteNS(f[0])
	}
}

// Command is cmd run inside the host's namespace (`ip netns exec NS ...`).
// ip execs the program, so the process's pid is the program's own.
func (h *Host) Command(name string, args ...string) *exec.Cmd {
	argv := append([]string{"netns", "exec", h.NS}, name)
	if h.Hostname != "" {
		// unshare and sh exec in turn: the pid is still the program's.
		argv = append([]string{"netns", "exec", h.NS, "unshare", "--uts", "sh", "-c", `hostname "$0" && exec "$@"`, h.Hostname}, name)
	}
	cmd := exec.Command("ip", append(argv, args...)...)
	// If the test binary dies, its processes die with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

// Run runs a command in the host to completion and returns its combined
// output; err is set if it failed or took longer than timeout.
func (h *Host) Run(timeout time.Duration, name string, args ...string) (string, error) {
	return h.RunEnv(timeout, nil, name, args...)
}

// RunEnv is Run with the environment env (nil: the test's own).
func (h *Host) RunEnv(timeout time.Duration, env []string, name string, args ...string) (string, error) {
	cmd := h.Command(name, args...)
	cmd.Env = env
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return "", err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			return out.String(), fmt.Errorf("%s on %s: %w", strings.Join(append([]string{name}, args...), " "), h.Name, err)
		}
		return out.String(), nil
	case <-time.After(timeout):
		_ = cmd.Process.Kill()
		<-done
		return out.String(), fmt.Errorf("%s on %s: still running after %s", strings.Join(append([]string{name}, args...), " "), h.Name, timeout)
	}
}

// MustRun is Run that fails the test on error.
func (h *Host) MustRun(t testing.TB, timeout time.Duration, name string, args ...string) string {
	t.Helper()
	out, err := h.Run(timeout, name, args...)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	return out
}

// Proc is a long-running process on a host.
type Proc struct {
	// Name identifies the process in logs ("envoy-orders").
	Name    string
	LogPath string
	cmd     *exec.Cmd
	done    chan struct{}
	err     error
}

// Start starts a long-running process in the host, its output going to a
// log file; it is stopped when the test ends (by its pid), and the end of
// its log is printed if the test failed. env, if not nil, is the process's
// whole environment.
func (h *Host) Start(t testing.TB, name string, env []string, argv ...string) *Proc {
	t.Helper()
	logPath := filepath.Join(h.net.dir, h.Name+"-"+name+".log")
	// A name is used once per host: a second process would append to the
	// first one's log, and a test reading it would see both.
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatalf("starting %s on %s: %v (give each process of a host its own name)", name, h.Name, err)
	}
	cmd := h.Command(argv[0], argv[1:]...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("starting %s on %s: %v", name, h.Name, err)
	}
	p := &Proc{Name: h.Name + "/" + name, LogPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); f.Close(); close(p.done) }()
	h.mu.Lock()
	h.procs = append(h.procs, p)
	h.mu.Unlock()
	t.Cleanup(func() {
		p.Stop()
		if t.Failed() {
			t.Logf("last lines of %s (%s):\n%s", p.Name, strings.Join(argv, " "), tail(p.Log(), 40))
		}
	})
	return p
}

// PID is the process id.
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Log is the process's output so far.
func (p *Proc) Log() string {
	b, err := os.ReadFile(p.LogPath)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", p.LogPath, err)
	}
	return string(b)
}

// Exited reports whether the process has ended, and how.
func (p *Proc) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// Wait waits up to timeout for the process to exit on its own.
func (p *Proc) Wait(timeout time.Duration) (error, bool) {
	select {
	case <-p.done:
		return p.err, true
	case <-time.After(timeout):
		return nil, false
	}
}

// Signal sends sig to the process (by its pid).
func (p *Proc) Signal(sig syscall.Signal) {
	select {
	case <-p.done:
	default:
		_ = p.cmd.Process.Signal(sig)
	}
}

// Stop asks the process to exit (SIGTERM), then kills it after 10 s.
func (p *Proc) Stop() {
	p.Signal(syscall.SIGTERM)
	if _, ok := p.Wait(10 * time.Second); !ok {
		p.Kill()
	}
}

// Kill ends the process at once (SIGKILL), as a crash would, and waits.
func (p *Proc) Kill() {
	p.Signal(syscall.SIGKILL)
	<-p.done
}

func (h *Host) stopAll() {
	h.mu.Lock()
	procs := h.procs
	h.mu.Unlock()
	for i := len(procs) - 1; i >= 0; i-- {
		procs[i].Stop()
	}
}

// DialContext opens a connection from inside the host's namespace: the
// socket is created on an OS thread switched into the namespace, which is
// switched back before the thread is used for anything else. The test
// process can so reach a host's loopback services (admin APIs, an app
// bound to 127.0.0.1) without a helper process.
func (h *Host) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	// A goroutine of its own: if switching back fails, its thread is left
	// locked and the runtime discards it when the goroutine ends.
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		c, err, restored := dialIn(ctx, "/var/run/netns/"+h.NS, network, addr)
		if restored {
			runtime.UnlockOSThread()
		}
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}

func dialIn(ctx context.Context, nsPath, network, addr string) (c net.Conn, err error, restored bool) {
	orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", syscall.Gettid()))
	if err != nil {
		return nil, err, true
	}
	defer orig.Close()
	target, err := os.Open(nsPath)
	if err != nil {
		return nil, err, true
	}
	defer target.Close()
	if err := setns(target.Fd()); err != nil {
		return nil, fmt.Errorf("entering %s: %w", nsPath, err), true
	}
	c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
	if rerr := setns(orig.Fd()); rerr != nil {
		if c != nil {
			c.Close()
		}
		return nil, fmt.Errorf("leaving %s: %w", nsPath, rerr), false
	}
	return c, err, true
}

func setns(fd uintptr) error {
	return unix.Setns(int(fd), unix.CLONE_NEWNET)
}

// HTTPClient is a client whose connections start inside the host.
func (h *Host) HTTPClient(timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout, Transport: &http.Transport{
		Proxy: nil, DialContext: h.DialContext, DisableKeepAlives: true,
	}}
}

// Get fetches url from inside the host and returns the status and body.
func (h *Host) Get(url string) (int, string, error) {
	return h.GetWithToken(url, "")
}

// GetWithToken is Get with Authorization: Bearer token (meshd's admin
// API), unless token is empty.
func (h *Host) GetWithToken(url, token string) (int, string, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := h.HTTPClient(10 * time.Second).Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// Post sends an empty POST from inside the host.
func (h *Host) Post(url string) (int, string, error) {
	resp, err := h.HTTPClient(10*time.Second).Post(url, "text/plain", nil)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
