package main

import (
	"fmt"
	"io"
	"net/url"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshd/meshd/internal/adminclient"
	"github.com/meshd/meshd/server/admin"
	"github.com/meshd/meshd/snapshot"
)

const statusDescription = `
Show every proxy of the catalog (and any node that connected with an id the
catalog does not have): flavor, identity, how long it has been connected,
and per xDS type whether it has ACKed what meshd serves it now:

  SYNCED    it ACKed the current version
  STALE     it has not (yet): a push in flight, or a proxy that stopped
            answering; the detail view says for how long
  NACKED    it rejected the current version (the error is shown)
  NOT SENT  it has not asked for this type on its current connection

and its mTLS migration, if one is in progress. With a PROXY (a node id),
the detail view: versions, when each was sent, the NACK error in full, the
drain flags its bootstrap asked for, and what the migration waits for.`

const statusExamples = `
  meshctl status
  meshctl status web.default
  meshctl status -o json | jq '.proxies[] | select(.state != "SYNCED")'`

func newStatusCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:               "status [PROXY]",
		Short:             "every proxy's xDS sync state: SYNCED, STALE, NACKED (with the error) or NOT SENT",
		Long:              strings.TrimSpace(statusDescription),
		Example:           strings.Trim(statusExamples, "\n"),
		Args:              cobra.MaximumNArgs(1),
		ValidArgsFunction: completeProxies,
	}
	output := addOutputFlag(cmd, formatTable, formatJSON, formatYAML)
	return withAdmin(cmd, func(cmd *cobra.Command, c *adminclient.Client, args []string) error {
		if len(args) == 1 {
			var p admin.ProxyState
			if err := c.GetJSON(cmd.Context(), "/proxies/"+url.PathEscape(args[0]), nil, &p); err != nil {
				return err
			}
			return output.print(cmd.OutOrStdout(), p, func(w io.Writer) error { return printProxy(w, p) })
		}
		var r admin.ProxiesReport
		if err := c.GetJSON(cmd.Context(), "/proxies", nil, &r); err != nil {
			return err
		}
		return output.print(cmd.OutOrStdout(), r, func(w io.Writer) error { return printProxies(w, r) })
	})
}

// completeProxies completes node ids from a running meshd (its default
// address, or --admin-address when already given).
func completeProxies(cmd *cobra.Command, args []string, _ string) ([]cobra.Completion, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	o := adminclient.Options{Address: adminclient.DefaultAddress, Timeout: 2 * time.Second}
	if f := cmd.Flags().Lookup("admin-address"); f != nil {
		o.Address = f.Value.String()
	}
	c, err := o.Client()
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var r admin.ProxiesReport
	if err := c.GetJSON(cmd.Context(), "/proxies", nil, &r); err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var out []cobra.Completion
	for _, p := range r.Proxies {
		out = append(out, cobra.CompletionWithDesc(p.ID, p.Flavor+" "+p.State))
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}

// typeColumns are the per-type columns of meshctl status.
var typeColumns = []string{"LDS", "RDS", "CDS", "EDS", "SDS"}

func printProxies(w io.Writer, r admin.ProxiesReport) error {
	if len(r.Proxies) == 0 {
		_, err := fmt.Fprintln(w, "no proxies: the catalog has none")
		return err
	}
	t := newTable(w, append(append([]string{"NAME", "FLAVOR", "IDENTITY", "CONNECTED"}, typeColumns...), "MIGRATION")...)
	var nacks []string
	for _, p := range r.Proxies {
		states := map[string]string{}
		for _, ts := range p.Types {
			states[ts.Short] = ts.State
			if ts.State == admin.StateNacked {
				nacks = append(nacks, fmt.Sprintf("%s %s: %s", p.ID, ts.Short, oneLine(ts.NackError)))
			}
		}
		row := []any{p.ID, p.Flavor, identityOrNote(p), connectedFor(p)}
		for _, c := range typeColumns {
			row = append(row, states[c])
		}
		row = append(row, migrationText(p.Migration))
		t.row(row...)
	}
	if err := t.flush(); err != nil {
		return err
	}
	if len(nacks) > 0 {
		fmt.Fprintln(w, "\nRejected (NACK) — the proxy keeps its previous configuration:")
		for _, n := range nacks {
			fmt.Fprintln(w, "  "+n)
		}
	}
	return nil
}

func identityOrNote(p admin.ProxyState) string {
	if !p.InCatalog {
		return "(not in the catalog: gets no configuration)"
	}
	return p.Identity
}

func connectedFor(p admin.ProxyState) string {
	if !p.Connected {
		return "no"
	}
	if p.ConnectedSince.IsZero() {
		return "yes"
	}
	return time.Since(p.ConnectedSince).Round(time.Second).String()
}

func migrationText(m *snapshot.Transition) string {
	if m == nil {
		return ""
	}
	s := fmt.Sprintf("%s→%s %s %.0fs", m.From, m.To, m.Phase, m.PendingSeconds)
	if m.Overdue {
		s += " OVERDUE"
	}
	return s
}

func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}

