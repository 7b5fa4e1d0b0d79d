package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshd/meshd/discovery/consul"
	"github.com/meshd/meshd/discovery/file"
	"github.com/meshd/meshd/internal/metrics"
	"github.com/meshd/meshd/mesh"
)

// catalogSources merges the catalogs of the configured discovery sources.
// A service or proxy defined by two sources is a conflict: the merge is
// refused (logged, counted, visible in /debug/status) and the previous
// merged catalog keeps serving, never a silent override.
type catalogSources struct {
	mu        sync.Mutex
	latest    map[string]*mesh.Catalog // by source: "file", "consul"
	merged    *mesh.Catalog
	lastErr   string
	conflicts uint64
}

func (s *catalogSources) set(source string, c *mesh.Catalog) (*mesh.Catalog, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	next := make(map[string]*mesh.Catalog, len(s.latest)+1)
	for k, v := range s.latest {
		next[k] = v
	}
	next[source] = c
	merged := c // one source: already validated by NewCatalog
	if len(next) > 1 {
		m, err := mesh.Merge(next)
		if err != nil {
			s.conflicts++
			s.lastErr = err.Error()
			return nil, fmt.Errorf("merging catalog sources: %w", err)
		}
		merged = m
	}
	s.latest, s.merged, s.lastErr = next, merged, ""
	return merged, nil
}

func (s *catalogSources) current() *mesh.Catalog {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.merged
}

type mergeStatus struct {
	Error     string `json:"error"`
	Conflicts uint64 `json:"conflicts"`
}

func (s *catalogSources) status() mergeStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	return mergeStatus{s.lastErr, s.conflicts}
}

// startSources creates and runs the discovery sources the flags ask for,
// waits for each to produce its first catalog, and forwards every merged
// update to onUpdate. It returns the sources and a status function for
// /debug/status (the file source's status alone when it is the only one,
// as before Consul existed).
func startSources(ctx context.Context, c *config, log *slog.Logger, m *metrics.Metrics, errc chan<- error, onUpdate func(*mesh.Catalog)) (*catalogSources, func() any, error) {
	srcs := &catalogSources{latest: map[string]*mesh.Catalog{}}
	var fw *file.Watcher
	var cw *consul.Watcher
	if c.catalog != "" {
		w, err := file.NewWatcher(c.catalog, log, file.WithPollInterval(c.pollInterval), file.WithHoldoff(c.catalogHoldoff),
			file.WithMaxSize(int64(c.maxFileSize)))
		if err != nil {
			return nil, nil, fmt.Errorf("catalog: %w", err)
		}
		fw = w
		m.RegisterCatalogSource("file", func() float64 { return float64(fw.Status().Accepted) },
			func() float64 { return float64(fw.Status().Rejected) })
		if _, err := srcs.set("file", fw.Current()); err != nil {
			return nil, nil, err
		}
		go func() { errc <- fw.Run(ctx) }()
	}
	if c.consulAddr != "" {
		w, err := consul.NewWatcher(consul.Options{Address: c.consulAddr, Datacenter: c.consulDC, TokenFile: c.consulTokenFile,
			Stale: c.consulStale, IncludeWarning: c.consulWarning, WaitTime: c.consulWait, Logger: log})
		if err != nil {
			return nil, nil, fmt.Errorf("consul: %w", err)
		}
		cw = w
		go func() { errc <- cw.Run(ctx) }()
		select {
		case <-cw.Synced():
		case <-time.After(c.consulSyncTimeout):
			st := cw.Status()
			return nil, nil, fmt.Errorf("consul at %s gave no catalog within %s (--consul-sync-timeout): last error %q, catalog error %q",
				c.consulAddr, c.consulSyncTimeout, st.LastError, st.CatalogError)
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		}
		m.RegisterCatalogSource("consul", func() float64 { return float64(cw.Status().Accepted) },
			func() float64 { return float64(cw.Status().Rejected) })
		m.RegisterConsul(func() float64 { return cw.Status().SyncAge.Seconds() },
			func() float64 { return float64(cw.Status().Errors) },
			func() float64 { return float64(cw.Status().IndexResets) })
		if _, err := srcs.set("consul", cw.Current()); err != nil {
			return nil, nil, err
		}
	}
	if fw == nil && cw == nil {
		return nil, nil, errors.New("no catalog source: set --catalog or --consul-address")
	}
	var fileUpdates, consulUpdates <-chan *mesh.Catalog
	if fw != nil {
		fileUpdates = fw.Updates()
	}
	if cw != nil {
		consulUpdates = cw.Updates()
	}
	go func() {
		for {
			var source string
			var cat *mesh.Catalog
			select {
			case <-ctx.Done():
				return
			case cat = <-fileUpdates:
				source = "file"
			case cat = <-consulUpdates:
				source = "consul"
			}
			merged, err := srcs.set(source, cat)
			if err != nil {
				log.Warn("catalog update refused; the previous catalog keeps serving", "source", source, "err", err)
				continue
			}
			onUpdate(merged)
		}
	}()
	status := func() any {
		if cw == nil {
			return fw.Status()
		}
		out := map[string]any{"consul": cw.Status(), "merge": srcs.status()}
		if fw != nil {
			out["file"] = fw.Status()
		}
		return out
	}
	return srcs, status, nil
}

