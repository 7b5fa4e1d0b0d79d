package soak

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/mesh"
)

func parseStatus(t *testing.T, s string) *meshdStatus {
	t.Helper()
	var st meshdStatus
	if err := json.Unmarshal([]byte(s), &st); err != nil {
		t.Fatal(err)
	}
	return &st
}

func TestCheckStatus(t *testing.T) {
	st := parseStatus(t, `{
  "ready": true,
  "catalog": {"sha256": "c1", "lastError": ""},
  "proxies": [
    {"id": "api-0.default", "versions": {"Listener": "l1", "Secret": "s2"},
     "xds": {"id": "api-0.default", "connected": true, "streams": 1, "types": {
       "Listener": {"sent": "l1", "acked": "l1"},
       "Secret": {"sent": "s1", "acked": "s1"}}}},
    {"id": "web.default", "versions": {"Cluster": "c2"},
     "xds": {"id": "web.default", "connected": true, "streams": 1, "types": {
       "Cluster": {"sent": "c2", "acked": "c1"}}}},
    {"id": "proxy-00001", "versions": {"Cluster": "x"}},
    {"id": "proxy-00002", "versions": {"Cluster": "y"}, "xds": {"connected": true, "types": {"Cluster": {"sent": "y", "acked": "y"}}}}
  ],
  "migrations": [{"proxy": "db-0.default", "from": "STRICT", "to": "DISABLE", "phase": "callers-moved", "waitingFor": "callers to ACK"}]
}`)
	c := checkStatus(st, []string{"api-0.default", "web.default"}, []string{"proxy-00001", "proxy-00002"})
	if len(c.Faults) != 0 {
		t.Errorf("faults: %v", c.Faults)
	}
	if c.Connected != 3 {
		t.Errorf("connected %d, want 3", c.Connected)
	}
	want := map[string]string{"api-0.default Secret": "s2", "web.default Cluster": "c2"}
	if len(c.Lagging) != 2 || c.Lagging["api-0.default Secret"] != "s2" || c.Lagging["web.default Cluster"] != "c2" {
		t.Errorf("lagging %v, want %v", c.Lagging, want)
	}
	if !c.Idle["api-0.default Secret"] || c.Idle["web.default Cluster"] {
		t.Errorf("idle %v: want only api-0's Secret (nothing in flight)", c.Idle)
	}
	joined := strings.Join(c.Pending, "\n")
	for _, w := range []string{"migration of db-0.default", "1 fleet proxies not connected, e.g. proxy-00001", "web.default has not ACKed Cluster c2"} {
		if !strings.Contains(joined, w) {
			t.Errorf("pending lacks %q:\n%s", w, joined)
		}
	}
	// The idle Secret lag, once known to be a dropped subscription, is
	// gone from every list.
	c.dropResolved(map[string]bool{"api-0.default Secret": true})
	if _, ok := c.Lagging["api-0.default Secret"]; ok || strings.Contains(strings.Join(c.Pending, "\n"), "api-0.default has not ACKed") {
		t.Errorf("resolved lag still listed: %v %v", c.Lagging, c.Pending)
	}
}

func TestCheckStatusFaults(t *testing.T) {
	st := parseStatus(t, `{
  "ready": true,
  "policy": {"lastError": "soak.yaml: line 3: bad"},
  "proxies": [
    {"id": "api-0.default", "error": "reference to missing cluster", "versions": {"Listener": "l1"},
     "xds": {"connected": true, "types": {"Listener": {"sent": "l1", "acked": "l0", "nacked": "l1", "nackError": "bind failed"}}}}
  ],
  "migrations": [{"proxy": "db-0.default", "overdue": true}]
}`)
	c := checkStatus(st, []string{"api-0.default", "web.default"}, nil)
	joined := strings.Join(c.Faults, "\n")
	for _, w := range []string{"policy directory refused", "could not be rendered", "NACK: api-0.default rejected Listener", "overdue migration"} {
		if !strings.Contains(joined, w) {
			t.Errorf("faults lack %q:\n%s", w, joined)
		}
	}
	// A real sidecar without its stream is reconnecting (meshd's
	// --xds-max-connection-age ends streams on purpose): pending, and
	// bounded by the watchdog, not a fault at once.
	if strings.Contains(joined, "web.default") {
		t.Errorf("a disconnected real sidecar is a fault:\n%s", joined)
	}
	if !slices.Equal(c.Disconnected, []string{"web.default"}) || !strings.Contains(strings.Join(c.Pending, "\n"), "real sidecar web.default has no xDS stream") {
		t.Errorf("disconnected %v, pending %v: want web.default in both", c.Disconnected, c.Pending)
	}
}

func TestGoneTracker(t *testing.T) {
	g := newGoneTracker(10 * time.Second)
	t0 := time.Now()
	if l := g.observe([]string{"web.default"}, t0); len(l) != 0 {
		t.Fatalf("too long at once: %v", l)
	}
	if l := g.observe([]string{"web.default"}, t0.Add(9*time.Second)); len(l) != 0 {
		t.Fatalf("too long within the bound: %v", l)
	}
	// Reconnected, then gone again: a fresh start.
	g.observe(nil, t0.Add(10*time.Second))
	if l := g.observe([]string{"web.default"}, t0.Add(15*time.Second)); len(l) != 0 {
		t.Fatalf("too long after reconnecting: %v", l)
	}
	if l := g.observe([]string{"web.default"}, t0.Add(26*time.Second)); len(l) != 1 || !strings.Contains(l[0], "web.default has had no xDS stream for 11s") {
		t.Fatalf("not too long past the bound: %v", l)
	}
}

