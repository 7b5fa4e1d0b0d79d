// Package app runs meshd: it builds the CA, the sources, the input
// combiner, the publisher, the xDS server and the admin API from a Config
// and wires them together. cmd/meshd only parses flags into a Config.
//
// Who owns what (docs/architecture.md, "Concurrency model"): the combiner's
// goroutine owns the sources' latest values and emits ordered updates; the
// publisher's loop owns the catalog, policy, render and migration state;
// each stream loop owns its stream; readers use immutable views. Nothing
// here holds a lock while calling another component.
package app

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"

	"github.com/meshd/meshd/discovery/consul"
	"github.com/meshd/meshd/internal/datadir"
	"github.com/meshd/meshd/internal/inputs"
	"github.com/meshd/meshd/internal/metrics"
	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/sds"
	"github.com/meshd/meshd/server"
	"github.com/meshd/meshd/server/admin"
	"github.com/meshd/meshd/server/auth"
	"github.com/meshd/meshd/server/caservice"
	"github.com/meshd/meshd/server/tracker"
	"github.com/meshd/meshd/snapshot"
	"github.com/meshd/meshd/xds"
)

// Config is meshd's configuration (cmd/meshd's flags; docs/configuration.md).
type Config struct {
	Catalog      string
	DataDir      string
	TrustDomain  string
	XDSListen    string
	AdminListen  string
	ServerHosts  string
	LeafTTL      time.Duration
	Holdoff      time.Duration
	MaxDelay     time.Duration
	PollInterval time.Duration
	MTLSMode     string
	RootNS       string
	PolicyDir    string
	// Linkerd: the default inbound policy of ports no Server selects, and
	// the networks of the cluster-* policies (docs/policy.md, "Linkerd").
	DefaultInbound  string
	ClusterNetworks string
	// CatalogHoldoff: how long the catalog file must be quiet before it is
	// read (coalesces the partial writes of one save).
	CatalogHoldoff time.Duration
	// DeterministicLeaves: replicas sharing an intermediate issue identical
	// leaves (HA; sds/deterministic.go).
	DeterministicLeaves bool
	// Consul discovery (discovery/consul; docs/consul.md).
	ConsulAddr, ConsulDC, ConsulTokenFile string
	ConsulStale, ConsulWarning            bool
	ConsulIntentions                      bool
	ConsulDefaultIntention                string
	ConsulWait, ConsulSyncTimeout         time.Duration
	// Identity: operator-supplied CA files, and plaintext xDS for development.
	CARootCert, CAInterCert, CAInterKey string
	InsecureXDS                         bool
	// AdminTokenFile holds the token the admin API's sensitive endpoints
	// require (--admin-token-file; empty: DataDir/admin.token, created at
	// first start); AdminHosts are the names besides localhost and IP
	// addresses its requests may carry in Host (--admin-hosts).
	AdminTokenFile string
	AdminHosts     string
	// Bounds on what clients may hold before and after authenticating
	// (issue 13; limits.go): connections on the xDS port (0: from the
	// file-descriptor limit), of them not yet authenticated (0: all), how
	// long a connection may stay unauthenticated, the TLS handshake, idle
	// and age limits of connections, and streams per credential and node.
	MaxConnections, MaxPendingConnections int
	AuthTimeout, HandshakeTimeout         time.Duration
	// MaxHandshakes bounds the TLS handshakes meshd computes at once (0:
	// DefaultMaxHandshakes), so that a reconnect storm finishes a few
	// handshakes at a time instead of timing all of them out.
	MaxHandshakes                       int
	MaxConnectionIdle, MaxConnectionAge time.Duration
	MaxConnectionAgeGrace               time.Duration
	MaxStreamsPerProxy                  int
	// CredentialCheck: how often open streams' credentials are checked
	// for revocation and expiry besides file events
	// (--credential-check-interval; 0: auth.DefaultRecheck).
	CredentialCheck time.Duration
	// MigrationOverdue: an mTLS migration step waiting longer is reported
	// and can be forced (--mtls-migration-overdue).
	MigrationOverdue time.Duration
	// MaxFileSize bounds the catalog file and the policy files together
	// (--max-file-size; 0: internal/inputfile's default).
	MaxFileSize int64
	// LivenessTimeout: /healthz fails when the publisher or the stream
	// machinery has had work pending this long without progress
	// (--liveness-timeout).
	LivenessTimeout time.Duration
	// Telemetry: sidecars stream their inbound access log to meshd
	// (--telemetry), kept within TelemetryMaxEdges edges.
	Telemetry         bool
	TelemetryMaxEdges int
}

// Networks is ClusterNetworks as a list.
func (c *Config) Networks() []string {
	var out []string
	for _, n := range strings.Split(c.ClusterNetworks, ",") {
		if n = strings.TrimSpace(n); n != "" {
			out = append(out, n)
		}
	}
	return out
}

