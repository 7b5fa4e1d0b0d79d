package loadgen

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/template"
	"time"

	"github.com/meshd/meshd/bootstrap"
	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/sds"
	"github.com/meshd/meshd/xds"
)

// Config is one run of the load generator.
type Config struct {
	// Scenario to generate when the tool starts meshd (and no CatalogFile
	// is given).
	Scenario Scenario

	// MeshdBinary, if set, makes the tool start meshd itself in WorkDir
	// (a temporary directory if empty) with MeshdArgs added.
	MeshdBinary string
	MeshdArgs   []string
	WorkDir     string

	// Targeting a running control plane.
	XDSAddress   string
	AdminAddress string // meshd's admin; enables metrics, heap and status figures
	CatalogFile  string // the file that meshd watches; enables churn
	// PolicyDir is the directory meshd reads Istio policies from
	// (--policy-dir); enables the policy churn. With MeshdBinary and no
	// PolicyDir the tool makes one in the work dir and passes it.
	PolicyDir string
	MeshdPID  int // optional: read /proc figures of a running meshd
	// CatalogFormat is how the tool writes the catalog (the started
	// meshd's, and every churn rewrite): "" means YAML for a generated
	// catalog and a CatalogFile's own format for a loaded one.
	CatalogFormat CatalogFormat

	// Transport.
	CAFile     string // root to verify the server with (default: meshd's data dir)
	ServerName string
	Plaintext  bool

	// Authentication, as real proxies do it. With DataDir (meshd's data
	// directory; set automatically for a meshd the tool starts) the tool
	// signs one bootstrap token per service with meshd's token key, like
	// "meshctl token create". TokenFile instead sends one token for every
	// node (generic mode, or a fleet of one service).
	DataDir string
	// AdminTokenFile holds meshd's admin token (default: DataDir's
	// admin.token, if there is one).
	AdminTokenFile string
	TrustDomain    string
	TokenFile      string

	// Client behaviour.
	Delta          bool
	StreamsPerConn int
	BufferSize     int
	SubscribeSDS   bool

	// Generic mode (no catalog): Proxies node ids from NodeIDTemplate.
	Proxies        int
	NodeIDTemplate string
	NodeMetadata   map[string]any

	// Phases.
	SyncTimeout  time.Duration
	IdleWindow   time.Duration
	ChurnRounds  int
	ChurnKinds   []string
	ChurnTimeout time.Duration
	ChurnSettle  time.Duration
	Restart      bool
	ProfileDir   string // save meshd CPU (during cold sync) and heap profiles here

	Logger *slog.Logger
}

// Dist is a latency distribution.
type Dist struct {
	N              int
	P50, P99, Max  time.Duration
	Missing        int // expected events that never happened
	MissingExample string
}

func distOf(ds []time.Duration, missing int) Dist {
	d := Dist{N: len(ds), Missing: missing}
	if len(ds) == 0 {
		return d
	}
	slices.Sort(ds)
	pick := func(q float64) time.Duration {
		i := int(q*float64(len(ds))+0.999999) - 1
		return ds[min(max(i, 0), len(ds)-1)]
	}
	d.P50, d.P99, d.Max = pick(0.50), pick(0.99), ds[len(ds)-1]
	return d
}

// ChurnResult aggregates every change of one kind.
type ChurnResult struct {
	Kind       string
	Changes    int
	Affected   int // affected proxies per change (last change)
	Converge   Dist
	Unaffected int64 // responses received by proxies the change did not affect
	Responses  int64 // responses received by affected proxies
	Bytes      int64 // bytes received by affected proxies
	MeshdPush  float64
	// CPU is meshd's CPU from each change to the end of its settle time,
	// summed over the changes.
	CPU  float64
	Note string
}

