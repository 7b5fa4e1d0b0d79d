package testport

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// Ports handed out in one process are distinct, outside the ephemeral
// range, and bindable.
func TestGetDistinctOutsideEphemeral(t *testing.T) {
	lo, hi := ephemeralRange()
	fallback := lo <= poolLow && hi >= poolHigh // candidates' fallback: the range covers the whole pool
	seen := map[int]bool{}
	for range 200 {
		p := Get(t)
		if seen[p] {
			t.Fatalf("port %d handed out twice", p)
		}
		seen[p] = true
		if p >= lo && p <= hi && !fallback {
			t.Errorf("port %d is in the ephemeral range %d-%d", p, lo, hi)
		}
		if p < poolLow || p > poolHigh {
			t.Errorf("port %d outside %d-%d", p, poolLow, poolHigh)
		}
	}
	// The last one is free to bind (the reservation does not occupy it).
	var last int
	for p := range seen {
		last = p
	}
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(last)))
	if err != nil {
		t.Fatalf("reserved port %d not bindable: %v", last, err)
	}
	l.Close()
}

// A port bound by someone else (here: this test) is skipped.
func TestGetSkipsBusyPort(t *testing.T) {
	small := smallPool(t, 2)
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(small[0])))
	if err != nil {
		t.Skipf("port %d not free here: %v", small[0], err)
	}
	defer l.Close()
	if p := Get(t); p != small[1] {
		t.Fatalf("got %d, want the free %d (the busy %d must be skipped)", p, small[1], small[0])
	}
	if _, err := Reserve(); err == nil {
		t.Fatal("a third port came out of a two-port pool with one busy, one reserved")
	}
}

// Two processes drawing from the same ports never get the same one: a
// child process reserves half of a small pool and holds it; this process
// then gets exactly the other half, and nothing more.
func TestProcessesNeverShare(t *testing.T) {
	const n = 6
	small := smallPool(t, 2*n)
	dir := os.Getenv(EnvDir)
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcessHolds$")
	cmd.Env = append(os.Environ(), "TESTPORT_HELPER=1", "TESTPORT_POOL="+join(small), fmt.Sprintf("TESTPORT_N=%d", n), EnvDir+"="+dir)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); cmd.Wait() }()
	// The child prints its ports on one line once it holds them all.
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("helper process: %v", err)
	}
	child := parse(t, strings.TrimSpace(strings.TrimPrefix(line, "PORTS ")))
	if len(child) != n {
		t.Fatalf("helper reserved %v, want %d ports", child, n)
	}
	var mine []int
	for range n {
		mine = append(mine, Get(t))
	}
	for _, p := range mine {
		if slices.Contains(child, p) {
			t.Fatalf("port %d reserved by both processes (child %v, parent %v)", p, child, mine)
		}
	}
	if p, err := Reserve(); err == nil {
		t.Fatalf("got port %d from a pool another process holds half of and this one the rest", p)
	}
}

// TestHelperProcessHolds is the child of TestProcessesNeverShare.
func TestHelperProcessHolds(t *testing.T) {
	if os.Getenv("TESTPORT_HELPER") != "1" {
		t.Skip("helper process for TestProcessesNeverShare")
	}
	pool = parse(t, os.Getenv("TESTPORT_POOL"))
	n, _ := strconv.Atoi(os.Getenv("TESTPORT_N"))
	var got []int
	for range n {
		got = append(got, Get(t))
	}
	fmt.Printf("PORTS %s\n", join(got))
	// Hold them until the parent closes stdin.
	_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
}

// smallPool restricts this process to n free candidate ports, with its own
// lock directory, until the test ends.
func smallPool(t *testing.T, n int) []int {
	t.Helper()
	t.Setenv(EnvDir, t.TempDir())
	mu.Lock()
	saved := pool
	if saved == nil {
		saved = candidates()
	}
	var small []int
	for _, p := range saved[len(saved)/2:] {
		if bindCheck(p) == nil {
			small = append(small, p)
		}
		if len(small) == n {
			break
		}
	}
	pool = small
	mu.Unlock()
	t.Cleanup(func() {
		mu.Lock()
		pool = saved
		mu.Unlock()
	})
	if len(small) < n {
		t.Skipf("only %d free candidate ports", len(small))
	}
	return small
}

func join(ps []int) string {
	var s []string
	for _, p := range ps {
		s = append(s, strconv.Itoa(p))
	}
	return strings.Join(s, ",")
}

func parse(t *testing.T, s string) []int {
	t.Helper()
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		p, err := strconv.Atoi(f)
		if err != nil {
			t.Fatalf("parsing ports %q: %v", s, err)
		}
		out = append(out, p)
	}
	return out
}
