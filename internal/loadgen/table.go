package loadgen

import (
	"fmt"
	"strings"
	"time"
)

// Table renders the result as a Markdown table.
func (res *Result) Table() string {
	var b strings.Builder
	row := func(k, v string) { fmt.Fprintf(&b, "| %s | %s |\n", k, v) }
	conns := fmt.Sprintf("%d gRPC connections, one per proxy as real Envoys connect", res.Conns)
	if res.Conns < res.Proxies {
		conns = fmt.Sprintf("%d gRPC connections, MULTIPLEXED: about %d proxies' streams share each (real Envoys use one each)",
			res.Conns, (res.Proxies+res.Conns-1)/max(res.Conns, 1))
	}
	fmt.Fprintf(&b, "%s; %s, %s\n\n", res.Title, res.Mode, conns)
	b.WriteString("| figure | value |\n|---|---|\n")
	row("cold connect + full sync, all proxies (p50 / max)", distText(res.Cold, false))
	if res.Proxies > 0 {
		row("config received per proxy at cold sync", fmt.Sprintf("%s in %.1f responses", bytesText(float64(res.ColdBytes)/float64(res.Proxies)), float64(res.ColdResp)/float64(res.Proxies)))
	}
	gc := "after forced GC"
	switch {
	case res.HeapExact:
		gc = "right after a forced GC, /debug/gc"
	case !res.HeapGC:
		gc = "no forced GC: /debug/pprof not served"
	}
	if res.HeapAfter > 0 && res.Proxies > 0 {
		row("meshd heap in use, all proxies synced ("+gc+")", fmt.Sprintf("%s total = %s per proxy", bytesText(res.HeapAfter), bytesText(res.HeapAfter/float64(res.Proxies))))
		row("meshd heap added by the connections (synced − before connect) per proxy", bytesText((res.HeapAfter-res.HeapBefore)/float64(res.Proxies)))
		if res.LiveAfter > 0 {
			row("of which live objects, before connect / synced", fmt.Sprintf("%s / %s = %s per proxy", bytesText(res.LiveBefore), bytesText(res.LiveAfter), bytesText(res.LiveAfter/float64(res.Proxies))))
		}
	}
	if res.RSSProc > 0 {
		row("meshd RSS (/proc/<pid>/status)", bytesText(res.RSSProc))
	} else if res.RSS > 0 {
		row("meshd RSS (process_resident_memory_bytes)", bytesText(res.RSS))
	}
	if res.IdleWindow > 0 {
		perMin := res.IdleCPU * float64(time.Minute) / float64(res.IdleWindow)
		row(fmt.Sprintf("meshd CPU while idle (%s window)", res.IdleWindow), fmt.Sprintf("%.3f s = %.3f s per minute; %d pushes", res.IdleCPU, perMin, res.IdlePushes))
	}
	for _, c := range res.Churn {
		name := "convergence: " + c.Kind + " (p50 / p99 / max)"
		if c.Kind == "noop" {
			row(fmt.Sprintf("no-op change (file rewritten, same mesh): pushes, %d changes", c.Changes), fmt.Sprintf("meshd sent %.0f, proxies received %d", c.MeshdPush, c.Unaffected))
			continue
		}
		v := distText(c.Converge, true)
		if c.Converge.Missing > 0 {
			v += fmt.Sprintf(" — %d deliveries missing (%s)", c.Converge.Missing, c.Note)
		}
		per := ""
		if n := int64(c.Converge.N); n > 0 {
			per = fmt.Sprintf("; %s in %.1f responses per affected proxy", bytesText(float64(c.Bytes)/float64(n)), float64(c.Responses)/float64(n))
		}
		if c.Changes > 0 && c.CPU > 0 {
			per += fmt.Sprintf("; meshd CPU %.3f s per change", c.CPU/float64(c.Changes))
		}
		row(name, fmt.Sprintf("%s (%d changes × %d affected proxies%s; %d pushes to unaffected proxies)", v, c.Changes, c.Affected, per, c.Unaffected))
	}
	if len(res.Churn) > 0 {
		row("meshd CPU during churn", fmt.Sprintf("%.2f s over %s", res.ChurnCPU, res.ChurnWall.Round(time.Millisecond)))
		row("pushes skipped during churn (proxies not re-rendered / re-rendered identical)", fmt.Sprintf("%.0f / %.0f", res.Skipped, res.Unchanged))
	}
	if res.Reconnect.N > 0 || res.Reconnect.Missing > 0 {
		row("reconnect storm: meshd restarted → all proxies re-synced (p50 / max)", distText(res.Reconnect, false))
	}
	row("NACKs sent by the simulated proxies", fmt.Sprint(res.NACKsSent))
	if res.Status.Checked {
		row("meshd /debug/status", fmt.Sprintf("%d connected, %d ACKed current versions of every type, %d NACKs, %d render errors", res.Status.Connected, res.Status.FullyACKed, len(res.Status.NACKed), len(res.Status.RenderErrors)))
	}
	row("xds-load's own CPU / peak RSS / wall time", fmt.Sprintf("%.2f s / %s / %s", res.ToolCPU.Seconds(), bytesText(float64(res.ToolMaxRSS)), res.ToolWall.Round(time.Second)))
	if len(res.CrossChecks) > 0 {
		b.WriteString("\n| cross-check | xds-load | independent | agree |\n|---|---|---|---|\n")
		for _, c := range res.CrossChecks {
			fmt.Fprintf(&b, "| %s | %s | %s | %v (%s) |\n", c.What, num(c.Tool), num(c.Other), yesNo(c.Agree), c.Tolerance)
		}
	}
	for _, u := range res.Unsupported {
		fmt.Fprintf(&b, "\nnot measured: %s\n", u)
	}
	for _, p := range res.Problems {
		fmt.Fprintf(&b, "\nPROBLEM: %s\n", p)
	}
	return b.String()
}

func num(f float64) string {
	if f == float64(int64(f)) {
		return fmt.Sprintf("%d", int64(f))
	}
	return fmt.Sprintf("%.2f", f)
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "NO"
}

func distText(d Dist, p99 bool) string {
	if d.N == 0 {
		return fmt.Sprintf("none (%d missing)", d.Missing)
	}
	ms := func(x time.Duration) string { return fmt.Sprintf("%.1f ms", float64(x)/float64(time.Millisecond)) }
	s := ms(d.P50) + " / "
	if p99 {
		s += ms(d.P99) + " / "
	}
	s += ms(d.Max)
	if d.Missing > 0 && !p99 {
		s += fmt.Sprintf(" (%d missing)", d.Missing)
	}
	return s
}

func bytesText(b float64) string {
	switch {
	case b >= 1<<30:
		return fmt.Sprintf("%.2f GiB", b/(1<<30))
	case b >= 1<<20:
		return fmt.Sprintf("%.1f MiB", b/(1<<20))
	case b >= 1<<10:
		return fmt.Sprintf("%.1f KiB", b/(1<<10))
	}
	return fmt.Sprintf("%.0f B", b)
}