// printProxy is the detail view of one proxy.
func printProxy(w io.Writer, p admin.ProxyState) error {
	kv := newTable(w)
	kv.row("Proxy:", p.ID)
	if p.InCatalog {
		kv.row("Service:", p.Service+"."+p.Namespace)
		kv.row("Identity:", p.Identity)
	} else {
		kv.row("Catalog:", "not in the catalog: it gets no configuration until one is added")
	}
	kv.row("Flavor:", p.Flavor)
	kv.row("State:", p.State)
	if p.Connected {
		kv.row("Connected:", fmt.Sprintf("since %s (%s)", p.ConnectedSince.Format(time.RFC3339), connectedFor(p)))
	} else if !p.LastSeen.IsZero() {
		kv.row("Connected:", "no; last seen "+p.LastSeen.Format(time.RFC3339))
	} else {
		kv.row("Connected:", "never since meshd started")
	}
	if p.Node.UserAgent != "" {
		kv.row("Client:", p.Node.UserAgent)
	}
	if p.Flavor == "envoy" {
		drain := fmt.Sprintf("--drain-time-s %s --drain-strategy %s (as its bootstrap asks)", p.Node.DrainTimeS, p.Node.DrainStrategy)
		if p.DrainWarning != "" {
			drain = "WARNING: " + p.DrainWarning
		}
		kv.row("Drain:", drain)
	}
	if p.RenderError != "" {
		kv.row("Render error:", oneLine(p.RenderError)+" (it keeps its last good configuration)")
	}
	for _, wn := range p.Warnings {
		kv.row("Warning:", oneLine(wn))
	}
	if m := p.Migration; m != nil {
		kv.row("Migration:", fmt.Sprintf("%s → %s, phase %s, server %s, callers %s", m.From, m.To, m.Phase, m.ServerMode, m.CallerMode))
		wait := fmt.Sprintf("%s (%.0fs", m.WaitingFor, m.PendingSeconds)
		if m.Overdue {
			wait += ", OVERDUE: force with POST /migrations/force?proxy=" + m.Proxy
		}
		kv.row("  waiting for:", wait+")")
		for _, on := range m.WaitingOn {
			kv.row("", on)
		}
	}
	if err := kv.flush(); err != nil {
		return err
	}
	if len(p.Types) == 0 {
		return nil
	}
	fmt.Fprintln(w)
	t := newTable(w, "TYPE", "STATE", "VERSION", "SENT", "ACKED", "BEHIND")
	for _, ts := range p.Types {
		behind := ""
		if ts.State == admin.StateStale {
			behind = time.Duration(ts.StaleSeconds * float64(time.Second)).Round(time.Millisecond).String()
		}
		t.row(ts.Short, ts.State, short(ts.Version), sentText(ts), short(ts.Acked), behind)
	}
	if err := t.flush(); err != nil {
		return err
	}
	for _, ts := range p.Types {
		if ts.State == admin.StateNacked {
			fmt.Fprintf(w, "\n%s version %s rejected at %s:\n  %s\n", ts.Short, short(ts.Nacked), ts.NackAt.Format(time.RFC3339), ts.NackError)
		}
	}
	return nil
}

func sentText(ts admin.TypeSync) string {
	if ts.Sent == "" {
		return ""
	}
	return fmt.Sprintf("%s at %s", short(ts.Sent), ts.SentAt.Format("15:04:05"))
}
