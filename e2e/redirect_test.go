package e2e

import (
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/internal/netnstest"
	"github.com/meshd/meshd/internal/testwait"
)

// TestRedirectRules installs meshctl redirect-traffic's rules with each
// backend in a network namespace and checks what the kernel then does with
// real connections, with plain echo servers standing in for the sidecar's
// listeners: outbound TCP reaches the capture port, except the proxy's uid,
// an excluded uid, an excluded port or CIDR, and loopback; TCP arriving for
// the app port reaches the inbound port. Installing twice changes nothing;
// removing leaves the packet filter as it was, and connections go where
// they were going again.
func TestRedirectRules(t *testing.T) {
	requireTool(t, "iptables", "iptables", "MESHD_ALLOW_NO_IPTABLES")
	requireTool(t, "setpriv", "util-linux", "MESHD_ALLOW_NO_IPTABLES")
	nw := netnstest.New(t, netip.MustParsePrefix("10.77.0.0/24"))
	w := nw.AddHost("workload", netip.MustParseAddr("10.77.0.2"))
	peer := nw.AddHost("peer", netip.MustParseAddr("10.77.0.3"))
	shared := sharedDir(t)
	demo := sharedBinary(t, shared, "demoapp")
	meshctl := filepath.Join(binDir, "meshctl")
	echo := func(h *netnstest.Host, name, listen string) {
		h.Start(t, name, nil, demo, "tcp", "--listen", listen, "--name", name)
	}
	echo(w, "capture", "0.0.0.0:15001")
	echo(w, "inbound", "0.0.0.0:15006")
	echo(w, "app", "0.0.0.0:8080")
	echo(peer, "peer", "0.0.0.0:7000")
	echo(peer, "peer-7001", "0.0.0.0:7001")
	// who answers a connection from h (as uid) to addr.
	who := func(h *netnstest.Host, uid int, addr string) string {
		argv := asUID(uid, demo, "call", "--tcp", addr, "--timeout", "3s")
		out, err := h.Run(20*time.Second, argv[0], argv[1:]...)
		if err != nil {
			return "failed: " + strings.TrimSpace(out)
		}
		_, after, _ := strings.Cut(out, "-> ")
		name, _, _ := strings.Cut(after, " ")
		return name
	}
	testwait.Until(t, 30*time.Second, func() error {
		for _, c := range []struct {
			h    *netnstest.Host
			addr string
		}{{w, "127.0.0.1:15001"}, {w, "127.0.0.1:15006"}, {w, "127.0.0.1:8080"}, {peer, "127.0.0.1:7000"}, {peer, "127.0.0.1:7001"}} {
			if got := who(c.h, 0, c.addr); strings.HasPrefix(got, "failed") {
				return os.ErrNotExist
			}
		}
		return nil
	})
	want := func(what, got, want string) {
		t.Helper()
		if got != want {
			t.Errorf("%s: answered by %q, want %q", what, got, want)
		}
	}
	run := func(args ...string) string {
		t.Helper()
		return w.MustRun(t, 30*time.Second, meshctl, append([]string{"redirect-traffic"}, args...)...)
	}
	installArgs := []string{"install", "--proxy-uid", "1337", "--exclude-uid", "1338", "--app-port", "8080", "--public-port", "15006",
		"--capture-port", "15001", "--exclude-outbound-port", "7001"}

	backends := []string{"iptables"}
	if _, err := exec.LookPath("nft"); err == nil {
		backends = append(backends, "nft")
	} else if os.Getenv("MESHD_ALLOW_NO_NFT") != "1" {
		t.Fatal("nft is not installed: scripts/test.sh installs it (apt-get install -y nftables); set MESHD_ALLOW_NO_NFT=1 to test the iptables backend only")
	}
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			beforeIPT, beforeNFT := nat(t, w)
			out := run(append(installArgs, "--backend", backend)...)
			if !strings.Contains(out, "installed with "+backend) {
				t.Fatalf("install said:\n%s", out)
			}
			installedIPT, installedNFT := nat(t, w)
			if backend == "iptables" && !strings.Contains(installedIPT, "MESHD_OUTPUT") || backend == "nft" && !strings.Contains(installedNFT, "table ip meshd") {
				t.Fatalf("no rules of meshd's after install:\n%s\n%s", installedIPT, installedNFT)
			}

			want("root to the peer", who(w, 0, "10.77.0.3:7000"), "capture")
			want("the proxy's uid to the peer", who(w, 1337, "10.77.0.3:7000"), "peer")
			want("an excluded uid to the peer", who(w, 1338, "10.77.0.3:7000"), "peer")
			want("an excluded port", who(w, 0, "10.77.0.3:7001"), "peer-7001")
			want("loopback", who(w, 0, "127.0.0.1:8080"), "app")
			want("the peer to the app port", who(peer, 0, "10.77.0.2:8080"), "inbound")
			want("the peer to another port of the workload", who(peer, 0, "10.77.0.2:15001"), "capture")

			// Installing again (the same or another configuration)
			// replaces the rules; it does not add to them.
			run(append(installArgs, "--backend", backend)...)
			if ipt, nft := nat(t, w); ipt != installedIPT || nft != installedNFT {
				t.Errorf("a second install changed the rules:\nbefore:\n%s%s\nafter:\n%s%s", installedIPT, installedNFT, ipt, nft)
			}
			run(append(installArgs, "--backend", backend, "--exclude-outbound-cidr", "10.77.0.3")...)
			want("an excluded CIDR", who(w, 0, "10.77.0.3:7000"), "peer")

			show := run("show", "-o", "json")
			if !strings.Contains(show, `"`+backend+`"`) {
				t.Errorf("show -o json does not list the %s rules:\n%s", backend, show)
			}

			out = run("remove")
			if !strings.Contains(out, "removed") {
				t.Errorf("remove said:\n%s", out)
			}
			ipt, nft := nat(t, w)
			if ipt != beforeIPT || strings.Contains(ipt, "MESHD") || strings.Contains(nft, "meshd") || strings.Contains(nft, "redirect") {
				t.Errorf("rules left after remove:\niptables-save:\n%s\nnft list ruleset:\n%s\nbefore install:\n%s\n%s", ipt, nft, beforeIPT, beforeNFT)
			}
			want("root to the peer, rules removed", who(w, 0, "10.77.0.3:7000"), "peer")
			want("the peer to the app port, rules removed", who(peer, 0, "10.77.0.2:8080"), "app")
			if out := run("remove"); !strings.Contains(out, "no rules of meshd's were installed") {
				t.Errorf("a second remove said:\n%s", out)
			}
			if out, err := w.Run(30*time.Second, meshctl, "redirect-traffic", "show"); err == nil || !strings.Contains(out, "no rules of meshd's are installed") {
				t.Errorf("show after remove: %v\n%s", err, out)
			}
		})
	}
}
