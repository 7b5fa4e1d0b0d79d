package admin

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/meshd/meshd/internal/metrics"
	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/sds"
	"github.com/meshd/meshd/server/tracker"
	"github.com/meshd/meshd/snapshot"
	"github.com/meshd/meshd/xds"
)

// proxiesFixture publishes web, api and db; web is synced, api NACKed its
// listeners and is behind on clusters, db never connected, and a stranger
// connected with a node id not in the catalog.
func proxiesFixture(t *testing.T) (*Admin, *tracker.Tracker, *snapshot.View) {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ca, err := sds.LoadOrCreate(sds.Options{DataDir: t.TempDir(), TrustDomain: "cluster.local", Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	cat, err := mesh.NewCatalog([]mesh.Service{
		{Name: "web", Protocol: mesh.ProtocolHTTP, Endpoints: []mesh.Endpoint{{Address: "10.0.0.1", Port: 15001}}},
		{Name: "api", Protocol: mesh.ProtocolHTTP, Endpoints: []mesh.Endpoint{{Address: "10.0.0.2", Port: 15001}}},
		{Name: "db", Protocol: mesh.ProtocolTCP, Endpoints: []mesh.Endpoint{{Address: "10.0.0.3", Port: 15001}}},
	}, []mesh.Proxy{
		{Service: "web", Address: "10.0.0.1", PublicPort: 15001, AppPort: 8080, Upstreams: []mesh.Upstream{{Service: "api", LocalPort: 9001}}},
		{Service: "api", Address: "10.0.0.2", PublicPort: 15001, AppPort: 8080},
		{Service: "db", Address: "10.0.0.3", PublicPort: 15001, AppPort: 5432},
	})
	if err != nil {
		t.Fatal(err)
	}
	m := metrics.New()
	pub := snapshot.New(cachev3.NewSnapshotCache(false, cachev3.IDHash{}, nil), ca, snapshot.Options{Translate: xds.Options{TrustDomain: "cluster.local"}, Metrics: m, Logger: log})
	pub.Update(snapshot.Update{Catalog: cat})
	if _, err := pub.Publish(); err != nil {
		t.Fatal(err)
	}
	v := pub.View()
	tr := tracker.NewTracker(log, m, func(id string) bool { return cat.Proxy(id) != nil })
	meta, _ := structpb.NewStruct(map[string]any{xds.NodeMetaFlavor: "envoy", xds.NodeMetaDrainTimeS: 5, xds.NodeMetaDrainStrategy: "immediate"})
	versions := map[string]map[string]string{}
	for _, ps := range v.Status() {
		versions[ps.ID] = ps.Versions
	}
	webK, apiK, strangerK := tracker.StreamKey{ID: 1}, tracker.StreamKey{ID: 2}, tracker.StreamKey{ID: 3}
	tr.Identified(webK, &corev3.Node{Id: "web.default", Metadata: meta, UserAgentName: "envoy"})
	tr.Identified(apiK, &corev3.Node{Id: "api.default", Metadata: meta, UserAgentName: "envoy"})
	tr.Identified(strangerK, &corev3.Node{Id: "stranger", UserAgentName: "envoy"})
	for typ, url := range map[string]string{"Listener": resourcev3.ListenerType, "RouteConfiguration": resourcev3.RouteType,
		"Cluster": resourcev3.ClusterType, "ClusterLoadAssignment": resourcev3.EndpointType, "Secret": resourcev3.SecretType} {
		tr.Sent(webK, url, "n1", versions["web.default"][typ], 10, nil)
		tr.Acked(webK, url, "n1", versions["web.default"][typ])
	}
	tr.Sent(apiK, resourcev3.ListenerType, "n1", versions["api.default"]["Listener"], 10, nil)
	tr.Nacked(apiK, resourcev3.ListenerType, "n1", versions["api.default"]["Listener"], "Proto constraint validation failed")
	tr.Sent(apiK, resourcev3.ClusterType, "n2", "old-version", 10, nil)
	tr.Acked(apiK, resourcev3.ClusterType, "n2", "old-version")
	return &Admin{Publisher: pub, Tracker: tr, Metrics: m, Logger: log, TrustDomain: "cluster.local"}, tr, v
}

func TestProxyStates(t *testing.T) {
	a, tr, v := proxiesFixture(t)
	now := time.Now().Add(10 * time.Second)
	rep := proxyStates(v, tr.Status(), "cluster.local", now)
	got := map[string]ProxyState{}
	for _, p := range rep.Proxies {
		got[p.ID] = p
	}
	if len(got) != 4 {
		t.Fatalf("proxies %v, want web, api, db and the stranger", rep.Proxies)
	}
	web := got["web.default"]
	if web.State != StateSynced || !web.Connected || web.ConnectedSince.IsZero() || web.Identity != "spiffe://cluster.local/ns/default/sa/web" ||
		web.Flavor != "envoy" || web.Service != "web" || web.Namespace != "default" || !web.InCatalog ||
		web.Node.DrainTimeS != "5" || web.Node.DrainStrategy != "immediate" || len(web.Types) != 5 {
		t.Errorf("web %+v", web)
	}
	for i, want := range []string{"LDS", "RDS", "CDS", "EDS", "SDS"} {
		if web.Types[i].Short != want || web.Types[i].State != StateSynced || web.Types[i].Version == "" {
			t.Errorf("web type %d: %+v, want %s SYNCED", i, web.Types[i], want)
		}
	}
	api := got["api.default"]
	types := map[string]TypeSync{}
	for _, ts := range api.Types {
		types[ts.Short] = ts
	}
	if api.State != StateNacked || types["LDS"].State != StateNacked || !strings.Contains(types["LDS"].NackError, "constraint") ||
		types["CDS"].State != StateStale || types["CDS"].StaleSeconds < 9 || types["RDS"].State != StateNotSent {
		t.Errorf("api %+v", api)
	}
	if db := got["db.default"]; db.State != StateDisconnected || db.Connected || len(db.Types) == 0 || db.Types[0].State != StateNotSent {
		t.Errorf("db %+v", db)
	}
	if s := got["stranger"]; s.InCatalog || !s.Connected || s.State != StateNotSent {
		t.Errorf("stranger %+v", s)
	}

	// The HTTP endpoints and the collector say the same.
	srv := httptest.NewServer(a.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/proxies/api.default")
	if err != nil {
		t.Fatal(err)
	}
	var one ProxyState
	json.NewDecoder(resp.Body).Decode(&one)
	resp.Body.Close()
	if one.ID != "api.default" || one.State != StateNacked {
		t.Errorf("GET /proxies/api.default: %+v", one)
	}
	if resp, _ := http.Get(srv.URL + "/proxies/nobody"); resp.StatusCode != http.StatusNotFound {
		t.Errorf("unknown proxy: %d", resp.StatusCode)
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewSyncCollector(a))
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP meshd_proxies Proxies of the catalog by sync state: synced, stale (has not ACKed what meshd serves), nacked (rejected it), not_sent, disconnected.
# TYPE meshd_proxies gauge
meshd_proxies{state="disconnected"} 1
meshd_proxies{state="nacked"} 1
meshd_proxies{state="not_sent"} 0
meshd_proxies{state="stale"} 0
meshd_proxies{state="synced"} 1
`), "meshd_proxies"); err != nil {
		t.Error(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "meshd_proxy_stale_seconds" && mf.GetMetric()[0].GetGauge().GetValue() <= 0 {
			t.Errorf("meshd_proxy_stale_seconds = %v, want api's clusters' wait", mf.GetMetric()[0].GetGauge().GetValue())
		}
	}
}
