package soak

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/meshd/meshd/internal/adminclient"
	"github.com/meshd/meshd/internal/loadgen"
	"github.com/meshd/meshd/sds"
)

// samples are meshd's resources and the machine's load over the run.
type samples struct {
	mu                            sync.Mutex
	rss, heap, goroutines, loadav []float64
}

func (s *samples) add(dst *[]float64, v float64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	*dst = append(*dst, v)
}

// load samples the 1-minute load average.
func (s *samples) load(time.Time) {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return
	}
	if v, err := strconv.ParseFloat(f[0], 64); err == nil {
		s.add(&s.loadav, v)
	}
}

// watchdog runs beside the schedule until ctx ends: meshd's health and
// readiness (a hang), the stream-progress watchdog (a proxy that does not
// ACK what it is served), NACKs and faults meshd reports, processes that
// exit, callers that stall, and samples of meshd's memory and goroutines.
func (r *runner) watchdog(ctx context.Context) {
	lag := newLagTracker(r.cfg.ConvergeTimeout)
	gone := newGoneTracker(r.cfg.ConvergeTimeout)
	lastReady, lastHealthy := time.Now(), time.Now()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for n := 0; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		now := time.Now()
		if err := r.probe(ctx, "/readyz"); err == nil {
			lastReady = now
		} else if now.Sub(lastReady) > r.cfg.HangTimeout {
			r.fail(fmt.Errorf("hang: meshd's /readyz has not answered 200 for %s (last: %v)", now.Sub(lastReady).Round(time.Second), err))
			return
		}
		switch err := r.probe(ctx, "/healthz"); {
		case err == nil:
			lastHealthy = now
		case isAnswer(err):
			// meshd itself says it is wedged (liveness, issue 12).
			r.fail(fmt.Errorf("hang: meshd's liveness check failed: %v", err))
			return
		case now.Sub(lastHealthy) > r.cfg.HangTimeout:
			r.fail(fmt.Errorf("hang: meshd's /healthz has not answered for %s (last: %v)", now.Sub(lastHealthy).Round(time.Second), err))
			return
		}
		if err := r.exited(); err != nil {
			r.fail(err)
			return
		}
		for _, l := range r.loops {
			if d := now.Sub(time.Unix(0, l.lastEnd.Load())); d > 2*r.cfg.CallTimeout+5*time.Second {
				r.fail(fmt.Errorf("hang: caller %s has not finished a call for %s", l.key, d.Round(time.Second)))
				return
			}
		}
		if n%3 == 0 {
			var st meshdStatus
			if err := r.admin.GetJSON(ctx, "/debug/status", nil, &st); err == nil {
				c := checkStatus(&st, realProxyIDs(r.layout), r.fleetIDs())
				c.dropResolved(r.resolveIdle(ctx, c.Idle))
				if len(c.Faults) > 0 {
					r.fail(fmt.Errorf("meshd reports: %s", strings.Join(c.Faults, "; ")))
					return
				}
				if long := gone.observe(c.Disconnected, now); len(long) > 0 {
					r.fail(fmt.Errorf("hang: %s", strings.Join(long, "; ")))
					return
				}
				if stuck := lag.observe(c.Lagging, now); len(stuck) > 0 {
					r.fail(fmt.Errorf("hang: stream progress stopped: %s", strings.Join(stuck, "; ")))
					return
				}
			}
			if n := r.fleetNACKs(); n > 0 {
				r.fail(fmt.Errorf("the simulated fleet sent %d NACKs", n))
				return
			}
			if err := r.checkRotation(ctx, now); err != nil {
				r.fail(err)
				return
			}
		}
		if n%5 == 0 {
			r.sample(ctx)
		}
	}
}

