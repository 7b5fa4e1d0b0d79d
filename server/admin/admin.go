// Package admin serves meshd's admin HTTP API: health and liveness,
// readiness, metrics, status and config dumps, the CA's status and
// rotations, forced mTLS migrations, and profiling.
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"sort"
	"time"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshd/meshd/internal/metrics"
	"github.com/meshd/meshd/server/tracker"
	"github.com/meshd/meshd/snapshot"
	"github.com/meshd/meshd/xds"
)

// Admin serves meshd's operator endpoints.
type Admin struct {
	Publisher *snapshot.Publisher
	Tracker   *tracker.Tracker
	Metrics   *metrics.Metrics
	Logger    *slog.Logger
	// CatalogStatus, when set, reports the discovery sources' state.
	CatalogStatus func() any
	// PolicyStatus, when set, reports the policy sources' state.
	PolicyStatus func() any
	// CA, when set, serves /ca/status and the rotation endpoints
	// (auth_admin.go); OnCAChange is called after a rotation starts so the
	// new bundle is pushed at once.
	CA         CAAdmin
	OnCAChange func()
	// Liveness, when set, makes /healthz fail while meshd is wedged
	// (liveness.go); without it /healthz only says the process answers.
	Liveness *Liveness
	// Routes add endpoints other packages serve (telemetry's /telemetry/).
	Routes []func(*http.ServeMux)
	// TrustDomain names the proxies' identities in /proxies.
	TrustDomain string
	// Access, when set, guards every endpoint but health, readiness and
	// metrics (access.go). meshd always sets it; tests of handlers may not.
	Access *Access
}

// Handler returns the admin HTTP mux, behind Access.
func (a *Admin) Handler() http.Handler {
	mux := a.mux()
	if a.Access == nil {
		return mux
	}
	return a.Access.Wrap(mux)
}

func (a *Admin) mux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", a.Liveness.handler)
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !a.Publisher.Ready() {
			http.Error(w, "not ready: no catalog published yet", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	// Uncompressed: meshd's metrics are some 40 KB, and each gzip writer
	// promhttp pools between scrapes holds about 650 KB of compression
	// tables, which regular scraping keeps alive for good.
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.Metrics.Registry, promhttp.HandlerOpts{DisableCompression: true}))
	mux.HandleFunc("GET /debug/config_dump", a.configDump)
	mux.HandleFunc("GET /debug/status", a.status)
	// Every proxy's sync state (meshctl status; proxies.go).
	mux.HandleFunc("GET /proxies", a.proxies)
	mux.HandleFunc("GET /proxies/{id}", a.proxies)
	// What a proxy's authorization decides (meshctl authz check,
	// describe; authz.go).
	mux.HandleFunc("GET /authz/check", a.authzCheck)
	mux.HandleFunc("GET /describe", a.describe)
	// Completes an overdue mTLS migration without the ACKs it waits for.
	mux.HandleFunc("POST /migrations/force", a.forceMigration)
	a.registerCA(mux)
	for _, r := range a.Routes {
		r(mux)
	}
	// Go's profiler, for profile-driven performance work (docs/performance.md);
	// behind the admin token like everything but health and metrics.
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	// A full collection and the heap right after it (admin_gc.go).
	mux.HandleFunc("POST /debug/gc", a.gc)
	return mux
}

func (a *Admin) status(w http.ResponseWriter, _ *http.Request) {
	type proxy struct {
		snapshot.ProxyStatus
		XDS *tracker.NodeStatus `json:"xds,omitempty"`
	}
	var out struct {
		Ready   bool `json:"ready"`
		Catalog any  `json:"catalog,omitempty"`
		Policy  any  `json:"policy,omitempty"`
		// Migrations are mTLS mode changes waiting for proxies to ACK.
		Migrations []snapshot.Transition `json:"migrations,omitempty"`
		Proxies    []proxy               `json:"proxies"`
		Unknown    []tracker.NodeStatus  `json:"unknownNodes,omitempty"`
	}
	out.Ready = a.Publisher.Ready()
	if a.CatalogStatus != nil {
		out.Catalog = a.CatalogStatus()
	}
	if a.PolicyStatus != nil {
		out.Policy = a.PolicyStatus()
	}
	out.Migrations = a.Publisher.Transitions()
	nodes := map[string]tracker.NodeStatus{}
	for _, n := range a.Tracker.Status() {
		nodes[n.ID] = n
	}
	for _, ps := range a.Publisher.Status() {
		p := proxy{ProxyStatus: ps}
		if n, ok := nodes[ps.ID]; ok {
			p.XDS = &n
			delete(nodes, ps.ID)
		}
		out.Proxies = append(out.Proxies, p)
	}
	for _, n := range nodes {
		out.Unknown = append(out.Unknown, n)
	}
	sort.Slice(out.Unknown, func(i, j int) bool { return out.Unknown[i].ID < out.Unknown[j].ID })
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(out)
}

