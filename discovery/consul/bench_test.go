package consul

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/hashicorp/consul/api"

	"github.com/meshd/meshd/internal/consultest"
	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/sds"
	"github.com/meshd/meshd/snapshot"
	"github.com/meshd/meshd/xds"
)

// TestScaleHealthFlip is a benchmark (a test, so that its expensive set-up
// runs once, not once per b.N round). Against a real Consul agent holding
// services × instances application instances, each with a Connect sidecar,
// it measures the time from a health change written to Consul to the watcher
// emitting the catalog that reflects it (median and p99), and the CPU of the
// watcher (and of the agent) while nothing changes.
//
//	MESHD_CONSUL_SCALE=1 go test -count=1 -run TestScaleHealthFlip -v -timeout 30m ./discovery/consul/
//
// MESHD_BENCH_SERVICES and MESHD_BENCH_INSTANCES change the size (default
// 1000 × 10), MESHD_BENCH_FLIPS the number of flips (default 50) and
// MESHD_BENCH_IDLE the idle window (default 60s).
func TestScaleHealthFlip(t *testing.T) {
	if os.Getenv("MESHD_CONSUL_SCALE") != "1" {
		t.Skip("scale benchmark: set MESHD_CONSUL_SCALE=1 to run it (several minutes)")
	}
	b := t
	flips := envInt(b, "MESHD_BENCH_FLIPS", 50)
	services := envInt(b, "MESHD_BENCH_SERVICES", 1000)
	instances := envInt(b, "MESHD_BENCH_INSTANCES", 10)
	idle := time.Minute
	if v := os.Getenv("MESHD_BENCH_IDLE"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			b.Fatal(err)
		}
		idle = d
	}
	a := consultest.Start(b, "")
	start := time.Now()
	registerScale(b, a, services, instances)
	b.Logf("registered %d services × %d instances (+ sidecars) in %s", services, instances, time.Since(start).Round(time.Millisecond))

	w, err := NewWatcher(Options{Address: a.Addr, Logger: testLogger(b)})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	start = time.Now()
	go func() { done <- w.Run(ctx) }()
	defer func() { cancel(); <-done }()
	select {
	case <-w.Synced():
	case <-time.After(5 * time.Minute):
		b.Fatalf("no first catalog in 5m: %+v", w.Status())
	}
	c := w.Current()
	b.Logf("first catalog: %d services, %d proxies in %s", len(c.Services()), len(c.Proxies()), time.Since(start).Round(time.Millisecond))
	if len(c.Services()) != services || len(c.Proxies()) != services*instances {
		b.Fatalf("first catalog has %d services and %d proxies, want %d and %d", len(c.Services()), len(c.Proxies()), services, services*instances)
	}

	// The catalogs also go through meshd's publisher (real CA, real
	// translation, go-control-plane cache), to time a health change in
	// Consul until the affected proxies' new snapshots are set. Publish is
	// called directly: meshd's debounce (--debounce-holdoff) comes on top.
	ca, err := sds.LoadOrCreate(sds.Options{DataDir: b.TempDir(), TrustDomain: mesh.DefaultTrustDomain, Logger: testLogger(b)})
	if err != nil {
		b.Fatal(err)
	}
	pub := snapshot.New(cachev3.NewSnapshotCache(false, cachev3.IDHash{}, nil), ca,
		snapshot.Options{Translate: xds.Options{TrustDomain: mesh.DefaultTrustDomain}, Logger: testLogger(b)})
	pub.Update(snapshot.Update{Catalog: c})
	start = time.Now()
	if _, err := pub.Publish(); err != nil {
		b.Fatal(err)
	}
	b.Logf("first publish of %d proxies: %s", len(c.Proxies()), time.Since(start).Round(time.Millisecond))

	// One flip makes an instance critical or passing again, alternately, on
	// a different service each time.
	var lat, pubLat []time.Duration
	var rendered int
	answers0 := w.Status().Answers
	for i := range flips {
		svc := (i / 2 * 37) % services
		inst := (i / 2) % instances
		status := api.HealthCritical
		wantN := instances - 1
		if i%2 == 1 {
			status, wantN = api.HealthPassing, instances
		}
		name := fmt.Sprintf("svc-%d", svc)
		t0 := time.Now()
		setCheck(b, a, inst, name, status)
		for {
			select {
			case c := <-w.Updates():
				if s := c.Service(mesh.ServiceKey{Namespace: mesh.DefaultNamespace, Name: name}); s != nil && len(s.Endpoints) == wantN {
					goto seen
				}
			case <-time.After(30 * time.Second):
				b.Fatalf("flip %d (%s instance %d → %s) not seen in 30s", i, name, inst, status)
			}
		}
	seen:
		lat = append(lat, time.Since(t0))
		pub.Update(snapshot.Update{Catalog: w.Current()})
		st, err := pub.Publish()
		if err != nil {
			b.Fatal(err)
		}
		pubLat = append(pubLat, time.Since(t0))
		rendered += st.Rendered
	}
	b.Logf("Consul answers with news per flip: %.1f", float64(w.Status().Answers-answers0)/float64(flips))
	slices.Sort(lat)
	slices.Sort(pubLat)
	// Nearest-rank percentiles: with 50 flips, p99 is the slowest flip.
	p := func(q float64) time.Duration { return lat[min(len(lat)-1, int(q*float64(len(lat))))] }
	pp := func(q float64) time.Duration { return pubLat[min(len(pubLat)-1, int(q*float64(len(pubLat))))] }

	// Idle: nothing changes in Consul; the watcher's queries stay parked.
	// The watcher is the only thing running in this process now. The
	// sleeps are what is measured (CPU while idle; the first lets the last
	// flip's work drain, which has no event), not waits for a condition.
	time.Sleep(2 * time.Second)
	cpu0, agent0 := processCPU(b), agentCPU(b, a)
	time.Sleep(idle)
	cpu1, agent1 := processCPU(b), agentCPU(b, a)
	st := w.Status()
	b.Logf("health change → catalog emitted: p50 %s, p99 %s, max %s over %d flips",
		p(0.5).Round(10*time.Microsecond), p(0.99).Round(10*time.Microsecond), lat[len(lat)-1].Round(10*time.Microsecond), len(lat))
	b.Logf("health change → snapshots published: p50 %s, p99 %s, max %s over %d flips (%.1f proxies re-rendered per flip)",
		pp(0.5).Round(10*time.Microsecond), pp(0.99).Round(10*time.Microsecond), pubLat[len(pubLat)-1].Round(10*time.Microsecond), len(pubLat),
		float64(rendered)/float64(flips))
	b.Logf("idle for %s: watcher process CPU %s (%.1f ms/min), consul agent CPU %s (%.0f ms/min); status errors=%d rejected=%d",
		idle, cpu1-cpu0, float64((cpu1-cpu0).Microseconds())/1000/idle.Minutes(), agent1-agent0,
		float64((agent1-agent0).Milliseconds())/idle.Minutes(), st.Errors, st.Rejected)
	if st.Errors != 0 || st.Rejected != 0 {
		t.Errorf("errors during the benchmark: %+v", st)
	}
}