// Result is everything one run measured.
type Result struct {
	// Title says what was simulated (scenario, catalog file or generic fleet).
	Title        string
	Scenario     Scenario
	Mode         string
	Proxies      int
	Conns        int
	ToolStarted  bool
	Cold         Dist
	ColdBytes    int64 // received by the whole fleet during cold sync
	ColdResp     int64
	HeapBefore   float64 // meshd heap in use before any proxy connected
	HeapAfter    float64 // with every proxy connected and synced
	LiveBefore   float64 // bytes of live objects (heap alloc) at HeapBefore
	LiveAfter    float64 // bytes of live objects (heap alloc) at HeapAfter
	HeapGC       bool    // whether a GC was forced before each reading
	HeapExact    bool    // read right after the GC (meshd's /debug/gc), not from a later scrape
	RSS          float64
	RSSProc      float64
	IdleWindow   time.Duration
	IdleCPU      float64 // meshd CPU seconds over the idle window
	IdleCPUProc  float64
	IdlePushes   int64 // responses received while idle
	Churn        []ChurnResult
	ChurnCPU     float64
	ChurnWall    time.Duration
	Skipped      float64 // meshd_proxies_skipped_total over the run
	Unchanged    float64 // meshd_publishes_unchanged_total over the run
	Reconnect    Dist
	ToolCPU      time.Duration
	ToolMaxRSS   int64
	ToolWall     time.Duration
	NACKsSent    int64
	Status       StatusCheck
	CrossChecks  []CrossCheck
	Unsupported  []string
	Problems     []string
	MeshdLogPath string
}

// CrossCheck compares one of the tool's figures with an independent one.
type CrossCheck struct {
	What        string
	Tool, Other float64
	Agree       bool
	Tolerance   string
}

type runner struct {
	cfg   Config
	log   *slog.Logger
	res   *Result
	meshd *Meshd
	admin *Admin
	cat   *Catalog
	fleet *Fleet
	start time.Time
	base  Metrics // scrape before the fleet connected
	// coldProfile is closed when the cold sync's CPU profile is saved.
	coldProfile chan struct{}
}

func (r *runner) problem(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	r.res.Problems = append(r.res.Problems, msg)
	r.log.Error(msg)
}

// Run executes the phases cold sync → idle → churn → cross-checks →
// reconnect storm. Failures of a phase are recorded in Result.Problems and
// the run goes on; only set-up failures return an error.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.ProfileDir != "" {
		if err := os.MkdirAll(cfg.ProfileDir, 0o755); err != nil {
			return nil, fmt.Errorf("profile dir: %w", err)
		}
	}
	r := &runner{cfg: cfg, log: cfg.Logger, res: &Result{Scenario: cfg.Scenario, IdleWindow: cfg.IdleWindow}, start: time.Now()}
	r.res.Mode = "sotw"
	if cfg.Delta {
		r.res.Mode = "delta"
	}
	defer func() {
		if r.meshd != nil {
			r.meshd.Stop()
		}
	}()
	nodes, err := r.setup(ctx)
	if err != nil {
		return r.res, err
	}
	tlsConf, err := r.tlsConfig()
	if err != nil {
		return r.res, err
	}
	r.fleet, err = NewFleet(ClientConfig{Address: r.cfg.XDSAddress, TLS: tlsConf, Delta: cfg.Delta,
		StreamsPerConn: cfg.StreamsPerConn, SubscribeSDS: cfg.SubscribeSDS, BufferSize: cfg.BufferSize, Logger: r.log}, nodes)
	if err != nil {
		return r.res, err
	}
	defer r.fleet.Stop()
	r.res.Proxies, r.res.Conns = len(nodes), r.fleet.Conns()

	r.base = r.heapScrape(ctx, &r.res.HeapBefore, &r.res.LiveBefore)
	if r.cfg.ProfileDir != "" && r.admin != nil {
		// What meshd holds before any proxy connects (catalog, rendered
		// configuration), to compare with the synced profile.
		if err := r.admin.HeapProfile(ctx, filepath.Join(r.cfg.ProfileDir, "meshd-before.heap.pprof")); err != nil {
			r.log.Warn("heap profile", "err", err)
		}
	}
	r.coldSync(ctx)
	r.heapScrape(ctx, &r.res.HeapAfter, &r.res.LiveAfter)
	r.memory(ctx)
	r.idle(ctx)
	r.churn(ctx)
	r.crossCheck(ctx)
	r.reconnect(ctx)
	r.res.NACKsSent = r.fleet.NACKs.Load()
	r.res.ToolCPU, r.res.ToolMaxRSS = SelfUsage()
	r.res.ToolWall = time.Since(r.start)
	return r.res, nil
}

