package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshd/meshd/internal/adminclient"
	"github.com/meshd/meshd/telemetry"
)

// meshctl stat, edges and tap read what meshd collects from the sidecars'
// access logs (package telemetry; meshd --telemetry).

const statDescription = `
Show, per destination service, the traffic its sidecars served over a
recent window: success rate (allowed requests without a 5xx or gRPC error),
requests per second, latency percentiles, the share that came over mTLS,
and how many requests (or tcp connections) policy denied.

Numbers come from the sidecars' access logs, which meshd collects (meshd
--telemetry, on by default); proxyless gRPC servers report nothing. The
window is at most 5m, in steps of 10s.`

const statExamples = `
  meshctl stat                       # every service with traffic in the last minute
  meshctl stat api                   # api in namespace default
  meshctl stat api.shop --window 5m
  meshctl stat -o json | jq '.services[] | select(.successRate < 0.99)'`

func newStatCmd() *cobra.Command {
	var window time.Duration
	var namespace string
	cmd := &cobra.Command{
		Use:     "stat [SERVICE[.NAMESPACE]]",
		Short:   "success rate, RPS, latency, mTLS share and denials per service",
		Long:    strings.TrimSpace(statDescription),
		Example: strings.Trim(statExamples, "\n"),
		Args:    cobra.MaximumNArgs(1),
	}
	output := addOutputFlag(cmd, formatTable, formatJSON, formatYAML)
	cmd.Flags().DurationVar(&window, "window", time.Minute, "how far back to look (10s to 5m)")
	cmd.Flags().StringVarP(&namespace, "namespace", "n", "default", "namespace of SERVICE when it names none")
	return withAdmin(cmd, func(cmd *cobra.Command, c *adminclient.Client, args []string) error {
		if window <= 0 || window > telemetry.MaxWindow {
			return usageErrorf("--window %s: give 10s to %s", window, telemetry.MaxWindow)
		}
		q := url.Values{"window": {window.String()}}
		if len(args) == 1 {
			q.Set("service", qualify(args[0], namespace))
		}
		var r telemetry.StatsReport
		if err := c.GetJSON(cmd.Context(), "/telemetry/stats", q, &r); err != nil {
			return telemetryHint(err)
		}
		return output.print(cmd.OutOrStdout(), r, func(w io.Writer) error { return printStats(w, r) })
	})
}

// qualify makes "api" "api.default"; "api.shop" stays.
func qualify(service, namespace string) string {
	if strings.Contains(service, ".") {
		return service
	}
	return service + "." + namespace
}

// telemetryHint explains a 404 from a meshd without telemetry.
func telemetryHint(err error) error {
	if adminclient.IsNotFound(err) {
		return fmt.Errorf("%w (is meshd running with --telemetry?)", err)
	}
	return err
}

func printStats(w io.Writer, r telemetry.StatsReport) error {
	if len(r.Services) == 0 {
		_, err := fmt.Fprintf(w, "no traffic in the last %s\n", r.Window)
		return err
	}
	t := newTable(w, "SERVICE", "NAMESPACE", "SUCCESS", "RPS", "P50", "P95", "P99", "MTLS", "DENIED", "REQUESTS")
	for _, s := range r.Services {
		n := s.Requests
		unit := ""
		if s.Protocol == telemetry.ProtocolTCP {
			n, unit = s.Connections, " conns"
		}
		t.row(s.Service, s.Namespace, percent(s.SuccessRate), strconv.FormatFloat(s.RPS, 'f', 2, 64),
			millis(s.P50Ms), millis(s.P95Ms), millis(s.P99Ms), fmt.Sprintf("%.0f%%", s.MTLSPercent), s.Denied, fmt.Sprintf("%d%s", n, unit))
	}
	if err := t.flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "\nwindow %s (meshd has seen %s of it)\n", r.Window, r.Covered)
	return err
}

func percent(p *float64) string {
	if p == nil {
		return "-"
	}
	return strconv.FormatFloat(100**p, 'f', 2, 64) + "%"
}

func millis(p *float64) string {
	if p == nil {
		return "-"
	}
	if *p >= 1000 {
		return strconv.FormatFloat(*p/1000, 'f', 2, 64) + "s"
	}
	return strconv.FormatFloat(*p, 'f', 1, 64) + "ms"
}

