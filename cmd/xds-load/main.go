// Command xds-load simulates a fleet of Envoy proxies over ADS against meshd
// (or any xDS control plane) and measures sync time, convergence after
// catalog changes, memory and CPU. See docs/performance.md.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/meshd/meshd/internal/loadgen"
)

const usage = `xds-load — a fleet of simulated Envoy proxies for measuring xDS control planes.

Each simulated proxy opens one ADS stream (state of the world, or delta with
--delta) on an HTTP/2 connection of its own, as a real Envoy does
(--streams-per-conn multiplexes several, and the result says so),
subscribes like Envoy (wildcard clusters and listeners, then the routes,
endpoints and secrets they name), validates every resource against Envoy's
protos (ValidateAll, descending into every Any) and ACKs it, or NACKs a
response that fails.

Start meshd on a generated catalog and run every phase:
  xds-load --meshd bin/meshd --scenario M

Drive a meshd that is already running (churn edits its catalog file):
  xds-load --xds-address 127.0.0.1:15012 --admin-address 127.0.0.1:15014 \
    --catalog-file catalog.yaml --ca-file ~/.local/state/meshd/ca/root-cert.pem

Drive another control plane (generic mode, no catalog):
  xds-load --xds-address istiod:15010 --plaintext --proxies 1000 \
    --node-id-template 'sidecar~10.0.{{.I}}~x.ns~ns.svc.cluster.local'

Phases: cold connect and sync of every proxy; idle (CPU); churn (catalog
edits, convergence); cross-checks against meshd's /metrics, /debug/status
and /proc; reconnect storm (meshd restarted). The result is one Markdown
table on stdout; logs go to stderr.

Flags:
`

func main() {
	// The tool shares the cores with the control plane it measures; its
	// heap is mostly responses decoded and dropped. Collecting at 3x the
	// live heap rather than Go's 2x leaves more of the cores to the
	// server (meshd's own default, --gc-percent, is the same). GOGC, if
	// set, wins here and in a meshd the tool starts.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(200)
	}
	code, err := run(os.Args[1:], os.Stdout, os.Stderr)
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "xds-load:", err)
	}
	os.Exit(code)
}

