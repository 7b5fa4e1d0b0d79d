// Command meshd is the meshd control plane: it watches the service catalog,
// runs the mesh CA and serves xDS to Envoy sidecars and proxyless gRPC
// applications. See docs/configuration.md for every flag.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/meshd/meshd/discovery/consul"
	"github.com/meshd/meshd/internal/app"
	"github.com/meshd/meshd/internal/buildinfo"
	"github.com/meshd/meshd/internal/datadir"
	"github.com/meshd/meshd/internal/inputfile"
	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/policy"
)

// config is what the flags give: meshd's configuration (app.Config) plus
// what only the command uses (logging, the runtime's memory limit).
type config struct {
	app.Config
	logLevel, logFormat string
	// memoryLimit is the Go runtime's soft memory limit (--memory-limit).
	memoryLimit memoryLimitFlag
	// gcPercent is the collector's GOGC (--gc-percent).
	gcPercent gcPercentFlag
	// version: print the build (internal/buildinfo) and exit.
	version bool
	// maxFileSize bounds the catalog file and the policy files together
	// (--max-file-size; internal/inputfile).
	maxFileSize inputfile.Size
}

const usage = `meshd — an Envoy xDS control plane with a built-in mesh CA.

meshd watches a service catalog file, renders per-proxy Envoy and proxyless
gRPC configuration (mTLS between SPIFFE identities) and serves it over xDS
(gRPC, TLS only). On first start it creates a root CA in --data-dir.

Usage:
  meshd --catalog FILE [flags]

Example (the quickstart, from the repository root; state in ~/.local/state/meshd):
  meshd --catalog examples/quickstart/catalog.yaml

Flags:
`