func (r *runner) setup(ctx context.Context) ([]NodeSpec, error) {
	cfg := r.cfg
	switch {
	case cfg.MeshdBinary != "":
		dir := cfg.WorkDir
		if dir == "" {
			d, err := os.MkdirTemp("", "xds-load-")
			if err != nil {
				return nil, fmt.Errorf("work dir: %w", err)
			}
			dir = d
		}
		m, err := NewMeshd(cfg.MeshdBinary, dir, cfg.MeshdArgs)
		if err != nil {
			return nil, err
		}
		if cfg.CatalogFile != "" {
			r.cat, err = LoadCatalog(cfg.CatalogFile)
			r.res.Scenario = Scenario{}
		} else {
			r.cat, err = Generate(cfg.Scenario)
		}
		if err != nil {
			return nil, err
		}
		if cfg.CatalogFormat != "" {
			r.cat.Format = cfg.CatalogFormat
		}
		m.Catalog = filepath.Join(dir, r.cat.Format.FileName())
		if err := r.cat.WriteAtomic(m.Catalog); err != nil {
			return nil, err
		}
		if r.cfg.PolicyDir == "" {
			r.cfg.PolicyDir = filepath.Join(dir, "policy")
			if err := os.MkdirAll(r.cfg.PolicyDir, 0o755); err != nil {
				return nil, fmt.Errorf("policy dir: %w", err)
			}
			m.Args = append(m.Args, "--policy-dir", r.cfg.PolicyDir)
		}
		r.log.Info("starting meshd", "binary", cfg.MeshdBinary, "dir", dir, "proxies", len(r.cat.Proxies), "services", len(r.cat.Services))
		if err := m.Start(ctx); err != nil {
			return nil, err
		}
		r.meshd = m
		r.res.ToolStarted, r.res.MeshdLogPath = true, m.LogPath
		r.cfg.XDSAddress, r.cfg.AdminAddress, r.cfg.CatalogFile = m.XDSAddr, m.AdminAddr, m.Catalog
		if r.cfg.DataDir == "" {
			r.cfg.DataDir = m.DataDir
		}
		if r.cfg.CAFile == "" {
			r.cfg.CAFile = m.CAFile()
		}
	case cfg.XDSAddress == "":
		return nil, errors.New("give either a meshd binary to start or the xDS address of a running control plane")
	case cfg.CatalogFile != "":
		var err error
		if r.cat, err = LoadCatalog(cfg.CatalogFile); err != nil {
			return nil, err
		}
		if cfg.CatalogFormat != "" {
			// meshd tells the format by the content, not the file name.
			r.cat.Format = cfg.CatalogFormat
		}
		r.res.Scenario = Scenario{}
	default:
		r.res.Scenario = Scenario{}
	}
	switch sc := r.res.Scenario; {
	case sc.Name != "":
		r.res.Title = fmt.Sprintf("scenario %s: %d proxies, %d services × %d endpoints, ", sc.Name, sc.Proxies, sc.Services, sc.Endpoints)
		if sc.AllServices {
			r.res.Title += "every service visible to every proxy (transparent sidecars, upstreamNamespaces [\"*\"])"
		} else {
			r.res.Title += fmt.Sprintf("%d upstreams per proxy", sc.Upstreams)
		}
	case r.cat != nil:
		r.res.Title = fmt.Sprintf("catalog %s: %d proxies, %d services", cfg.CatalogFile, len(r.cat.Proxies), len(r.cat.Services))
	default:
		r.res.Title = fmt.Sprintf("generic fleet of %d proxies (node ids %q) against %s", cfg.Proxies, cfg.NodeIDTemplate, cfg.XDSAddress)
	}
	if r.cat != nil && r.cat.Format == FormatJSON {
		// Convergence includes meshd reading the file, which is faster
		// for JSON: runs in the two formats are not comparable.
		r.res.Title += " (JSON catalog)"
	}
	if r.cfg.AdminAddress != "" {
		r.admin = NewAdmin(r.cfg.AdminAddress, r.adminTokenFile())
	}
	token := func(mesh.ServiceKey) (string, error) { return "", nil }
	switch {
	case r.cfg.TokenFile != "":
		b, err := os.ReadFile(r.cfg.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("--token-file: %w", err)
		}
		tok := strings.TrimSpace(string(b))
		token = func(mesh.ServiceKey) (string, error) { return tok, nil }
	case r.cfg.DataDir != "" && r.cat != nil:
		var err error
		if token, err = TokenMinter(r.cfg.DataDir, r.cfg.TrustDomain); err != nil {
			return nil, err
		}
	}
	if r.cat != nil {
		return r.cat.NodeSpecs(r.cat.ProxyIDs(), token, cfg.NodeMetadata)
	}
	nodes, err := templateNodes(cfg.NodeIDTemplate, cfg.Proxies, cfg.NodeMetadata)
	if err != nil {
		return nil, err
	}
	for i := range nodes {
		if nodes[i].Token, err = token(mesh.ServiceKey{}); err != nil {
			return nil, err
		}
	}
	return nodes, nil
}