func envInt(b testing.TB, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		b.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}

// registerScale registers the catalog directly (the catalog API, as for
// external services): instance i of every service lives on node bench-i, so
// that ports repeat per node as on real VMs.
func registerScale(b testing.TB, a *consultest.Agent, services, instances int) {
	type job struct{ svc, inst int }
	jobs := make(chan job)
	errs := make(chan error, 1)
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				if err := registerInstance(a, j.svc, j.inst, services); err != nil {
					select {
					case errs <- err:
					default:
					}
				}
			}
		}()
	}
	for s := range services {
		for i := range instances {
			jobs <- job{s, i}
		}
	}
	close(jobs)
	wg.Wait()
	select {
	case err := <-errs:
		b.Fatal(err)
	default:
	}
}

func benchNode(inst int) (string, string) {
	return fmt.Sprintf("bench-%d", inst), fmt.Sprintf("10.1.%d.%d", inst/250, inst%250+1)
}

func registerInstance(a *consultest.Agent, svc, inst, services int) error {
	n, addr := benchNode(inst)
	name := fmt.Sprintf("svc-%d", svc)
	appReg := &api.CatalogRegistration{
		Node: n, Address: addr, NodeMeta: map[string]string{NodeMetaZone: fmt.Sprintf("z%d", inst%3)},
		Service: &api.AgentService{ID: name, Service: name, Port: 30000 + svc,
			Meta: map[string]string{MetaProtocol: "http"}},
		Checks: api.HealthChecks{{Node: n, CheckID: "app:" + name, Name: "app", ServiceID: name, Status: api.HealthPassing}},
	}
	if _, err := a.Client.Catalog().Register(appReg, nil); err != nil {
		return fmt.Errorf("registering %s on %s: %w", name, n, err)
	}
	sc := name + "-sidecar-proxy"
	up := fmt.Sprintf("svc-%d", (svc+1)%services)
	scReg := &api.CatalogRegistration{
		Node: n, Address: addr, SkipNodeUpdate: true,
		Service: &api.AgentService{Kind: api.ServiceKindConnectProxy, ID: sc, Service: sc, Port: 10000 + svc,
			Proxy: &api.AgentServiceConnectProxyConfig{DestinationServiceName: name, DestinationServiceID: name,
				LocalServicePort: 30000 + svc,
				Upstreams:        []api.Upstream{{DestinationName: up, LocalBindPort: 40000 + svc}}}},
		Checks: api.HealthChecks{{Node: n, CheckID: "sidecar:" + sc, Name: "sidecar", ServiceID: sc, Status: api.HealthPassing}},
	}
	if _, err := a.Client.Catalog().Register(scReg, nil); err != nil {
		return fmt.Errorf("registering %s on %s: %w", sc, n, err)
	}
	return nil
}

func setCheck(b testing.TB, a *consultest.Agent, inst int, name, status string) {
	n, addr := benchNode(inst)
	_, err := a.Client.Catalog().Register(&api.CatalogRegistration{Node: n, Address: addr, SkipNodeUpdate: true,
		Service: &api.AgentService{ID: name, Service: name, Port: 30000 + mustSvc(name), Meta: map[string]string{MetaProtocol: "http"}},
		Check:   &api.AgentCheck{Node: n, CheckID: "app:" + name, Name: "app", ServiceID: name, Status: status}}, nil)
	if err != nil {
		b.Fatalf("setting %s on %s to %s: %v", name, n, status, err)
	}
}

func mustSvc(name string) int {
	n, _ := strconv.Atoi(strings.TrimPrefix(name, "svc-"))
	return n
}

func processCPU(b testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// agentCPU reads the agent's user+system time from /proc (clock ticks are
// 100 Hz on Linux).
func agentCPU(b testing.TB, a *consultest.Agent) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", a.PID()))
	if err != nil {
		b.Fatal(err)
	}
	f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}