// checkRotation follows the CA rotation the soak started: it must end
// within the bound, whatever else the schedule does meanwhile.
func (r *runner) checkRotation(ctx context.Context, now time.Time) error {
	r.rotMu.Lock()
	rot := r.rotation
	r.rotMu.Unlock()
	if rot == nil {
		return nil
	}
	var ca sds.Status
	if err := r.admin.GetJSON(ctx, "/ca/status", nil, &ca); err != nil {
		return nil // the hang watchdog judges an unanswering meshd
	}
	if ca.Rotation == nil {
		r.rotMu.Lock()
		r.rotation = nil
		r.rotMu.Unlock()
		r.sum.rotated(rot.kind, now.Sub(rot.started))
		r.log.Info("CA rotation ended", "step", rot.step, "kind", rot.kind, "took", now.Sub(rot.started).Round(time.Second))
		return nil
	}
	if d := now.Sub(rot.started); d > r.cfg.RotationTimeout {
		return fmt.Errorf("hang: the %s started at step %d has not ended after %s: phase %s, waiting for %v, %d stale leaves",
			rot.kind, rot.step, d.Round(time.Second), ca.Rotation.Phase, ca.Rotation.PendingProxies, ca.Rotation.StaleLeaves)
	}
	return nil
}

// probe GETs an admin path and says why it did not answer 200.
func (r *runner) probe(ctx context.Context, path string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err := r.admin.Do(ctx, http.MethodGet, path, nil)
	return err
}

// isAnswer tells an error status meshd sent from no answer at all.
func isAnswer(err error) bool {
	var e *adminclient.Error
	return errors.As(err, &e) && e.Status != 0
}

// exited reports a child process that ended.
func (r *runner) exited() error {
	if r.meshd.Exited() {
		return fmt.Errorf("meshd %w; see %s", errExited, r.meshd.LogPath)
	}
	for _, e := range r.envoys {
		if done, err := e.Exited(); done {
			return fmt.Errorf("envoy %s %w (%v); see %s", e.ID, errExited, err, e.LogPath)
		}
	}
	for _, a := range r.apps {
		if done, err := a.Exited(); done {
			return fmt.Errorf("%s %w (%v); see %s", a.name, errExited, err, a.LogPath)
		}
	}
	return nil
}

// sample records meshd's RSS, heap in use and goroutines and the load
// average, and counts NACKs meshd saw.
func (r *runner) sample(ctx context.Context) {
	r.samples.load(time.Now())
	body, err := r.admin.Do(ctx, http.MethodGet, "/metrics", nil)
	if err != nil {
		return
	}
	m := loadgen.ParseMetrics(string(body))
	r.samples.add(&r.samples.rss, m.Get("process_resident_memory_bytes"))
	r.samples.add(&r.samples.heap, m.Get("go_memstats_heap_inuse_bytes"))
	r.samples.add(&r.samples.goroutines, m.Get("go_goroutines"))
	if n := m.Get("meshd_xds_nacks_total"); n > 0 {
		r.fail(fmt.Errorf("meshd_xds_nacks_total is %.0f", n))
	}
}

// liveHeap is meshd's live heap right after a full collection (POST
// /debug/gc), the figure that shows whether memory stays flat: the heap in
// use between collections follows the garbage of the moment. 0 when meshd
// does not answer.
func (r *runner) liveHeap(ctx context.Context) float64 {
	var h struct {
		Live uint64 `json:"heapLiveBytes"`
	}
	if err := r.admin.PostJSON(ctx, "/debug/gc", nil, &h); err != nil {
		r.log.Warn("meshd's heap after a collection not read", "err", err)
		return 0
	}
	return float64(h.Live)
}