// loadAdminToken reads (or at first start creates) the admin API's token.
func loadAdminToken(c *Config, log *slog.Logger) (string, error) {
	path := c.AdminTokenFile
	if path == "" {
		path = filepath.Join(c.DataDir, admin.TokenFileName)
	}
	tok, created, warn, err := admin.LoadOrCreateToken(path)
	if err != nil {
		return "", fmt.Errorf("--admin-token-file: %w", err)
	}
	if created {
		log.Info("created the admin API token; meshctl reads it from there (--admin-token-file)", "path", path)
	}
	if warn != "" {
		log.Warn(warn)
	}
	return tok, nil
}

func splitList(s string) []string {
	var out []string
	for _, h := range strings.Split(s, ",") {
		if h = strings.TrimSpace(h); h != "" {
			out = append(out, h)
		}
	}
	return out
}

// Run starts everything and blocks until ctx ends. ready, if not nil,
// receives the bound xDS and admin addresses once both listen (for tests).
func Run(ctx context.Context, c *Config, log *slog.Logger, ready func(xdsAddr, adminAddr string)) error {
	ca, err := sds.LoadOrCreate(sds.Options{DataDir: c.DataDir, TrustDomain: c.TrustDomain, LeafTTL: c.LeafTTL, Logger: log,
		RootCertFile: c.CARootCert, IntermediateCertFile: c.CAInterCert, IntermediateKeyFile: c.CAInterKey,
		DeterministicLeaves: c.DeterministicLeaves})
	if err != nil {
		return fmt.Errorf("mesh CA: %w", err)
	}
	tokens, err := sds.LoadOrCreateTokens(c.DataDir, c.TrustDomain, false, nil)
	if err != nil {
		return fmt.Errorf("bootstrap tokens: %w", err)
	}
	adminToken, err := loadAdminToken(c, log)
	if err != nil {
		return err
	}
	// The keys are in place now; say so if others could reach them.
	for _, w := range datadir.Check(c.DataDir) {
		log.Warn(w)
	}
	// The lock on the data directory is held until everything that may
	// write there has stopped (the deferred functions run last in, first out).
	defer ca.Close()
	m := metrics.New()
	// Every goroutine Run starts is in goroutines, and Run returns only once
	// they have all stopped: a caller (a test, a supervisor restarting meshd
	// in-process) never has a rotation writing to the data directory, or a
	// watcher reading files, after Run returned.
	var goroutines sync.WaitGroup
	ctx, cancel := context.WithCancel(ctx)
	defer func() {
		cancel()
		goroutines.Wait()
	}()
	// One slot per goroutine that reports an error (four sources, the
	// session reaper, the xDS and admin servers): a send never blocks, even
	// after Run stopped reading.
	errc := make(chan error, 8)
	cache := server.NewCache()
	pub := snapshot.New(cache, ca, snapshot.Options{
		Translate: xds.Options{TrustDomain: c.TrustDomain, Telemetry: c.Telemetry},
		Holdoff:   c.Holdoff, MaxDelay: c.MaxDelay, MigrationOverdue: c.MigrationOverdue,
		Logger: log, Metrics: m,
	})
	src, err := startSources(ctx, c, log, m, errc, &goroutines)
	if err != nil {
		return err
	}
	// The combiner owns the sources' latest values and hands the publisher
	// one ordered update per change (a catalog with the intentions mapped
	// against it).
	var intentionOpts *consul.IntentionOptions
	if src.intentions != nil {
		intentionOpts = &consul.IntentionOptions{TrustDomain: c.TrustDomain, DefaultAllow: c.ConsulDefaultIntention == "allow"}
	}
	combiner, first, err := inputs.New(src.initial, inputs.Options{Intentions: intentionOpts, Logger: log,
		Publish: func(u snapshot.Update) { pub.Update(u) }})
	if err != nil {
		return err
	}
	// The first catalog is published before proxies are accepted, so the
	// first proxies to connect get configuration at once.
	pub.Update(first)
	if _, err := pub.Publish(); err != nil {
		log.Error("some proxies could not be rendered; see /debug/status", "err", err)
	}
	goroutines.Go(func() { combiner.Run(ctx, src.channels) })
	goroutines.Go(func() { pub.Run(ctx) })

	tr := tracker.NewTracker(log, m, func(id string) bool { return pub.View().Known(id) })
	hosts := splitList(c.ServerHosts)
	au := &auth.Authenticator{Tokens: tokens, TrustDomain: c.TrustDomain, Logger: log, Insecure: c.InsecureXDS,
		RecheckEvery: c.CredentialCheck, MaxStreamsPerNode: c.MaxStreamsPerProxy,
		Lookup: func(node string) (mesh.ServiceKey, mesh.Identity, bool) {
			cat := pub.View().Catalog
			if cat == nil || cat.Proxy(node) == nil || cat.Service(cat.Proxy(node).ServiceKey()) == nil {
				return mesh.ServiceKey{}, mesh.Identity{}, false
			}
			k := cat.Proxy(node).ServiceKey()
			return k, mesh.IdentityOf(c.TrustDomain, cat.Service(k)), true
		}}
	au.RegisterMetrics(m.Registry)
	m.Registry.MustRegister(admin.NewCACollector(ca))
	var tlsConf *tls.Config
	if !c.InsecureXDS {
		if tlsConf, err = ca.ServerTLSConfig(hosts); err != nil {
			return fmt.Errorf("xDS server certificate: %w", err)
		}
	}
	// The node agent's CSRs are signed on the xDS port, behind the same
	// credentials as xDS itself.
	caService := func(gs *grpc.Server) {
		caservice.Register(gs, au, ca, func(k mesh.ServiceKey) []string { return xds.DNSNames(k, c.TrustDomain) }, tr)
	}
	register := []func(*grpc.Server){caService}
	var adminRoutes []func(*http.ServeMux)
	if c.Telemetry {
		col, api := newTelemetry(c, pub, log)
		col.RegisterMetrics(m.Registry)
		register = append(register, col.Register)
		adminRoutes = append(adminRoutes, api.Register)
	}
	xlis, alis, err := listen(c, log, m, au)
	if err != nil {
		return err
	}
	xs, err := server.NewXDS(cache, server.Options{TLS: tlsConf, Logger: log, Tracker: tr, Events: pub, Auth: au,
		Register:         register,
		HandshakeTimeout: c.HandshakeTimeout, PaceHandshake: xlis.PaceHandshake, MaxConnectionIdle: c.MaxConnectionIdle,
		MaxConnectionAge: c.MaxConnectionAge, MaxConnectionAgeGrace: c.MaxConnectionAgeGrace})
	if err != nil {
		xlis.Close()
		alis.Close()
		return err
	}
	access := admin.NewAccess(adminToken, splitList(c.AdminHosts), log)
	access.RegisterMetrics(m.Registry)
	if !admin.Loopback(alis.Addr().String()) {
		log.Warn("the admin API listens beyond loopback, over plain HTTP: its token crosses the network in clear text, and health, readiness and metrics are open to whoever reaches it; keep --admin-listen on loopback or a private network, or put a TLS proxy in front",
			"admin", alis.Addr().String())
	}
	adm := &admin.Admin{Publisher: pub, Tracker: tr, Metrics: m, Logger: log, TrustDomain: c.TrustDomain, Access: access,
		CatalogStatus: src.catalogStatus(combiner), PolicyStatus: src.policyStatus(combiner),
		// After a CA rotation step, re-render so the new bundle or the
		// reissued leaves reach proxies now rather than at the next change.
		CA: ca, OnCAChange: pub.Republish,
		Liveness: &admin.Liveness{Bound: c.LivenessTimeout, Logger: log, Checks: map[string]admin.Stalled{
			"publisher": pub.Stalled, "xds streams": server.StreamsStalled(cache, tr)}},
		Routes: adminRoutes}
	m.Registry.MustRegister(admin.NewSyncCollector(adm))
	hs := &http.Server{Handler: adm.Handler(), ReadHeaderTimeout: 5 * time.Second,
		// Idle keep-alive connections are not kept for ever; requests and
		// their headers are bounded (tap streams have no write timeout).
		IdleTimeout: time.Minute, MaxHeaderBytes: 64 << 10}

	goroutines.Go(func() { ca.RunRotation(ctx, tr, time.Second, pub.Republish) })
	// Revoked and expired credentials' streams are closed by meshd itself
	// (server/auth/session.go).
	goroutines.Go(func() {
		if err := au.Run(ctx); err != nil {
			errc <- err
		}
	})
	goroutines.Go(func() { errc <- xs.Serve(xlis) })
	goroutines.Go(func() {
		if err := hs.Serve(alis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("admin server: %w", err)
		}
	})
	cat := first.Catalog
	started := []any{"xds", xlis.Addr().String(), "admin", alis.Addr().String()}
	// Only the sources in use: an empty catalog= or consul="" says nothing.
	if c.Catalog != "" {
		started = append(started, "catalog", c.Catalog)
	}
	if c.ConsulAddr != "" {
		started = append(started, "consul", c.ConsulAddr)
	}
	log.Info("meshd started", append(started, "trust_domain", c.TrustDomain, "ca_root", ca.Fingerprint(),
		"services", len(cat.Services()), "proxies", len(cat.Proxies()))...)
	if c.InsecureXDS {
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
