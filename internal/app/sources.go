package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/meshd/meshd/discovery/consul"
	"github.com/meshd/meshd/discovery/file"
	"github.com/meshd/meshd/internal/inputfile"
	"github.com/meshd/meshd/internal/inputs"
	"github.com/meshd/meshd/internal/metrics"
	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/policy"
)

// sources are the running discovery and policy watchers: their first
// values and their update channels, for the combiner.
type sources struct {
	file       *file.Watcher
	consul     *consul.Watcher
	policies   *policy.Watcher
	intentions *consul.IntentionsWatcher
	initial    inputs.Initial
	channels   inputs.Sources
}

// startSources creates and runs the watchers the configuration asks for and
// waits for each to produce its first value. Their goroutines are added to
// goroutines and report on errc.
func startSources(ctx context.Context, c *Config, log *slog.Logger, m *metrics.Metrics, errc chan<- error, goroutines *sync.WaitGroup) (*sources, error) {
	s := &sources{initial: inputs.Initial{Catalogs: map[string]*mesh.Catalog{}}}
	if c.Catalog != "" {
		w, err := file.NewWatcher(c.Catalog, log, file.WithPollInterval(c.PollInterval), file.WithHoldoff(c.CatalogHoldoff),
			file.WithMaxSize(c.maxFileSize()))
		if err != nil {
			return nil, fmt.Errorf("catalog: %w", err)
		}
		s.file = w
		m.RegisterCatalogSource("file", func() float64 { return float64(w.Status().Accepted) },
			func() float64 { return float64(w.Status().Rejected) })
		s.initial.Catalogs["file"] = w.Current()
		s.channels.FileCatalogs = w.Updates()
		goroutines.Go(func() { errc <- w.Run(ctx) })
	}
	if c.ConsulAddr != "" {
		w, err := consul.NewWatcher(consul.Options{Address: c.ConsulAddr, Datacenter: c.ConsulDC, TokenFile: c.ConsulTokenFile,
			Stale: c.ConsulStale, IncludeWarning: c.ConsulWarning, WaitTime: c.ConsulWait, Logger: log})
		if err != nil {
			return nil, fmt.Errorf("consul: %w", err)
		}
		s.consul = w
		goroutines.Go(func() { errc <- w.Run(ctx) })
		select {
		case <-w.Synced():
		case <-time.After(c.ConsulSyncTimeout):
			st := w.Status()
			return nil, fmt.Errorf("consul at %s gave no catalog within %s (--consul-sync-timeout): last error %q, catalog error %q",
				c.ConsulAddr, c.ConsulSyncTimeout, st.LastError, st.CatalogError)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		m.RegisterCatalogSource("consul", func() float64 { return float64(w.Status().Accepted) },
			func() float64 { return float64(w.Status().Rejected) })
		m.RegisterConsul(func() float64 { return w.Status().SyncAge.Seconds() },
			func() float64 { return float64(w.Status().Errors) },
			func() float64 { return float64(w.Status().IndexResets) })
		s.initial.Catalogs["consul"] = w.Current()
		s.channels.ConsulCatalogs = w.Updates()
	}
	if s.file == nil && s.consul == nil {
		return nil, errors.New("no catalog source: set --catalog or --consul-address")
	}
	if c.PolicyDir != "" {
		w, err := policy.NewWatcher(c.PolicyDir, c.RootNS, mesh.MTLSMode(c.MTLSMode), log, policy.WithPollInterval(c.PollInterval),
			policy.WithLinkerd(c.TrustDomain, mesh.DefaultInboundPolicy(c.DefaultInbound), c.Networks()), policy.WithMaxSize(c.maxFileSize()))
		if err != nil {
			return nil, fmt.Errorf("policy: %w", err)
		}
		s.policies = w
		m.RegisterPolicySource("dir", func() float64 { return float64(w.Status().Accepted) },
			func() float64 { return float64(w.Status().Rejected) })
		s.initial.Policy = w.Current()
		s.channels.Policies = w.Updates()
		goroutines.Go(func() { errc <- w.Run(ctx) })
	} else {
		// No files, but the default inbound policy (flag or endpoint
		// labels) still applies.
		s.initial.Policy = (&policy.Policies{}).SetWith(policy.Settings{RootNamespace: c.RootNS, DefaultMode: mesh.MTLSMode(c.MTLSMode),
			TrustDomain: c.TrustDomain, DefaultInboundPolicy: mesh.DefaultInboundPolicy(c.DefaultInbound), ClusterNetworks: c.Networks()})
	}
	if c.ConsulAddr != "" && c.ConsulIntentions {
		w, err := consul.NewIntentionsWatcher(consul.Options{Address: c.ConsulAddr, Datacenter: c.ConsulDC, TokenFile: c.ConsulTokenFile,
			Stale: c.ConsulStale, WaitTime: c.ConsulWait, Logger: log})
		if err != nil {
			return nil, fmt.Errorf("consul intentions: %w", err)
		}
		s.intentions = w
		goroutines.Go(func() { errc <- w.Run(ctx) })
		select {
		case <-w.Synced():
		case <-time.After(c.ConsulSyncTimeout):
			return nil, fmt.Errorf("consul at %s gave no intentions within %s (--consul-sync-timeout): %s", c.ConsulAddr, c.ConsulSyncTimeout, w.Status().LastError)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		s.initial.Intentions = w.Current()
		s.channels.Intentions = w.Updates()
	}
	return s, nil
}

func (c *Config) maxFileSize() int64 {
	if c.MaxFileSize > 0 {
		return c.MaxFileSize
	}
	return inputfile.DefaultMaxSize
}

// catalogStatus reports the discovery sources for /debug/status: the file
// source's status alone when it is the only one (as before Consul existed).
func (s *sources) catalogStatus(c *inputs.Combiner) func() any {
	return func() any {
		if s.consul == nil {
			return s.file.Status()
		}
		out := map[string]any{"consul": s.consul.Status(), "merge": c.Status().Merge}
		if s.file != nil {
			out["file"] = s.file.Status()
		}
		return out
	}
}

type intentionsStatus struct {
	consul.IntentionsStatus
	Policies     int    `json:"policies"`
	MappingError string `json:"mappingError"`
}

// policyStatus reports the policy sources for /debug/status (nil: none).
func (s *sources) policyStatus(c *inputs.Combiner) func() any {
	intentions := func() intentionsStatus {
		st := c.Status().Intentions
		return intentionsStatus{IntentionsStatus: s.intentions.Status(), Policies: st.Policies, MappingError: st.MappingError}
	}
	switch {
	case s.policies != nil && s.intentions != nil:
		return func() any { return map[string]any{"dir": s.policies.Status(), "consulIntentions": intentions()} }
	case s.policies != nil:
		return func() any { return s.policies.Status() }
	case s.intentions != nil:
		return func() any { return map[string]any{"consulIntentions": intentions()} }
	}
	return nil
}
