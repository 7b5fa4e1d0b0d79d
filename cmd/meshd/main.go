// Command meshd is the meshd control plane: it watches the service catalog,
// runs the mesh CA and serves xDS to Envoy sidecars and proxyless gRPC
// applications. See docs/configuration.md for every flag.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"

	"github.com/meshd/meshd/discovery/consul"
	"github.com/meshd/meshd/internal/buildinfo"
	"github.com/meshd/meshd/internal/datadir"
	"github.com/meshd/meshd/internal/inputfile"
	"github.com/meshd/meshd/internal/metrics"
	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/policy"
	"github.com/meshd/meshd/sds"
	"github.com/meshd/meshd/server"
	"github.com/meshd/meshd/snapshot"
	"github.com/meshd/meshd/xds"
)

type config struct {
	catalog      string
	dataDir      string
	trustDomain  string
	xdsListen    string
	adminListen  string
	serverHosts  string
	leafTTL      time.Duration
	holdoff      time.Duration
	maxDelay     time.Duration
	logLevel     string
	logFormat    string
	pollInterval time.Duration
	mtlsMode     string
	rootNS       string
	policyDir    string
	// Linkerd: the default inbound policy of ports no Server selects, and
	// the networks of the cluster-* policies (docs/policy.md, "Linkerd").
	defaultInbound  string
	clusterNetworks string
	// catalogHoldoff: how long the catalog file must be quiet before it is
	// read (coalesces the partial writes of one save).
	catalogHoldoff time.Duration
	// deterministicLeaves: replicas sharing an intermediate issue identical
	// leaves (HA; sds/deterministic.go).
	deterministicLeaves bool
	// Consul discovery (discovery/consul; docs/consul.md).
	consulAddr, consulDC, consulTokenFile string
	consulStale, consulWarning            bool
	consulIntentions                      bool
	consulDefaultIntention                string
	consulWait, consulSyncTimeout         time.Duration
	// Identity: operator-supplied CA files, and plaintext xDS for development.
	caRootCert, caInterCert, caInterKey string
	insecureXDS                         bool
	// memoryLimit is the Go runtime's soft memory limit (--memory-limit).
	memoryLimit memoryLimitFlag
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
		fmt.Fprint(stderr, "\nEndpoints on --admin-listen: /healthz /readyz /metrics /debug/status /debug/config_dump?proxy=<node-id> /debug/pprof/ (POST) /debug/gc\n")
	}
	fs.StringVar(&c.catalog, "catalog", "", "catalog `file` to watch (YAML; see docs/catalog.md). At least one of --catalog and --consul-address is required; with both, the catalogs merge and a service defined twice is refused")
	fs.StringVar(&c.consulAddr, "consul-address", "", "Consul HTTP API `address` (host:port or https://host:port): discover services from Consul's catalog (docs/consul.md)")
	fs.StringVar(&c.consulDC, "consul-datacenter", "", "Consul `datacenter` to read (default: the agent's)")
	fs.StringVar(&c.consulTokenFile, "consul-token-file", "", "`file` holding the Consul ACL token (default: CONSUL_HTTP_TOKEN_FILE or CONSUL_HTTP_TOKEN)")
	fs.BoolVar(&c.consulStale, "consul-stale", false, "let any Consul server answer (less load on the leader; data may be slightly behind)")
	fs.BoolVar(&c.consulWarning, "consul-include-warning", false, "also route to instances whose Consul checks are warning (default: passing only)")
	fs.DurationVar(&c.consulWait, "consul-wait", consul.DefaultWaitTime, "how long one Consul blocking query may wait for a change (at most 10m)")
	fs.BoolVar(&c.consulIntentions, "consul-intentions", true, "with --consul-address: enforce Consul's service-intentions config entries as authorization (docs/consul.md)")
	fs.StringVar(&c.consulDefaultIntention, "consul-default-intention", "allow", "what a request no Consul intention matches gets: allow (Consul without ACLs) or deny (Consul's ACL default-deny)")
	fs.DurationVar(&c.consulSyncTimeout, "consul-sync-timeout", 30*time.Second, "at start, give up if Consul provides no catalog within this time")
	fs.StringVar(&c.dataDir, "data-dir", datadir.DefaultOr(""), "`directory` for meshd's state: the CA's keys and certificates (ca/) and the token signing key (tokens/), mode 0700. Default $XDG_STATE_HOME/meshd, else ~/.local/state/meshd: outside the working directory, where nothing started there can publish the keys; meshd warns if it is open to other users or inside a git work tree")
	fs.StringVar(&c.trustDomain, "trust-domain", mesh.DefaultTrustDomain, "SPIFFE trust `domain` of the mesh: identities are spiffe://<domain>/ns/<ns>/sa/<sa>")
	fs.StringVar(&c.xdsListen, "xds-listen", "127.0.0.1:15012", "`address` of the xDS gRPC server (TLS). Use 0.0.0.0:15012 to serve other hosts")
	fs.StringVar(&c.adminListen, "admin-listen", "127.0.0.1:15014", "`address` of the admin HTTP server (health, metrics, debug); keep it on loopback or a private network")
	fs.StringVar(&c.serverHosts, "server-hosts", "", "comma-separated extra DNS names and IPs for the xDS server certificate (localhost and 127.0.0.1 are always included); list every name proxies use to reach meshd")
	fs.DurationVar(&c.leafTTL, "leaf-ttl", 24*time.Hour, "lifetime of workload certificates; each is reissued at half its life")
	fs.DurationVar(&c.holdoff, "debounce-holdoff", 100*time.Millisecond, "a change after at least this long without a push is pushed at once; changes within this long of a push are batched until quiet this long (coalesces bursts)")
	fs.DurationVar(&c.maxDelay, "debounce-max", time.Second, "push at most this long after the first of a burst of changes, however long the burst")
	fs.BoolVar(&c.deterministicLeaves, "deterministic-leaves", false, "for several replicas sharing an operator-supplied intermediate (--ca-*): issue byte-identical workload certificates on every replica (epoch-aligned validity, keys derived from the intermediate key), so a proxy moving between replicas gets no new certificate")
	fs.DurationVar(&c.catalogHoldoff, "catalog-holdoff", 100*time.Millisecond, "after an in-place write, read the catalog file only once it has been quiet this long (coalesces partial writes); a file renamed onto the catalog's path is read at once")
	fs.DurationVar(&c.pollInterval, "catalog-poll", 5*time.Second, "check the catalog this often even without file events (safety net for missed events; re-read if its inode, size or times changed); 0 turns polling off")
	fs.StringVar(&c.mtlsMode, "mtls-mode", string(mesh.MTLSPermissive), "mesh-wide default mTLS `mode` for workloads no PeerAuthentication covers: STRICT (mTLS only), PERMISSIVE (mTLS and plaintext) or DISABLE")
	fs.StringVar(&c.rootNS, "root-namespace", mesh.DefaultRootNamespace, "`namespace` whose policies apply mesh-wide")
	fs.StringVar(&c.policyDir, "policy-dir", "", "`directory` of policy YAML files to watch: Istio's PeerAuthentication and AuthorizationPolicy, Linkerd's Server, ServerAuthorization, AuthorizationPolicy, MeshTLSAuthentication and NetworkAuthentication (see docs/policy.md); empty: no policies, only --mtls-mode and --default-inbound-policy")
	fs.StringVar(&c.defaultInbound, "default-inbound-policy", string(mesh.DefaultAllUnauthenticated), "Linkerd's default inbound `policy` for workloads no Linkerd Server selects: all-unauthenticated (no restriction), all-authenticated, cluster-authenticated, cluster-unauthenticated, deny or audit; a Namespace document or the endpoint label config.linkerd.io/default-inbound-policy overrides it")
	fs.StringVar(&c.clusterNetworks, "cluster-networks", strings.Join(policy.DefaultClusterNetworks, ","), "comma-separated `CIDRs` of the cluster: what Linkerd's cluster-* policies and ServerAuthorizations without networks admit")
	fs.StringVar(&c.caRootCert, "ca-root-cert", "", "`file` with the root certificate of an operator-supplied CA (with --ca-intermediate-cert and --ca-intermediate-key; the root key stays offline). Default: meshd creates its own root and intermediate in --data-dir")
	fs.StringVar(&c.caInterCert, "ca-intermediate-cert", "", "`file` with the intermediate certificate meshd signs workload certificates with (operator-supplied CA)")
	fs.StringVar(&c.caInterKey, "ca-intermediate-key", "", "`file` with the intermediate's private key (mode 0600; operator-supplied CA)")
	fs.BoolVar(&c.insecureXDS, "insecure-xds", false, "DEVELOPMENT ONLY: serve xDS in plaintext without authenticating proxies; any client can fetch any proxy's configuration and certificates")
	fs.Var(&c.memoryLimit, "memory-limit", "soft memory `limit` for the Go runtime (debug.SetMemoryLimit), in bytes or with a unit: B, KiB, MiB, GiB, TiB (e.g. 900MiB); the garbage collector works harder as the heap nears it instead of letting RSS follow GOGC's goal. 0 or off: no limit. Default: GOMEMLIMIT if set, otherwise no limit")
	fs.Var(&c.maxFileSize, "max-file-size", "largest catalog file meshd reads, and the most bytes the --policy-dir files may hold together (`size`: bytes, or with B, KiB, MiB, GiB); a larger one is refused without being read and the last good catalog or policy keeps serving. Non-regular files (pipes, devices) are always refused")
	fs.StringVar(&c.logLevel, "log-level", "info", "log `level`: debug, info, warn or error")
	fs.StringVar(&c.logFormat, "log-format", "text", "log `format`: text or json")
	fs.BoolVar(&c.version, "version", false, "print meshd's version, the commit it was built from and the Go version, and exit")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if c.version {
		return c, nil
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q: meshd takes only flags (see meshd -h)", fs.Arg(0))
	}
	if c.dataDir == "" {
		return nil, errors.New("--data-dir is required: neither XDG_STATE_HOME nor HOME is set, so there is no default")
	}
	if c.catalog == "" && c.consulAddr == "" {
		return nil, errors.New("--catalog is required (or --consul-address): point it at a catalog file, e.g. --catalog examples/quickstart/catalog.yaml")
	}
	if err := mesh.ValidTrustDomain(c.trustDomain); err != nil {
		return nil, fmt.Errorf("--trust-domain: %w", err)
	}
	if c.consulDefaultIntention != "allow" && c.consulDefaultIntention != "deny" {
		return nil, fmt.Errorf("--consul-default-intention %q: use allow or deny", c.consulDefaultIntention)
	}
	if m := mesh.MTLSMode(c.mtlsMode); !m.Valid() || m == mesh.MTLSUnset {
		return nil, fmt.Errorf("--mtls-mode %q: use STRICT, PERMISSIVE or DISABLE", c.mtlsMode)
	}
	if err := mesh.ValidName(c.rootNS); err != nil {
		return nil, fmt.Errorf("--root-namespace: %w", err)
	}
	if _, err := policy.ParseDefaultInboundPolicy(c.defaultInbound); err != nil {
		return nil, fmt.Errorf("--default-inbound-policy: %w", err)
	}
	if err := policy.ParseClusterNetworks(c.networks()); err != nil {
		return nil, fmt.Errorf("--cluster-networks: %w", err)
	}
	if c.leafTTL < 10*time.Second {
		return nil, fmt.Errorf("--leaf-ttl %s is too short: certificates are reissued at half their life and proxies need time to receive them; use at least 10s (hours in production)", c.leafTTL)
	}
	if n := btoi(c.caRootCert != "") + btoi(c.caInterCert != "") + btoi(c.caInterKey != ""); n != 0 && n != 3 {
		return nil, errors.New("--ca-root-cert, --ca-intermediate-cert and --ca-intermediate-key go together: give all three to use your own CA, or none to let meshd create one")
	}
	if c.holdoff <= 0 || c.maxDelay < c.holdoff {
		return nil, fmt.Errorf("--debounce-holdoff (%s) must be positive and no larger than --debounce-max (%s)", c.holdoff, c.maxDelay)
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
	c.memoryLimit.apply(log)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, c, log, nil); err != nil {
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

// caSecrets adapts the CA to what the publisher needs.
type caSecrets struct{ ca *sds.Authority }

func (s caSecrets) Identity(id mesh.Identity, dns []string) ([]byte, []byte, error) {
	l, err := s.ca.Leaf(id, dns)
	if err != nil {
		return nil, nil, err
	}
	return l.CertPEM, l.KeyPEM, nil
}
func (s caSecrets) Bundle() []byte         { return s.ca.RootCertPEM() }
func (s caSecrets) NextRenewal() time.Time { return s.ca.NextRenewal() }

// Forget lets the publisher drop leaves of identities no proxy uses any more.
func (s caSecrets) Forget(keep map[string]bool) { s.ca.Forget(keep) }

// run starts everything and blocks until ctx ends. ready, if not nil,
// receives the bound xDS and admin addresses once both listen (for tests).
func run(ctx context.Context, c *config, log *slog.Logger, ready func(xdsAddr, adminAddr string)) error {
	ca, err := sds.LoadOrCreate(sds.Options{DataDir: c.dataDir, TrustDomain: c.trustDomain, LeafTTL: c.leafTTL, Logger: log,
		RootCertFile: c.caRootCert, IntermediateCertFile: c.caInterCert, IntermediateKeyFile: c.caInterKey,
		DeterministicLeaves: c.deterministicLeaves})
	if err != nil {
		return fmt.Errorf("mesh CA: %w", err)
	}
	tokens, err := sds.LoadOrCreateTokens(c.dataDir, c.trustDomain, false, nil)
	if err != nil {
		return fmt.Errorf("bootstrap tokens: %w", err)
	}
	// The keys are in place now; say so if others could reach them.
	for _, w := range datadir.Check(c.dataDir) {
		log.Warn(w)
	}
	m := metrics.New()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 8)
	cache := server.NewCache()
	pub := snapshot.New(cache, caSecrets{ca}, snapshot.Options{
		Translate: xds.Options{TrustDomain: c.trustDomain},
		Holdoff:   c.holdoff, MaxDelay: c.maxDelay,
		Logger: log, Metrics: m,
	})
	// The policy in force combines the policy directory and Consul
	// intentions; intentions depend on the catalog too.
	pc := &policyCombiner{opts: consul.IntentionOptions{TrustDomain: c.trustDomain, DefaultAllow: c.consulDefaultIntention == "allow"},
		publish: pub.UpdatePolicy, log: log}
	srcs, catalogStatus, err := startSources(ctx, c, log, m, errc, func(cat *mesh.Catalog) {
		// One change: intentions are re-mapped against the new catalog, and
		// the new catalog must never be rendered with the old mapping.
		pub.Batch(func() {
			pub.Update(cat)
			pc.setCatalog(cat)
		})
	})
	if err != nil {
		return err
	}
	pc.setCatalog(srcs.current())
	tracker := server.NewTracker(log, m, func(id string) bool {
		cat := pub.Catalog()
		return cat != nil && cat.Proxy(id) != nil
	})
	// mTLS mode changes roll out in acknowledged steps (snapshot/migrate.go).
	pub.SetAckSource(tracker)
	tracker.SetAckHook(pub.Acked)

	// Publish the first catalog before accepting proxies, so the first
	// proxies to connect get configuration at once.
	var policies *policy.Watcher
	if c.policyDir != "" {
		policies, err = policy.NewWatcher(c.policyDir, c.rootNS, mesh.MTLSMode(c.mtlsMode), log, policy.WithPollInterval(c.pollInterval),
			policy.WithLinkerd(c.trustDomain, mesh.DefaultInboundPolicy(c.defaultInbound), c.networks()), policy.WithMaxSize(int64(c.maxFileSize)))
		if err != nil {
			return fmt.Errorf("policy: %w", err)
		}
		m.RegisterPolicySource("dir", func() float64 { return float64(policies.Status().Accepted) },
			func() float64 { return float64(policies.Status().Rejected) })
		pc.setBase(policies.Current())
	} else {
		// No files, but the default inbound policy (flag or endpoint
		// labels) still applies.
		pc.setBase((&policy.Policies{}).SetWith(policy.Settings{RootNamespace: c.rootNS, DefaultMode: mesh.MTLSMode(c.mtlsMode),
			TrustDomain: c.trustDomain, DefaultInboundPolicy: mesh.DefaultInboundPolicy(c.defaultInbound), ClusterNetworks: c.networks()}))
	}
	var intentions *consul.IntentionsWatcher
	if c.consulAddr != "" && c.consulIntentions {
		if intentions, err = startIntentions(ctx, c, log, errc, pc); err != nil {
			return err
		}
	}
	pub.Update(srcs.current())
	if _, err := pub.Publish(); err != nil {
		log.Error("some proxies could not be rendered; see /debug/status", "err", err)
	}

	var hosts []string
	for _, h := range strings.Split(c.serverHosts, ",") {
		if h = strings.TrimSpace(h); h != "" {
			hosts = append(hosts, h)
		}
	}
	auth := &server.Authenticator{Tokens: tokens, TrustDomain: c.trustDomain, Logger: log, Insecure: c.insecureXDS,
		Lookup: func(node string) (mesh.ServiceKey, mesh.Identity, bool) {
			cat := pub.Catalog()
			if cat == nil || cat.Proxy(node) == nil || cat.Service(cat.Proxy(node).ServiceKey()) == nil {
				return mesh.ServiceKey{}, mesh.Identity{}, false
			}
			k := cat.Proxy(node).ServiceKey()
			return k, mesh.IdentityOf(c.trustDomain, cat.Service(k)), true
		}}
	auth.RegisterMetrics(m.Registry)
	m.Registry.MustRegister(server.NewCACollector(ca))
	var tlsConf *tls.Config
	if !c.insecureXDS {
		if tlsConf, err = ca.ServerTLSConfig(hosts); err != nil {
			return fmt.Errorf("xDS server certificate: %w", err)
		}
	}
	// The node agent's CSRs are signed on the xDS port, behind the same
	// credentials as xDS itself.
	caService := func(gs *grpc.Server) {
		server.RegisterCAService(gs, auth, ca, func(k mesh.ServiceKey) []string { return xds.DNSNames(k, c.trustDomain) }, tracker)
	}
	xs, err := server.NewXDS(cache, server.Options{TLS: tlsConf, Logger: log, Tracker: tracker, Auth: auth,
		Register: []func(*grpc.Server){caService}})
	if err != nil {
		return err
	}
	xlis, err := net.Listen("tcp", c.xdsListen)
	if err != nil {
		return fmt.Errorf("--xds-listen %s: %w", c.xdsListen, err)
	}
	alis, err := net.Listen("tcp", c.adminListen)
	if err != nil {
		xlis.Close()
		return fmt.Errorf("--admin-listen %s: %w", c.adminListen, err)
	}
	// After a CA rotation step, re-render so the new bundle or the reissued
	// leaves reach proxies now rather than at the next catalog change.
	republish := func() { pub.Update(srcs.current()) }
	admin := &server.Admin{Publisher: pub, Tracker: tracker, Metrics: m, Logger: log,
		CatalogStatus: catalogStatus,
		CA:            ca, OnCAChange: republish}
	switch {
	case policies != nil && intentions != nil:
		admin.PolicyStatus = func() any {
			return map[string]any{"dir": policies.Status(), "consulIntentions": pc.status(intentions)}
		}
	case policies != nil:
		admin.PolicyStatus = func() any { return policies.Status() }
	case intentions != nil:
		admin.PolicyStatus = func() any { return map[string]any{"consulIntentions": pc.status(intentions)} }
	}
	hs := &http.Server{Handler: admin.Handler(), ReadHeaderTimeout: 5 * time.Second}

	if policies != nil {
		go func() { errc <- policies.Run(ctx) }()
		go func() {
			for {
				select {
				case <-ctx.Done():
					return
				case ps := <-policies.Updates():
					pc.setBase(ps)
				}
			}
		}()
	}
	go pub.Run(ctx)
	go ca.RunRotation(ctx, tracker, time.Second, republish)
	go func() { errc <- xs.Serve(xlis) }()
	go func() {
		if err := hs.Serve(alis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("admin server: %w", err)
		}
	}()
	log.Info("meshd started", "xds", xlis.Addr().String(), "admin", alis.Addr().String(),
		"catalog", c.catalog, "trust_domain", c.trustDomain, "ca_root", ca.Fingerprint(),
		"consul", c.consulAddr, "services", len(srcs.current().Services()), "proxies", len(srcs.current().Proxies()))
	if c.insecureXDS {
		log.Warn("INSECURE: --insecure-xds serves xDS in PLAINTEXT WITHOUT AUTHENTICATION: any client that reaches --xds-listen gets any proxy's configuration and certificates; development only",
			"xds", xlis.Addr().String())
	} else {
		log.Info("xDS proxies authenticate with a bootstrap token (meshctl token create) or a mesh client certificate", "xds", xlis.Addr().String())
	}
	if ready != nil {
		ready(xlis.Addr().String(), alis.Addr().String())
	}

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	log.Info("meshd shutting down")
	cancel()
	xs.Stop(5 * time.Second)
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer scancel()
	_ = hs.Shutdown(sctx)
	return runErr
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

// networks is --cluster-networks as a list.
func (c *config) networks() []string {
	var out []string
	for _, n := range strings.Split(c.clusterNetworks, ",") {
		if n = strings.TrimSpace(n); n != "" {
			out = append(out, n)
		}
	}
	return out
}