func run(args []string, stdout, stderr io.Writer) (int, error) {
	var (
		cfg         loadgen.Config
		scenario    string
		proxies     int
		services    int
		endpoints   int
		upstreams   int
		allSvcs     bool
		meshdArgs   string
		metadata    string
		kinds       string
		logLevel    string
		writeCat    string
		catFormat   string
		noRestart   bool
		toolProfile string
	)
	fs := flag.NewFlagSet("xds-load", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	// What to generate.
	fs.StringVar(&scenario, "scenario", "S", "preset: S (100 proxies, 50 services × 2 endpoints, 3 upstreams each), M (1,000 proxies, 200 services × 10 endpoints, 5 upstreams), L (10,000 proxies, 1,000 services × 10 endpoints, 5 upstreams); the flags below override parts of it")
	fs.IntVar(&proxies, "proxies", 0, "number of simulated proxies (overrides the scenario's; in generic mode, the fleet size)")
	fs.IntVar(&services, "services", 0, "number of services in the generated catalog (overrides the scenario's)")
	fs.IntVar(&endpoints, "endpoints", -1, "endpoints per generated service (overrides the scenario's)")
	fs.IntVar(&upstreams, "upstreams", -1, "upstream services per generated proxy (overrides the scenario's)")
	fs.BoolVar(&allSvcs, "all-services", false, "make every service visible to every proxy, as a control plane that does not scope configures every sidecar: transparent sidecars with upstreamNamespaces [\"*\"], every service with a virtual address (every service as an explicit upstream with a local port instead: --upstreams <services-1>)")
	fs.StringVar(&writeCat, "write-catalog", "", "only write the generated catalog to this `file` and exit (to start meshd yourself)")
	fs.StringVar(&catFormat, "catalog-format", "", "`format` of the catalog the tool writes (generated, and rewritten by churn): yaml or json, which meshd parses several times faster (default yaml, or the --catalog-file's own format; the started meshd's file is catalog.yaml or catalog.json)")
	// Which control plane.
	fs.StringVar(&cfg.MeshdBinary, "meshd", "", "`path` of a meshd binary to start: the tool writes the catalog to a temporary dir, picks free ports, uses a temporary --data-dir, and can restart it for the reconnect storm")
	fs.StringVar(&meshdArgs, "meshd-args", "", "extra flags for the meshd it starts, space separated (e.g. \"--debounce-holdoff 10ms\")")
	fs.StringVar(&cfg.WorkDir, "work-dir", "", "`directory` for the started meshd's catalog, data dir and log (default: a new temporary directory, kept so the log can be read)")
	fs.StringVar(&cfg.XDSAddress, "xds-address", "", "`host:port` of a running control plane's xDS server (instead of --meshd)")
	fs.StringVar(&cfg.AdminAddress, "admin-address", "", "`host:port` of a running meshd's admin server: enables heap, CPU, push-counter and /debug/status figures")
	fs.StringVar(&cfg.AdminTokenFile, "admin-token-file", "", "`file` with meshd's admin token, which its admin API requires for /debug/status, /debug/gc and /debug/pprof (default: admin.token in --data-dir)")
	fs.StringVar(&cfg.CatalogFile, "catalog-file", "", "catalog `file` the running meshd watches: its proxies become the fleet, and churn edits it (write to a temp file, then rename). With --meshd: use this catalog instead of generating one")
	fs.IntVar(&cfg.MeshdPID, "meshd-pid", 0, "`pid` of a running meshd on this host, to read its CPU and RSS from /proc too")
	// Transport.
	fs.StringVar(&cfg.CAFile, "ca-file", "", "PEM root `file` that verifies the server's certificate (default: <data-dir>/ca/root-cert.pem when meshd is started by the tool or --data-dir is given; otherwise the system roots)")
	fs.StringVar(&cfg.ServerName, "server-name", "localhost", "TLS server `name` to verify (meshd's certificate always names localhost and 127.0.0.1, plus its --server-hosts)")
	fs.StringVar(&cfg.DataDir, "data-dir", "", "meshd's data `directory`: the tool signs one bootstrap token per service with meshd's token key (as meshctl token create does) and each proxy sends its service's token, as a real sidecar does (automatic with --meshd)")
	fs.StringVar(&cfg.TrustDomain, "trust-domain", "", "meshd's SPIFFE trust `domain`, for the tokens (default cluster.local, meshd's default)")
	fs.StringVar(&cfg.TokenFile, "token-file", "", "`file` with one bootstrap token sent by every proxy as \"authorization: Bearer <token>\" (instead of --data-dir)")
	fs.BoolVar(&cfg.Plaintext, "plaintext", false, "connect without TLS (for control planes that serve plaintext xDS; meshd only with its development flag --insecure-xds)")
	// Client behaviour.
	fs.BoolVar(&cfg.Delta, "delta", false, "use incremental (delta) ADS instead of state of the world")
	fs.IntVar(&cfg.StreamsPerConn, "streams-per-conn", 1, "proxies sharing one HTTP/2 connection: 1, as real Envoys connect; more multiplexes their streams (the result's title says so), at most the server's max concurrent streams (meshd: 64)")
	fs.IntVar(&cfg.BufferSize, "buffer-size", 16<<10, "gRPC read and write buffer `bytes` per connection")
	fs.BoolVar(&cfg.SubscribeSDS, "sds", true, "subscribe over ADS to the SDS secrets listeners and clusters name, as meshd's Envoy sidecars do (turn off for control planes that serve secrets elsewhere)")
	fs.StringVar(&cfg.NodeIDTemplate, "node-id-template", "proxy-{{.I}}", "generic mode: Go template of each node id; {{.I}} is the proxy's index from 0")
	fs.StringVar(&metadata, "node-metadata", "", "`JSON` object merged into every node's metadata (e.g. '{\"ISTIO_VERSION\":\"1.24.0\"}')")
	// Phases.
	fs.DurationVar(&cfg.SyncTimeout, "sync-timeout", 2*time.Minute, "how long to wait for every proxy to sync (cold start and after the restart)")
	fs.DurationVar(&cfg.IdleWindow, "idle", time.Minute, "how long to measure the control plane's CPU with every proxy connected and nothing changing (0 skips)")
	fs.IntVar(&cfg.ChurnRounds, "churn-rounds", 5, "how many times to make each change (0 skips churn)")
	fs.StringVar(&kinds, "churn", strings.Join(loadgen.ChurnKinds, ","), "comma-separated changes to make each round: endpoint-add, endpoint-remove, health-flap, service-add, service-remove, policy (a namespace-wide AuthorizationPolicy added, then removed, in --policy-dir), noop, leaf-rotation (an intermediate CA rotation through meshd's admin API, which reissues every leaf; first round only, needs the admin address)")
	fs.StringVar(&cfg.PolicyDir, "policy-dir", "", "`directory` the running meshd reads policies from (its --policy-dir), for the policy churn; with --meshd the tool makes one and passes it")
	fs.DurationVar(&cfg.ChurnTimeout, "churn-timeout", 30*time.Second, "how long to wait for a change to reach every affected proxy")
	fs.DurationVar(&cfg.ChurnSettle, "churn-settle", 300*time.Millisecond, "pause after each change before counting pushes to proxies it did not affect")
	fs.BoolVar(&noRestart, "no-restart", false, "skip the reconnect storm (restart of the meshd the tool started)")
	fs.StringVar(&cfg.ProfileDir, "profile-dir", "", "`directory` to save meshd's CPU profiles of the cold sync (10 s) and of churn (20 s) and its heap profiles before the proxies connect and once synced (needs /debug/pprof on the admin server)")
	fs.StringVar(&toolProfile, "tool-cpu-profile", "", "write xds-load's own CPU profile of the whole run to this `file` (it runs on the same cores as the server it measures)")
	fs.StringVar(&logLevel, "log-level", "info", "log `level`: debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return 2, err
	}
	if fs.NArg() > 0 {
		return 2, fmt.Errorf("unexpected argument %q: xds-load takes only flags (see -h)", fs.Arg(0))
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(logLevel)); err != nil {
		return 2, fmt.Errorf("--log-level %q: use debug, info, warn or error", logLevel)
	}
	cfg.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lvl}))
	format, err := loadgen.ParseCatalogFormat(strings.ToLower(catFormat))
	if err != nil {
		return 2, fmt.Errorf("--catalog-format: %w", err)
	}
	cfg.CatalogFormat = format

	sc, ok := loadgen.Presets[strings.ToUpper(scenario)]
	if !ok {
		return 2, fmt.Errorf("--scenario %q: use S, M or L", scenario)
	}
	if proxies > 0 {
		sc.Proxies = proxies
	}
	if services > 0 {
		sc.Services = services
	}
	if endpoints >= 0 {
		sc.Endpoints = endpoints
	}
	if upstreams >= 0 {
		sc.Upstreams = upstreams
	}
	sc.AllServices = allSvcs
	if allSvcs {
		sc.Name += "-all"
	}
	cfg.Scenario = sc
	cfg.Proxies = proxies
	cfg.MeshdArgs = strings.Fields(meshdArgs)
	cfg.Restart = !noRestart
	for _, k := range strings.Split(kinds, ",") {
		if k = strings.TrimSpace(k); k != "" {
			cfg.ChurnKinds = append(cfg.ChurnKinds, k)
		}
	}
	if metadata != "" {
		if err := json.Unmarshal([]byte(metadata), &cfg.NodeMetadata); err != nil {
			return 2, fmt.Errorf("--node-metadata: want a JSON object: %w", err)
		}
	}
	if cfg.StreamsPerConn < 1 {
		return 2, fmt.Errorf("--streams-per-conn %d: use at least 1", cfg.StreamsPerConn)
	}

	if writeCat != "" {
		cat, err := loadgen.Generate(sc)
		if err != nil {
			return 2, err
		}
		cat.Format = format
		if err := cat.WriteAtomic(writeCat); err != nil {
			return 1, err
		}
		return 0, nil
	}
	if cfg.MeshdBinary == "" && cfg.XDSAddress == "" {
		return 2, errors.New("give --meshd (start one) or --xds-address (drive a running control plane); see -h")
	}
	if cfg.MeshdBinary == "" && cfg.CatalogFile == "" && proxies <= 0 {
		return 2, errors.New("generic mode (no --catalog-file) needs --proxies")
	}

	if toolProfile != "" {
		f, err := os.Create(toolProfile)
		if err != nil {
			return 2, fmt.Errorf("--tool-cpu-profile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return 2, fmt.Errorf("--tool-cpu-profile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := loadgen.Run(ctx, cfg)
	if res != nil && res.Proxies > 0 {
		fmt.Fprint(stdout, res.Table())
	}
	if err != nil {
		return 1, err
	}
	if len(res.Problems) > 0 {
		return 1, fmt.Errorf("%d problem(s), listed under the table", len(res.Problems))
	}
	return 0, nil
}