// policyCombiner assembles the policy set in force from the policy
// directory (or the defaults) and Consul intentions. Intentions are mapped
// against the current catalog (source service accounts, services denied by
// default), so a catalog change re-maps them too. A mapping error keeps the
// previous intentions in force and is shown in /debug/status.
type policyCombiner struct {
	mu            sync.Mutex
	base          *mesh.PolicySet
	catalog       *mesh.Catalog
	entries       []*api.ServiceIntentionsConfigEntry
	hasIntentions bool
	intentions    []mesh.AuthorizationPolicy
	lastErr       string
	opts          consul.IntentionOptions
	publish       func(*mesh.PolicySet)
	log           *slog.Logger
}

func (pc *policyCombiner) setBase(ps *mesh.PolicySet) {
	pc.mu.Lock()
	pc.base = ps
	pc.recomputeLocked()
}

func (pc *policyCombiner) setCatalog(c *mesh.Catalog) {
	pc.mu.Lock()
	pc.catalog = c
	pc.recomputeLocked()
}

func (pc *policyCombiner) setIntentions(e []*api.ServiceIntentionsConfigEntry) {
	pc.mu.Lock()
	pc.entries, pc.hasIntentions = e, true
	pc.recomputeLocked()
}

// recomputeLocked publishes the combined set; it unlocks pc.mu before
// publishing so the publisher is never called under the lock.
func (pc *policyCombiner) recomputeLocked() {
	if pc.base == nil {
		pc.mu.Unlock()
		return
	}
	if pc.hasIntentions {
		o := pc.opts
		o.Catalog = pc.catalog
		pols, err := consul.MapIntentions(pc.entries, o)
		if err != nil {
			if err.Error() != pc.lastErr {
				pc.log.Warn("consul intentions refused; the previous intentions stay in force", "err", err)
			}
			pc.lastErr = err.Error()
		} else {
			pc.intentions, pc.lastErr = pols, ""
		}
	}
	ps := *pc.base
	ps.Authorizations = append(slices.Clone(pc.base.Authorizations), pc.intentions...)
	pc.mu.Unlock()
	pc.publish(&ps)
}

type intentionsStatus struct {
	consul.IntentionsStatus
	Policies     int    `json:"policies"`
	MappingError string `json:"mappingError"`
}

func (pc *policyCombiner) status(w *consul.IntentionsWatcher) intentionsStatus {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	return intentionsStatus{IntentionsStatus: w.Status(), Policies: len(pc.intentions), MappingError: pc.lastErr}
}

// startIntentions follows Consul's service-intentions config entries.
func startIntentions(ctx context.Context, c *config, log *slog.Logger, errc chan<- error, pc *policyCombiner) (*consul.IntentionsWatcher, error) {
	w, err := consul.NewIntentionsWatcher(consul.Options{Address: c.consulAddr, Datacenter: c.consulDC, TokenFile: c.consulTokenFile,
		Stale: c.consulStale, WaitTime: c.consulWait, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("consul intentions: %w", err)
	}
	go func() { errc <- w.Run(ctx) }()
	select {
	case <-w.Synced():
	case <-time.After(c.consulSyncTimeout):
		return nil, fmt.Errorf("consul at %s gave no intentions within %s (--consul-sync-timeout): %s", c.consulAddr, c.consulSyncTimeout, w.Status().LastError)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	pc.setIntentions(w.Current())
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case e := <-w.Updates():
				pc.setIntentions(e)
			}
		}
	}()
	return w, nil
}