// forceMigration completes the pending mTLS migration of ?proxy= at once
// (snapshot.Publisher.ForceMigration): the operator's way out of a step
// that waits for a proxy that will never ACK. It answers with the
// migrations still in progress.
func (a *Admin) forceMigration(w http.ResponseWriter, r *http.Request) {
	id := r.URL.Query().Get("proxy")
	if id == "" {
		http.Error(w, "missing ?proxy=<node-id>; /debug/status lists the migrations in progress", http.StatusBadRequest)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	err := a.Publisher.ForceMigration(ctx, id)
	switch {
	case errors.Is(err, snapshot.ErrNoMigration):
		http.Error(w, fmt.Sprintf("proxy %q: %v; /debug/status lists the migrations in progress", id, err), http.StatusNotFound)
		return
	case err != nil:
		http.Error(w, fmt.Sprintf("proxy %q: the publisher did not apply the forced migration: %v", id, err), http.StatusServiceUnavailable)
		return
	}
	a.Logger.Warn("mTLS migration forced through the admin API", "proxy", id, "remote", r.RemoteAddr)
	writeJSON(w, http.StatusOK, map[string]any{"forced": id, "migrations": a.Publisher.Transitions()})
}

// configDump renders one proxy's current resources in the shape of Envoy's
// /config_dump, with private keys redacted.
func (a *Admin) configDump(w http.ResponseWriter, r *http.Request) {
	id := r.URL.Query().Get("proxy")
	if id == "" {
		http.Error(w, "missing ?proxy=<node-id>; /debug/status lists the proxies", http.StatusBadRequest)
		return
	}
	snap := a.Publisher.Snapshot(id)
	if snap == nil {
		http.Error(w, fmt.Sprintf("no snapshot for proxy %q; /debug/status lists the proxies", id), http.StatusNotFound)
		return
	}
	dump, err := ConfigDump(snap)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	b, err := protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(dump)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(b)
}

// ConfigDump converts a snapshot into Envoy's config-dump message. Secrets are
// passed through xds.Redact so a dump never carries key material.
func ConfigDump(snap cachev3.ResourceSnapshot) (*adminv3.ConfigDump, error) {
	sorted := func(typ string) ([]string, map[string]proto.Message, string) {
		res := snap.GetResources(typ)
		names := make([]string, 0, len(res))
		msgs := make(map[string]proto.Message, len(res))
		for n, r := range res {
			names = append(names, n)
			msgs[n] = r
		}
		sort.Strings(names)
		return names, msgs, snap.GetVersion(typ)
	}
	var errOut error
	pack := func(m proto.Message) *anypb.Any {
		a, err := anypb.New(m)
		if err != nil && errOut == nil {
			errOut = err
		}
		return a
	}
	l := &adminv3.ListenersConfigDump{}
	names, msgs, v := sorted(resourcev3.ListenerType)
	l.VersionInfo = v
	for _, n := range names {
		l.DynamicListeners = append(l.DynamicListeners, &adminv3.ListenersConfigDump_DynamicListener{
			Name: n, ActiveState: &adminv3.ListenersConfigDump_DynamicListenerState{VersionInfo: v, Listener: pack(msgs[n])},
		})
	}
	c := &adminv3.ClustersConfigDump{}
	names, msgs, v = sorted(resourcev3.ClusterType)
	c.VersionInfo = v
	for _, n := range names {
		c.DynamicActiveClusters = append(c.DynamicActiveClusters, &adminv3.ClustersConfigDump_DynamicCluster{VersionInfo: v, Cluster: pack(msgs[n])})
	}
	rt := &adminv3.RoutesConfigDump{}
	names, msgs, v = sorted(resourcev3.RouteType)
	for _, n := range names {
		rt.DynamicRouteConfigs = append(rt.DynamicRouteConfigs, &adminv3.RoutesConfigDump_DynamicRouteConfig{VersionInfo: v, RouteConfig: pack(msgs[n])})
	}
	e := &adminv3.EndpointsConfigDump{}
	names, msgs, v = sorted(resourcev3.EndpointType)
	for _, n := range names {
		e.DynamicEndpointConfigs = append(e.DynamicEndpointConfigs, &adminv3.EndpointsConfigDump_DynamicEndpointConfig{VersionInfo: v, EndpointConfig: pack(msgs[n])})
	}
	s := &adminv3.SecretsConfigDump{}
	names, msgs, v = sorted(resourcev3.SecretType)
	for _, n := range names {
		s.DynamicActiveSecrets = append(s.DynamicActiveSecrets, &adminv3.SecretsConfigDump_DynamicSecret{Name: n, VersionInfo: v, Secret: pack(xds.Redact(msgs[n]))})
	}
	dump := &adminv3.ConfigDump{Configs: []*anypb.Any{pack(l), pack(c), pack(rt), pack(e), pack(s)}}
	return dump, errOut
}
