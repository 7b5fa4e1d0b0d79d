// Package consultest runs a real `consul agent -dev` for tests: every port
// moved off Consul's defaults, loopback only, started and stopped by the test.
package consultest

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshd/meshd/internal/testport"
	"github.com/meshd/meshd/internal/testwait"
)

// Agent is a real `consul agent -dev` on loopback, with every port moved
// off Consul's defaults (so that it never collides with a Consul already on
// the machine, or with another test's agent), started and stopped by the test.
type Agent struct {
	t      testing.TB
	bin    string
	dir    string
	ports  agentPorts
	node   string
	extra  string // extra HCL
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has exited
	log    *lockedBuffer
	Addr   string // HTTP API, host:port
	Client *api.Client
}

type agentPorts struct{ http, dns, serfLAN, serfWAN, server int }

// Binary finds the consul binary: $CONSUL_BIN, then PATH, then the
// repository's .tools/bin/consul (where scripts/install-consul.sh puts it).
// Without one the test fails with the install hint, unless
// MESHD_ALLOW_NO_CONSUL=1 says skipping is fine.
func Binary(t testing.TB) string {
	t.Helper()
	if b := os.Getenv("CONSUL_BIN"); b != "" {
		return b
	}
	if b, err := exec.LookPath("consul"); err == nil {
		return b
	}
	_, file, _, _ := runtime.Caller(0)
	b := filepath.Join(filepath.Dir(file), "..", "..", ".tools", "bin", "consul")
	if _, err := os.Stat(b); err == nil {
		return b
	}
	const hint = "no consul binary: run scripts/install-consul.sh (builds Consul v1.16.3 into .tools/bin), or put consul on PATH, or set CONSUL_BIN"
	if os.Getenv("MESHD_ALLOW_NO_CONSUL") == "1" {
		t.Skip(hint + " (skipping: MESHD_ALLOW_NO_CONSUL=1)")
	}
	t.Fatal(hint + "; set MESHD_ALLOW_NO_CONSUL=1 to skip these tests instead")
	return ""
}

// Start starts a dev agent and waits until it has a leader and its
// node is in the catalog. extraHCL is appended to the agent's configuration.
func Start(t testing.TB, extraHCL string) *Agent {
	t.Helper()
	a := &Agent{
		t:     t,
		bin:   Binary(t),
		dir:   t.TempDir(),
		node:  "meshd-test",
		extra: extraHCL,
	}
	// Consul cannot bind port 0 and report it; these ports are reserved
	// for this test process (TCP and UDP: serf and DNS use both).
	p := testport.Get
	a.ports = agentPorts{http: p(t), dns: p(t), serfLAN: p(t), serfWAN: p(t), server: p(t)}
	a.Addr = fmt.Sprintf("127.0.0.1:%d", a.ports.http)
	cfg := api.DefaultNonPooledConfig()
	cfg.Address = a.Addr
	cfg.Token = ""
	c, err := api.NewClient(cfg)
	if err != nil {
		t.Fatalf("consul client: %v", err)
	}
	a.Client = c
	t.Cleanup(a.Stop)
	a.Start()
	return a
}

