package monitoring

import (
	"bufio"
	"encoding/json"
	"flag"
	"log/slog"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
)

const (
	dir         = "../../examples/monitoring/"
	rulesFile   = dir + "prometheus-rules.yaml"
	dashboard   = dir + "grafana-dashboard.json"
	metricsList = dir + "metrics.txt"
)

// promql is Prometheus's PromQL parser, as promtool uses it.
var promql = parser.NewParser(parser.Options{})

var update = flag.Bool("update", false, "rewrite examples/monitoring/metrics.txt from the rules and the dashboard")

// metricNames are the metric names a PromQL expression selects.
func metricNames(t *testing.T, where, expr string) []string {
	t.Helper()
	e, err := promql.ParseExpr(expr)
	if err != nil {
		t.Errorf("%s: %q does not parse as PromQL: %v", where, expr, err)
		return nil
	}
	var out []string
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		if vs, ok := n.(*parser.VectorSelector); ok {
			if vs.Name == "" {
				t.Errorf("%s: %q selects series without naming a metric", where, expr)
			}
			out = append(out, vs.Name)
		}
		return nil
	})
	return out
}

// TestRules is `promtool check rules`: the file parses, every expression
// is PromQL, every template is valid; and every alert says what to do.
func TestRules(t *testing.T) { ruleNames(t) }

// ruleNames checks the rules and returns the metrics they name.
func ruleNames(t *testing.T) (names []string) {
	rgs, errs := rulefmt.ParseFile(rulesFile, false, model.LegacyValidation, promql, slog.New(slog.DiscardHandler))
	for _, err := range errs {
		t.Errorf("%s: %v", rulesFile, err)
	}
	if rgs == nil {
		t.Fatal("no rule groups")
	}
	alerts := 0
	for _, g := range rgs.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				t.Errorf("group %s: a recording rule %q: the file holds alerts only", g.Name, r.Record)
				continue
			}
			alerts++
			if r.Annotations["summary"] == "" || r.Annotations["description"] == "" || r.Labels["severity"] == "" {
				t.Errorf("alert %s lacks a summary, a description or a severity", r.Alert)
			}
			names = append(names, metricNames(t, "alert "+r.Alert, r.Expr)...)
		}
	}
	// The alerts issue 15 asks for.
	for _, want := range []string{"MeshdProxyRejectedConfiguration", "MeshdProxyStale", "MeshdMTLSMigrationStuck", "MeshPlaintextInStrict",
		"MeshdWorkloadCertificateExpiringSoon", "MeshdCACertificateExpiringSoon", "MeshdConsulSyncStale"} {
		found := false
		for _, g := range rgs.Groups {
			for _, r := range g.Rules {
				found = found || r.Alert == want
			}
		}
		if !found {
			t.Errorf("no alert %s", want)
		}
	}
	t.Logf("%d alerts", alerts)
	return names
}

type grafanaPanel struct {
	Type    string `json:"type"`
	Title   string `json:"title"`
	Targets []struct {
		Expr  string `json:"expr"`
		RefID string `json:"refId"`
	} `json:"targets"`
	Panels []grafanaPanel `json:"panels"`
}

// grafanaVars are the dashboard variables a query may use, replaced by
// what Grafana would put there before PromQL sees it.
var grafanaVars = strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$__range", "1h")

var labelValues = regexp.MustCompile(`^label_values\((.+),\s*[a-zA-Z_][a-zA-Z0-9_]*\)$`)

// TestDashboard: the dashboard is JSON of Grafana's shape and every query
// (panel targets and the variables' label_values) parses as PromQL.
func TestDashboard(t *testing.T) { dashboardNames(t) }

// dashboardNames checks the dashboard and returns the metrics it names.
func dashboardNames(t *testing.T) (names []string) {
	b, err := os.ReadFile(dashboard)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Title      string         `json:"title"`
		UID        string         `json:"uid"`
		Panels     []grafanaPanel `json:"panels"`
		Templating struct {
			List []struct {
				Name  string          `json:"name"`
				Type  string          `json:"type"`
				Query json.RawMessage `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", dashboard, err)
	}
	if d.Title == "" || d.UID == "" || len(d.Panels) == 0 {
		t.Fatalf("%s: no title, uid or panels", dashboard)
	}
	queries := 0
	var walk func([]grafanaPanel)
	walk = func(ps []grafanaPanel) {
		for _, p := range ps {
			if p.Type != "row" && len(p.Targets) == 0 {
				t.Errorf("panel %q has no query", p.Title)
			}
			for _, tg := range p.Targets {
				queries++
				names = append(names, metricNames(t, "panel "+p.Title, grafanaVars.Replace(tg.Expr))...)
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q struct {
			Query string `json:"query"`
		}
		if err := json.Unmarshal(v.Query, &q); err != nil {
			t.Errorf("variable %s: %v", v.Name, err)
			continue
		}
		m := labelValues.FindStringSubmatch(q.Query)
		if m == nil {
			t.Errorf("variable %s: %q is not label_values(<metric>, <label>)", v.Name, q.Query)
			continue
		}
		names = append(names, metricNames(t, "variable "+v.Name, m[1])...)
	}
	t.Logf("%d queries", queries)
	return names
}

// TestMetricsListed: every metric the rules and the dashboard name is in
// metrics.txt, which e2e TestMonitoringMetricsAreExported checks against a
// real meshd and real Envoy sidecars; and the list names nothing unused.
func TestMetricsListed(t *testing.T) {
	used := append(ruleNames(t), dashboardNames(t)...)
	// "up" is Prometheus's own, for every scrape.
	used = slices.DeleteFunc(used, func(n string) bool { return n == "up" })
	slices.Sort(used)
	used = slices.Compact(used)
	if *update {
		if err := os.WriteFile(metricsList, []byte("# Every metric examples/monitoring's rules and dashboard use (tools/monitoring -update writes it;\n# e2e TestMonitoringMetricsAreExported checks that meshd or Envoy exports each).\n"+strings.Join(used, "\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	f, err := os.Open(metricsList)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var listed []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" && !strings.HasPrefix(l, "#") {
			listed = append(listed, l)
		}
	}
	if !slices.Equal(listed, used) {
		t.Errorf("%s lists %v\nthe rules and dashboard use %v\n(go test ./... -update in tools/monitoring rewrites it)", metricsList, listed, used)
	}
}

// TestCheckerRefusesBrokenRules: the checker is not a formality.
func TestCheckerRefusesBrokenRules(t *testing.T) {
	for name, bad := range map[string]string{
		"PromQL":   "groups: [{name: g, rules: [{alert: A, expr: 'rate(x[5m]'}]}]",
		"template": "groups: [{name: g, rules: [{alert: A, expr: up == 0, annotations: {summary: '{{ $labels.x '}}]}]",
		"field":    "groups: [{name: g, rules: [{alert: A, expr: up == 0, severity: page}]}]",
		"no name":  "groups: [{rules: [{alert: A, expr: up == 0}]}]",
	} {
		if _, errs := rulefmt.Parse([]byte(bad), false, model.LegacyValidation, promql, slog.New(slog.DiscardHandler)); len(errs) == 0 {
			t.Errorf("%s: the checker accepted %s", name, bad)
		}
	}
}
