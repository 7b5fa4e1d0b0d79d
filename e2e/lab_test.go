package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/meshd/meshd/examples/lab"
	"github.com/meshd/meshd/internal/consultest"
	"github.com/meshd/meshd/internal/envoytest"
	"github.com/meshd/meshd/internal/netnstest"
	"github.com/meshd/meshd/internal/testwait"
	"github.com/meshd/meshd/sds"
)

// composeBinary finds Debian's docker-compose (1.29), which parses and
// validates a compose file without a Docker engine. scripts/test.sh
// installs it; MESHD_ALLOW_NO_COMPOSE=1 (which test.sh sets, saying so,
// only where apt is unavailable) skips instead of failing.
func composeBinary(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("docker-compose")
	if err == nil {
		return bin
	}
	const hint = "docker-compose is not installed: scripts/test.sh installs it (apt-get install -y docker-compose)"
	if os.Getenv("MESHD_ALLOW_NO_COMPOSE") == "1" {
		t.Skip(hint + " (skipping: MESHD_ALLOW_NO_COMPOSE=1)")
	}
	t.Fatal(hint + "; set MESHD_ALLOW_NO_COMPOSE=1 to skip this test instead")
	return ""
}

// The lab's checked-in files are what its description generates, the
// compose file passes a real compose parser, and the README walks through
// exactly the commands the namespace test runs.
func TestLabFiles(t *testing.T) {
	files, err := lab.Files()
	if err != nil {
		t.Fatal(err)
	}
	for _, rel := range lab.Paths(files) {
		got, err := os.ReadFile(filepath.Join("../examples/lab", rel))
		if err != nil || !bytes.Equal(got, files[rel]) {
			t.Errorf("examples/lab/%s is not what examples/lab/lab.go generates (%v): run go run ./examples/lab/gen", rel, err)
		}
	}

	bin := composeBinary(t)
	cmd := exec.Command(bin, "-f", "docker-compose.yaml", "config")
	cmd.Dir = "../examples/lab"
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("docker-compose config rejects examples/lab/docker-compose.yaml: %v\n%s", err, stderr.String())
	}
	// The parser's normalised view runs every container with the
	// description's command line.
	var doc struct {
		Services map[string]struct {
			Command []string `yaml:"command"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(out, &doc); err != nil {
		t.Fatalf("reading docker-compose config's output: %v\n%s", err, out)
	}
	if len(doc.Services) != len(lab.Containers()) {
		t.Errorf("docker-compose config has %d services, the description %d", len(doc.Services), len(lab.Containers()))
	}
	for _, c := range lab.Containers() {
		s, ok := doc.Services[c.Name]
		if !ok {
			t.Errorf("docker-compose config has no service %s", c.Name)
			continue
		}
		if !slices.Equal(s.Command, c.Argv) {
			t.Errorf("%s runs %q in the compose file, the description says %q", c.Name, s.Command, c.Argv)
		}
	}

	// The images are the versions the tests run.
	for _, v := range []struct{ image, bin string }{
		{lab.EnvoyImage, envoytest.Binary(t)}, {lab.ConsulImage, consultest.Binary(t)},
	} {
		_, tag, _ := strings.Cut(v.image, ":")
		out, err := exec.Command(v.bin, "--version").CombinedOutput()
		if err != nil {
			out, err = exec.Command(v.bin, "version").CombinedOutput()
		}
		if err != nil || !strings.Contains(string(out), "/"+strings.TrimPrefix(tag, "v")+"/") && !strings.Contains(string(out), "Consul v"+tag+"\n") {
			t.Errorf("the lab runs %s, the tests %s, which says (%v): %s", v.image, v.bin, err, out)
		}
	}

	readme, err := os.ReadFile("../examples/lab/README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range lab.Steps() {
		if !strings.Contains(string(readme), s.Compose()) {
			t.Errorf("examples/lab/README.md lacks the step the test runs:\n  %s", s.Compose())
		}
	}
}

// labRun runs the lab's containers as processes in network namespaces:
// each container with an address is a host of its own on the lab's
// subnet, a sidecar shares its application's host, a container without a
// network gets a host with loopback only. Volumes are directories; the
// description's command lines run with their paths mapped onto them.
type labRun struct {
	t      *testing.T
	nw     *netnstest.Network
	hosts  map[string]*netnstest.Host
	procs  map[string]*netnstest.Proc
	vols   map[string]string
	bins   map[string]string
	labDir string
}

func startLab(t *testing.T) *labRun {
	t.Helper()
	envoyBin := envoytest.Binary(t)
	consulBin := consultest.Binary(t)
	labDir, err := filepath.Abs("../examples/lab")
	if err != nil {
		t.Fatal(err)
	}
	r := &labRun{
		t: t, nw: netnstest.New(t, netip.MustParsePrefix(lab.Subnet)),
		hosts: map[string]*netnstest.Host{}, procs: map[string]*netnstest.Proc{}, vols: map[string]string{},
		bins: map[string]string{
			"meshd": filepath.Join(binDir, "meshd"), "meshctl": filepath.Join(binDir, "meshctl"),
			"demoapp": filepath.Join(binDir, "demoapp"), "envoy": envoyBin, "consul": consulBin,
		},
		labDir: labDir,
	}
	healthy := map[string]bool{}
	for _, c := range lab.Containers() {
		for _, d := range c.DependsOn {
			switch d.Condition {
			case lab.Healthy:
				if !healthy[d.Container] {
					r.waitHealthy(lab.ContainerByName(d.Container))
					healthy[d.Container] = true
				}
			case lab.Started, lab.Completed:
				// Containers run in order: one-shots have completed,
				// the others have started.
			default:
				t.Fatalf("%s: unknown dependency condition %q", c.Name, d.Condition)
			}
		}
		h := r.host(c)
		argv := r.command(c, c.Argv)
		if c.OneShot {
			out := h.MustRun(t, time.Minute, argv[0], argv[1:]...)
			t.Logf("%s: %s", c.Name, strings.TrimSpace(out))
			continue
		}
		if c.Argv[0] == "envoy" {
			// Every generated bootstrap passes Envoy's own validation
			// before the sidecar starts on it.
			i := slices.Index(argv, "-c")
			envoytest.Validate(t, argv[i+1])
		}
		r.procs[c.Name] = h.Start(t, c.Name, r.env(), argv...)
	}
	return r
}

// env is every process's environment: nothing of the test's own
// (CONSUL_HTTP_* variables, say) leaks in. XDG_STATE_HOME is the images'
// (/var/lib, docs/containers.md), mapped like a path: its meshd is
// meshd's data volume, so meshctl in the meshd container finds meshd's
// admin token where it does in the image.
func (r *labRun) env() []string {
	return []string{"PATH=" + os.Getenv("PATH"), "HOME=" + r.nw.Dir(), "XDG_STATE_HOME=" + r.stateHome()}
}

// stateHome is the lab's /var/lib: a directory whose meshd is meshd's
// data volume.
func (r *labRun) stateHome() string {
	dir := filepath.Join(r.nw.Dir(), "var-lib")
	link := filepath.Join(dir, "meshd")
	if _, err := os.Lstat(link); err == nil {
		return dir
	}
	var data lab.Mount
	for _, m := range lab.ContainerByName("meshd").Mounts {
		if m.Target == lab.MeshdData {
			data = m
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		r.t.Fatal(err)
	}
	if err := os.Symlink(r.source(data), link); err != nil {
		r.t.Fatal(err)
	}
	return dir
}

func (r *labRun) host(c lab.Container) *netnstest.Host {
	name := c.Name
	if c.NetworkOf != "" {
		name = c.NetworkOf
	}
	if h, ok := r.hosts[name]; ok {
		return h
	}
	var addr netip.Addr
	if !c.NoNetwork {
		addr = netip.MustParseAddr(c.Addr)
	}
	h := r.nw.AddHost(name, addr)
	r.hosts[name] = h
	return h
}

// command maps a container's command line onto the machine: the program
// to the binary under test, each path inside a mount to its directory.
func (r *labRun) command(c lab.Container, argv []string) []string {
	bin, ok := r.bins[argv[0]]
	if !ok {
		r.t.Fatalf("%s: no binary for %q", c.Name, argv[0])
	}
	out := []string{bin}
	for _, a := range argv[1:] {
		out = append(out, r.mapPath(c, a))
	}
	return out
}

func (r *labRun) mapPath(c lab.Container, arg string) string {
	prefix, path := "", arg
	if strings.HasPrefix(arg, "-") {
		if i := strings.Index(arg, "="); i >= 0 {
			prefix, path = arg[:i+1], arg[i+1:]
		}
	}
	for _, m := range c.Mounts {
		if path == m.Target || strings.HasPrefix(path, m.Target+"/") {
			return prefix + r.source(m) + strings.TrimPrefix(path, m.Target)
		}
	}
	return arg
}

func (r *labRun) source(m lab.Mount) string {
	if m.Bind() {
		return filepath.Join(r.labDir, m.Source)
	}
	dir, ok := r.vols[m.Source]
	if !ok {
		dir = filepath.Join(r.nw.Dir(), "volumes", m.Source)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			r.t.Fatal(err)
		}
		r.vols[m.Source] = dir
	}
	return dir
}

// waitHealthy runs a container's health check until it succeeds, as
// compose does.
func (r *labRun) waitHealthy(c lab.Container) {
	r.t.Helper()
	argv := r.command(c, c.Health)
	testwait.Until(r.t, time.Minute, func() error {
		out, err := r.host(c).RunEnv(10*time.Second, r.env(), argv[0], argv[1:]...)
		if err == nil {
			return nil
		}
		r.checkRunning()
		return fmt.Errorf("%s not healthy: %v\n%s", c.Name, err, out)
	})
}

// checkRunning fails the test if a long-running container has exited.
func (r *labRun) checkRunning() {
	r.t.Helper()
	for name, p := range r.procs {
		if done, err := p.Exited(); done && slices.ContainsFunc(lab.Containers(), func(c lab.Container) bool { return c.Name == name }) {
			r.t.Fatalf("%s exited (%v):\n%s", name, err, p.Log())
		}
	}
}

// exec runs a walkthrough step as `docker compose exec` would: in the
// container's host.
func (r *labRun) exec(s lab.Step) (string, error) {
	c := lab.ContainerByName(s.Container)
	argv := r.command(c, s.Argv)
	return r.host(c).RunEnv(time.Minute, r.env(), argv[0], argv[1:]...)
}

// start runs a step in the background (a second terminal).
func (r *labRun) start(name string, s lab.Step) *netnstest.Proc {
	c := lab.ContainerByName(s.Container)
	argv := r.command(c, s.Argv)
	return r.host(c).Start(r.t, name, r.env(), argv...)
}

func (r *labRun) get(host, url string) string {
	r.t.Helper()
	code, body, err := r.hosts[host].Get(url)
	if err != nil || code != 200 {
		r.t.Fatalf("GET %s on %s: %d %v\n%s", url, host, code, err, body)
	}
	return body
}

func (r *labRun) caStatus() sds.Status {
	r.t.Helper()
	var st sds.Status
	tok, err := os.ReadFile(filepath.Join(r.stateHome(), "meshd", "admin.token"))
	if err != nil {
		r.t.Fatal(err)
	}
	code, body, err := r.hosts["meshd"].GetWithToken("http://127.0.0.1:15014/ca/status", strings.TrimSpace(string(tok)))
	if err != nil || code != 200 {
		r.t.Fatalf("GET /ca/status on meshd: %d %v\n%s", code, err, body)
	}
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		r.t.Fatal(err)
	}
	return st
}

// presented is the serial of the certificate instance id's sidecar
// presents (from its Envoy's /certs).
func (r *labRun) presented(id string) (string, error) {
	spiffe := "spiffe://" + lab.TrustDomain + "/ns/default/sa/" + lab.InstanceByID(id).Service
	code, body, err := r.hosts[id].Get(fmt.Sprintf("http://127.0.0.1:%d/certs", lab.EnvoyAdminPort))
	if err != nil || code != 200 {
		return "", fmt.Errorf("%s's /certs: %d %v", id, code, err)
	}
	ec, err := parseEnvoyCert(body, spiffe)
	return ec.serial, err
}

// stopLoad stops a `demoapp call --count 0` and returns its summary
// counts.
func stopLoad(t *testing.T, p *netnstest.Proc) (ok, failed int) {
	t.Helper()
	p.Signal(syscall.SIGTERM)
	if _, done := p.Wait(30 * time.Second); !done {
		t.Fatalf("%s did not stop on SIGTERM", p.Name)
	}
	m := regexp.MustCompile(`summary: calls=(\d+) ok=(\d+) failed=(\d+)`).FindStringSubmatch(p.Log())
	if m == nil {
		t.Fatalf("%s printed no summary:\n%s", p.Name, p.Log())
	}
	fmt.Sscan(m[2], &ok)
	fmt.Sscan(m[3], &failed)
	if failed > 0 {
		t.Errorf("%s: %d of %s calls failed:\n%s", p.Name, failed, m[1], p.Log())
	}
	return ok, failed
}

// answeredBy waits until the calls of the README's StepCalls are answered
// by exactly the payments instances want (sorted), within timeout.
func (r *labRun) answeredBy(t *testing.T, timeout time.Duration, want ...string) {
	t.Helper()
	eventually(t, timeout, func() error {
		out, err := r.exec(lab.StepCalls)
		if err != nil {
			return fmt.Errorf("%v\n%s", err, out)
		}
		if got := answeredBy(out); !slices.Equal(got, want) {
			return fmt.Errorf("%s: answered by %v, want %v", lab.StepCalls.Compose(), got, want)
		}
		return nil
	})
}

// answeredBy are the payments instances that answered a step's calls.
func answeredBy(out string) []string {
	var ids []string
	for _, m := range regexp.MustCompile(`service=(payments-\d)`).FindAllStringSubmatch(out, -1) {
		if !slices.Contains(ids, m[1]) {
			ids = append(ids, m[1])
		}
	}
	slices.Sort(ids)
	return ids
}

// The lab's README walkthrough, run on the lab's own containers as
// network-namespace hosts — the same addresses, command lines, Consul
// registrations, policies and bootstraps as docker-compose.yaml — with
// real Consul, meshd, Envoy and demo apps, asserting each outcome the
// README promises.
func TestLabWalkthrough(t *testing.T) {
	start := time.Now()
	r := startLab(t)
	t.Logf("lab started in %s", time.Since(start).Round(time.Millisecond))

	spiffe := func(sa string) string { return "spiffe://" + lab.TrustDomain + "/ns/default/sa/" + sa }
	t.Run("mTLS identity seen by each app", func(t *testing.T) {
		var out string
		eventually(t, 90*time.Second, func() error {
			var err error
			out, err = r.exec(lab.StepCall)
			if err != nil {
				return fmt.Errorf("%v: %s", err, out)
			}
			return nil
		})
		t.Logf("lab serving after %s:\n%s", time.Since(start).Round(time.Millisecond), out)
		for _, want := range []string{
			"service=frontend caller=none",
			"service=orders caller=" + spiffe("frontend"),
			"caller=" + spiffe("orders"),
		} {
			if !strings.Contains(out, want) {
				t.Errorf("%s\nlacks %q:\n%s", lab.StepCall.Compose(), want, out)
			}
		}
		if len(answeredBy(out)) != 1 {
			t.Errorf("no payments instance answered:\n%s", out)
		}
		// Both payments instances are in orders' endpoints once Consul's
		// checks of their sidecars pass.
		r.answeredBy(t, 60*time.Second, "payments-1", "payments-2")
	})

	t.Run("plaintext refused under STRICT", func(t *testing.T) {
		out, err := r.exec(lab.StepPlaintext)
		if err == nil || !strings.HasPrefix(out, "FAIL") {
			t.Fatalf("%s succeeded (%v):\n%s", lab.StepPlaintext.Compose(), err, out)
		}
		// Refused by the transport, not answered with an HTTP status, and
		// nothing reached the orders app without a caller identity.
		if regexp.MustCompile(`-> \d{3} `).MatchString(out) {
			t.Errorf("plaintext got an HTTP answer:\n%s", out)
		}
		if log := r.procs["orders"].Log(); strings.Contains(log, "caller=none") {
			t.Errorf("the orders app saw a call without an identity:\n%s", log)
		}
		t.Logf("%s", strings.TrimSpace(out))
	})

	t.Run("denial names the policy", func(t *testing.T) {
		out, err := r.exec(lab.StepDenied)
		if err == nil || !strings.Contains(out, "-> 403") || !strings.Contains(out, "RBAC: access denied") {
			t.Fatalf("%s: want a 403 from payments' sidecar (%v):\n%s", lab.StepDenied.Compose(), err, out)
		}
		want := "rbac_access_denied_matched_policy[default/" + lab.DenyPolicy + "/rule-0]"
		eventually(t, 10*time.Second, func() error {
			for _, id := range []string{"payments-1", "payments-2"} {
				for _, line := range strings.Split(r.procs[lab.EnvoyContainer(id)].Log(), "\n") {
					if strings.HasPrefix(line, "[meshd-denied]") && strings.Contains(line, want) &&
						strings.Contains(line, "peer="+spiffe("orders")) && strings.Contains(line, lab.DeniedPath) {
						t.Logf("%s's sidecar: %s", id, line)
						return nil
					}
				}
			}
			return fmt.Errorf("no payments sidecar logged %q", want)
		})
		for _, id := range []string{"payments-1", "payments-2"} {
			if strings.Contains(r.procs[id].Log(), "path="+lab.DeniedPath) {
				t.Errorf("the denied request reached %s's app", id)
			}
		}
	})

	t.Run("rotation with no failed request", func(t *testing.T) {
		before := map[string]string{}
		eventually(t, 30*time.Second, func() error {
			for _, in := range lab.Instances {
				s, err := r.presented(in.ID)
				if err != nil {
					return err
				}
				before[in.ID] = s
			}
			return nil
		})
		gen := r.caStatus().Signing.Generation
		load := r.start("load-rotation", lab.StepLoad)
		// calls waits until n more calls have reached payments.
		reached := func() int { return strings.Count(r.procs["payments-1"].Log()+r.procs["payments-2"].Log(), "path=/ ") }
		calls := func(n int) {
			t.Helper()
			from := reached()
			eventually(t, 30*time.Second, func() error {
				if got := reached() - from; got < n {
					return fmt.Errorf("%d of %d calls reached payments", got, n)
				}
				return nil
			})
		}
		calls(10) // before the rotation

		out, err := r.exec(lab.StepRotate)
		if err != nil || !strings.Contains(out, "rotation") {
			t.Fatalf("%s: %v\n%s", lab.StepRotate.Compose(), err, out)
		}
		eventually(t, 60*time.Second, func() error {
			st := r.caStatus()
			if st.Signing.Generation == gen {
				return fmt.Errorf("still signing with %s", gen)
			}
			for _, in := range lab.Instances {
				s, err := r.presented(in.ID)
				if err != nil {
					return err
				}
				want, g := leafSerial(st, spiffe(in.Service))
				if s == before[in.ID] || s != want || g != st.Signing.Generation {
					return fmt.Errorf("%s presents %s (before %s); meshd's leaf is %s from %s", in.ID, s, before[in.ID], want, g)
				}
			}
			return nil
		})
		status, err := r.exec(lab.StepCAStatus)
		if err != nil || !strings.Contains(status, r.caStatus().Signing.Generation) {
			t.Errorf("%s does not show the new generation: %v\n%s", lab.StepCAStatus.Compose(), err, status)
		}
		calls(20) // on the new certificates
		ok, _ := stopLoad(t, load)
		t.Logf("during the rotation: %d calls, 0 failed; every sidecar presents a new leaf from %s", ok, r.caStatus().Signing.Generation)
	})

	t.Run("Consul health change honoured", func(t *testing.T) {
		load := r.start("load-health", lab.StepLoad)
		if out, err := r.exec(lab.StepMaintOn); err != nil {
			t.Fatalf("%s: %v\n%s", lab.StepMaintOn.Compose(), err, out)
		}
		// Consul: payments-2 is critical (maintenance).
		body := r.get("consul", fmt.Sprintf("http://127.0.0.1:%d/v1/health/checks/payments", lab.ConsulHTTPPort))
		var checks []struct{ CheckID, Status string }
		if err := json.Unmarshal([]byte(body), &checks); err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(checks, struct{ CheckID, Status string }{"_service_maintenance:payments-2", "critical"}) {
			t.Fatalf("Consul does not show payments-2 critical in maintenance: %+v", checks)
		}
		r.answeredBy(t, 30*time.Second, "payments-1")
		if out, err := r.exec(lab.StepMaintOff); err != nil {
			t.Fatalf("%s: %v\n%s", lab.StepMaintOff.Compose(), err, out)
		}
		r.answeredBy(t, 30*time.Second, "payments-1", "payments-2")
		ok, _ := stopLoad(t, load)
		t.Logf("payments-2 out of and back into rotation: %d calls, 0 failed", ok)
	})
	t.Run("status, tap and check", func(t *testing.T) {
		// Every proxy SYNCED once the health change's pushes are ACKed.
		var status string
		eventually(t, 30*time.Second, func() error {
			out, err := r.exec(lab.StepStatus)
			if err != nil {
				return fmt.Errorf("%s: %v\n%s", lab.StepStatus.Compose(), err, out)
			}
			status = out
			for _, in := range lab.Instances {
				row := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(in.ID) + `\s.*$`).FindString(out)
				if row == "" || !strings.Contains(row, "SYNCED") || strings.Contains(row, "STALE") || strings.Contains(row, "NACKED") {
					return fmt.Errorf("%s: %s is not SYNCED:\n%s", lab.StepStatus.Compose(), in.ID, out)
				}
			}
			return nil
		})
		t.Logf("%s\n%s", lab.StepStatus.Compose(), status)

		// Requests orders sends payments, live, with orders' identity and
		// the sidecar's decision.
		load := r.start("load-tap", lab.StepLoad)
		out, err := r.exec(lab.StepTap)
		stopLoad(t, load)
		if err != nil {
			t.Fatalf("%s: %v\n%s", lab.StepTap.Compose(), err, out)
		}
		t.Logf("%s\n%s", lab.StepTap.Compose(), out)
		// Every line is a call of orders to payments, over mTLS and
		// allowed. One may have no status (0: the caller went away before
		// the answer, as the previous step's load does with the call it is
		// in when stopped, which the sidecar reports a moment later).
		line := regexp.MustCompile(`^\S+ ` + regexp.QuoteMeta(spiffe("orders")) + ` -> payments\.default GET / (\d+) \S+ mtls allow$`)
		lines, answered := 0, 0
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			if strings.HasPrefix(l, "tapping ") {
				continue
			}
			lines++
			switch m := line.FindStringSubmatch(l); {
			case m == nil || m[1] != "200" && m[1] != "0":
				t.Errorf("%s: not an allowed mTLS call of orders to payments: %q", lab.StepTap.Compose(), l)
			case m[1] == "200":
				answered++
			}
		}
		if lines != lab.TapCount || answered < lab.TapCount-1 {
			t.Errorf("%s: %d lines, %d of them answered 200; want %d lines, at most one cut short:\n%s", lab.StepTap.Compose(), lines, answered, lab.TapCount, out)
		}

		var check string
		eventually(t, 30*time.Second, func() error {
			out, err := r.exec(lab.StepCheck)
			check = out
			if err != nil || strings.Contains(out, "✗") || !strings.Contains(out, "✓") {
				return fmt.Errorf("%s: %v\n%s", lab.StepCheck.Compose(), err, out)
			}
			return nil
		})
		t.Logf("%s\n%s", lab.StepCheck.Compose(), check)
	})
	t.Logf("walkthrough done in %s", time.Since(start).Round(time.Millisecond))
}