func parseFlags(args []string, stderr io.Writer) (*config, error) {
	c := &config{maxFileSize: inputfile.Size(inputfile.DefaultMaxSize)}
	fs := flag.NewFlagSet("meshd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
		fmt.Fprint(stderr, "\nEndpoints on --admin-listen, open: /healthz /readyz /metrics; with the admin token (Authorization: Bearer, from --admin-token-file): /debug/status /debug/config_dump?proxy=<node-id> /debug/pprof/ /ca/status /telemetry/... and the actions (POST, Content-Type: application/json) /debug/gc /migrations/force?proxy=<node-id> /ca/rotate-root /ca/rotate-intermediate (and .../abort)\n")
	}
	fs.StringVar(&c.Catalog, "catalog", "", "catalog `file` to watch (YAML; see docs/catalog.md). At least one of --catalog and --consul-address is required; with both, the catalogs merge and a service defined twice is refused")
	fs.StringVar(&c.ConsulAddr, "consul-address", "", "Consul HTTP API `address` (host:port or https://host:port): discover services from Consul's catalog (docs/consul.md)")
	fs.StringVar(&c.ConsulDC, "consul-datacenter", "", "Consul `datacenter` to read (default: the agent's)")
	fs.StringVar(&c.ConsulTokenFile, "consul-token-file", "", "`file` holding the Consul ACL token (default: CONSUL_HTTP_TOKEN_FILE or CONSUL_HTTP_TOKEN)")
	fs.BoolVar(&c.ConsulStale, "consul-stale", false, "let any Consul server answer (less load on the leader; data may be slightly behind)")
	fs.BoolVar(&c.ConsulWarning, "consul-include-warning", false, "also route to instances whose Consul checks are warning (default: passing only)")
	fs.DurationVar(&c.ConsulWait, "consul-wait", consul.DefaultWaitTime, "how long one Consul blocking query may wait for a change (at most 10m)")
	fs.BoolVar(&c.ConsulIntentions, "consul-intentions", true, "with --consul-address: enforce Consul's service-intentions config entries as authorization (docs/consul.md)")
	fs.StringVar(&c.ConsulDefaultIntention, "consul-default-intention", "allow", "what a request no Consul intention matches gets: allow (Consul without ACLs) or deny (Consul's ACL default-deny)")
	fs.DurationVar(&c.ConsulSyncTimeout, "consul-sync-timeout", 30*time.Second, "at start, give up if Consul provides no catalog within this time")
	fs.StringVar(&c.DataDir, "data-dir", datadir.DefaultOr(""), "`directory` for meshd's state: the CA's keys and certificates (ca/) and the token signing key (tokens/), mode 0700. Default $XDG_STATE_HOME/meshd, else ~/.local/state/meshd: outside the working directory, where nothing started there can publish the keys; meshd warns if it is open to other users or inside a git work tree")
	fs.StringVar(&c.TrustDomain, "trust-domain", mesh.DefaultTrustDomain, "SPIFFE trust `domain` of the mesh: identities are spiffe://<domain>/ns/<ns>/sa/<sa>")
	fs.StringVar(&c.XDSListen, "xds-listen", "127.0.0.1:15012", "`address` of the xDS gRPC server (TLS). Use 0.0.0.0:15012 to serve other hosts")
	fs.StringVar(&c.AdminListen, "admin-listen", "127.0.0.1:15014", "`address` of the admin HTTP server (health, readiness and metrics open; everything else needs the admin token, see --admin-token-file); keep it on loopback or a private network: it is plain HTTP")
	fs.StringVar(&c.AdminTokenFile, "admin-token-file", "", "`file` holding the token the admin API requires for everything but /healthz, /readyz and /metrics (Authorization: Bearer <token>); created (mode 0600, random) if missing. Default: admin.token in --data-dir, where meshctl looks for it")
	fs.StringVar(&c.AdminHosts, "admin-hosts", "", "comma-separated DNS `names` the admin API answers to besides localhost and IP addresses (the Host of a request; others are refused, against DNS rebinding): the names meshctl --admin-address or a proxy use")
	fs.StringVar(&c.ServerHosts, "server-hosts", "", "comma-separated extra DNS names and IPs for the xDS server certificate (localhost and 127.0.0.1 are always included); list every name proxies use to reach meshd")
	fs.DurationVar(&c.LeafTTL, "leaf-ttl", 24*time.Hour, "lifetime of workload certificates; each is reissued at half its life")
	fs.DurationVar(&c.Holdoff, "debounce-holdoff", 100*time.Millisecond, "a change after at least this long without a push is pushed at once; changes within this long of a push are batched until quiet this long (coalesces bursts)")
	fs.DurationVar(&c.MaxDelay, "debounce-max", time.Second, "push at most this long after the first of a burst of changes, however long the burst")
	fs.BoolVar(&c.DeterministicLeaves, "deterministic-leaves", false, "for several replicas sharing an operator-supplied intermediate (--ca-*): issue byte-identical workload certificates on every replica (epoch-aligned validity, keys derived from the intermediate key), so a proxy moving between replicas gets no new certificate")
	fs.DurationVar(&c.CatalogHoldoff, "catalog-holdoff", 100*time.Millisecond, "after an in-place write, read the catalog file only once it has been quiet this long (coalesces partial writes); a file renamed onto the catalog's path is read at once")
	fs.DurationVar(&c.PollInterval, "catalog-poll", 5*time.Second, "check the catalog this often even without file events (safety net for missed events; re-read if its inode, size or times changed); 0 turns polling off")
	fs.StringVar(&c.MTLSMode, "mtls-mode", string(mesh.MTLSPermissive), "mesh-wide default mTLS `mode` for workloads no PeerAuthentication covers: STRICT (mTLS only), PERMISSIVE (mTLS and plaintext) or DISABLE")
	fs.StringVar(&c.RootNS, "root-namespace", mesh.DefaultRootNamespace, "`namespace` whose policies apply mesh-wide")
	fs.StringVar(&c.PolicyDir, "policy-dir", "", "`directory` of policy YAML files to watch: Istio's PeerAuthentication and AuthorizationPolicy, Linkerd's Server, ServerAuthorization, AuthorizationPolicy, MeshTLSAuthentication and NetworkAuthentication (see docs/policy.md); empty: no policies, only --mtls-mode and --default-inbound-policy")
	fs.StringVar(&c.DefaultInbound, "default-inbound-policy", string(mesh.DefaultAllUnauthenticated), "Linkerd's default inbound `policy` for workloads no Linkerd Server selects: all-unauthenticated (no restriction), all-authenticated, cluster-authenticated, cluster-unauthenticated, deny or audit; a Namespace document or the endpoint label config.linkerd.io/default-inbound-policy overrides it")
	fs.StringVar(&c.ClusterNetworks, "cluster-networks", strings.Join(policy.DefaultClusterNetworks, ","), "comma-separated `CIDRs` of the cluster: what Linkerd's cluster-* policies and ServerAuthorizations without networks admit")
	fs.StringVar(&c.CARootCert, "ca-root-cert", "", "`file` with the root certificate of an operator-supplied CA (with --ca-intermediate-cert and --ca-intermediate-key; the root key stays offline). Default: meshd creates its own root and intermediate in --data-dir")
	fs.StringVar(&c.CAInterCert, "ca-intermediate-cert", "", "`file` with the intermediate certificate meshd signs workload certificates with (operator-supplied CA)")
	fs.StringVar(&c.CAInterKey, "ca-intermediate-key", "", "`file` with the intermediate's private key (mode 0600; operator-supplied CA)")
	fs.DurationVar(&c.MigrationOverdue, "mtls-migration-overdue", time.Minute, "an mTLS migration step that has waited this long for proxies to ACK is reported (log, meshd_mtls_migration_pending_seconds, /debug/status) and can then be forced with POST /migrations/force?proxy=<node-id> on the admin API (docs/policy.md)")
	fs.DurationVar(&c.LivenessTimeout, "liveness-timeout", 30*time.Second, "/healthz fails (and logs why) when the publisher or the xDS stream machinery has had work pending this long without progress, so a supervisor restarts a wedged meshd; a publish of 10,000 proxies takes a few seconds, so keep it well above that")
	fs.BoolVar(&c.Telemetry, "telemetry", true, "collect traffic telemetry: every Envoy sidecar streams its inbound access log to meshd (gRPC ALS on the xDS port, authenticated like xDS), for meshd_mesh_* metrics, meshctl stat, edges and tap (docs/operations.md). false: no access-log streams")
	fs.IntVar(&c.TelemetryMaxEdges, "telemetry-max-edges", 10000, "most caller → service edges the telemetry store keeps (about 250 bytes each, and a few Prometheus series each); events of further edges still count for their service and in meshd_telemetry_dropped_events_total")
	fs.IntVar(&c.MaxConnections, "max-connections", 0, "most open `connections` on the xDS port; when reached, a new one closes the oldest that has not authenticated (an authenticated one is never closed for it). 0: meshd's file-descriptor limit (raised to its hard limit at start) less a reserve for the admin API and files, logged at start")
	fs.IntVar(&c.MaxPendingConnections, "max-pending-connections", 0, "most `connections` on the xDS port that have not yet authenticated a stream or call; beyond it a new one closes the oldest of them. 0: as --max-connections")
	fs.DurationVar(&c.AuthTimeout, "xds-auth-timeout", 10*time.Second, "close an xDS connection that has not authenticated a stream or call this long after its TLS handshake ended (HTTP/2 without a stream, clients whose streams are all refused)")
	fs.DurationVar(&c.HandshakeTimeout, "xds-handshake-timeout", 5*time.Second, "bound on a new xDS connection's TLS and HTTP/2 handshakes, from the handshake's start (its first turn among --max-concurrent-handshakes); a client that sends nothing is closed this long after it was accepted")
	fs.IntVar(&c.MaxHandshakes, "max-concurrent-handshakes", 0, "most TLS `handshakes` on the xDS port computed at once; others wait their turn (counted in --max-pending-connections, not yet charged --xds-handshake-timeout), so a reconnect storm of thousands of proxies finishes a few handshakes at a time instead of timing all of them out. 0: 8 per CPU (GOMAXPROCS)")
	fs.DurationVar(&c.MaxConnectionIdle, "xds-max-connection-idle", 5*time.Minute, "close an xDS connection that has had no stream for this long (GOAWAY; clients reconnect when they need to). 0: never")
	fs.DurationVar(&c.MaxConnectionAge, "xds-max-connection-age", 30*time.Minute, "send an xDS connection GOAWAY after about this long (±10%), so every proxy reconnects and re-authenticates now and then (and spreads over replicas). 0: never")
	fs.DurationVar(&c.MaxConnectionAgeGrace, "xds-max-connection-age-grace", 10*time.Second, "how long the streams of a connection sent GOAWAY for its age may continue before they are closed (proxies reconnect meanwhile)")
	fs.IntVar(&c.MaxStreamsPerProxy, "max-streams-per-proxy", 128, "most open `streams` one credential (a token, a certificate) may hold for one node id: xDS and access-log streams together (an Envoy holds one xDS stream and one access-log stream per worker thread). A credential grants only its service's proxies, so it holds at most this many per proxy of the service. 0: no limit")
	fs.DurationVar(&c.CredentialCheck, "credential-check-interval", time.Second, "how often meshd checks the credentials of open xDS streams against the token revocation list and their expiry; a revocation (meshctl token revoke) is normally seen at once through a file-system event, so this bounds how long a revoked or expired credential's streams stay open when events are lost")
	fs.BoolVar(&c.InsecureXDS, "insecure-xds", false, "DEVELOPMENT ONLY: serve xDS in plaintext without authenticating proxies; any client can fetch any proxy's configuration and certificates")
	fs.Var(&c.gcPercent, "gc-percent", "the garbage collector's `percent` (GOGC): collect when the heap has grown by this much since the last collection's live heap; higher spends memory to save CPU. off: collect only under --memory-limit. Default: GOGC if set, otherwise 200 (Go's own default is 100: meshd's heap is small next to the bursts of responses it encodes, and 200 took a tenth off its CPU in a cold sync of 3,000 proxies, issue 14)")
	fs.Var(&c.memoryLimit, "memory-limit", "soft memory `limit` for the Go runtime (debug.SetMemoryLimit), in bytes or with a unit: B, KiB, MiB, GiB, TiB (e.g. 900MiB); the garbage collector works harder as the heap nears it instead of letting RSS follow GOGC's goal. 0 or off: no limit. Default: GOMEMLIMIT if set, otherwise no limit")
	fs.Var(&c.maxFileSize, "max-file-size", "largest catalog file meshd reads, and the most bytes the --policy-dir files may hold together (`size`: bytes, or with B, KiB, MiB, GiB); a larger one is refused without being read and the last good catalog or policy keeps serving. Non-regular files (pipes, devices) are always refused")
	fs.StringVar(&c.logLevel, "log-level", "info", "log `level`: debug, info, warn or error")
	fs.StringVar(&c.logFormat, "log-format", "text", "log `format`: text or json")
	fs.BoolVar(&c.version, "version", false, "print meshd's version, the commit it was built from and the Go version, and exit")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q: meshd takes only flags (see meshd -h)", fs.Arg(0))
	}
	if c.version {
		return c, nil
	}
	if c.DataDir == "" {
		return nil, errors.New("--data-dir is required: neither XDG_STATE_HOME nor HOME is set, so there is no default")
	}
	if c.Catalog == "" && c.ConsulAddr == "" {
		return nil, errors.New("--catalog is required (or --consul-address): point it at a catalog file, e.g. --catalog examples/quickstart/catalog.yaml")
	}
	if err := mesh.ValidTrustDomain(c.TrustDomain); err != nil {
		return nil, fmt.Errorf("--trust-domain: %w", err)
	}
	if c.ConsulDefaultIntention != "allow" && c.ConsulDefaultIntention != "deny" {
		return nil, fmt.Errorf("--consul-default-intention %q: use allow or deny", c.ConsulDefaultIntention)
	}
	if m := mesh.MTLSMode(c.MTLSMode); !m.Valid() || m == mesh.MTLSUnset {
		return nil, fmt.Errorf("--mtls-mode %q: use STRICT, PERMISSIVE or DISABLE", c.MTLSMode)
	}
	if err := mesh.ValidName(c.RootNS); err != nil {
		return nil, fmt.Errorf("--root-namespace: %w", err)
	}
	if _, err := policy.ParseDefaultInboundPolicy(c.DefaultInbound); err != nil {
		return nil, fmt.Errorf("--default-inbound-policy: %w", err)
	}
	if err := policy.ParseClusterNetworks(c.Networks()); err != nil {
		return nil, fmt.Errorf("--cluster-networks: %w", err)
	}
	if c.LeafTTL < 10*time.Second {
		return nil, fmt.Errorf("--leaf-ttl %s is too short: certificates are reissued at half their life and proxies need time to receive them; use at least 10s (hours in production)", c.LeafTTL)
	}
	if n := btoi(c.CARootCert != "") + btoi(c.CAInterCert != "") + btoi(c.CAInterKey != ""); n != 0 && n != 3 {
		return nil, errors.New("--ca-root-cert, --ca-intermediate-cert and --ca-intermediate-key go together: give all three to use your own CA, or none to let meshd create one")
	}
	if c.LivenessTimeout < time.Second {
		return nil, fmt.Errorf("--liveness-timeout %s is too short: use at least 1s (the default is 30s)", c.LivenessTimeout)
	}
	if c.MaxConnections < 0 || c.MaxPendingConnections < 0 || c.MaxStreamsPerProxy < 0 || c.MaxHandshakes < 0 {
		return nil, errors.New("--max-connections, --max-pending-connections, --max-streams-per-proxy and --max-concurrent-handshakes cannot be negative (0 means the default)")
	}
	if c.MaxConnections > 0 && c.MaxConnections < 16 {
		return nil, fmt.Errorf("--max-connections %d: use at least 16 (0: from the file-descriptor limit)", c.MaxConnections)
	}
	if c.AuthTimeout < time.Second || c.HandshakeTimeout < 100*time.Millisecond {
		return nil, fmt.Errorf("--xds-auth-timeout (%s) must be at least 1s and --xds-handshake-timeout (%s) at least 100ms", c.AuthTimeout, c.HandshakeTimeout)
	}
	if c.MaxConnectionIdle < 0 || c.MaxConnectionAge < 0 || c.MaxConnectionAgeGrace < 0 {
		return nil, errors.New("--xds-max-connection-idle, --xds-max-connection-age and --xds-max-connection-age-grace cannot be negative (0: not enforced)")
	}
	if c.CredentialCheck < 100*time.Millisecond || c.CredentialCheck > 10*time.Second {
		return nil, fmt.Errorf("--credential-check-interval %s: use 100ms to 10s (the bound on how long a revoked token's streams stay open; default 1s)", c.CredentialCheck)
	}
	if c.MigrationOverdue <= 0 {
		return nil, fmt.Errorf("--mtls-migration-overdue %s must be positive", c.MigrationOverdue)
	}
	if c.Holdoff <= 0 || c.MaxDelay < c.Holdoff {
		return nil, fmt.Errorf("--debounce-holdoff (%s) must be positive and no larger than --debounce-max (%s)", c.Holdoff, c.MaxDelay)
	}
	return c, nil
}