// dump writes what explains a failure into a directory of the work dir:
// meshd's status, goroutine stacks, metrics and CA status, the
// configuration meshd serves each real sidecar and what each has (Envoy's
// config dump; both redact private keys), the steps so far and the
// violations. Secrets never reach it.
func (r *runner) dump(why error) string {
	dir := filepath.Join(r.dir, "failure-"+time.Now().Format("20060102-150405"))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		r.log.Error("failure dump", "err", err)
		return ""
	}
	// The run's context is over; the dump gets its own.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	write := func(name string, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			r.log.Error("failure dump", "file", name, "err", err)
		}
	}
	get := func(name, path string, q url.Values) {
		b, err := r.admin.Do(ctx, http.MethodGet, path, q)
		if err != nil {
			b = []byte(fmt.Sprintf("GET %s: %v\n", path, err))
		}
		write(name, b)
	}
	get("meshd-goroutines.txt", "/debug/pprof/goroutine", url.Values{"debug": {"2"}})
	get("meshd-status.json", "/debug/status", nil)
	get("meshd-metrics.txt", "/metrics", nil)
	get("meshd-ca-status.json", "/ca/status", nil)
	for _, id := range realProxyIDs(r.layout) {
		get("meshd-config-"+id+".json", "/debug/config_dump", url.Values{"proxy": {id}})
	}
	for _, e := range r.envoys {
		_, b, err := e.Get(ctx, "/config_dump?include_eds")
		if err != nil {
			b = []byte(err.Error())
		}
		write("envoy-"+e.ID+"-config.json", b)
		_, b, err = e.Get(ctx, "/stats?filter=rbac|update_rejected|connected_state|cx_destroy")
		if err != nil {
			b = []byte(err.Error())
		}
		write("envoy-"+e.ID+"-stats.txt", b)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "failure: %v\n", why)
	b.WriteString(r.stepsText())
	write("steps.txt", []byte(b.String()))
	b.Reset()
	if r.judge != nil {
		for _, v := range r.judge.Violations() {
			fmt.Fprintf(&b, "%s\n  detail: %s\n", v.String(), v.Call.Detail)
		}
	}
	write("violations.txt", []byte(b.String()))
	b.Reset()
	fmt.Fprintf(&b, "meshd log: %s\n", r.meshd.LogPath)
	for _, e := range r.envoys {
		fmt.Fprintf(&b, "envoy %s log: %s\n", e.ID, e.LogPath)
	}
	for _, a := range r.apps {
		fmt.Fprintf(&b, "%s log: %s\n", a.name, a.LogPath)
	}
	write("logs.txt", []byte(b.String()))
	return dir
}

// stepsText lists every step as it ran: times, convergence, refusals and
// the state after it, for steps.txt (a passing run's too, to attribute late
// calls) and a failure's dump.
func (r *runner) stepsText() string {
	var b strings.Builder
	fmt.Fprintf(&b, "seed: %d\n\n", r.cfg.Seed)
	for _, s := range r.steps {
		fmt.Fprintf(&b, "step %d %s applied %s", s.Step.N, s.Step.Kind, s.Applied.Format("15:04:05.000"))
		if !s.Settled.IsZero() {
			fmt.Fprintf(&b, " settled %s (%s)", s.Settled.Format("15:04:05.000"), s.Converge.Round(time.Millisecond))
		} else {
			b.WriteString(" NOT SETTLED")
		}
		if s.Refused != "" {
			fmt.Fprintf(&b, " refused: %s", s.Refused)
		}
		fmt.Fprintf(&b, "\n  %s\n  state after: %s\n", s.Step.Desc, s.Step.After.Describe())
	}
	return b.String()
}

// envoyDumpResource is the /config_dump?resource= of each xDS type a
// sidecar may stop subscribing to (listeners and clusters are wildcard
// subscriptions, never dropped).
var envoyDumpResource = map[string]string{
	"Secret":                "dynamic_active_secrets",
	"RouteConfiguration":    "dynamic_route_configs",
	"ClusterLoadAssignment": "dynamic_endpoint_configs&include_eds",
}

// resolveIdle tells, for the idle lags of real sidecars, which are not
// lags: the sidecar holds no resource of that type, because it no longer
// subscribes to it (meshd's status keeps a type a proxy stopped asking
// for). The fleet always subscribes to every type it was served, so its
// idle lags stay.
func (r *runner) resolveIdle(ctx context.Context, idle map[string]bool) map[string]bool {
	out := map[string]bool{}
	for k := range idle {
		id, typ, _ := strings.Cut(k, " ")
		res, ok := envoyDumpResource[typ]
		if !ok {
			continue
		}
		for _, e := range r.envoys {
			if e.ID != id {
				continue
			}
			code, body, err := e.Get(ctx, "/config_dump?resource="+res)
			if err != nil || code != http.StatusOK {
				continue
			}
			var d struct {
				Configs []json.RawMessage `json:"configs"`
			}
			if json.Unmarshal(body, &d) == nil && len(d.Configs) == 0 {
				out[k] = true
			}
		}
	}
	return out
}
