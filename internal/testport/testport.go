// Package testport hands out loopback ports for servers whose port a test
// must know before the server starts: Envoy listener ports that meshd puts
// into xDS from the catalog, the apps behind them, Consul's five ports.
// Servers that can report their address (meshd, Envoy's admin, anything
// the test binds itself) bind 127.0.0.1:0 instead and need none of this.
//
// "Bind :0, note the port, close it" is not enough: between the close and
// the server's bind, the kernel may give the same ephemeral port to another
// test process (go test runs packages in parallel, other worktrees run
// their tests too), and one CI run failed with Consul refusing to start
// because two agents got the same serf port. So a port here is:
//
//   - outside the kernel's ephemeral range (ip_local_port_range), so no
//     bind to port 0 and no outgoing connection is ever given it;
//   - reserved by an exclusive, non-blocking flock on <dir>/<port>.lock,
//     held until the test process exits (the kernel drops the lock then,
//     even after a crash), so no two processes that use this package hold
//     the same port at once;
//   - checked free for TCP and UDP on 127.0.0.1 at the time it is handed
//     out, to skip ports a program outside the tests is using.
//
// <dir> is $MESHD_TEST_PORT_DIR, or meshd-test-ports under the system temp
// directory; every worktree and user on a machine should share it.
package testport

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// EnvDir names the directory holding the lock files.
const EnvDir = "MESHD_TEST_PORT_DIR"

// Pool bounds: ports below 20000 are left to services and to the fixed
// ports of examples and hand-run experiments (Envoy's 9901, 10000, 15000…).
const (
	poolLow  = 20000
	poolHigh = 65535
)

var (
	mu   sync.Mutex
	held []*os.File // lock files of ports handed out; never closed (see package doc)
	pool []int      // candidate ports, computed once
	next int        // index in pool where the next search starts
)

// Get returns a loopback port reserved for this test process (TCP and UDP
// on 127.0.0.1 were free when it was reserved). It fails the test if none
// can be found.
func Get(t testing.TB) int {
	t.Helper()
	p, err := Reserve()
	if err != nil {
		t.Fatalf("reserving a loopback port: %v", err)
	}
	return p
}

// Reserve is Get for code without a testing.TB.
func Reserve() (int, error) {
	mu.Lock()
	defer mu.Unlock()
	if pool == nil {
		pool = candidates()
	}
	dir := os.Getenv(EnvDir)
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "meshd-test-ports")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, fmt.Errorf("port lock directory: %w", err)
	}
	// Like /tmp: every user's tests can add lock files and none can remove
	// another's. Fails harmlessly on a directory another user created.
	_ = os.Chmod(dir, os.ModePerm|os.ModeSticky)
	// Every process searches from the bottom of the pool and on from where
	// it stopped: the lock files stay as many as the ports in use at once
	// (never deleted: unlinking a lock file someone holds would let a second
	// process lock a new file of the same name), and a port a process
	// passed over is not retried by it.
	var lastErr error
	for i := range pool {
		j := (next + i) % len(pool)
		port := pool[j]
		f, err := lock(dir, port)
		if err != nil {
			lastErr = err
			continue
		}
		if f == nil { // another process holds it
			continue
		}
		if err := bindCheck(port); err != nil {
			f.Close() // someone outside the tests uses it; let it go
			lastErr = err
			continue
		}
		held = append(held, f)
		next = j + 1
		return port, nil
	}
	if lastErr == nil {
		lastErr = errors.New("all are reserved")
	}
	return 0, fmt.Errorf("no free port in %d candidates under %s: %w", len(pool), dir, lastErr)
}

// lock takes the port's lock file without waiting: nil, nil if another
// process (or another Get in this one: flock locks belong to the open file,
// not the process) holds it.
func lock(dir string, port int) (*os.File, error) {
	// Read-only is enough for flock, and opens a lock file another user
	// created (umask may have taken its write bits).
	f, err := os.OpenFile(filepath.Join(dir, strconv.Itoa(port)+".lock"), os.O_RDONLY|os.O_CREATE, 0o666)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, nil
		}
		return nil, fmt.Errorf("locking %s: %w", f.Name(), err)
	}
	return f, nil
}

// bindCheck binds TCP and UDP on 127.0.0.1:port and lets go at once.
// Consul's serf and DNS ports use UDP as well as TCP.
func bindCheck(port int) error {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	l.Close()
	u, err := net.ListenPacket("udp", addr)
	if err != nil {
		return err
	}
	u.Close()
	return nil
}

// candidates lists [poolLow, poolHigh] minus the kernel's ephemeral range.
func candidates() []int {
	lo, hi := ephemeralRange()
	var out []int
	for p := poolLow; p <= poolHigh; p++ {
		if p < lo || p > hi {
			out = append(out, p)
		}
	}
	if len(out) == 0 {
		// The ephemeral range covers everything: fall back to the whole
		// pool; the locks still keep test processes apart.
		for p := poolLow; p <= poolHigh; p++ {
			out = append(out, p)
		}
	}
	return out
}

// ephemeralRange is Linux's ip_local_port_range or, where that cannot be
// read, 32768-65535 (Linux's default range and IANA's dynamic ports).
func ephemeralRange() (lo, hi int) {
	lo, hi = 32768, 65535
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return lo, hi
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return lo, hi
	}
	l, err1 := strconv.Atoi(f[0])
	h, err2 := strconv.Atoi(f[1])
	if err1 != nil || err2 != nil || l > h {
		return lo, hi
	}
	return l, h
}