// Start (re)starts the agent on the same ports. A dev agent keeps its state in
// memory, so a restarted agent starts empty with low Raft indexes: from a
// watcher's point of view that is an index reset.
func (a *Agent) Start() {
	t := a.t
	t.Helper()
	hcl := fmt.Sprintf(`ports {
  http = %d
  dns = %d
  serf_lan = %d
  serf_wan = %d
  server = %d
  grpc = -1
  grpc_tls = -1
  https = -1
}
limits {
  http_max_conns_per_client = 8192
}
%s`, a.ports.http, a.ports.dns, a.ports.serfLAN, a.ports.serfWAN, a.ports.server, a.extra)
	cfgFile := filepath.Join(a.dir, "ports.hcl")
	if err := os.WriteFile(cfgFile, []byte(hcl), 0o600); err != nil {
		t.Fatal(err)
	}
	a.log = &lockedBuffer{}
	a.cmd = exec.Command(a.bin, "agent", "-dev", "-bind", "127.0.0.1", "-client", "127.0.0.1",
		"-node", a.node, "-log-level", "warn", "-config-file", cfgFile)
	a.cmd.Stdout, a.cmd.Stderr = a.log, a.log
	a.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := a.cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", a.bin, err)
	}
	exited := make(chan struct{})
	a.exited = exited
	go func(cmd *exec.Cmd) { _ = cmd.Wait(); close(exited) }(a.cmd)
	err := testwait.Wait(30*time.Second, func() error {
		select {
		case <-exited:
			a.cmd = nil
			t.Fatalf("consul agent exited at start-up; its output:\n%s", a.log.String())
		default:
		}
		leader, err := a.Client.Status().Leader()
		if err != nil || leader == "" {
			return fmt.Errorf("no leader (%q, %v)", leader, err)
		}
		if _, _, err := a.Client.Catalog().Node(a.node, nil); err != nil {
			return fmt.Errorf("own node not in the catalog: %w", err)
		}
		// The agent's own node (and "consul" service) is registered.
		if svcs, _, err := a.Client.Catalog().Services(nil); err != nil || len(svcs) == 0 {
			return fmt.Errorf("no services in the catalog (%v)", err)
		}
		return nil
	})
	if err != nil {
		a.Stop()
		t.Fatalf("consul agent on %s did not get ready: %v; its output:\n%s", a.Addr, err, a.log.String())
	}
}

// Stop kills the agent (by its own PID) and waits for it to exit.
func (a *Agent) Stop() {
	if a.cmd == nil || a.cmd.Process == nil {
		return
	}
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.exited:
	case <-time.After(10 * time.Second):
		_ = a.cmd.Process.Kill()
		<-a.exited
	}
	a.cmd = nil
	// The HTTP port must be free again before a restart reuses it.
	err := testwait.Wait(5*time.Second, func() error {
		c, err := net.DialTimeout("tcp", a.Addr, 100*time.Millisecond)
		if err != nil {
			return nil
		}
		c.Close()
		return fmt.Errorf("%s still accepts connections", a.Addr)
	})
	if err != nil {
		a.t.Errorf("stopped consul agent: %v", err)
	}
}

// Register registers an application instance with a TTL check (initially
// passing) and a Connect sidecar whose only check is an alias of the
// application, the way a VM deployment does it (see examples/consul-vm).
func (a *Agent) Register(id, name string, appPort, sidecarPort int, meta map[string]string, upstreams ...api.Upstream) {
	a.t.Helper()
	reg := &api.AgentServiceRegistration{
		ID: id, Name: name, Port: appPort, Address: "127.0.0.1", Meta: meta,
		Check: &api.AgentServiceCheck{CheckID: "ttl:" + id, Name: "app alive", TTL: "10m", Status: api.HealthPassing},
		Connect: &api.AgentServiceConnect{SidecarService: &api.AgentServiceRegistration{
			Port: sidecarPort,
			// Without checks Consul adds a TCP check of the sidecar port,
			// which fails here because no Envoy runs.
			Checks: api.AgentServiceChecks{{Name: "app", AliasService: id}},
			Proxy:  &api.AgentServiceConnectProxyConfig{Upstreams: upstreams},
		}},
	}
	if err := a.Client.Agent().ServiceRegister(reg); err != nil {
		a.t.Fatalf("registering %s: %v", id, err)
	}
}

// Deregister removes an application instance and its sidecar.
func (a *Agent) Deregister(id string) {
	a.t.Helper()
	// Deregistering the application removes its sidecar_service too.
	if err := a.Client.Agent().ServiceDeregister(id); err != nil {
		a.t.Fatalf("deregistering %s: %v", id, err)
	}
}

// SetTTL sets the application's TTL check to status (api.HealthPassing,
// api.HealthWarning, api.HealthCritical).
func (a *Agent) SetTTL(id, status string) {
	a.t.Helper()
	if err := a.Client.Agent().UpdateTTL("ttl:"+id, "set by test", status); err != nil {
		a.t.Fatalf("setting check of %s to %s: %v", id, status, err)
	}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.TrimSpace(l.b.String())
}

// PID is the running agent's process id (0 when stopped).
func (a *Agent) PID() int {
	if a.cmd == nil || a.cmd.Process == nil {
		return 0
	}
	return a.cmd.Process.Pid
}
