package main

import (
	"fmt"
	"io"
	"net/url"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/meshd/meshd/internal/adminclient"
	"github.com/meshd/meshd/server/admin"
	"github.com/meshd/meshd/xds"
)

const authzCheckDescription = `
Would SOURCE be allowed to call DESTINATION? meshd answers by evaluating
the authorization its proxies of DESTINATION are served right now — the
same RBAC rules Envoy (or gRPC) enforces, rendered by the same code — and
names the rule that decides.

SOURCE is a service of the catalog (name or name.namespace: its identity,
over mTLS, from its proxy's address), a SPIFFE ID, an IP address
(plaintext from there) or "plaintext". DESTINATION is a service or a
proxy's node id; every proxy of the service is evaluated (they differ
while an mTLS migration is in progress). The request is GET / (POST / for
gRPC services) unless --method, --path, --host or --header say otherwise.

Exit status 0 when every proxy allows it, 1 when one denies or refuses it.`

const authzCheckExamples = `
  meshctl authz check web api
  meshctl authz check web api --path /admin/users --method DELETE
  meshctl authz check spiffe://cluster.local/ns/batch/sa/job api.shop -o json
  meshctl authz check plaintext api        # PERMISSIVE or STRICT?
  meshctl authz check 10.0.3.7 db`

func newAuthzCmd() *cobra.Command {
	var method, path, host string
	var headers []string
	check := &cobra.Command{
		Use:     "check SOURCE DESTINATION",
		Short:   "would SOURCE be allowed to call DESTINATION, and which rule decides",
		Long:    strings.TrimSpace(authzCheckDescription),
		Example: strings.Trim(authzCheckExamples, "\n"),
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 2 {
				return usageErrorf("give a SOURCE and a DESTINATION, e.g. meshctl authz check web api")
			}
			return nil
		},
	}
	output := addOutputFlag(check, formatTable, formatJSON, formatYAML)
	fs := check.Flags()
	fs.StringVar(&method, "method", "", "HTTP `METHOD` of the request (default GET, POST for gRPC)")
	fs.StringVar(&path, "path", "", "`PATH` of the request (default /; gRPC: /package.Service/Method)")
	fs.StringVar(&host, "host", "", "authority of the request (default the destination's name.namespace)")
	fs.StringArrayVar(&headers, "header", nil, "a request header as `NAME:VALUE` (repeatable)")
	withAdmin(check, func(cmd *cobra.Command, c *adminclient.Client, args []string) error {
		q := url.Values{"source": {args[0]}, "destination": {args[1]}}
		for k, v := range map[string]string{"method": method, "path": path, "host": host} {
			if v != "" {
				q.Set(k, v)
			}
		}
		q["header"] = headers
		var r admin.AuthzReport
		if err := c.GetJSON(cmd.Context(), "/authz/check", q, &r); err != nil {
			return err
		}
		if err := output.print(cmd.OutOrStdout(), r, func(w io.Writer) error { return printAuthz(w, r) }); err != nil {
			return err
		}
		for _, res := range r.Results {
			if !res.Allowed || res.Error != "" {
				return exitStatus(exitError)
			}
		}
		return nil
	})
	return group("authz", "authorization: would a caller be allowed (authz check)",
		"Ask meshd what the proxies of a workload enforce.", check)
}

func printAuthz(w io.Writer, r admin.AuthzReport) error {
	src := r.Source.Input
	switch {
	case r.Source.Identity != "":
		src = r.Source.Identity
		if r.Source.Address != "" {
			src += " from " + r.Source.Address
		}
	case r.Source.Address != "":
		src = "plaintext from " + r.Source.Address
	}
	fmt.Fprintf(w, "%s %s from %s to %s:\n", r.Method, r.Path, src, r.Destination)
	t := newTable(w, "PROXY", "DECISION", "RULE", "WHY")
	for _, res := range r.Results {
		t.row(res.Proxy, decisionWord(res.AuthzDecision, res.Error), ruleOf(res.AuthzDecision), whyOf(res.AuthzDecision, res.Error))
	}
	return t.flush()
}

func decisionWord(d xds.AuthzDecision, err string) string {
	switch {
	case err != "":
		return "ERROR"
	case d.Refused:
		return "REFUSED"
	case d.Allowed:
		return "ALLOW"
	}
	return "DENY"
}

