package netnstest

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshd/meshd/internal/testwait"
)

// helperEnv makes the test binary act as a small TCP server when it is
// started inside a namespace: it answers every connection with the name in
// $NETNSTEST_NAME and the address the connection arrived on.
const helperEnv = "NETNSTEST_LISTEN"

func TestMain(m *testing.M) {
	if addr := os.Getenv(helperEnv); addr != "" {
		serve(addr, os.Getenv("NETNSTEST_NAME"))
		return
	}
	os.Exit(m.Run())
}

func serve(addr, name string) {
	var ls []net.Listener
	for _, a := range strings.Split(addr, ",") {
		l, err := net.Listen("tcp", a)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		ls = append(ls, l)
	}
	fmt.Println("listening")
	for _, l := range ls {
		go func(l net.Listener) {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				fmt.Fprintf(c, "%s %s\n", name, c.LocalAddr())
				c.Close()
			}
		}(l)
	}
	select {}
}

func ask(ctx context.Context, h *Host, addr string) (string, error) {
	c, err := h.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	return bufio.NewReader(c).ReadString('\n')
}

func waitListening(t *testing.T, p *Proc) {
	t.Helper()
	testwait.Until(t, testwait.Timeout, func() error {
		if strings.Contains(p.Log(), "listening") {
			return nil
		}
		if done, err := p.Exited(); done {
			t.Fatalf("%s exited: %v\n%s", p.Name, err, p.Log())
		}
		return fmt.Errorf("%s not listening:\n%s", p.Name, p.Log())
	})
}

func nsList(t *testing.T) string {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// Two hosts reach each other over the segment, each has a loopback of its
// own, the machine's own namespace gets no address, and everything is gone
// after the test: namespaces and processes.
func TestHostsTalkAndCleanUp(t *testing.T) {
	var a, b *Host
	var pid int
	subnet := netip.MustParsePrefix("10.250.7.0/24")
	t.Run("network", func(t *testing.T) {
		nw := New(t, subnet)
		a = nw.AddHost("a", netip.MustParseAddr("10.250.7.10"))
		b = nw.AddHost("b", netip.MustParseAddr("10.250.7.11"))
		env := append(os.Environ(), helperEnv+"=10.250.7.10:7000,127.0.0.1:7001", "NETNSTEST_NAME=a")
		p := a.Start(t, "server", env, os.Args[0])
		pid = p.PID()
		waitListening(t, p)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()

		got, err := ask(ctx, b, "10.250.7.10:7000")
		if err != nil || got != "a 10.250.7.10:7000\n" {
			t.Fatalf("b → a over the segment: %q, %v", got, err)
		}
		if got, err := ask(ctx, a, "127.0.0.1:7001"); err != nil || got != "a 127.0.0.1:7001\n" {
			t.Fatalf("a → its own loopback: %q, %v", got, err)
		}
		if _, err := ask(ctx, b, "127.0.0.1:7001"); err == nil {
			t.Fatal("b reached a's loopback port: the hosts share a loopback")
		}
		// A command run in a host sees only its own interfaces.
		out := b.MustRun(t, 10*time.Second, "ip", "-o", "-4", "addr", "show")
		if !strings.Contains(out, "10.250.7.11/24") || strings.Contains(out, "10.250.7.10") {
			t.Fatalf("addresses seen in b:\n%s", out)
		}
		if out, _ := exec.Command("ip", "-o", "-4", "addr", "show").Output(); strings.Contains(string(out), "10.250.7.") {
			t.Fatalf("the machine's own namespace got an address of the segment:\n%s", out)
		}
		// A host name of its own, for every command of the host.
		b.Hostname = "vm-b"
		if out := b.MustRun(t, 10*time.Second, "hostname"); out != "vm-b\n" {
			t.Fatalf("hostname in b: %q", out)
		}
		if h, _ := os.Hostname(); h == "vm-b" {
			t.Fatal("the machine's own host name changed")
		}
		// A host without an address has loopback only.
		iso := nw.AddHost("isolated", netip.Addr{})
		if _, err := ask(ctx, iso, "10.250.7.10:7000"); err == nil {
			t.Fatal("a host without an address reached the segment")
		}
		if out := iso.MustRun(t, 10*time.Second, "ip", "-o", "link", "show"); strings.Contains(out, "eth0") || !strings.Contains(out, "lo:") {
			t.Fatalf("links of a host without an address:\n%s", out)
		}
		if !strings.Contains(nsList(t), a.NS) {
			t.Fatalf("namespace %s not listed", a.NS)
		}
	})
	if a == nil {
		t.Skip("the network was not created")
	}
	list := nsList(t)
	for _, ns := range []string{a.NS, b.NS} {
		if strings.Contains(list, ns) {
			t.Errorf("namespace %s still exists after the test", ns)
		}
	}
	if err := syscall.Kill(pid, 0); err == nil {
		t.Errorf("process %d still runs after the test", pid)
	}
}

// A namespace whose creating process is gone is removed by the next New;
// one of a live process is kept.
func TestSweepStale(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root")
	}
	b, err := os.ReadFile("/proc/sys/kernel/pid_max")
	if err != nil {
		t.Fatal(err)
	}
	max, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	dead := fmt.Sprintf("%s%d-1-x", Prefix, max+1) // no process can have this pid
	live := fmt.Sprintf("%s%d-1-x", Prefix, os.Getppid())
	for _, ns := range []string{dead, live} {
		if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
	}
	t.Cleanup(func() { deleteNS(dead); deleteNS(live) })
	New(t, netip.MustParsePrefix("10.250.8.0/24"))
	list := nsList(t)
	if strings.Contains(list, dead) {
		t.Errorf("stale namespace %s not swept", dead)
	}
	if !strings.Contains(list, live) {
		t.Errorf("namespace %s of a live process was swept", live)
	}
}