// TokenMinter signs bootstrap tokens with the key in meshd's data
// directory, as "meshctl token create" does: one per service, minted once
// and reused, valid for a day. trustDomain "" is meshd's default.
func TokenMinter(dataDir, trustDomain string) (func(mesh.ServiceKey) (string, error), error) {
	if trustDomain == "" {
		trustDomain = mesh.DefaultTrustDomain
	}
	ta, err := sds.LoadOrCreateTokens(dataDir, trustDomain, true, nil)
	if err != nil {
		return nil, fmt.Errorf("bootstrap tokens from meshd's data dir: %w", err)
	}
	minted := map[mesh.ServiceKey]string{}
	return func(k mesh.ServiceKey) (string, error) {
		if t, ok := minted[k]; ok {
			return t, nil
		}
		t, _, err := ta.Create(k.Namespace, k.Name, 24*time.Hour)
		if err != nil {
			return "", fmt.Errorf("token for %s: %w", k, err)
		}
		minted[k] = string(t)
		return string(t), nil
	}, nil
}

// NodeSpecs describes the catalog's proxies ids as simulated Envoys: node
// metadata as meshctl's bootstraps set it (plus extra), and each proxy's
// service's token.
func (c *Catalog) NodeSpecs(ids []string, token func(mesh.ServiceKey) (string, error), extra map[string]any) ([]NodeSpec, error) {
	var nodes []NodeSpec
	for _, id := range ids {
		p := c.Proxy(id)
		if p == nil {
			return nil, fmt.Errorf("proxy %q is not in the catalog", id)
		}
		// What meshctl's Envoy bootstraps carry, drain settings included
		// (meshd warns about an Envoy without them).
		md := map[string]any{xds.NodeMetaNamespace: p.Namespace, xds.NodeMetaService: p.Service, xds.NodeMetaFlavor: string(mesh.FlavorEnvoy),
			xds.NodeMetaDrainTimeS: bootstrap.DefaultDrainTime.Seconds(), xds.NodeMetaDrainStrategy: bootstrap.DrainStrategy}
		for k, v := range extra {
			md[k] = v
		}
		tok, err := token(p.ServiceKey())
		if err != nil {
			return nil, err
		}
		nodes = append(nodes, NodeSpec{ID: id, Cluster: p.Service, Metadata: md, Token: tok})
	}
	if len(nodes) == 0 {
		return nil, errors.New("the catalog has no Envoy proxies to simulate")
	}
	return nodes, nil
}

// NodeData is what a node-id template can use.
type NodeData struct{ I int }

func templateNodes(tmpl string, n int, md map[string]any) ([]NodeSpec, error) {
	if n <= 0 {
		return nil, errors.New("generic mode needs a proxy count (--proxies)")
	}
	if tmpl == "" {
		tmpl = "proxy-{{.I}}"
	}
	t, err := template.New("node-id").Option("missingkey=error").Parse(tmpl)
	if err != nil {
		return nil, fmt.Errorf("--node-id-template: %w", err)
	}
	nodes := make([]NodeSpec, n)
	seen := map[string]bool{}
	for i := range nodes {
		var b bytes.Buffer
		if err := t.Execute(&b, NodeData{I: i}); err != nil {
			return nil, fmt.Errorf("--node-id-template: %w", err)
		}
		id := b.String()
		if seen[id] {
			return nil, fmt.Errorf("--node-id-template %q gives %q twice; use {{.I}}", tmpl, id)
		}
		seen[id] = true
		nodes[i] = NodeSpec{ID: id, Cluster: "xds-load", Metadata: md}
	}
	return nodes, nil
}

func (r *runner) tlsConfig() (*tls.Config, error) {
	if r.cfg.Plaintext {
		return nil, nil
	}
	if r.cfg.CAFile == "" && r.cfg.DataDir != "" {
		// A running meshd's data dir holds the root its xDS certificate
		// chains to.
		r.cfg.CAFile = (&Meshd{DataDir: r.cfg.DataDir}).CAFile()
	}
	conf := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: r.cfg.ServerName}
	if conf.ServerName == "" {
		conf.ServerName = "localhost"
	}
	if r.cfg.CAFile != "" {
		pem, err := os.ReadFile(r.cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("--ca-file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--ca-file %s: no PEM certificate in it", r.cfg.CAFile)
		}
		conf.RootCAs = pool
	}
	return conf, nil
}

