// Package soak is the engine of cmd/meshd-soak: it runs meshd (the built
// binary) with real Envoy sidecars in front of demo apps, continuous
// callers whose allowed or denied verdict is known at every moment, and a
// simulated fleet of xDS clients (internal/loadgen), then changes the mesh
// under them for a set time on a seeded random schedule — mTLS migrations,
// authorization policies, catalog churn, reconnect storms, CA rotations —
// and fails on the first hang, stuck stream, NACK, or call whose outcome
// the policy in force does not allow. docs/operations.md documents the
// command, docs/performance.md its runs.
package soak

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/meshd/meshd/bootstrap"
	"github.com/meshd/meshd/internal/adminclient"
	"github.com/meshd/meshd/internal/atomicfile"
	"github.com/meshd/meshd/internal/loadgen"
	"github.com/meshd/meshd/internal/testport"
	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/sds"
	"github.com/meshd/meshd/xds"
)

// Config is one soak run.
type Config struct {
	MeshdBinary   string
	DemoappBinary string
	EnvoyBinary   string
	// WorkDir holds every log, file and failure dump (created if needed).
	WorkDir string
	// MeshdArgs are extra flags for meshd.
	MeshdArgs []string

	Duration time.Duration
	Seed     uint64
	Kinds    []Kind
	// Modes are the mTLS modes the schedule sets (nil: all three).
	Modes []mesh.MTLSMode
	// Callers is the number of caller identities (each an Envoy sidecar
	// calling every server), at least 2.
	Callers int
	// Fleet is the number of simulated proxies (half state of the world,
	// half delta), FleetServices their services.
	Fleet, FleetServices int

	MinDwell, MaxDwell time.Duration
	// ConvergeTimeout bounds how long a change may take to settle, and how
	// long any proxy may leave a served version un-ACKed.
	ConvergeTimeout time.Duration
	// HangTimeout bounds how long /readyz or /healthz may go unanswered.
	HangTimeout time.Duration
	// RotationTimeout bounds a CA rotation from start to end. Rotations
	// run beside the rest of the schedule, as an operator's would.
	RotationTimeout time.Duration
	// EnforceGrace is the judge's Grace: how long after a change settled
	// a call may still meet the previous verdict.
	EnforceGrace time.Duration
	CallTimeout  time.Duration
	// LeafTTL is meshd's --leaf-ttl: short, so that leaves renew and
	// rotated roots retire within the run.
	LeafTTL time.Duration
	// KeepGoing records call violations and goes on; hangs and faults
	// still end the run.
	KeepGoing bool

	Logger *slog.Logger
}

