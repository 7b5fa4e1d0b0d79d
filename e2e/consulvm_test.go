package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/internal/consultest"
	"github.com/meshd/meshd/internal/envoytest"
	"github.com/meshd/meshd/internal/netnstest"
)

// examples/consul-vm, as its README has a user deploy it, on four
// network-namespace "VMs". Files are installed under a directory per VM
// with these paths re-rooted there (the only change made to them), units
// are run as systemd would run their ExecStart, and the binaries are the
// ones under test.
const consulVMDir = "../examples/consul-vm"

// vmPaths are the absolute paths the example's files and units use on a
// VM; each is re-rooted under the VM's directory.
var vmPaths = []string{"/etc/consul.d", "/var/lib/consul", "/var/lib/meshd", "/etc/envoy/", "/etc/mesh-agent/", "/run/mesh-agent/", "/etc/demoapp/"}

// unit is a systemd unit file: per section, its keys' values in order.
type unit map[string]map[string][]string

// parseUnit reads a unit file the way systemd does for the keys this
// example uses: sections, comments, and lines continued with a backslash.
func parseUnit(path string) (unit, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	u := unit{}
	section := ""
	var cont string
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if cont != "" {
			line = cont + " " + line
			cont = ""
		}
		if strings.HasSuffix(line, `\`) {
			cont = strings.TrimSuffix(line, `\`)
			continue
		}
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = line[1 : len(line)-1]
			u[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				return nil, fmt.Errorf("%s:%d: not a key=value in a section: %q", path, n, line)
			}
			u[section][strings.TrimSpace(k)] = append(u[section][strings.TrimSpace(k)], strings.TrimSpace(v))
		}
	}
	return u, nil
}

func (u unit) one(section, key string) string {
	if v := u[section][key]; len(v) > 0 {
		return v[len(v)-1]
	}
	return ""
}

// specifiers expands the systemd specifiers the units use.
func specifiers(s, instance, hostname string) string {
	return strings.NewReplacer("%%", "%", "%i", instance, "%H", hostname).Replace(s)
}

// readEnvFile reads an EnvironmentFile: KEY=VALUE lines, comments and
// blank lines ignored.
func readEnvFile(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	env := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("%s: %q is not KEY=VALUE", path, line)
		}
		env[k] = strings.TrimSpace(v)
	}
	return env, nil
}

// execArgv is a unit's ExecStart as systemd runs it: split at whitespace
// (the example's units quote nothing, and a quote is refused here rather
// than misread), "$VAR" alone replaced by its words, "${VAR}" by its
// value.
func execArgv(line string, env map[string]string) ([]string, error) {
	if strings.ContainsAny(line, `"'`) {
		return nil, fmt.Errorf("ExecStart %q: quotes are not handled by this test", line)
	}
	whole := regexp.MustCompile(`^\$([A-Za-z_][A-Za-z0-9_]*)$`)
	braced := regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}`)
	var argv []string
	for _, w := range strings.Fields(line) {
		if m := whole.FindStringSubmatch(w); m != nil {
			argv = append(argv, strings.Fields(env[m[1]])...)
			continue
		}
		var missing string
		w = braced.ReplaceAllStringFunc(w, func(ref string) string {
			k := braced.FindStringSubmatch(ref)[1]
			v, ok := env[k]
			if !ok {
				missing = k
			}
			return v
		})
		if missing != "" {
			return nil, fmt.Errorf("ExecStart %q: ${%s} is not set", line, missing)
		}
		argv = append(argv, w)
	}
	return argv, nil
}

// vm is one network-namespace "VM".
type vm struct {
	t    *testing.T
	name string
	host *netnstest.Host
	root string
	bins map[string]string
	// starts counts each unit's starts: a restarted unit's process
	// gets a log of its own.
	starts map[string]int
}

// at is path p on the VM.
func (v *vm) at(p string) string { return v.reroot(p) }

// reroot puts the example's VM paths in s under the VM's directory (once:
// the result is not re-rooted again).
func (v *vm) reroot(s string) string {
	for _, p := range vmPaths {
		s = strings.ReplaceAll(s, p, v.root+p)
	}
	return s
}

// install copies a file of the example to dest on the VM, re-rooting the
// VM paths in it (text files only; credentials are copied as they are).
func (v *vm) install(src, dest string, text bool, perm fs.FileMode) {
	v.t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		v.t.Fatal(err)
	}
	if text {
		b = []byte(v.reroot(string(b)))
	}
	path := v.at(dest)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		v.t.Fatal(err)
	}
	if err := os.WriteFile(path, b, perm); err != nil {
		v.t.Fatal(err)
	}
}

// command maps a command line of the example onto the VM: the program to
// the binary under test, VM paths re-rooted.
func (v *vm) command(argv []string) []string {
	v.t.Helper()
	bin, ok := v.bins[filepath.Base(argv[0])]
	if !ok {
		v.t.Fatalf("no binary for %s", argv[0])
	}
	out := []string{bin}
	for _, a := range argv[1:] {
		out = append(out, v.reroot(a))
	}
	return out
}

// startUnit runs a unit's ExecStart (instance "" for a plain unit) the way
// systemd would: specifiers, EnvironmentFile, Environment, the
// RuntimeDirectory and StateDirectory it creates. User= is not applied
// (the test runs as root).
func (v *vm) startUnit(file, instance string) *netnstest.Proc {
	v.t.Helper()
	u, err := parseUnit(filepath.Join(consulVMDir, "systemd", file))
	if err != nil {
		v.t.Fatal(err)
	}
	spec := func(s string) string { return specifiers(s, instance, v.name) }
	env := map[string]string{}
	for _, f := range u["Service"]["EnvironmentFile"] {
		e, err := readEnvFile(v.at(spec(f)))
		if err != nil {
			v.t.Fatalf("%s: %v", file, err)
		}
		for k, val := range e {
			env[k] = val
		}
	}
	for _, e := range u["Service"]["Environment"] {
		k, val, _ := strings.Cut(spec(e), "=")
		env[k] = val
	}
	for key, base := range map[string]string{"RuntimeDirectory": "/run/", "StateDirectory": "/var/lib/"} {
		for _, d := range strings.Fields(spec(u.one("Service", key))) {
			if err := os.MkdirAll(v.at(base+d), 0o700); err != nil {
				v.t.Fatal(err)
			}
		}
	}
	argv, err := execArgv(spec(u.one("Service", "ExecStart")), env)
	if err != nil {
		v.t.Fatalf("%s: %v", file, err)
	}
	name := strings.TrimSuffix(file, ".service")
	if instance != "" {
		name = strings.Replace(name, "@", "@"+instance, 1)
	}
	if v.starts[name]++; v.starts[name] > 1 {
		name = fmt.Sprintf("%s.%d", name, v.starts[name])
	}
	return v.host.Start(v.t, name, []string{"PATH=" + os.Getenv("PATH"), "HOME=" + v.root}, v.command(argv)...)
}

// run runs a command of the README on the VM.
func (v *vm) run(argv ...string) (string, error) {
	c := v.command(argv)
	return v.host.Run(time.Minute, c[0], c[1:]...)
}

func TestConsulVMFiles(t *testing.T) {
	consulBin := consultest.Binary(t)
	// Each VM's /etc/consul.d, as the README assembles it.
	for name, files := range map[string][]string{
		"consul server": {"agent.hcl", "server.hcl"},
		"meshd VM":      {"agent.hcl"},
		"vm1":           {"agent.hcl", "web.hcl", "api.hcl"},
		"vm2":           {"agent.hcl", "api.hcl"},
	} {
		dir := t.TempDir()
		for _, f := range files {
			b, err := os.ReadFile(filepath.Join(consulVMDir, "consul", f))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if out, err := exec.Command(consulBin, "validate", dir).CombinedOutput(); err != nil || !strings.Contains(string(out), "Configuration is valid") {
			t.Errorf("consul validate of the %s's /etc/consul.d (%v): %v\n%s", name, files, err, out)
		}
	}

	units, err := filepath.Glob(filepath.Join(consulVMDir, "systemd", "*.service"))
	if err != nil || len(units) != 5 {
		t.Fatalf("units: %v %v", units, err)
	}
	// What every unit must say, read as systemd reads it.
	execPaths := map[string]bool{}
	for _, path := range units {
		u, err := parseUnit(path)
		if err != nil {
			t.Fatal(err)
		}
		name := filepath.Base(path)
		exe := u.one("Service", "ExecStart")
		if u.one("Unit", "Description") == "" || u.one("Service", "User") == "" || u.one("Install", "WantedBy") != "multi-user.target" || !strings.HasPrefix(exe, "/usr/local/bin/") {
			t.Errorf("%s: needs a Description, a User, WantedBy=multi-user.target and an ExecStart in /usr/local/bin:\n%v", name, u)
		}
		for _, k := range []string{"ExecStart", "ExecReload", "ExecStop"} {
			if e := u.one("Service", k); e != "" {
				execPaths[strings.Fields(e)[0]] = true
			}
		}
		if strings.Contains(name, "@") != strings.Contains(exe, "%i") {
			t.Errorf("%s: a template unit's ExecStart names its instance (%%i), a plain unit's does not", name)
		}
	}

	// systemd's own checks, offline: a root holding systemd's units, the
	// example's units and stand-ins for the binaries they start.
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if os.Getenv("MESHD_ALLOW_NO_SYSTEMD_ANALYZE") == "1" {
			t.Skip("systemd-analyze is not installed (skipping its verify: MESHD_ALLOW_NO_SYSTEMD_ANALYZE=1); the units were parsed above")
		}
		t.Fatal("systemd-analyze is not installed: scripts/test.sh installs it (apt-get install -y systemd); set MESHD_ALLOW_NO_SYSTEMD_ANALYZE=1 to skip")
	}
	root := t.TempDir()
	if out, err := exec.Command("cp", "-a", "/usr/lib/systemd/system", filepath.Join(root, "usr/lib/systemd/")).CombinedOutput(); err != nil {
		if err := os.MkdirAll(filepath.Join(root, "usr/lib/systemd"), 0o755); err != nil {
			t.Fatal(err)
		}
		if out, err = exec.Command("cp", "-a", "/usr/lib/systemd/system", filepath.Join(root, "usr/lib/systemd/")).CombinedOutput(); err != nil {
			t.Fatalf("copying systemd's units: %v\n%s", err, out)
		}
	}
	for p := range execPaths {
		dst := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	unitDir := filepath.Join(root, "etc/systemd/system")
	if err := os.MkdirAll(unitDir, 0o755); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, path := range units {
		b, _ := os.ReadFile(path)
		if err := os.WriteFile(filepath.Join(unitDir, filepath.Base(path)), b, 0o644); err != nil {
			t.Fatal(err)
		}
		name := filepath.Base(path)
		if strings.Contains(name, "@") {
			// Templates are verified as the instances the README starts.
			for _, inst := range []string{"web", "api"} {
				names = append(names, strings.Replace(name, "@", "@"+inst, 1))
			}
		} else {
			names = append(names, name)
		}
	}
	cmd := exec.Command(analyze, append([]string{"verify", "--root=" + root, "--man=no", "--generators=no"}, names...)...)
	out, err := cmd.CombinedOutput()
	// verify exits 0 on warnings; a unit is clean only if it says nothing.
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("systemd-analyze verify %v: %v\n%s", names, err, out)
	}
}

func TestConsulVM(t *testing.T) {
	envoyBin := envoytest.Binary(t)
	consulBin := consultest.Binary(t)
	start := time.Now()
	nw := netnstest.New(t, netip.MustParsePrefix("10.0.0.0/24"))
	bins := map[string]string{
		"consul": consulBin, "envoy": envoyBin,
		"meshd": filepath.Join(binDir, "meshd"), "meshctl": filepath.Join(binDir, "meshctl"),
		"mesh-agent": filepath.Join(binDir, "mesh-agent"), "demoapp": filepath.Join(binDir, "demoapp"),
	}
	newVM := func(name, addr string) *vm {
		h := nw.AddHost(name, netip.MustParseAddr(addr))
		h.Hostname = name
		root := filepath.Join(nw.Dir(), "vms", name)
		if err := os.MkdirAll(root, 0o755); err != nil {
			t.Fatal(err)
		}
		return &vm{t: t, name: name, host: h, root: root, bins: bins, starts: map[string]int{}}
	}
	server := newVM("consul-server", "10.0.0.4")
	meshdVM := newVM("meshd", "10.0.0.5")
	vm1 := newVM("vm1", "10.0.0.10")
	vm2 := newVM("vm2", "10.0.0.11")
	all := []*vm{server, meshdVM, vm1, vm2}
	consul := map[string]*netnstest.Proc{}

	// 2. Consul agents: agent.hcl everywhere, server.hcl on the server.
	for _, v := range all {
		v.install(filepath.Join(consulVMDir, "consul/agent.hcl"), "/etc/consul.d/agent.hcl", true, 0o644)
		if v == server {
			v.install(filepath.Join(consulVMDir, "consul/server.hcl"), "/etc/consul.d/server.hcl", true, 0o644)
		}
		if out, err := v.run("consul", "validate", "/etc/consul.d"); err != nil {
			t.Fatalf("%s: %v\n%s", v.name, err, out)
		}
		consul[v.name] = v.startUnit("consul.service", "")
		if v == server {
			// The server first, listening before the clients' first join
			// attempt: a failed attempt is retried only after
			// retry_interval (30 s).
			eventually(t, 30*time.Second, func() error {
				_, err := server.run("consul", "members")
				return err
			})
		}
	}
	eventually(t, 60*time.Second, func() error {
		out, err := server.run("consul", "members")
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		if n := strings.Count(out, " alive "); n != 4 {
			return fmt.Errorf("%d of 4 members alive:\n%s", n, out)
		}
		return nil
	})
	t.Logf("4 Consul agents joined after %s", time.Since(start).Round(time.Millisecond))

	// 3. meshd.
	meshd := meshdVM.startUnit("meshd.service", "")
	eventually(t, 60*time.Second, func() error {
		if done, err := meshd.Exited(); done {
			t.Fatalf("meshd exited: %v\n%s", err, meshd.Log())
		}
		code, _, err := meshdVM.host.Get("http://127.0.0.1:15014/readyz")
		if err != nil || code != 200 {
			return fmt.Errorf("readyz: %d %v", code, err)
		}
		return nil
	})

	// 4. Registrations, through each VM's own agent.
	for v, files := range map[*vm][]string{vm1: {"web.hcl", "api.hcl"}, vm2: {"api.hcl"}} {
		for _, f := range files {
			v.install(filepath.Join(consulVMDir, "consul", f), "/etc/consul.d/"+f, true, 0o644)
		}
		for _, argv := range [][]string{{"consul", "validate", "/etc/consul.d"}, {"consul", "reload"}} {
			if out, err := v.run(argv...); err != nil {
				t.Fatalf("%s: %v\n%s", v.name, err, out)
			}
		}
	}

	// 5. provision.sh on the meshd VM, then the staged files to each VM.
	work := filepath.Join(meshdVM.root, "root")
	pathDir := filepath.Join(nw.Dir(), "meshd-vm-bin")
	for _, d := range []string{work, pathDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, b := range []string{"meshctl", "envoy"} {
		if err := os.Symlink(bins[b], filepath.Join(pathDir, b)); err != nil {
			t.Fatal(err)
		}
	}
	script, err := filepath.Abs(filepath.Join(consulVMDir, "provision.sh"))
	if err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"vm1", "web", "api"}, {"vm2", "api"}} {
		cmd := meshdVM.host.Command(script, args...)
		cmd.Dir = work
		cmd.Env = []string{"PATH=" + pathDir + ":/usr/bin:/bin", "MESHD_DATA_DIR=" + meshdVM.at("/var/lib/meshd")}
		out, err := cmd.CombinedOutput()
		if err != nil || strings.Contains(string(out), "not validated") {
			t.Fatalf("provision.sh %v: %v\n%s", args, err, out)
		}
		t.Logf("provision.sh %s: %s", strings.Join(args, " "), strings.TrimSpace(string(out)))
	}
	for _, v := range []*vm{vm1, vm2} {
		stage := filepath.Join(work, "stage", v.name)
		for _, d := range []string{"envoy", "mesh-agent"} {
			entries, err := os.ReadDir(filepath.Join(stage, d))
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range entries {
				// Bootstraps name the agent's socket: a VM path.
				v.install(filepath.Join(stage, d, e.Name()), "/etc/"+d+"/"+e.Name(), strings.HasSuffix(e.Name(), ".yaml"), 0o600)
			}
		}
	}

	// 6. mesh-agent, Envoy and the app per service.
	envoys := map[string]*netnstest.Proc{}
	apps := map[string]*netnstest.Proc{}
	for v, svcs := range map[*vm][]string{vm1: {"web", "api"}, vm2: {"api"}} {
		for _, s := range svcs {
			v.install(filepath.Join(consulVMDir, "demoapp", s+".env"), "/etc/demoapp/"+s+".env", true, 0o644)
			agent := v.startUnit("mesh-agent@.service", s)
			sock := v.at("/run/mesh-agent/" + s + "/sds.sock")
			eventually(t, 30*time.Second, func() error {
				if done, err := agent.Exited(); done {
					t.Fatalf("%s exited: %v\n%s", agent.Name, err, agent.Log())
				}
				_, err := os.Stat(sock)
				return err
			})
			envoys[v.name+"/"+s] = v.startUnit("envoy@.service", s)
			apps[v.name+"/"+s] = v.startUnit("demoapp@.service", s)
		}
	}
	t.Logf("every unit started after %s", time.Since(start).Round(time.Millisecond))

	spiffeWeb := "spiffe://cluster.local/ns/default/sa/web"
	callWeb := func(n int) (string, error) {
		return vm1.run("/usr/local/bin/demoapp", "call", "--http", "http://127.0.0.1:8080/", "--count", fmt.Sprint(n), "--interval", "20ms")
	}
	apiAnswers := func(out string) []string {
		var got []string
		for _, m := range regexp.MustCompile(`service=(vm\d/api) caller=(\S+)`).FindAllStringSubmatch(out, -1) {
			if m[2] != spiffeWeb {
				t.Errorf("api saw caller %s, want %s", m[2], spiffeWeb)
			}
			if !slices.Contains(got, m[1]) {
				got = append(got, m[1])
			}
		}
		slices.Sort(got)
		return got
	}

	t.Run("web calls api on both VMs over mTLS", func(t *testing.T) {
		var out string
		eventually(t, 90*time.Second, func() error {
			var err error
			if out, err = callWeb(10); err != nil {
				return fmt.Errorf("%v\n%s", err, out)
			}
			if got := apiAnswers(out); !slices.Equal(got, []string{"vm1/api", "vm2/api"}) {
				return fmt.Errorf("api answered from %v", got)
			}
			return nil
		})
		t.Logf("serving after %s:\n%s", time.Since(start).Round(time.Millisecond), firstLines(out, 2))
		// The certificates came from the mesh-agents: meshd served none.
		tok, err := os.ReadFile(meshdVM.at("/var/lib/meshd/admin.token"))
		if err != nil {
			t.Fatal(err)
		}
		_, dump, err := meshdVM.host.GetWithToken("http://127.0.0.1:15014/debug/config_dump?proxy=vm2/api-sidecar-proxy", strings.TrimSpace(string(tok)))
		if err != nil || !strings.Contains(dump, "meshd_agent_sds") || strings.Contains(dump, "[redacted]") {
			t.Errorf("vm2's api sidecar should take its secrets from mesh-agent (%v):\n%s", err, excerpt(dump, "sds"))
		}
	})

	t.Run("plaintext refused", func(t *testing.T) {
		out, err := vm1.run("/usr/local/bin/demoapp", "call", "--http", "http://10.0.0.11:15002/")
		if err == nil || regexp.MustCompile(`-> \d{3} `).MatchString(out) {
			t.Fatalf("plaintext to vm2's api sidecar was answered (%v):\n%s", err, out)
		}
	})

	t.Run("an intention denies web to api", func(t *testing.T) {
		if out, err := meshdVM.run("consul", "intention", "create", "-deny", "web", "api"); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		eventually(t, 30*time.Second, func() error {
			out, _ := vm1.run("/usr/local/bin/demoapp", "call", "--http", "http://127.0.0.1:9001/", "--count", "4", "--interval", "20ms")
			if !strings.Contains(out, "summary: calls=4 ok=0 failed=4") || len(regexp.MustCompile(`(?m)^FAIL .* -> 403 body="RBAC: access denied"`).FindAllString(out, -1)) != 4 {
				return fmt.Errorf("not every call denied:\n%s", out)
			}
			return nil
		})
		// Each refusal is in the log of the api sidecar that refused it
		// (Envoy flushes its access log every few seconds).
		eventually(t, 20*time.Second, func() error {
			denied := 0
			for _, k := range []string{"vm1/api", "vm2/api"} {
				for _, line := range strings.Split(envoys[k].Log(), "\n") {
					if strings.HasPrefix(line, "[meshd-denied]") && strings.Contains(line, "peer="+spiffeWeb) {
						denied++
					}
				}
			}
			if denied < 4 {
				return fmt.Errorf("api's sidecars logged %d denials of web, want 4", denied)
			}
			return nil
		})
		if out, err := meshdVM.run("consul", "intention", "delete", "web", "api"); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		eventually(t, 30*time.Second, func() error {
			out, err := callWeb(4)
			if err != nil {
				return fmt.Errorf("%v\n%s", err, out)
			}
			return nil
		})
	})

	// vm2Checks is what the Consul server says of api on vm2: its checks'
	// statuses by id, or nil when vm2 has no api registered.
	vm2Checks := func() (map[string]string, error) {
		code, body, err := server.host.Get("http://127.0.0.1:8500/v1/health/service/api")
		if err != nil || code != 200 {
			return nil, fmt.Errorf("%d %v", code, err)
		}
		var entries []struct {
			Node   struct{ Node string }
			Checks []struct{ CheckID, Status string }
		}
		if err := json.Unmarshal([]byte(body), &entries); err != nil {
			return nil, err
		}
		for _, e := range entries {
			if e.Node.Node == "vm2" {
				checks := map[string]string{}
				for _, c := range e.Checks {
					checks[c.CheckID] = c.Status
				}
				return checks, nil
			}
		}
		return nil, nil
	}
	// underLoad runs f while vm1 calls web → api continuously, and checks
	// that no call failed.
	underLoad := func(t *testing.T, name, what string, f func()) {
		load := vm1.host.Start(t, name, []string{"PATH=" + os.Getenv("PATH")},
			bins["demoapp"], "call", "--http", "http://127.0.0.1:8080/", "--count", "0", "--interval", "50ms", "--quiet")
		reached := func() int { return strings.Count(apps["vm1/api"].Log()+apps["vm2/api"].Log(), "path=/ ") }
		before := reached()
		eventually(t, 20*time.Second, func() error {
			if n := reached() - before; n < 10 {
				return fmt.Errorf("%d calls reached api", n)
			}
			return nil
		})
		f()
		ok, _ := stopLoad(t, load)
		t.Logf("%s: %d calls from vm1 meanwhile, 0 failed", what, ok)
	}
	answeredOnlyBy := func(t *testing.T, want ...string) {
		t.Helper()
		eventually(t, 30*time.Second, func() error {
			out, err := callWeb(10)
			if err != nil {
				return fmt.Errorf("%v\n%s", err, out)
			}
			if got := apiAnswers(out); !slices.Equal(got, want) {
				return fmt.Errorf("api answered from %v, want %v", got, want)
			}
			return nil
		})
	}

	t.Run("vm2's agent stopped: vm2 leaves, vm1's traffic continues", func(t *testing.T) {
		underLoad(t, "load-stop", "vm2's agent stopped (SIGTERM, as systemctl stop)", func() {
			t0 := time.Now()
			consul["vm2"].Stop()
			eventually(t, 60*time.Second, func() error {
				checks, err := vm2Checks()
				if err != nil || checks != nil {
					return fmt.Errorf("vm2's api still registered: %v (%v)", checks, err)
				}
				return nil
			})
			answeredOnlyBy(t, "vm1/api")
			t.Logf("vm2's api deregistered, only vm1's answers, %s after SIGTERM", time.Since(t0).Round(time.Millisecond))
		})
	})

	t.Run("vm2's agent back, then dies: its services go critical, vm1's traffic continues", func(t *testing.T) {
		t0 := time.Now()
		consul["vm2"] = vm2.startUnit("consul.service", "")
		answeredOnlyBy(t, "vm1/api", "vm2/api")
		t.Logf("vm2's agent restarted: api on vm2 registered and answering again after %s", time.Since(t0).Round(time.Millisecond))
		underLoad(t, "load-kill", "vm2's agent killed", func() {
			t0 := time.Now()
			consul["vm2"].Kill()
			eventually(t, 60*time.Second, func() error {
				checks, err := vm2Checks()
				if err != nil || checks["serfHealth"] != "critical" {
					return fmt.Errorf("vm2's api checks %v (%v), want serfHealth critical", checks, err)
				}
				return nil
			})
			answeredOnlyBy(t, "vm1/api")
			t.Logf("vm2's api critical, only vm1's answers, %s after SIGKILL", time.Since(t0).Round(time.Millisecond))
		})
	})
	t.Logf("done in %s", time.Since(start).Round(time.Millisecond))
}

func firstLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[:n]
	}
	return strings.Join(lines, "\n")
}