func ruleOf(d xds.AuthzDecision) string {
	if d.DeniedBy == "none" {
		return "(no ALLOW rule matched)"
	}
	return d.DeniedBy + d.AllowedBy
}

func whyOf(d xds.AuthzDecision, err string) string {
	if err != "" {
		return err
	}
	s := d.Explanation
	if len(d.Audited) > 0 {
		s += "; audited by " + strings.Join(d.Audited, ", ")
	}
	return s
}

const describeDescription = `
Describe a service's workloads as meshd enforces them: per proxy, the mTLS
mode policy asks for and which PeerAuthentication (or the default) decides
it, the mode its listener enforces now (they differ during a migration),
the authorization policies that apply with the RBAC rules they render to,
and whether each caller of the catalog (and a plaintext caller) would be
allowed its default request — evaluated on what the proxy is served, as
meshctl authz check does.`

func newDescribeCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "describe SERVICE[.NAMESPACE]",
		Short:   "which policies apply to a service, its mTLS mode and why, and who may call it",
		Long:    strings.TrimSpace(describeDescription),
		Example: "  meshctl describe api\n  meshctl describe api.shop -o yaml",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usageErrorf("name the service to describe, e.g. meshctl describe api")
			}
			return nil
		},
	}
	output := addOutputFlag(cmd, formatTable, formatJSON, formatYAML)
	return withAdmin(cmd, func(cmd *cobra.Command, c *adminclient.Client, args []string) error {
		var d admin.Description
		if err := c.GetJSON(cmd.Context(), "/describe", url.Values{"service": {args[0]}}, &d); err != nil {
			return err
		}
		return output.print(cmd.OutOrStdout(), d, func(w io.Writer) error { return printDescription(w, d) })
	})
}

func printDescription(w io.Writer, d admin.Description) error {
	kv := newTable(w)
	kv.row("Service:", d.Service)
	kv.row("Protocol:", d.Protocol)
	kv.row("Identity:", d.Identity)
	if err := kv.flush(); err != nil {
		return err
	}
	for _, p := range d.Proxies {
		fmt.Fprintf(w, "\nProxy %s (%s, port %d", p.Proxy, p.Flavor, p.Port)
		if len(p.Labels) > 0 {
			var ls []string
			for k, v := range p.Labels {
				ls = append(ls, k+"="+v)
			}
			slices.Sort(ls)
			fmt.Fprintf(w, ", labels %s", strings.Join(ls, ","))
		}
		fmt.Fprintln(w, ")")
		fmt.Fprintf(w, "  mTLS: %s, decided by %s\n", p.MTLS.Policy, p.MTLS.DecidedBy)
		if p.MTLS.Served != "" && p.MTLS.Served != p.MTLS.Policy {
			fmt.Fprintf(w, "        its listener enforces %s for now", p.MTLS.Served)
			if m := p.MTLS.Migration; m != nil {
				fmt.Fprintf(w, " (migration %s→%s, %s: waiting for %s)", m.From, m.To, m.Phase, m.WaitingFor)
			}
			fmt.Fprintln(w)
		}
		if p.Error != "" {
			fmt.Fprintf(w, "  error: %s\n", p.Error)
		}
		if len(p.Policies) == 0 {
			fmt.Fprintln(w, "  Authorization: no policy applies (every authenticated or plaintext caller the mTLS mode lets in is allowed)")
		} else {
			fmt.Fprintln(w, "  Authorization policies:")
			t := newTable(w, "    POLICY", "ACTION", "RULES")
			for _, ap := range p.Policies {
				rules := strings.Join(ap.Rules, " ")
				if rules == "" {
					rules = "(none: an ALLOW without rules denies everything)"
				}
				t.row("    "+ap.Namespace+"/"+ap.Name, ap.Action, rules)
			}
			if err := t.flush(); err != nil {
				return err
			}
		}
		fmt.Fprintln(w, "  Callers (their default request):")
		t := newTable(w, "    CALLER", "DECISION", "RULE")
		for _, c := range p.Callers {
			who := c.Caller
			if c.Identity != "" {
				who += " (" + c.Identity + ")"
			}
			t.row("    "+who, decisionWord(c.AuthzDecision, c.Error), ruleOf(c.AuthzDecision))
		}
		if err := t.flush(); err != nil {
			return err
		}
	}
	return nil
}
