// Command meshd-soak runs meshd under real Envoy sidecars, continuous
// callers and a simulated fleet for a set time while a seeded random
// schedule changes the mesh, and fails on any hang, stuck stream, NACK, or
// call whose outcome the policy in force does not allow. See
// docs/operations.md ("Soak test") and internal/soak.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/meshd/meshd/internal/soak"
	"github.com/meshd/meshd/internal/suggest"
)

const usage = `meshd-soak — a long run of meshd through every kind of change, with real traffic.

It starts meshd (a built binary) on a catalog and a policy directory of its
own, one Envoy sidecar per demo app replica (api: http ×2, greeter: grpc,
db: tcp) and per caller identity (web, ops, …), continuous callers through
the callers' sidecars (HTTP on a kept-alive connection, gRPC, tcp), and a
simulated fleet of xDS clients (half state of the world, half delta). Then,
for --duration, it applies a randomized schedule that --seed fully
determines: mTLS mode changes mesh-wide and per workload (migrations),
authorization policies added and removed, catalog endpoint churn, a
replica's endpoint in and out, reconnect storms of the fleet, intermediate
and root CA rotations, and bursts of edits. After each change it waits until
meshd renders it, every proxy has ACKed it and no migration is pending.

It fails (exit status 1, and a dump of meshd's status, goroutine stacks,
metrics and each sidecar's configuration in the work directory) on:
  - a hang: /readyz or /healthz not answering, a proxy leaving a served
    version un-ACKed or a real sidecar without its xDS stream (meshd ends
    streams at --xds-max-connection-age; Envoy reconnects) for
    --converge-timeout, a change not settling within it, a caller whose
    call never ends;
  - any NACK, render error, refused input file or overdue migration;
  - a call whose outcome the policy in force does not allow: an allowed
    caller's call that fails, a denied caller's call that succeeds (from the
    caller's 2nd call after the change settled) or fails otherwise than by a
    denial.

Example (a 30-minute run, as in docs/performance.md):
  go build -o bin/ ./cmd/meshd ./cmd/meshd-soak ./examples/demoapp
  bin/meshd-soak --meshd bin/meshd --demoapp bin/demoapp --duration 30m --fleet 200

Flags:
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code, err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "meshd-soak:", err)
	}
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) (int, error) {
	var (
		cfg       soak.Config
		seed      uint64
		kinds     string
		modes     string
		meshdArgs string
		output    string
		logLevel  string
		schedule  int
	)
	fs := flag.NewFlagSet("meshd-soak", flag.ContinueOnError)
	// Parse reports mistakes through the returned error (flagError adds a
	// did-you-mean); the usage is printed for -h only.
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	fs.StringVar(&cfg.MeshdBinary, "meshd", "bin/meshd", "`path` of the meshd binary to run")
	fs.StringVar(&cfg.DemoappBinary, "demoapp", "bin/demoapp", "`path` of the demoapp binary (go build ./examples/demoapp) the sidecars front")
	fs.StringVar(&cfg.EnvoyBinary, "envoy", "", "`path` of Envoy 1.40 (default $ENVOY_BIN, else .venv/bin/envoy, else envoy on PATH; scripts/install-envoy.sh installs it)")
	fs.StringVar(&cfg.WorkDir, "work-dir", "", "`directory` for meshd's catalog, policy and data dirs, every log, and a failure's dump (default: a new temporary directory, kept)")
	fs.StringVar(&meshdArgs, "meshd-args", "", "extra meshd flags, space separated (e.g. \"--liveness-timeout 10s\")")
	fs.DurationVar(&cfg.Duration, "duration", 10*time.Minute, "how long to run the schedule")
	fs.Uint64Var(&seed, "seed", 0, "schedule seed; 0 picks one (printed, so the run can be repeated)")
	fs.StringVar(&kinds, "kinds", "all", "comma-separated step kinds: "+kindNames()+"; or all")
	fs.StringVar(&modes, "modes", "STRICT,PERMISSIVE,DISABLE", "comma-separated mTLS modes PeerAuthentication steps set (they also remove them)")
	fs.IntVar(&cfg.Callers, "callers", 2, "caller identities, each an Envoy sidecar calling every server over http, gRPC and tcp (at least 2)")
	fs.IntVar(&cfg.Fleet, "fleet", 100, "simulated proxies (xds-load's clients; half state of the world, half delta); 0: none")
	fs.IntVar(&cfg.FleetServices, "fleet-services", 0, "services of the simulated fleet (default a quarter of --fleet, at least 2)")
	fs.DurationVar(&cfg.MinDwell, "min-dwell", 500*time.Millisecond, "shortest pause after a change settled before the next")
	fs.DurationVar(&cfg.MaxDwell, "max-dwell", 3*time.Second, "longest such pause")
	fs.DurationVar(&cfg.ConvergeTimeout, "converge-timeout", time.Minute, "longest a change may take to settle, a proxy to ACK a version it is served (the stream-progress watchdog), and a real sidecar to reconnect its xDS stream")
	fs.DurationVar(&cfg.HangTimeout, "hang-timeout", 20*time.Second, "longest meshd's /readyz or /healthz may go unanswered")
	fs.DurationVar(&cfg.RotationTimeout, "rotation-timeout", 3*time.Minute, "longest a CA rotation may take from start to end (rotations run beside the rest of the schedule)")
	fs.DurationVar(&cfg.EnforceGrace, "enforce-grace", time.Second, "how long after a change settled (every proxy ACKed it) a call may still meet the previous verdict: Envoy ACKs from its main thread and applies on its workers asynchronously; the summary reports how late calls actually were")
	fs.DurationVar(&cfg.CallTimeout, "call-timeout", 10*time.Second, "limit on each call (a call that times out failed)")
	fs.DurationVar(&cfg.LeafTTL, "leaf-ttl", 3*time.Minute, "meshd's --leaf-ttl: short, so that leaves are reissued and rotated roots retire during the run")
	fs.BoolVar(&cfg.KeepGoing, "keep-going", false, "record calls with a wrong outcome and go on (hangs and faults still stop the run)")
	fs.IntVar(&schedule, "print-schedule", 0, "print the first `N` steps of --seed's schedule and exit (nothing is started)")
	fs.StringVar(&output, "o", "table", "summary `format`: table or json")
	fs.StringVar(&logLevel, "log-level", "info", "log `level` (logs go to stderr): debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stderr, usage)
			fs.SetOutput(stderr)
			fs.PrintDefaults()
			return 0, err
		}
		return 2, flagError(fs, err)
	}
	if fs.NArg() > 0 {
		return 2, fmt.Errorf("unexpected argument %q: meshd-soak takes only flags (see -h)", fs.Arg(0))
	}
	if output != "table" && output != "json" {
		msg := fmt.Sprintf("-o %q: use table or json", output)
		if s := suggest.Closest(output, []string{"table", "json"}); s != "" {
			msg += fmt.Sprintf("; did you mean %s?", s)
		}
		return 2, errors.New(msg)
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(logLevel)); err != nil {
		return 2, fmt.Errorf("--log-level %q: use debug, info, warn or error", logLevel)
	}
	cfg.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lvl}))
	var err error
	if cfg.Kinds, err = soak.ParseKinds(kinds); err != nil {
		return 2, fmt.Errorf("--kinds: %w", err)
	}
	if cfg.Modes, err = soak.ParseModes(modes); err != nil {
		return 2, fmt.Errorf("--modes: %w", err)
	}
	switch {
	case cfg.Callers < 2:
		return 2, fmt.Errorf("--callers %d: use at least 2 (policies tell callers apart)", cfg.Callers)
	case cfg.Fleet < 0:
		return 2, fmt.Errorf("--fleet %d: use 0 or more", cfg.Fleet)
	case cfg.MinDwell < 0 || cfg.MaxDwell < cfg.MinDwell:
		return 2, fmt.Errorf("--min-dwell %s, --max-dwell %s: use 0 ≤ min ≤ max", cfg.MinDwell, cfg.MaxDwell)
	case cfg.Duration <= 0 && schedule == 0:
		return 2, fmt.Errorf("--duration %s: use a positive duration", cfg.Duration)
	}
	if seed == 0 {
		seed = rand.Uint64N(1<<53) + 1
	}
	cfg.Seed = seed
	cfg.MeshdArgs = strings.Fields(meshdArgs)
	cfg.Defaults()
	if schedule > 0 {
		printSchedule(stdout, &cfg, schedule)
		return 0, nil
	}
	for _, b := range []struct{ flag, path string }{{"--meshd", cfg.MeshdBinary}, {"--demoapp", cfg.DemoappBinary}} {
		if err := executable(b.path); err != nil {
			return 2, fmt.Errorf("%s %s: %w", b.flag, b.path, err)
		}
	}
	if cfg.EnvoyBinary, err = findEnvoy(cfg.EnvoyBinary); err != nil {
		return 2, err
	}
	cfg.Logger.Info("meshd-soak", "seed", seed, "duration", cfg.Duration, "repeat_with", "--seed "+fmt.Sprint(seed))
	sum, err := soak.Run(ctx, cfg)
	if sum != nil {
		if output == "json" {
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			_ = enc.Encode(sum)
		} else {
			fmt.Fprint(stdout, sum.Table())
		}
	}
	if err != nil {
		return 1, err
	}
	return 0, nil
}

func kindNames() string {
	names := make([]string, len(soak.AllKinds))
	for i, k := range soak.AllKinds {
		names[i] = string(k)
	}
	return strings.Join(names, ", ")
}

// flagError adds a did-you-mean to an unknown flag.
func flagError(fs *flag.FlagSet, err error) error {
	const prefix = "flag provided but not defined: -"
	msg := err.Error()
	if name, ok := strings.CutPrefix(msg, prefix); ok {
		var names []string
		fs.VisitAll(func(f *flag.Flag) { names = append(names, f.Name) })
		msg = "unknown flag: --" + name
		if s := suggest.Closest(name, names); s != "" {
			msg += "; did you mean --" + s + "?"
		}
		return errors.New(msg + " (see -h)")
	}
	return fmt.Errorf("%s (see -h)", msg)
}

func printSchedule(w io.Writer, cfg *soak.Config, n int) {
	p := soak.NewPlanner(cfg.Seed, soak.PlanOptions{Kinds: cfg.Kinds, Callers: cfg.Callers, FleetServices: cfg.FleetServices,
		FleetProxies: cfg.Fleet, MinDwell: cfg.MinDwell, MaxDwell: cfg.MaxDwell, Modes: cfg.Modes})
	fmt.Fprintf(w, "schedule of seed %d (first %d steps):\n", cfg.Seed, n)
	for range n {
		st := p.Next()
		fmt.Fprintf(w, "%4d %-19s %s (then %s)\n", st.N, st.Kind, st.Desc, st.Dwell.Round(time.Millisecond))
	}
}

func executable(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("%w (build it: go build -o bin/ ./cmd/meshd ./examples/demoapp)", err)
	}
	if fi.IsDir() || fi.Mode()&0o111 == 0 {
		return errors.New("not an executable file")
	}
	return nil
}

// findEnvoy picks Envoy as the project's tests do: the flag, $ENVOY_BIN,
// .venv/bin/envoy, then PATH.
func findEnvoy(flagValue string) (string, error) {
	for _, c := range []struct{ what, path string }{{"--envoy", flagValue}, {"$ENVOY_BIN", os.Getenv("ENVOY_BIN")}} {
		if c.path == "" {
			continue
		}
		if err := executable(c.path); err != nil {
			return "", fmt.Errorf("%s %s: %w", c.what, c.path, err)
		}
		return c.path, nil
	}
	if executable(filepath.Join(".venv", "bin", "envoy")) == nil {
		return filepath.Join(".venv", "bin", "envoy"), nil
	}
	if p, err := exec.LookPath("envoy"); err == nil {
		return p, nil
	}
	return "", errors.New("no Envoy: give --envoy, set ENVOY_BIN, or install it with scripts/install-envoy.sh")
}