// Defaults fills unset fields.
func (c *Config) Defaults() {
	if c.Callers < 2 {
		c.Callers = 2
	}
	if c.FleetServices <= 0 {
		c.FleetServices = max(2, c.Fleet/4)
	}
	if len(c.Kinds) == 0 {
		c.Kinds = slices.Clone(AllKinds)
	}
	if c.MaxDwell == 0 {
		c.MinDwell, c.MaxDwell = 500*time.Millisecond, 3*time.Second
	}
	if c.ConvergeTimeout == 0 {
		c.ConvergeTimeout = 60 * time.Second
	}
	if c.HangTimeout == 0 {
		c.HangTimeout = 20 * time.Second
	}
	if c.RotationTimeout == 0 {
		c.RotationTimeout = 3 * time.Minute
	}
	if c.EnforceGrace == 0 {
		c.EnforceGrace = time.Second
	}
	if c.CallTimeout == 0 {
		c.CallTimeout = 10 * time.Second
	}
	if c.LeafTTL == 0 {
		c.LeafTTL = 3 * time.Minute
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// runner is one soak run's state.
type runner struct {
	cfg    Config
	log    *slog.Logger
	dir    string
	meshd  *loadgen.Meshd
	admin  *adminclient.Client
	layout *layout
	apps   []*proc
	envoys []*envoyProc
	fleet  *loadgen.Catalog // the simulated fleet's part of the catalog
	fleets []*loadgen.Fleet
	loops  []*callLoop
	judge  *Judge
	sum    *Summary

	// Inputs as last written.
	state      State
	policyPath string
	catalogSHA string

	// samples of meshd's resources and the machine's load
	samples samples
	// rotation is the CA rotation the soak started and has not seen end.
	rotMu    sync.Mutex
	rotation *rotationRun

	ctx    context.Context
	cancel context.CancelFunc
	failMu sync.Mutex
	failed error
	steps  []stepRecord
}

// stepRecord is a step as it ran, for the summary and a failure's dump.
type stepRecord struct {
	Step     Step
	Applied  time.Time
	Settled  time.Time
	Refused  string
	Converge time.Duration
}

// Run runs the soak and returns its summary; the error says why it failed
// (the summary says so too). Every process it started is stopped before it
// returns.
func Run(ctx context.Context, cfg Config) (*Summary, error) {
	cfg.Defaults()
	r := &runner{cfg: cfg, log: cfg.Logger, state: InitialState()}
	r.sum = &Summary{Seed: cfg.Seed, Planned: cfg.Duration, Started: time.Now(), Grace: cfg.EnforceGrace, Kinds: map[Kind]*KindFigures{}}
	r.ctx, r.cancel = context.WithCancel(ctx)
	defer r.cancel()
	defer r.stopAll()
	if err := r.setup(); err != nil {
		r.sum.Failure = "set-up: " + err.Error()
		r.sum.WorkDir = r.dir
		return r.sum, err
	}
	r.sum.LiveHeapStart = r.liveHeap(r.ctx)
	r.soak()
	if r.failure() == nil {
		r.sum.LiveHeapEnd = r.liveHeap(r.ctx)
	}
	return r.finish()
}

func (r *runner) setup() error {
	dir := r.cfg.WorkDir
	if dir == "" {
		d, err := os.MkdirTemp("", "meshd-soak-")
		if err != nil {
			return fmt.Errorf("work dir: %w", err)
		}
		dir = d
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("work dir: %w", err)
	}
	r.dir = dir
	r.sum.WorkDir = dir
	r.log.Info("soak set-up", "work_dir", dir, "seed", r.cfg.Seed, "callers", r.cfg.Callers, "fleet", r.cfg.Fleet)
	r.samples.load(time.Now())

	// Apps first: they bind :0 and the catalog needs their ports.
	r.layout = &layout{Replicas: map[string][]replicaPorts{}}
	for _, sv := range Servers {
		for rep := range sv.Replicas {
			app, port, err := startApp(r.ctx, r.cfg.DemoappBinary, dir, string(sv.Protocol), sv.Name, fmt.Sprintf("%s-%d", sv.Name, rep))
			if err != nil {
				return err
			}
			r.apps = append(r.apps, app)
			pub, err := testport.Reserve()
			if err != nil {
				return err
			}
			adm, err := testport.Reserve()
			if err != nil {
				return err
			}
			r.layout.Replicas[sv.Name] = append(r.layout.Replicas[sv.Name], replicaPorts{Public: uint32(pub), App: port, Admin: uint32(adm)})
		}
	}
	for range r.cfg.Callers {
		cp := callerPorts{Local: map[string]uint32{}}
		adm, err := testport.Reserve()
		if err != nil {
			return err
		}
		cp.Admin = uint32(adm)
		for _, sv := range Servers {
			p, err := testport.Reserve()
			if err != nil {
				return err
			}
			cp.Local[sv.Name] = uint32(p)
		}
		r.layout.Callers = append(r.layout.Callers, cp)
	}
	if r.cfg.Fleet > 0 {
		up := min(3, r.cfg.FleetServices-1)
		fleet, err := loadgen.Generate(loadgen.Scenario{Name: "soak", Proxies: r.cfg.Fleet, Services: r.cfg.FleetServices, Endpoints: 2, Upstreams: up})
		if err != nil {
			return fmt.Errorf("fleet catalog: %w", err)
		}
		r.fleet = fleet
	}

	policyDir := filepath.Join(dir, "policy")
	if err := os.MkdirAll(policyDir, 0o755); err != nil {
		return fmt.Errorf("policy dir: %w", err)
	}
	r.policyPath = filepath.Join(policyDir, "soak.yaml")
	_ = os.Remove(r.policyPath)
	// A migration step overdue at half the convergence bound is reported
	// by meshd itself (and fails the soak with meshd's words for it).
	args := append([]string{"--policy-dir", policyDir, "--mtls-mode", string(DefaultMode),
		"--leaf-ttl", r.cfg.LeafTTL.String(), "--mtls-migration-overdue", (r.cfg.ConvergeTimeout / 2).String(),
		"--log-level", "info"}, r.cfg.MeshdArgs...)
	m, err := loadgen.NewMeshd(r.cfg.MeshdBinary, dir, args)
	if err != nil {
		return err
	}
	r.meshd = m
	if err := r.writeCatalog(); err != nil {
		return err
	}
	r.log.Info("starting meshd", "binary", r.cfg.MeshdBinary, "log", m.LogPath)
	if err := m.Start(r.ctx); err != nil {
		return err
	}
	r.sum.MeshdLog = m.LogPath
	if r.admin, err = adminClient(m.AdminAddr, loadgen.AdminTokenFile(m.DataDir)); err != nil {
		return err
	}
	token, err := loadgen.TokenMinter(m.DataDir, "")
	if err != nil {
		return err
	}
	if err := r.startEnvoys(token); err != nil {
		return err
	}
	if err := r.startFleet(token); err != nil {
		return err
	}
	// Everything connected and ACKed before the first call.
	if _, err := r.converge(nil, time.Now()); err != nil {
		return fmt.Errorf("initial sync: %w", err)
	}
	return nil
}

// adminClient is how the soak reaches meshd's admin API: the same client
// meshctl uses, so that admin credentials, when meshd asks for them, are
// added in one place.
// adminClient asks the soak's meshd, with the admin token of its data
// directory (meshd requires it for /debug/status).
func adminClient(addr, tokenFile string) (*adminclient.Client, error) {
	o := adminclient.Options{Address: addr, Timeout: 15 * time.Second, TokenFile: tokenFile}
	return o.Client()
}

func (r *runner) writeCatalog() error {
	cat := buildCatalog(r.layout, r.state.ReplicaIn, r.fleet)
	b, err := cat.Marshal()
	if err != nil {
		return err
	}
	if err := atomicfile.Write(r.meshd.Catalog, b, 0o644); err != nil {
		return fmt.Errorf("writing catalog: %w", err)
	}
	sum := sha256.Sum256(b)
	r.catalogSHA = hex.EncodeToString(sum[:])
	return nil
}

func (r *runner) writePolicy() error {
	y := r.state.PolicyYAML()
	if y == nil {
		if err := os.Remove(r.policyPath); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("removing policy file: %w", err)
		}
		return nil
	}
	if err := atomicfile.Write(r.policyPath, y, 0o644); err != nil {
		return fmt.Errorf("writing policy file: %w", err)
	}
	return nil
}

// startEnvoys starts one sidecar per server replica and per caller
// identity, half of them on delta xDS, and waits until each is LIVE.
func (r *runner) startEnvoys(token func(mesh.ServiceKey) (string, error)) error {
	type sidecar struct {
		id, service string
		admin       uint32
	}
	var all []sidecar
	for _, sv := range Servers {
		for rep, p := range r.layout.Replicas[sv.Name] {
			all = append(all, sidecar{ProxyID(sv.Name, rep), sv.Name, p.Admin})
		}
	}
	for i, cp := range r.layout.Callers {
		all = append(all, sidecar{callerProxyID(i), CallerName(i), cp.Admin})
	}
	for i, s := range all {
		tok, err := token(mesh.ServiceKey{Namespace: Namespace, Name: s.service})
		if err != nil {
			return err
		}
		delta := i%2 == 1
		y, err := bootstrap.EnvoyYAML(bootstrap.EnvoyOptions{NodeID: s.id, Service: s.service, Namespace: Namespace,
			XDSAddress: r.meshd.XDSAddr, AdminPort: s.admin, CAFile: r.meshd.CAFile(), Token: tok, Delta: delta})
		if err != nil {
			return fmt.Errorf("bootstrap of %s: %w", s.id, err)
		}
		path := filepath.Join(r.dir, "envoy-"+s.id+".yaml")
		if err := os.WriteFile(path, y, 0o600); err != nil {
			return err
		}
		e, err := startEnvoy(r.cfg.EnvoyBinary, r.dir, s.id, path, uint32(os.Getpid()%40000)*100+uint32(i))
		if err != nil {
			return err
		}
		r.envoys = append(r.envoys, e)
		if delta {
			r.sum.RealDelta++
		} else {
			r.sum.RealSotW++
		}
	}
	for _, e := range r.envoys {
		if err := e.WaitReady(r.ctx, 60*time.Second); err != nil {
			return err
		}
	}
	return nil
}

// startFleet connects the simulated fleet, half over state of the world,
// half over delta.
func (r *runner) startFleet(token func(mesh.ServiceKey) (string, error)) error {
	if r.fleet == nil {
		return nil
	}
	ids := r.fleet.ProxyIDs()
	cat := buildCatalog(r.layout, true, r.fleet)
	tlsConf := bundleTLS(r.meshd.CAFile())
	for half, part := range [][]string{ids[:len(ids)/2], ids[len(ids)/2:]} {
		if len(part) == 0 {
			continue
		}
		nodes, err := cat.NodeSpecs(part, token, nil)
		if err != nil {
			return err
		}
		f, err := loadgen.NewFleet(loadgen.ClientConfig{Address: r.meshd.XDSAddr, TLS: tlsConf, Delta: half == 1,
			StreamsPerConn: 50, SubscribeSDS: true, BufferSize: 16 << 10, Logger: r.log}, nodes)
		if err != nil {
			return err
		}
		f.Start(r.ctx)
		r.fleets = append(r.fleets, f)
		if half == 1 {
			r.sum.FleetDelta = len(part)
		} else {
			r.sum.FleetSotW = len(part)
		}
	}
	return nil
}

// bundleTLS verifies meshd's certificate against the trust bundle file as
// it is when each connection is made. An Envoy keeps the root it started
// with (a documented limit of root rotation); the fleet reconnects in
// storms during the soak, like restarted Envoys, which read the file anew.
func bundleTLS(caFile string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		// Verified below, against the bundle of the moment.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			pem, err := os.ReadFile(caFile)
			if err != nil {
				return fmt.Errorf("trust bundle: %w", err)
			}
			roots := x509.NewCertPool()
			if !roots.AppendCertsFromPEM(pem) {
				return fmt.Errorf("trust bundle %s: no certificate", caFile)
			}
			if len(cs.PeerCertificates) == 0 {
				return errors.New("meshd sent no certificate")
			}
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			_, err = cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, DNSName: "localhost"})
			return err
		},
	}
}

