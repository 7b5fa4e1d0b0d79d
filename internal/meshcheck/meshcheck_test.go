package meshcheck

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/sds"
	"github.com/meshd/meshd/server/admin"
	"github.com/meshd/meshd/server/tracker"
	"github.com/meshd/meshd/snapshot"
)

var now = time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)

func healthy() Input {
	root := sds.CertInfo{Subject: "root g1", SHA256: "aaaa", NotBefore: now.AddDate(-1, 0, 0), NotAfter: now.AddDate(9, 0, 0), Generation: "g1"}
	return Input{
		Address: "http://127.0.0.1:15014",
		CA: &sds.Status{
			Signing:      sds.CertInfo{Subject: "intermediate g1", NotBefore: now.AddDate(-1, 0, 0), NotAfter: now.AddDate(1, 0, 0), Generation: "g1"},
			SigningRoot:  root,
			TrustedRoots: []sds.CertInfo{root},
			Leaves:       []sds.CertInfo{{SPIFFEID: "spiffe://cluster.local/ns/default/sa/web", NotBefore: now.Add(-time.Hour), NotAfter: now.Add(23 * time.Hour)}},
		},
		Proxies: &admin.ProxiesReport{Proxies: []admin.ProxyState{
			{ID: "web.default", InCatalog: true, Connected: true, Flavor: "envoy", State: admin.StateSynced,
				Node:  tracker.NodeMeta{DrainTimeS: "5", DrainStrategy: "immediate"},
				Types: []admin.TypeSync{{Short: "LDS", State: admin.StateSynced}, {Short: "CDS", State: admin.StateStale, StaleSeconds: 1}}},
			{ID: "db.default", InCatalog: true, Flavor: "envoy", State: admin.StateDisconnected},
		}},
	}
}

func failedNames(rs []Result) []string {
	var out []string
	for _, r := range rs {
		if !r.OK {
			out = append(out, r.Name)
		}
	}
	return out
}

func TestHealthyMeshPasses(t *testing.T) {
	rs := Evaluate(healthy(), Options{Now: func() time.Time { return now }})
	if Failed(rs) || len(rs) != 10 {
		t.Fatalf("failed %v of %d checks", failedNames(rs), len(rs))
	}
	for _, r := range rs {
		if r.Detail == "" {
			t.Errorf("check %q says nothing", r.Name)
		}
	}
}

func TestEachProblemFailsItsCheck(t *testing.T) {
	for _, c := range []struct {
		name    string
		seed    func(*Input)
		failing string
		problem string
	}{
		{"not ready", func(in *Input) { in.Ready = errors.New("503") }, "meshd is reachable", "/readyz fails"},
		{"wedged", func(in *Input) { in.Health = errors.New("503") }, "meshd is reachable", "/healthz fails"},
		{"expiring intermediate", func(in *Input) { in.CA.Signing.NotAfter = now.Add(47 * time.Hour) }, "CA certificates stay valid", "signing intermediate intermediate g1 expires"},
		{"expired intermediate", func(in *Input) { in.CA.Signing.NotAfter = now.Add(-time.Hour) }, "the CA chain is valid|CA certificates stay valid", "signing intermediate intermediate g1 is valid"},
		{"root not trusted", func(in *Input) { in.CA.TrustedRoots[0].SHA256 = "bbbb" }, "the CA chain is valid", "not in the trust bundle"},
		{"leaf not renewed", func(in *Input) { in.CA.Leaves[0].NotAfter = now.Add(10 * time.Minute) }, "workload certificates are renewed", "spiffe://cluster.local/ns/default/sa/web expires"},
		{"stale proxy", func(in *Input) { in.Proxies.Proxies[0].Types[1].StaleSeconds = 45 }, "every connected proxy has ACKed", "web.default has not ACKed CDS"},
		{"NACK", func(in *Input) {
			in.Proxies.Proxies[0].Types[0] = admin.TypeSync{Short: "LDS", State: admin.StateNacked, Nacked: "v9", NackError: "Proto constraint\nvalidation failed"}
		}, "no proxy rejected", "web.default rejected LDS version v9: Proto constraint validation failed"},
		{"overdue migration", func(in *Input) {
			in.Proxies.Migrations = []snapshot.Transition{{Proxy: "api.default", From: "DISABLE", To: "STRICT", Overdue: true, PendingSeconds: 90, WaitingFor: "callers to ACK"}}
		}, "no mTLS migration is stuck", "api.default DISABLE→STRICT has waited 1m30s for callers to ACK"},
		{"unknown node", func(in *Input) {
			in.Proxies.Proxies = append(in.Proxies.Proxies, admin.ProxyState{ID: "ghost", Connected: true, Node: tracker.NodeMeta{UserAgent: "envoy 1.40.0"}})
		}, "every connected proxy is in the catalog", "ghost (envoy 1.40.0) is connected"},
		{"render error", func(in *Input) { in.Proxies.Proxies[1].RenderError = "upstream api not in catalog" }, "every proxy's configuration renders", "db.default: upstream api"},
		{"no drain flags", func(in *Input) {
			in.Proxies.Proxies[0].DrainWarning = "its bootstrap does not record MESHD_DRAIN_TIME_S"
		}, "drain flags", "web.default: its bootstrap does not record"},
	} {
		t.Run(c.name, func(t *testing.T) {
			in := healthy()
			c.seed(&in)
			rs := Evaluate(in, Options{Now: func() time.Time { return now }})
			failed := failedNames(rs)
			want := strings.Split(c.failing, "|")
			if len(failed) != len(want) {
				t.Fatalf("failed checks %v, want only %q", failed, want)
			}
			for i, w := range want {
				if !strings.Contains(failed[i], w) {
					t.Fatalf("failed checks %v, want only %q", failed, want)
				}
			}
			for _, r := range rs {
				if r.OK {
					continue
				}
				if r.Hint == "" {
					t.Errorf("failed check %q gives no hint", r.Name)
				}
				if r.Name == failed[0] && !strings.Contains(strings.Join(append(r.Problems, r.Detail), "\n"), c.problem) {
					t.Errorf("check %q: %q / %q lack %q", r.Name, r.Detail, r.Problems, c.problem)
				}
			}
		})
	}
}

func TestNoProxiesEndpoint(t *testing.T) {
	in := healthy()
	in.Proxies, in.ProxiesErr = nil, errors.New("meshd answered 404")
	rs := Evaluate(in, Options{Now: func() time.Time { return now }})
	if n := len(failedNames(rs)); n != 6 {
		t.Errorf("%d failed, want the 6 proxy checks", n)
	}
}