const edgesDescription = `
Show who calls whom: every caller → service edge the sidecars have reported
since meshd started (an edge idle for an hour is forgotten), with both
SPIFFE identities, how the calls came (mTLS, or plaintext to a PERMISSIVE
or DISABLE workload, named by the caller's address), how many there were
and how many policy denied, with the rule that denied the last one.`

const edgesExamples = `
  meshctl edges
  meshctl edges --to api              # callers of api in namespace default
  meshctl edges --plaintext           # who still calls without mTLS
  meshctl edges -o json`

func newEdgesCmd() *cobra.Command {
	var to, namespace string
	var plaintextOnly bool
	cmd := &cobra.Command{
		Use:     "edges",
		Short:   "who calls whom: both identities, mTLS or plaintext, requests and denials",
		Long:    strings.TrimSpace(edgesDescription),
		Example: strings.Trim(edgesExamples, "\n"),
		Args:    noArgs,
	}
	output := addOutputFlag(cmd, formatTable, formatJSON, formatYAML)
	cmd.Flags().StringVar(&to, "to", "", "only edges to this `SERVICE` (name or name.namespace)")
	cmd.Flags().StringVarP(&namespace, "namespace", "n", "default", "namespace of --to when it names none")
	cmd.Flags().BoolVar(&plaintextOnly, "plaintext", false, "only edges without mTLS")
	return withAdmin(cmd, func(cmd *cobra.Command, c *adminclient.Client, _ []string) error {
		var r telemetry.EdgesReport
		if err := c.GetJSON(cmd.Context(), "/telemetry/edges", nil, &r); err != nil {
			return telemetryHint(err)
		}
		kept := r.Edges[:0]
		for _, e := range r.Edges {
			if (to != "" && e.Destination != qualify(to, namespace)) || (plaintextOnly && e.MTLS) {
				continue
			}
			kept = append(kept, e)
		}
		r.Edges = kept
		return output.print(cmd.OutOrStdout(), r, func(w io.Writer) error { return printEdges(w, r) })
	})
}

// edgeKind is how an edge's calls came and fared.
func edgeKind(e telemetry.EdgeStats) string {
	total := e.Requests + e.Connections
	switch {
	case total > 0 && e.Denied == total:
		return "denied"
	case e.MTLS && e.Denied > 0:
		return "mTLS, partly denied"
	case e.MTLS:
		return "mTLS"
	case e.Denied > 0:
		return "plaintext, partly denied"
	}
	return "plaintext"
}

func printEdges(w io.Writer, r telemetry.EdgesReport) error {
	if len(r.Edges) == 0 {
		_, err := fmt.Fprintln(w, "no edges reported (yet): traffic through the sidecars shows up within a second")
		return err
	}
	t := newTable(w, "SOURCE", "DESTINATION", "DESTINATION IDENTITY", "TLS", "REQUESTS", "DENIED", "LAST DENIED BY")
	for _, e := range r.Edges {
		src := e.Source
		if src == "" {
			src = "plaintext from " + e.SourceAddress
		}
		n := fmt.Sprint(e.Requests)
		if e.Protocol == telemetry.ProtocolTCP {
			n = fmt.Sprintf("%d conns", e.Connections)
		}
		rule := e.LastDeniedBy
		if rule == telemetry.NoAllowMatched {
			rule = "no ALLOW rule matched"
		}
		t.row(src, e.Destination, e.DestinationIdentity, edgeKind(e), n, e.Denied, rule)
	}
	if err := t.flush(); err != nil {
		return err
	}
	if r.DroppedEvents > 0 {
		_, err := fmt.Fprintf(w, "\n%d events were not kept per edge: meshd holds at most %d edges (--telemetry-max-edges)\n", r.DroppedEvents, r.MaxEdges)
		return err
	}
	return nil
}

const tapDescription = `
Follow the requests (and tcp connections) a service's sidecars serve, live,
one line each as they finish: time, caller identity (or plaintext and its
address), destination, method and path, status (and gRPC status), duration,
mTLS, and the authorization decision with the rule of a denial. Runs until
interrupted (Ctrl-C), or until --count lines.

A line appears within about a quarter of a second of the request (the
sidecars flush their access logs every 250 ms). If the terminal reads more
slowly than requests arrive, meshd drops lines and says how many.`

const tapExamples = `
  meshctl tap api
  meshctl tap api --denied                          # only what policy refused
  meshctl tap api --from spiffe://cluster.local/ns/default/sa/web --path /admin
  meshctl tap api.shop -o json | jq 'select(.status >= 500)'`