// fleetIDs lists every simulated proxy's node id.
func (r *runner) fleetIDs() []string {
	if r.fleet == nil {
		return nil
	}
	return r.fleet.ProxyIDs()
}

func (r *runner) fleetProxy(i int) *loadgen.Proxy {
	ids := r.fleetIDs()
	if i < 0 || i >= len(ids) {
		return nil
	}
	for _, f := range r.fleets {
		if p := f.Proxy(ids[i]); p != nil {
			return p
		}
	}
	return nil
}

// fail records the run's first failure and ends it.
func (r *runner) fail(err error) {
	r.failMu.Lock()
	first := r.failed == nil
	if first {
		r.failed = err
	}
	r.failMu.Unlock()
	if first {
		r.log.Error("soak failed", "err", err)
		r.cancel()
	}
}

func (r *runner) failure() error {
	r.failMu.Lock()
	defer r.failMu.Unlock()
	return r.failed
}

// soak runs the callers, the watchdogs and the schedule until the
// duration has passed or something failed.
func (r *runner) soak() {
	var loops []LoopKey
	for i := range r.layout.Callers {
		for _, sv := range Servers {
			c, err := newCaller(sv.Protocol, sv.Name, CallerName(i), r.layout.Callers[i].Local[sv.Name])
			if err != nil {
				r.fail(err)
				return
			}
			interval := 100 * time.Millisecond
			if sv.Protocol == mesh.ProtocolTCP {
				interval = 200 * time.Millisecond
			}
			l := &callLoop{idx: len(loops), key: LoopKey{Caller: CallerName(i), Server: sv.Name}, proto: sv.Protocol,
				c: c, interval: interval, timeout: r.cfg.CallTimeout}
			r.loops = append(r.loops, l)
			loops = append(loops, l.key)
		}
	}
	start := time.Now()
	r.judge = NewJudge(loops, r.state, start)
	r.judge.Grace = r.cfg.EnforceGrace
	var wg sync.WaitGroup
	callCtx, stopCalls := context.WithCancel(r.ctx)
	for _, l := range r.loops {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.run(callCtx, r.judge, r.violation)
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		r.watchdog(callCtx)
	}()

	planner := NewPlanner(r.cfg.Seed, PlanOptions{Kinds: r.cfg.Kinds, Callers: r.cfg.Callers,
		FleetServices: r.cfg.FleetServices, FleetProxies: r.cfg.Fleet, MinDwell: r.cfg.MinDwell, MaxDwell: r.cfg.MaxDwell,
		Modes: r.cfg.Modes})
	if r.fleet == nil {
		// Nothing to churn or storm without a fleet.
		planner.o.Kinds = slices.DeleteFunc(slices.Clone(r.cfg.Kinds), func(k Kind) bool { return k == KindEndpointChurn || k == KindReconnectStorm })
	}
	deadline := start.Add(r.cfg.Duration)
	for time.Now().Before(deadline) && r.ctx.Err() == nil {
		st := planner.Next()
		if err := r.step(&st); err != nil {
			r.fail(err)
			break
		}
		select {
		case <-r.ctx.Done():
		case <-time.After(min(st.Dwell, time.Until(deadline))):
		}
	}
	// A rotation still running must end within its bound too; the callers
	// keep calling meanwhile.
	for r.ctx.Err() == nil {
		r.rotMu.Lock()
		running := r.rotation != nil
		r.rotMu.Unlock()
		if !running {
			break
		}
		if err := r.checkRotation(r.ctx, time.Now()); err != nil {
			r.fail(err)
			break
		}
		select {
		case <-r.ctx.Done():
		case <-time.After(time.Second):
		}
	}
	// The last calls run under the settled last step, then stop.
	stopCalls()
	wg.Wait()
	r.sum.Ran = time.Since(start)
}