func TestLagTracker(t *testing.T) {
	l := newLagTracker(10 * time.Second)
	t0 := time.Now()
	if s := l.observe(map[string]string{"p Listener": "v1"}, t0); len(s) != 0 {
		t.Fatalf("stuck at once: %v", s)
	}
	// A new version resets the clock: meshd is publishing, the proxy
	// has not fallen behind one version for long.
	if s := l.observe(map[string]string{"p Listener": "v2"}, t0.Add(8*time.Second)); len(s) != 0 {
		t.Fatalf("stuck after a new version: %v", s)
	}
	if s := l.observe(map[string]string{"p Listener": "v2"}, t0.Add(17*time.Second)); len(s) != 0 {
		t.Fatalf("stuck within the bound: %v", s)
	}
	if s := l.observe(map[string]string{"p Listener": "v2"}, t0.Add(19*time.Second)); len(s) != 1 || !strings.Contains(s[0], "p Listener: version v2") {
		t.Fatalf("not stuck past the bound: %v", s)
	}
	// Caught up, then behind again: a fresh start.
	l.observe(map[string]string{}, t0.Add(20*time.Second))
	if s := l.observe(map[string]string{"p Listener": "v2"}, t0.Add(21*time.Second)); len(s) != 0 {
		t.Fatalf("stuck after catching up: %v", s)
	}
}

// serverDump is a meshd config dump of a server replica with the given
// rules in its route and the given stat prefixes in its listener.
func serverDump(rules []string, prefixes ...string) []byte {
	var chains []string
	for _, p := range prefixes {
		chains = append(chains, `{"statPrefix": "`+p+`.api.default"}`)
	}
	var pol []string
	for _, r := range rules {
		pol = append(pol, `"`+r+`": {}`)
	}
	return []byte(`{"configs": [
  {"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump", "dynamicListeners": [` + strings.Join(chains, ",") + `]},
  {"@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump", "dynamicRouteConfigs": [{"policies": {` + strings.Join(pol, ",") + `}}]}
]}`)
}

func TestCheckServerDump(t *testing.T) {
	s := InitialState()
	s.WorkloadModes["api"] = mesh.MTLSStrict
	s.Authz = []Authz{{Name: "soak-1", Deny: true, Target: "api", Callers: []string{"web"}}, {Name: "soak-2", Deny: true, Callers: []string{"ops"}}}
	ok := serverDump([]string{"default/soak-1/rule-0", "meshd-system/soak-2/rule-0"}, "inbound_mtls")
	if p := checkServerDump(ok, &s, "api", 0); len(p) != 0 {
		t.Errorf("a matching dump: %v", p)
	}
	cases := []struct {
		name string
		dump []byte
		want string
	}{
		{"rule missing", serverDump([]string{"meshd-system/soak-2/rule-0"}, "inbound_mtls"), "lacks rule default/soak-1/rule-0"},
		{"rule left over", serverDump([]string{"default/soak-1/rule-0", "meshd-system/soak-2/rule-0", "default/soak-9/rule-0"}, "inbound_mtls"), "still has rule default/soak-9/rule-0"},
		{"permissive listener", serverDump([]string{"default/soak-1/rule-0", "meshd-system/soak-2/rule-0"}, "inbound_mtls", "inbound_plaintext"), "inbound listener is not STRICT"},
	}
	for _, c := range cases {
		p := checkServerDump(c.dump, &s, "api", 0)
		if !slices.ContainsFunc(p, func(x string) bool { return strings.Contains(x, c.want) }) {
			t.Errorf("%s: problems %v, want %q", c.name, p, c.want)
		}
	}
	// The toggled replica out of the catalog: no labels, so only the
	// mesh-wide rule and the mesh-wide mode (the default, PERMISSIVE).
	s.ReplicaIn = false
	out := serverDump([]string{"meshd-system/soak-2/rule-0"}, "inbound_mtls", "inbound_plaintext")
	if p := checkServerDump(out, &s, "api", 1); len(p) != 0 {
		t.Errorf("unlabeled replica: %v", p)
	}
}

func TestEndpointsOf(t *testing.T) {
	raw := []byte(`{"configs": [
  {"@type": "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump", "dynamicEndpointConfigs": [
    {"endpointConfig": {"clusterName": "outbound|api.default", "endpoints": [{"lbEndpoints": [
      {"endpoint": {"address": {"socketAddress": {"address": "127.0.0.1", "portValue": 20001}}}, "healthStatus": "HEALTHY"},
      {"endpoint": {"address": {"socketAddress": {"address": "127.0.0.1", "portValue": 20002}}}, "healthStatus": "UNHEALTHY"}]}]}},
    {"endpointConfig": {"clusterName": "outbound|db.default", "endpoints": [{"lbEndpoints": [
      {"endpoint": {"address": {"socketAddress": {"address": "127.0.0.1", "portValue": 20003}}}}]}]}}]}
]}`)
	eps, err := endpointsOf(raw, "outbound|api.default")
	if err != nil {
		t.Fatal(err)
	}
	if len(eps) != 2 || eps["127.0.0.1:20001"] != "HEALTHY" || eps["127.0.0.1:20002"] != "UNHEALTHY" {
		t.Errorf("endpoints %v", eps)
	}
}
