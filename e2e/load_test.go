package e2e

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/meshd/meshd/internal/loadgen"
)

// checkLoadResult asserts correctness only (issue 6: timing targets live in
// docs/performance.md, never in tests).
func checkLoadResult(t *testing.T, res *loadgen.Result, wantProxies int, restart bool) {
	t.Helper()
	for _, p := range res.Problems {
		t.Errorf("problem: %s", p)
	}
	if res.Proxies != wantProxies || res.Cold.N != wantProxies || res.Cold.Missing != 0 {
		t.Errorf("cold sync: %d of %d proxies synced (%d missing: %s)", res.Cold.N, wantProxies, res.Cold.Missing, res.Cold.MissingExample)
	}
	kinds := map[string]loadgen.ChurnResult{}
	for _, c := range res.Churn {
		kinds[c.Kind] = c
	}
	for _, k := range loadgen.ChurnKinds {
		c, ok := kinds[k]
		switch {
		case !ok || c.Changes == 0:
			t.Errorf("churn %s was not made", k)
		case k == "noop":
			if c.MeshdPush != 0 || c.Unaffected != 0 {
				t.Errorf("a change that alters no proxy pushed: meshd sent %.0f, proxies received %d", c.MeshdPush, c.Unaffected)
			}
		case c.Affected == 0 || c.Converge.Missing != 0 || c.Converge.N != c.Affected*c.Changes:
			t.Errorf("churn %s: %d of %d×%d deliveries (%d missing: %s)", k, c.Converge.N, c.Changes, c.Affected, c.Converge.Missing, c.Note)
		case c.Unaffected != 0:
			t.Errorf("churn %s pushed %d responses to proxies it does not affect", k, c.Unaffected)
		}
	}
	if res.NACKsSent != 0 {
		t.Errorf("simulated proxies sent %d NACKs", res.NACKsSent)
	}
	if !res.Status.Checked || res.Status.Connected != wantProxies || res.Status.FullyACKed != wantProxies || len(res.Status.NACKed) != 0 {
		t.Errorf("meshd /debug/status: %+v", res.Status)
	}
	if len(res.CrossChecks) == 0 {
		t.Error("no cross-check against meshd's counters was made")
	}
	for _, c := range res.CrossChecks {
		if !c.Agree {
			t.Errorf("cross-check %s: tool %v, independent %v", c.What, c.Tool, c.Other)
		}
	}
	if restart && (res.Reconnect.N != wantProxies || res.Reconnect.Missing != 0) {
		t.Errorf("reconnect storm: %d of %d proxies re-synced", res.Reconnect.N, wantProxies)
	}
}

func loadConfig(t *testing.T) loadgen.Config {
	return loadgen.Config{
		Scenario:       loadgen.Presets["S"],
		StreamsPerConn: 50, BufferSize: 16 << 10, SubscribeSDS: true,
		SyncTimeout: 30 * time.Second, ChurnRounds: 1, ChurnKinds: loadgen.ChurnKinds,
		ChurnTimeout: 15 * time.Second, ChurnSettle: 200 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
}

// TestLoadScenarioS runs scenario S with the tool starting the real meshd
// binary, in both xDS variants, through every phase including the restart.
func TestLoadScenarioS(t *testing.T) {
	for _, delta := range []bool{false, true} {
		name := "sotw"
		if delta {
			name = "delta"
		}
		t.Run(name, func(t *testing.T) {
			cfg := loadConfig(t)
			cfg.Delta = delta
			cfg.MeshdBinary = filepath.Join(binDir, "meshd")
			cfg.WorkDir = t.TempDir()
			cfg.MeshdArgs = []string{"--debounce-holdoff", "20ms", "--debounce-max", "200ms", "--catalog-poll", "1s"}
			cfg.Restart = true
			if !delta {
				cfg.IdleWindow = 10 * time.Second
			}
			res, err := loadgen.Run(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("\n%s", res.Table())
			checkLoadResult(t, res, 100, true)
		})
	}
}

// TestLoadAgainstRunningMeshd drives a meshd the harness started (the
// tool's "running control plane" mode) and checks meshd's own status after
// the fleet has gone.
func TestLoadAgainstRunningMeshd(t *testing.T) {
	cat, err := loadgen.Generate(loadgen.Presets["S"])
	if err != nil {
		t.Fatal(err)
	}
	b, err := cat.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	policyDir := t.TempDir()
	m := startMeshd(t, string(b), "--policy-dir", policyDir)
	cfg := loadConfig(t)
	cfg.XDSAddress, cfg.AdminAddress, cfg.CatalogFile, cfg.CAFile = m.xdsAddr, m.adminAddr, m.catalogPath, m.rootCAFile()
	cfg.PolicyDir = policyDir
	// Tokens signed with this meshd's key, as meshctl token create does.
	cfg.DataDir = m.dataDir
	res, err := loadgen.Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	checkLoadResult(t, res, 100, false)
	s := m.status()
	if len(s.Proxies) != 100 {
		t.Fatalf("meshd knows %d proxies, want 100", len(s.Proxies))
	}
	for _, p := range s.Proxies {
		if p.XDS == nil {
			t.Errorf("proxy %s never connected", p.ID)
			continue
		}
		for typ, ts := range p.XDS.Types {
			if ts.Nacked != "" || ts.NackError != "" || ts.Acked != p.Versions[typ] {
				t.Errorf("proxy %s %s: acked %q, current %q, nacked %q %s", p.ID, typ, ts.Acked, p.Versions[typ], ts.Nacked, ts.NackError)
			}
		}
	}
}

// TestLoadGenericMode drives meshd the way xds-load drives any control
// plane: plaintext (meshd's development --insecure-xds), node ids from a
// template, no catalog, no admin endpoint.
func TestLoadGenericMode(t *testing.T) {
	cat, err := loadgen.Generate(loadgen.Presets["S"])
	if err != nil {
		t.Fatal(err)
	}
	b, err := cat.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	m := startMeshd(t, string(b), "--insecure-xds")
	cfg := loadConfig(t)
	cfg.XDSAddress, cfg.Plaintext = m.xdsAddr, true
	cfg.Proxies, cfg.NodeIDTemplate = 100, `proxy-{{printf "%05d" .I}}`
	cfg.NodeMetadata = map[string]any{"EXTRA": "x"}
	res, err := loadgen.Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range res.Problems {
		t.Errorf("problem: %s", p)
	}
	if res.Cold.N != 100 || res.Cold.Missing != 0 || res.NACKsSent != 0 {
		t.Errorf("generic fleet: %d synced, %d missing, %d NACKs; want 100, 0, 0", res.Cold.N, res.Cold.Missing, res.NACKsSent)
	}
	if len(res.Churn) != 0 {
		t.Errorf("churn ran without a catalog file: %+v", res.Churn)
	}
}
