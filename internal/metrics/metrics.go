// Package metrics defines every Prometheus metric meshd exports, in one
// place, so names and labels stay consistent and documented together
// (docs/operations.md lists them).
package metrics

import (
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics is the set of meshd's collectors.
type Metrics struct {
	Registry *prometheus.Registry

	ConnectedProxies *prometheus.GaugeVec   // flavor
	Pushes           *prometheus.CounterVec // type
	PushBytes        *prometheus.CounterVec // type
	ACKs             *prometheus.CounterVec // type
	NACKs            *prometheus.CounterVec // type

	SnapshotBuilds        prometheus.Counter
	SnapshotBuildDuration prometheus.Histogram
	ProxiesRendered       prometheus.Counter
	ProxiesSkipped        prometheus.Counter // inputs unchanged: not re-rendered
	PublishesUnchanged    prometheus.Counter // re-rendered but identical: not pushed
	SnapshotErrors        prometheus.Counter

	// MigrationsPending counts mTLS migrations in progress;
	// MigrationWaitingSince is when the oldest step still waiting for ACKs
	// began (Unix nanoseconds, 0: none), exported as its age at scrape time
	// (meshd_mtls_migration_pending_seconds).
	MigrationsPending     prometheus.Gauge
	MigrationWaitingSince atomic.Int64
}

// XDSTypes are the short type names of the type label.
var XDSTypes = []string{"Listener", "Cluster", "RouteConfiguration", "ClusterLoadAssignment", "Secret"}

// New creates and registers meshd's metrics on a fresh registry (plus the
// standard Go and process collectors).
func New() *Metrics {
	r := prometheus.NewRegistry()
	m := &Metrics{
		Registry: r,
		ConnectedProxies: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "meshd_connected_proxies", Help: "xDS streams currently open, by proxy flavor (envoy, grpc, unknown).",
		}, []string{"flavor"}),
		Pushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshd_xds_pushes_total", Help: "xDS responses sent, by resource type.",
		}, []string{"type"}),
		PushBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshd_xds_push_resource_bytes_total", Help: "Serialized resource bytes sent in xDS responses, by resource type.",
		}, []string{"type"}),
		ACKs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshd_xds_acks_total", Help: "xDS responses acknowledged by proxies, by resource type.",
		}, []string{"type"}),
		NACKs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshd_xds_nacks_total", Help: "xDS responses rejected by proxies (NACK), by resource type. See /debug/status for the error details.",
		}, []string{"type"}),
		SnapshotBuilds: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meshd_snapshot_builds_total", Help: "Catalog generations rendered into per-proxy snapshots.",
		}),
		SnapshotBuildDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "meshd_snapshot_build_duration_seconds", Help: "Time to render and publish one catalog generation for all affected proxies.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		ProxiesRendered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meshd_proxies_rendered_total", Help: "Per-proxy renders (a proxy whose inputs changed).",
		}),
		ProxiesSkipped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meshd_proxies_skipped_total", Help: "Per-proxy renders skipped because none of the proxy's inputs changed.",
		}),
		PublishesUnchanged: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meshd_publishes_unchanged_total", Help: "Proxies re-rendered whose resources came out identical, so nothing was pushed.",
		}),
		SnapshotErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meshd_snapshot_errors_total", Help: "Per-proxy snapshots rejected by validation or reference checks; the last good snapshot keeps serving.",
		}),
		MigrationsPending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meshd_mtls_migrations_in_progress", Help: "mTLS mode changes in progress (workloads whose rendered modes have not reached their policy's yet).",
		}),
	}
	// Every series an alert or dashboard reads starts at 0: Prometheus's
	// increase() and rate() cannot see a counter's first step from absent
	// to 1 (the first NACK would never fire MeshdProxyRejectedConfiguration
	// in examples/monitoring).
	for _, t := range XDSTypes {
		m.Pushes.WithLabelValues(t)
		m.PushBytes.WithLabelValues(t)
		m.ACKs.WithLabelValues(t)
		m.NACKs.WithLabelValues(t)
	}
	for _, f := range []string{"envoy", "grpc", "unknown"} {
		m.ConnectedProxies.WithLabelValues(f)
	}
	r.MustRegister(m.ConnectedProxies, m.Pushes, m.PushBytes, m.ACKs, m.NACKs, m.SnapshotBuilds,
		m.SnapshotBuildDuration, m.ProxiesRendered, m.ProxiesSkipped, m.PublishesUnchanged,
		m.SnapshotErrors, m.MigrationsPending,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "meshd_mtls_migration_pending_seconds",
			Help: "Age of the oldest mTLS migration step still waiting for proxies to ACK (0: none waiting). Past --mtls-migration-overdue it is reported in the log and /debug/status and can be forced (POST /migrations/force).",
		}, func() float64 {
			if since := m.MigrationWaitingSince.Load(); since != 0 {
				return time.Since(time.Unix(0, since)).Seconds()
			}
			return 0
		}),
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return m
}

// RegisterCatalogSource exports a discovery source's reload counters, read
// from the source itself so the figures cannot drift from its own status.
func (m *Metrics) RegisterCatalogSource(source string, accepted, rejected func() float64) {
	labels := prometheus.Labels{"source": source}
	m.Registry.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "meshd_catalog_reloads_accepted_total", Help: "Catalog reloads accepted, by source.", ConstLabels: labels,
		}, accepted),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "meshd_catalog_reloads_rejected_total", Help: "Catalog reloads rejected (parse or validation errors), by source; the previous catalog keeps serving.", ConstLabels: labels,
		}, rejected),
	)
}

// RegisterPolicySource exports a policy source's reload counters.
func (m *Metrics) RegisterPolicySource(source string, accepted, rejected func() float64) {
	labels := prometheus.Labels{"source": source}
	m.Registry.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "meshd_policy_reloads_accepted_total", Help: "Policy set reloads accepted, by source.", ConstLabels: labels,
		}, accepted),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "meshd_policy_reloads_rejected_total", Help: "Policy set reloads rejected (parse or validation errors), by source; the previous policy set keeps serving.", ConstLabels: labels,
		}, rejected),
	)
}

// RegisterConsul exports the Consul source's health, read from its status.
func (m *Metrics) RegisterConsul(syncAge, errors, indexResets func() float64) {
	m.Registry.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "meshd_consul_sync_age_seconds", Help: "Seconds since the Consul source last had a fresh answer from Consul (0 while in sync); the last good catalog keeps serving meanwhile.",
		}, syncAge),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "meshd_consul_errors_total", Help: "Failed requests to Consul (the watch retries with backoff).",
		}, errors),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "meshd_consul_index_resets_total", Help: "Consul indexes seen going backwards; each forces a full resync.",
		}, indexResets),
	)
}