func newLogger(c *config, w io.Writer) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(c.logLevel)); err != nil {
		return nil, fmt.Errorf("--log-level %q: use debug, info, warn or error", c.logLevel)
	}
	o := &slog.HandlerOptions{Level: lvl}
	switch c.logFormat {
	case "text":
		return slog.New(slog.NewTextHandler(w, o)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, o)), nil
	}
	return nil, fmt.Errorf("--log-format %q: use text or json", c.logFormat)
}

func main() {
	c, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "meshd:", err)
		os.Exit(2)
	}
	if c.version {
		fmt.Println(buildinfo.Read().String("meshd"))
		return
	}
	log, err := newLogger(c, os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "meshd:", err)
		os.Exit(2)
	}
	c.gcPercent.apply(log)
	c.memoryLimit.apply(log)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	c.MaxFileSize = int64(c.maxFileSize)
	if err := app.Run(ctx, &c.Config, log, nil); err != nil {
		log.Error("meshd stopped", "err", err)
		os.Exit(1)
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// defaultGCPercent is meshd's GOGC when neither --gc-percent nor GOGC
// says otherwise (see the flag's help).
const defaultGCPercent = 200

// gcPercentFlag is --gc-percent; set tells an explicit value (which
// overrides GOGC) from the default.
type gcPercentFlag struct {
	percent int // -1: off
	set     bool
}

func (f *gcPercentFlag) String() string {
	if f == nil || !f.set {
		return ""
	}
	if f.percent < 0 {
		return "off"
	}
	return strconv.Itoa(f.percent)
}

func (f *gcPercentFlag) Set(s string) error {
	if strings.TrimSpace(s) == "off" {
		f.percent, f.set = -1, true
		return nil
	}
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil || n <= 0 {
		return fmt.Errorf("%q is not a percentage: want a whole number above 0 (like GOGC), or off", s)
	}
	f.percent, f.set = n, true
	return nil
}

// apply sets the collector's percentage and logs the one in force.
func (f *gcPercentFlag) apply(log *slog.Logger) {
	switch {
	case f.set:
		debug.SetGCPercent(f.percent)
		log.Info("garbage collector percent set", "percent", f.String(), "from", "--gc-percent")
	case os.Getenv("GOGC") != "":
		// The runtime has already applied it.
		log.Info("garbage collector percent set", "percent", os.Getenv("GOGC"), "from", "GOGC")
	default:
		debug.SetGCPercent(defaultGCPercent)
		log.Info("garbage collector percent set", "percent", defaultGCPercent, "from", "meshd's default")
	}
}

// memoryLimitFlag is --memory-limit. set tells an explicit value (which
// overrides GOMEMLIMIT) from the default (leave the runtime's GOMEMLIMIT
// handling alone).
type memoryLimitFlag struct {
	bytes int64
	set   bool
}

func (f *memoryLimitFlag) String() string {
	if f == nil || !f.set {
		return ""
	}
	return strconv.FormatInt(f.bytes, 10)
}

func (f *memoryLimitFlag) Set(s string) error {
	if strings.TrimSpace(s) == "off" {
		f.bytes, f.set = 0, true
		return nil
	}
	// GOMEMLIMIT's spelling, which the size flags share.
	n, err := inputfile.ParseSize(s)
	if err != nil {
		return fmt.Errorf("%w, or 0 for no limit", err)
	}
	f.bytes, f.set = n, true
	return nil
}

// apply sets the runtime's soft memory limit and logs the one in force.
func (f *memoryLimitFlag) apply(log *slog.Logger) {
	switch {
	case f.set && f.bytes > 0:
		debug.SetMemoryLimit(f.bytes)
		log.Info("soft memory limit set", "bytes", f.bytes, "from", "--memory-limit")
	case f.set:
		debug.SetMemoryLimit(math.MaxInt64)
		log.Info("no soft memory limit", "from", "--memory-limit")
	case os.Getenv("GOMEMLIMIT") != "":
		// The runtime has already applied it; a negative value only reads it.
		if n := debug.SetMemoryLimit(-1); n != math.MaxInt64 {
			log.Info("soft memory limit set", "bytes", n, "from", "GOMEMLIMIT")
		} else {
			log.Info("no soft memory limit", "from", "GOMEMLIMIT")
		}
	default:
		log.Info("no soft memory limit (set --memory-limit or GOMEMLIMIT to bound the heap)")
	}
}