func newTapCmd() *cobra.Command {
	var from, path, method, namespace string
	var denied bool
	var count int
	cmd := &cobra.Command{
		Use:     "tap SERVICE[.NAMESPACE]",
		Short:   "a live stream of the requests a service serves, with the policy decision",
		Long:    strings.TrimSpace(tapDescription),
		Example: strings.Trim(tapExamples, "\n"),
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usageErrorf("name the service to tap, e.g. meshctl tap api")
			}
			return nil
		},
	}
	output := addOutputFlag(cmd, formatTable, formatJSON)
	fs := cmd.Flags()
	fs.StringVar(&from, "from", "", "only calls from this `SOURCE`: a SPIFFE ID, a prefix of one ending in / (spiffe://cluster.local/ns/shop/), or a plaintext caller's IP")
	fs.StringVar(&path, "path", "", "only HTTP requests whose path starts with `PREFIX`")
	fs.StringVar(&method, "method", "", "only HTTP requests with this `METHOD`")
	fs.BoolVar(&denied, "denied", false, "only requests and connections policy denied")
	fs.IntVar(&count, "count", 0, "stop after `N` lines (0: run until interrupted)")
	fs.StringVarP(&namespace, "namespace", "n", "default", "namespace of SERVICE when it names none")
	return withAdmin(cmd, func(cmd *cobra.Command, c *adminclient.Client, args []string) error {
		q := url.Values{"destination": {qualify(args[0], namespace)}}
		for k, v := range map[string]string{"source": from, "path": path, "method": method} {
			if v != "" {
				q.Set(k, v)
			}
		}
		if denied {
			q.Set("denied", "true")
		}
		body, err := c.Stream(cmd.Context(), "/telemetry/tap", q)
		if err != nil {
			return telemetryHint(err)
		}
		defer body.Close()
		return followTap(cmd.Context(), body, cmd.OutOrStdout(), cmd.ErrOrStderr(), output.value, count)
	})
}

// followTap prints a tap stream until it ends, ctx is done, or count
// events were printed.
func followTap(ctx context.Context, body io.Reader, stdout, stderr io.Writer, format string, count int) error {
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	n := 0
	for sc.Scan() {
		var m telemetry.TapMessage
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			return fmt.Errorf("reading the tap: %w", err)
		}
		switch {
		case m.Tapping != nil:
			fmt.Fprintf(stderr, "tapping %s (Ctrl-C to stop)\n", m.Tapping.Destination)
		case m.Lost > 0:
			fmt.Fprintf(stderr, "... %d lines dropped: reading too slowly\n", m.Lost)
		case m.Event != nil:
			var err error
			if format == formatJSON {
				err = json.NewEncoder(stdout).Encode(m.Event)
			} else {
				_, err = fmt.Fprintln(stdout, tapLine(m.Event))
			}
			if err != nil {
				return err
			}
			if n++; count > 0 && n >= count {
				return nil
			}
		}
	}
	if ctx.Err() != nil {
		return nil // interrupted: the normal end
	}
	if err := sc.Err(); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("the tap ended: %w", err)
	}
	return errors.New("meshd ended the tap")
}

// tapLine is one event as a line of fixed-order fields.
func tapLine(e *telemetry.Event) string {
	src := e.Source
	if src == "" {
		src = "plaintext:" + e.SourceAddress
	}
	tls := "plaintext"
	if e.MTLS {
		tls = "mtls"
	}
	decision := "allow"
	if e.Denied {
		rule := e.Policy
		if rule == telemetry.NoAllowMatched {
			rule = "no-ALLOW-rule-matched"
		}
		decision = "DENY " + rule
	}
	what := e.Method + " " + e.Path
	status := strconv.Itoa(e.Status)
	if e.Protocol == telemetry.ProtocolTCP {
		what = fmt.Sprintf("tcp in=%dB out=%dB", e.BytesReceived, e.BytesSent)
		status = "-"
	}
	if e.GRPCStatus != nil {
		status += fmt.Sprintf(" grpc=%d", *e.GRPCStatus)
	}
	return fmt.Sprintf("%s %s -> %s %s %s %s %s %s", e.Time.Local().Format("15:04:05.000"), src, e.Destination, what, status,
		millis(&e.DurationMs), tls, decision)
}