// violation handles a call the judge refused.
func (r *runner) violation(v Violation) {
	r.log.Error("call violation", "violation", v.String(), "detail", v.Call.Detail)
	if !r.cfg.KeepGoing {
		r.fail(fmt.Errorf("%s: %s", v.String(), v.Call.Detail))
	}
}

// step applies one step and waits until it has settled.
func (r *runner) step(st *Step) error {
	rec := stepRecord{Step: *st}
	r.log.Info("step", "n", st.N, "kind", st.Kind, "what", st.Desc)
	before, err := r.preStep(st)
	if err != nil {
		return err
	}
	epoch := r.judge.Begin(st)
	rec.Applied = time.Now()
	refused, err := r.apply(st)
	if err != nil {
		return fmt.Errorf("step %d (%s): %w", st.N, st.Desc, err)
	}
	rec.Refused = refused
	r.state = st.After
	if (st.Kind == KindRotateRoot || st.Kind == KindRotateIntermediate) && refused == "" {
		r.rotMu.Lock()
		r.rotation = &rotationRun{step: st.N, kind: st.Kind, started: rec.Applied}
		r.rotMu.Unlock()
	}
	settled, err := r.converge(&stepCheck{step: st, before: before, refused: refused != ""}, rec.Applied)
	if err != nil {
		r.steps = append(r.steps, rec)
		return fmt.Errorf("step %d (%s) did not settle within %s: %w", st.N, st.Desc, r.cfg.ConvergeTimeout, err)
	}
	r.judge.Settle(epoch, settled)
	rec.Settled, rec.Converge = settled, settled.Sub(rec.Applied)
	r.steps = append(r.steps, rec)
	r.sum.record(rec)
	r.log.Info("settled", "n", st.N, "kind", st.Kind, "took", rec.Converge.Round(time.Millisecond), "refused", refused)
	return nil
}

