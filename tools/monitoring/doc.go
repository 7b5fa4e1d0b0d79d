// Package monitoring checks examples/monitoring with Prometheus's own
// parsers: the alert rules file as `promtool check rules` does
// (model/rulefmt: the file's structure, every expression through PromQL's
// parser, every label and annotation template), and the Grafana
// dashboard's queries through the same PromQL parser. Every metric the
// rules and the dashboard name must be in examples/monitoring/metrics.txt,
// the list e2e TestMonitoringMetricsAreExported checks against a real
// meshd and real Envoy sidecars.
//
// It is its own module so that Prometheus stays out of meshd's go.mod;
// scripts/test.sh runs it.
package monitoring