// heapScrape reads meshd's heap in use and the bytes of live objects in it,
// after a forced GC when /debug/pprof is served, and returns the whole
// scrape. The difference is free room inside spans that still hold a live
// object: Go's collector does not move objects, so it shows how scattered
// long-lived objects are among the garbage allocated next to them.
func (r *runner) heapScrape(ctx context.Context, heap, live *float64) Metrics {
	if r.admin == nil {
		return nil
	}
	inuse, liveGC, exact := r.admin.HeapAfterGC(ctx)
	if !exact {
		r.res.HeapGC = r.admin.ForceGC(ctx)
	} else {
		r.res.HeapGC, r.res.HeapExact = true, true
	}
	m, err := r.admin.Scrape(ctx)
	if err != nil {
		r.problem("metrics: %v", err)
		return nil
	}
	if exact {
		*heap, *live = inuse, liveGC
		return m
	}
	*heap = m.Get("go_memstats_heap_inuse_bytes")
	*live = m.Get("go_memstats_heap_alloc_bytes")
	return m
}

func (r *runner) pid() int {
	if r.meshd != nil {
		return r.meshd.PID()
	}
	return r.cfg.MeshdPID
}

// waitAll polls until done reports true for every proxy or the timeout.
func (r *runner) waitAll(ctx context.Context, timeout time.Duration, done func(ProxyView) bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		all := true
		for _, p := range r.fleet.Proxies {
			if !done(p.View()) {
				all = false
				break
			}
		}
		if all {
			return true
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (r *runner) coldSync(ctx context.Context) {
	t0 := time.Now()
	if r.cfg.ProfileDir != "" && r.admin != nil {
		// The CPU profile covers the cold sync, the busiest phase.
		done := make(chan struct{})
		r.coldProfile = done
		go func() {
			defer close(done)
			if err := r.admin.Profile(ctx, 10*time.Second, filepath.Join(r.cfg.ProfileDir, "meshd-cold.cpu.pprof")); err != nil {
				r.log.Warn("cold-sync CPU profile", "err", err)
			}
		}()
		time.Sleep(50 * time.Millisecond)
		t0 = time.Now()
	}
	r.fleet.Start(ctx)
	r.waitAll(ctx, r.cfg.SyncTimeout, func(v ProxyView) bool { return !v.SyncedAt.IsZero() })
	var ds []time.Duration
	missing, example := 0, ""
	for _, p := range r.fleet.Proxies {
		v := p.View()
		if v.SyncedAt.IsZero() {
			missing++
			if example == "" {
				example = fmt.Sprintf("%s: %v (last error: %v)", p.ID, p.MissingRefs(), v.LastErr)
			}
			continue
		}
		ds = append(ds, v.SyncedAt.Sub(t0))
	}
	r.res.Cold = distOf(ds, missing)
	r.res.Cold.MissingExample = example
	if missing > 0 {
		r.problem("cold sync: %d of %d proxies not synced within %s; e.g. %s", missing, len(r.fleet.Proxies), r.cfg.SyncTimeout, example)
	}
	r.res.ColdBytes, r.res.ColdResp = r.fleet.Bytes.Load(), r.fleet.Responses.Load()
	r.log.Info("cold sync done", "proxies", len(ds), "p50", r.res.Cold.P50, "max", r.res.Cold.Max)
}

func (r *runner) memory(ctx context.Context) {
	if pid := r.pid(); pid > 0 {
		if ps, err := ReadProc(pid); err == nil {
			r.res.RSSProc = float64(ps.RSS)
		}
	}
	if r.admin != nil {
		if m, err := r.admin.Scrape(ctx); err == nil {
			r.res.RSS = m.Get("process_resident_memory_bytes")
		}
		if r.cfg.ProfileDir != "" {
			if err := r.admin.HeapProfile(ctx, filepath.Join(r.cfg.ProfileDir, "meshd-synced.heap.pprof")); err != nil {
				r.log.Warn("heap profile", "err", err)
			}
		}
	}
}

func (r *runner) cpu(ctx context.Context) (metric, proc float64) {
	if r.admin != nil {
		if m, err := r.admin.Scrape(ctx); err == nil {
			metric = m.Get("process_cpu_seconds_total")
		}
	}
	if pid := r.pid(); pid > 0 {
		if ps, err := ReadProc(pid); err == nil {
			proc = ps.CPU.Seconds()
		}
	}
	return metric, proc
}

// changeCPU reads meshd's CPU seconds for one change's figure: from /proc
// when meshd runs here, so that reading it costs meshd nothing (a /metrics
// scrape costs it the collection of every metric, which would count in
// the change).
func (r *runner) changeCPU(ctx context.Context) float64 {
	if pid := r.pid(); pid > 0 {
		if ps, err := ReadProc(pid); err == nil {
			return ps.CPU.Seconds()
		}
	}
	m, _ := r.cpu(ctx)
	return m
}

func (r *runner) idle(ctx context.Context) {
	if r.cfg.IdleWindow <= 0 {
		return
	}
	resp0 := r.fleet.Responses.Load()
	m0, p0 := r.cpu(ctx)
	r.log.Info("measuring idle CPU", "window", r.cfg.IdleWindow)
	select {
	case <-ctx.Done():
		return
	case <-time.After(r.cfg.IdleWindow):
	}
	m1, p1 := r.cpu(ctx)
	r.res.IdleCPU, r.res.IdleCPUProc = m1-m0, p1-p0
	r.res.IdlePushes = r.fleet.Responses.Load() - resp0
}

func (r *runner) churn(ctx context.Context) {
	for _, k := range r.cfg.ChurnKinds {
		if why, ok := FutureChurnKinds[k]; ok {
			r.res.Unsupported = append(r.res.Unsupported, k+": "+why)
		}
	}
	if r.cfg.ChurnRounds <= 0 || len(r.cfg.ChurnKinds) == 0 {
		return
	}
	if r.cat == nil || r.cfg.CatalogFile == "" {
		r.log.Info("no catalog file: churn skipped")
		return
	}
	ch := &churner{cat: r.cat, admin: r.admin, policyDir: r.cfg.PolicyDir}
	done := map[string]bool{}
	byKind := map[string]*ChurnResult{}
	var lats = map[string][]time.Duration{}
	missing := map[string]int{}
	mc0, _ := r.cpu(ctx)
	var m0 Metrics
	if r.admin != nil {
		m0, _ = r.admin.Scrape(ctx)
	}
	if r.cfg.ProfileDir != "" && r.admin != nil {
		if r.coldProfile != nil {
			// Go's profiler takes one CPU profile at a time.
			<-r.coldProfile
		}
		done := make(chan struct{})
		// A churn shorter than the profile waits for it, so that meshd is
		// still there to send it.
		defer func() { <-done }()
		go func() {
			defer close(done)
			if err := r.admin.Profile(ctx, 20*time.Second, filepath.Join(r.cfg.ProfileDir, "meshd-churn.cpu.pprof")); err != nil {
				r.log.Warn("churn CPU profile", "err", err)
			}
		}()
	}
	wall0 := time.Now()
	for round := range r.cfg.ChurnRounds {
		ch.round = round
		for _, kind := range r.cfg.ChurnKinds {
			if OnceChurnKinds[kind] && done[kind] {
				continue
			}
			done[kind] = true
			steps, err := ch.steps(kind)
			if errors.Is(err, ErrUnsupported) {
				continue
			}
			if err != nil {
				r.problem("%v", err)
				return
			}
			cr := byKind[kind]
			if cr == nil {
				cr = &ChurnResult{Kind: kind}
				byKind[kind] = cr
				r.res.Churn = append(r.res.Churn, ChurnResult{}) // placeholder keeps kind order
			}
			for _, step := range steps {
				err := r.churnStep(ctx, step, cr, lats, missing)
				if errors.Is(err, ErrUnsupported) {
					r.res.Unsupported = append(r.res.Unsupported, err.Error())
					break
				}
				if err != nil {
					r.problem("churn %s round %d: %v", kind, round, err)
					return
				}
			}
		}
	}
	r.res.ChurnWall = time.Since(wall0)
	mc1, _ := r.cpu(ctx)
	r.res.ChurnCPU = mc1 - mc0
	if r.admin != nil && m0 != nil {
		if m1, err := r.admin.Scrape(ctx); err == nil {
			r.res.Skipped = m1.Get("meshd_proxies_skipped_total") - m0.Get("meshd_proxies_skipped_total")
			r.res.Unchanged = m1.Get("meshd_publishes_unchanged_total") - m0.Get("meshd_publishes_unchanged_total")
		}
	}
	r.res.Churn = r.res.Churn[:0]
	for _, kind := range r.cfg.ChurnKinds {
		if cr := byKind[kind]; cr != nil && cr.Changes > 0 {
			cr.Converge = distOf(lats[kind], missing[kind])
			r.res.Churn = append(r.res.Churn, *cr)
		}
	}
}

func (r *runner) churnStep(ctx context.Context, step func() (*Change, error), cr *ChurnResult, lats map[string][]time.Duration, missing map[string]int) error {
	c, err := step()
	if err != nil {
		return err
	}
	affected := map[*Proxy]bool{}
	c.baseline = map[string]string{}
	for _, id := range c.Affected {
		if p := r.fleet.Proxy(id); p != nil {
			affected[p] = true
			if c.Before != nil {
				c.baseline[id] = p.inspect(c.Before)
			}
		}
	}
	for p := range affected {
		p.Watch(c.Delivered)
	}
	before := map[*Proxy]ProxyView{}
	for _, p := range r.fleet.Proxies {
		before[p] = p.View()
	}
	// meshd's own counters are read around a change only when the change
	// must reach no proxy (its pushes are the figure): a /metrics scrape
	// makes meshd collect every metric (at 10,000 proxies most of its CPU
	// during churn), and the garbage it leaves would be collected during
	// the next change.
	scrape := r.admin != nil && len(c.Affected) == 0
	var pushes0, builds0, accepted0 float64
	if scrape {
		if m, err := r.admin.Scrape(ctx); err == nil {
			pushes0, builds0, accepted0 = m.Get("meshd_xds_pushes_total"), m.Get("meshd_snapshot_builds_total"), m.Get("meshd_catalog_reloads_accepted_total")
		}
	}
	cpu0 := r.changeCPU(ctx)
	var t0 time.Time
	if c.Apply != nil {
		t0 = time.Now()
		if err := c.Apply(ctx); err != nil {
			for p := range affected {
				p.Watch(nil)
			}
			return err
		}
	} else {
		if err := r.cat.WriteAtomic(r.cfg.CatalogFile); err != nil {
			return err
		}
		t0 = time.Now()
	}
	if len(affected) > 0 {
		r.waitAll(ctx, r.cfg.ChurnTimeout, func(v ProxyView) bool { return !affected[r.fleet.Proxy(v.ID)] || !v.WatchHit.IsZero() })
	} else if scrape {
		// Nothing should reach any proxy: wait until meshd has read the
		// file and published, so the push count below means something.
		r.waitMetric(ctx, "meshd_catalog_reloads_accepted_total", accepted0)
		r.waitMetric(ctx, "meshd_snapshot_builds_total", builds0)
	}
	time.Sleep(r.cfg.ChurnSettle)
	if cpu1 := r.changeCPU(ctx); cpu1 > 0 {
		cr.CPU += cpu1 - cpu0
	}
	cr.Changes++
	cr.Affected = len(affected)
	for _, p := range r.fleet.Proxies {
		v, b := p.View(), before[p]
		if affected[p] {
			cr.Responses += v.Responses - b.Responses
			cr.Bytes += v.Bytes - b.Bytes
			if v.WatchHit.IsZero() {
				missing[c.Kind]++
				if cr.Note == "" {
					cr.Note = fmt.Sprintf("e.g. %s never got it", p.ID)
				}
			} else {
				lats[c.Kind] = append(lats[c.Kind], v.WatchHit.Sub(t0))
			}
			p.Watch(nil)
		} else {
			cr.Unaffected += v.Responses - b.Responses
		}
	}
	if scrape {
		if m, err := r.admin.Scrape(ctx); err == nil {
			cr.MeshdPush += m.Get("meshd_xds_pushes_total") - pushes0
		}
	}
	return nil
}

func (r *runner) waitMetric(ctx context.Context, name string, above float64) {
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if m, err := r.admin.Scrape(ctx); err == nil && m.Get(name) > above {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	r.log.Warn("metric did not move; meshd may have ignored an identical catalog", "metric", name)
}

func (r *runner) crossCheck(ctx context.Context) {
	if r.admin == nil {
		return
	}
	// Let in-flight ACKs land before comparing counters.
	time.Sleep(200 * time.Millisecond)
	m, err := r.admin.Scrape(ctx)
	if err != nil {
		r.problem("metrics: %v", err)
		return
	}
	base := r.base
	if base == nil {
		base = Metrics{}
	}
	add := func(what string, tool, other float64, tol float64, tolText string) {
		diff := tool - other
		if diff < 0 {
			diff = -diff
		}
		agree := diff <= tol*max(tool, other, 1)
		r.res.CrossChecks = append(r.res.CrossChecks, CrossCheck{What: what, Tool: tool, Other: other, Agree: agree, Tolerance: tolText})
		if !agree {
			r.problem("cross-check %s: tool %.0f, other %.0f", what, tool, other)
		}
	}
	if m.Has("meshd_xds_pushes_total") {
		add("responses received vs meshd_xds_pushes_total", float64(r.fleet.Responses.Load()), m.Get("meshd_xds_pushes_total")-base.Get("meshd_xds_pushes_total"), 0, "exact")
		add("ACKs sent vs meshd_xds_acks_total", float64(r.fleet.ACKs.Load()), m.Get("meshd_xds_acks_total")-base.Get("meshd_xds_acks_total"), 0, "exact")
		add("NACKs sent vs meshd_xds_nacks_total", float64(r.fleet.NACKs.Load()), m.Get("meshd_xds_nacks_total")-base.Get("meshd_xds_nacks_total"), 0, "exact")
		add("proxies connected vs meshd_connected_proxies", float64(len(r.fleet.Proxies)), m.Get("meshd_connected_proxies"), 0, "exact")
	}
	if pid := r.pid(); pid > 0 {
		if ps, err := ReadProc(pid); err == nil {
			// Both read the same kernel counters a few ms apart.
			add("meshd RSS: process_resident_memory_bytes vs /proc status (MiB)", m.Get("process_resident_memory_bytes")/(1<<20), float64(ps.RSS)/(1<<20), 0.05, "5%")
			add("meshd CPU: process_cpu_seconds_total vs /proc stat (s)", m.Get("process_cpu_seconds_total"), ps.CPU.Seconds(), 0.05, "5%")
		}
	}
	if r.meshd != nil || r.cat != nil {
		st, err := r.admin.CheckStatus(ctx)
		if err != nil {
			r.log.Warn("meshd /debug/status not read", "err", err)
			return
		}
		r.res.Status = st
		if len(st.NACKed) > 0 {
			r.problem("meshd /debug/status shows %d NACKs, e.g. %s", len(st.NACKed), st.NACKed[0])
		}
		if len(st.RenderErrors) > 0 {
			r.problem("meshd /debug/status shows %d render errors, e.g. %s", len(st.RenderErrors), st.RenderErrors[0])
		}
		if st.Connected != len(r.fleet.Proxies) {
			r.problem("meshd /debug/status: %d connected proxies, the tool runs %d", st.Connected, len(r.fleet.Proxies))
		}
	}
}

func (r *runner) reconnect(ctx context.Context) {
	if !r.cfg.Restart {
		return
	}
	if r.meshd == nil {
		r.log.Info("reconnect storm needs a meshd the tool started: skipped")
		return
	}
	streams := map[*Proxy]int{}
	for _, p := range r.fleet.Proxies {
		streams[p] = p.View().Streams
	}
	r.log.Info("reconnect storm: restarting meshd")
	r.meshd.Stop()
	t0 := time.Now()
	if err := r.meshd.Start(ctx); err != nil {
		r.problem("restarting meshd: %v", err)
		return
	}
	r.admin = NewAdmin(r.meshd.AdminAddr, r.adminTokenFile())
	r.waitAll(ctx, r.cfg.SyncTimeout, func(v ProxyView) bool {
		return v.Streams > streams[r.fleet.Proxy(v.ID)] && !v.SyncedAt.IsZero()
	})
	var ds []time.Duration
	missing := 0
	for _, p := range r.fleet.Proxies {
		v := p.View()
		if v.Streams > streams[p] && !v.SyncedAt.IsZero() {
			ds = append(ds, v.SyncedAt.Sub(t0))
		} else {
			missing++
		}
	}
	r.res.Reconnect = distOf(ds, missing)
	if missing > 0 {
		r.problem("reconnect storm: %d proxies not re-synced within %s", missing, r.cfg.SyncTimeout)
	}
}

// adminTokenFile is the file with meshd's admin token: the configured one,
// else the data directory's.
func (r *runner) adminTokenFile() string {
	if r.cfg.AdminTokenFile != "" {
		return r.cfg.AdminTokenFile
	}
	return AdminTokenFile(r.cfg.DataDir)
}