// stepBefore is what a step's check compares with: the fleet proxies'
// stream counts (storms) and the secrets the first caller is served
// (rotations).
type stepBefore struct {
	streams map[int]int
	secret  string
}

// rotationRun is a CA rotation in progress.
type rotationRun struct {
	step    int
	kind    Kind
	started time.Time
}

func (r *runner) preStep(st *Step) (stepBefore, error) {
	var b stepBefore
	switch st.Kind {
	case KindReconnectStorm:
		b.streams = map[int]int{}
		for _, i := range st.Storm {
			if p := r.fleetProxy(i); p != nil {
				b.streams[i] = p.View().Streams
			}
		}
	case KindRotateIntermediate, KindRotateRoot:
		v, err := r.servedSecret(callerProxyID(0))
		if err != nil {
			return b, err
		}
		b.secret = v
	}
	return b, nil
}

// apply makes a step's change. refused is meshd's answer when it refused a
// rotation (one in progress, or too many roots still trusted): not a
// failure, and nothing changes.
func (r *runner) apply(st *Step) (refused string, err error) {
	switch st.Kind {
	case KindBurst:
		for i, part := range st.Parts {
			if i > 0 {
				time.Sleep(st.Gaps[i-1])
			}
			if _, err := r.apply(&part); err != nil {
				return "", err
			}
			r.state = part.After
		}
		return "", nil
	case KindMeshMode, KindWorkloadMode, KindAuthzAdd, KindAuthzRemove:
		r.state = st.After
		return "", r.writePolicy()
	case KindReplicaToggle:
		r.state = st.After
		return "", r.writeCatalog()
	case KindEndpointChurn:
		if _, _, err := applyFleetChange(r.fleet, st.Fleet); err != nil {
			return "", err
		}
		return "", r.writeCatalog()
	case KindReconnectStorm:
		for _, i := range st.Storm {
			if p := r.fleetProxy(i); p != nil {
				p.Reconnect()
			}
		}
		return "", nil
	case KindRotateIntermediate, KindRotateRoot:
		path := "/ca/rotate-intermediate"
		if st.Kind == KindRotateRoot {
			path = "/ca/rotate-root"
			var ca sds.Status
			if err := r.admin.GetJSON(r.ctx, "/ca/status", nil, &ca); err != nil {
				return "", err
			}
			if n := len(ca.TrustedRoots); n >= maxTrustedRoots {
				// meshd refuses a fifth root (docs/identity.md) until
				// the oldest retires: not asked for.
				return fmt.Sprintf("not asked: %d roots trusted, the most meshd allows", n), nil
			}
		}
		err := r.admin.PostJSON(r.ctx, path, nil, nil)
		var ae *adminclient.Error
		if errors.As(err, &ae) && ae.Status == http.StatusConflict {
			return ae.Message, nil
		}
		return "", err
	}
	return "", fmt.Errorf("unknown step kind %q", st.Kind)
}

// maxTrustedRoots is how many roots meshd trusts at most (docs/identity.md,
// "Rotation").
const maxTrustedRoots = 4

// stepCheck is what converge checks beyond the mesh-wide conditions.
type stepCheck struct {
	step    *Step
	before  stepBefore
	refused bool
}

// converge waits until the step has settled: meshd renders the new state
// (the markers of every real server, the catalog it serves, the CA), and
// then every proxy has ACKed what meshd serves and no mTLS migration is in
// progress. It returns when that was seen; the markers are read before the
// status, so the ACKs seen are of configuration that has the change.
func (r *runner) converge(chk *stepCheck, applied time.Time) (time.Time, error) {
	deadline := applied.Add(r.cfg.ConvergeTimeout)
	var last []string
	for {
		if err := r.ctx.Err(); err != nil {
			if f := r.failure(); f != nil {
				return time.Time{}, f
			}
			return time.Time{}, err
		}
		pending, err := r.markers(chk)
		if err == nil && len(pending) == 0 {
			var st meshdStatus
			if err = r.admin.GetJSON(r.ctx, "/debug/status", nil, &st); err == nil {
				c := checkStatus(&st, realProxyIDs(r.layout), r.fleetIDs())
				c.dropResolved(r.resolveIdle(r.ctx, c.Idle))
				if len(c.Faults) > 0 {
					return time.Time{}, fmt.Errorf("meshd reports: %s", strings.Join(c.Faults, "; "))
				}
				if n := r.fleetNACKs(); n > 0 {
					return time.Time{}, fmt.Errorf("the simulated fleet sent %d NACKs", n)
				}
				pending = c.Pending
				if len(pending) == 0 {
					return time.Now(), nil
				}
			}
		}
		if err != nil {
			pending = []string{err.Error()}
		}
		last = pending
		if time.Now().After(deadline) {
			if len(last) > 5 {
				last = append(last[:5], fmt.Sprintf("and %d more", len(last)-5))
			}
			return time.Time{}, fmt.Errorf("still waiting: %s", strings.Join(last, "; "))
		}
		select {
		case <-r.ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// markers says what meshd's rendered configuration still lacks for the
// state in force and the step.
func (r *runner) markers(chk *stepCheck) ([]string, error) {
	var pending []string
	for _, sv := range Servers {
		for rep := range r.layout.Replicas[sv.Name] {
			raw, err := r.admin.Do(r.ctx, http.MethodGet, "/debug/config_dump", url.Values{"proxy": {ProxyID(sv.Name, rep)}})
			if err != nil {
				return nil, err
			}
			pending = append(pending, checkServerDump(raw, &r.state, sv.Name, rep)...)
		}
	}
	// The toggled replica's endpoint, as the first caller is served it.
	raw, err := r.admin.Do(r.ctx, http.MethodGet, "/debug/config_dump", url.Values{"proxy": {callerProxyID(0)}})
	if err != nil {
		return nil, err
	}
	eps, err := endpointsOf(raw, xds.OutboundClusterName(mesh.ServiceKey{Namespace: Namespace, Name: toggledServer}))
	if err != nil {
		return nil, err
	}
	toggled := fmt.Sprintf("127.0.0.1:%d", r.layout.Replicas[toggledServer][1].Public)
	if _, in := eps[toggled]; in != r.state.ReplicaIn {
		pending = append(pending, fmt.Sprintf("%s is served %s endpoints %v", callerProxyID(0), toggledServer, slices.Sorted(maps.Keys(eps))))
	}
	var st meshdStatus
	if err := r.admin.GetJSON(r.ctx, "/debug/status", nil, &st); err != nil {
		return nil, err
	}
	if st.Catalog != nil && st.Catalog.SHA256 != r.catalogSHA {
		pending = append(pending, "meshd has not read the catalog last written")
	}
	if chk == nil {
		return pending, nil
	}
	switch st := chk.step; st.Kind {
	case KindEndpointChurn:
		p, err := r.fleetChurnMarker(st.Fleet)
		if err != nil {
			return nil, err
		}
		pending = append(pending, p...)
	case KindReconnectStorm:
		for i, n := range chk.before.streams {
			if v := r.fleetProxy(i).View(); v.Streams <= n || v.SyncedAt.IsZero() {
				pending = append(pending, fmt.Sprintf("fleet proxy %s has not synced on a new stream (streams %d, last error %v)", v.ID, v.Streams, v.LastErr))
			}
		}
	case KindRotateIntermediate, KindRotateRoot:
		// Started: new leaves (intermediate) or a new bundle (root) are
		// rendered. Its end is watched beside the schedule (watchdog).
		if chk.refused {
			break
		}
		v, err := r.servedSecret(callerProxyID(0))
		if err != nil {
			return nil, err
		}
		if v == chk.before.secret {
			pending = append(pending, "meshd has not rendered the rotation's secrets yet")
		}
	}
	return pending, nil
}

// fleetChurnMarker checks an endpoint churn step as a consumer of the
// changed fleet service is served it.
func (r *runner) fleetChurnMarker(ch FleetChange) ([]string, error) {
	s := &r.fleet.Services[ch.Service]
	users := r.fleet.Consumers(s.Key())
	if len(users) == 0 {
		return nil, nil
	}
	raw, err := r.admin.Do(r.ctx, http.MethodGet, "/debug/config_dump", url.Values{"proxy": {users[0]}})
	if err != nil {
		return nil, err
	}
	eps, err := endpointsOf(raw, xds.OutboundClusterName(s.Key()))
	if err != nil {
		return nil, err
	}
	want := map[string]string{}
	for _, e := range s.Endpoints {
		h := "HEALTHY"
		if e.Health == mesh.HealthUnhealthy {
			h = "UNHEALTHY"
		}
		want[e.HostPort()] = h
	}
	for k, h := range want {
		if eps[k] != h {
			return []string{fmt.Sprintf("%s is served %s endpoint %s as %q, want %s", users[0], s.Name, k, eps[k], h)}, nil
		}
	}
	for k := range eps {
		if _, ok := want[k]; !ok {
			return []string{fmt.Sprintf("%s is still served %s endpoint %s", users[0], s.Name, k)}, nil
		}
	}
	return nil, nil
}

// servedSecret is the Secret version meshd serves a proxy.
func (r *runner) servedSecret(id string) (string, error) {
	var st meshdStatus
	if err := r.admin.GetJSON(r.ctx, "/debug/status", nil, &st); err != nil {
		return "", err
	}
	for _, p := range st.Proxies {
		if p.ID == id {
			return p.Versions["Secret"], nil
		}
	}
	return "", fmt.Errorf("/debug/status lists no proxy %s", id)
}

func (r *runner) fleetNACKs() int64 {
	var n int64
	for _, f := range r.fleets {
		n += f.NACKs.Load()
	}
	return n
}

func (r *runner) stopAll() {
	for _, f := range r.fleets {
		f.Stop()
	}
	for _, e := range r.envoys {
		e.Stop(5 * time.Second)
	}
	for _, a := range r.apps {
		a.Stop(5 * time.Second)
	}
	if r.meshd != nil {
		r.meshd.Stop()
	}
}
