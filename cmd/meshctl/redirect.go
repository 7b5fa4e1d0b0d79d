package main

import (
	"fmt"
	"io"
	"net/netip"
	"os/user"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/redirect"
)

const redirectLong = `Transparent interception for one workload (docs/interception.md): the
packet filter rules that send the application's outbound TCP to its Envoy
sidecar's capture listener, and TCP arriving for the application's ports to
the sidecar's inbound listener, so an unmodified application calls services
at their own addresses and nothing reaches it around the sidecar. The
sidecar's catalog entry has mode: transparent; the ports here are its
capturePort, publicPort and appPort.

The rules live in the network namespace the command runs in (the host, or
a container's), need root, and touch nothing but meshd's own: the nft table
"ip meshd", or the iptables nat chains MESHD_INBOUND and MESHD_OUTPUT.
Installing again replaces them; removing what is not there does nothing.`

func newRedirectCmd() *cobra.Command {
	return group("redirect-traffic", "install, remove or show the packet filter rules of a transparent sidecar",
		redirectLong, newRedirectInstallCmd(), newRedirectRemoveCmd(), newRedirectShowCmd())
}

const redirectInstallDescription = `
Install the rules for one workload. Outbound TCP goes to --capture-port,
except:
  - connections of --proxy-uid (Envoy must run as a user of its own: its
    connections to meshd, to the services' endpoints and passthrough ones
    must not be captured again) and of every --exclude-uid (meshd and
    mesh-agent when they run here: mesh-agent reaches meshd before Envoy
    can start);
  - loopback (the application's explicit upstreams at 127.0.0.1, Envoy's
    own admin);
  - --exclude-outbound-port and --exclude-outbound-cidr destinations.
TCP arriving for each --app-port goes to --public-port, the sidecar's
inbound listener. Without --app-port only outbound traffic is captured (a
client-only workload). IPv4 only; UDP (DNS) is never captured.

--backend auto uses nft when it works here, else iptables-restore; either
way meshd's rules in the other backend are removed. --dry-run prints the
commands and their input and changes nothing.`

const redirectInstallExamples = `
  # Envoy runs as the user envoy; the application listens on 8080, the
  # sidecar's publicPort is 15006 and its capturePort the default 15001:
  sudo meshctl redirect-traffic install --proxy-uid envoy --app-port 8080 --public-port 15006

  # mesh-agent (user mesh-agent) fetches certificates from meshd first;
  # ssh to other hosts stays direct:
  sudo meshctl redirect-traffic install --proxy-uid envoy --exclude-uid mesh-agent \
      --app-port 8080 --public-port 15006 --exclude-outbound-port 22

  # What would be run:
  meshctl redirect-traffic install --proxy-uid 1337 --app-port 8080 --public-port 15006 --dry-run`

type redirectFlags struct {
	proxyUser, backend         string
	excludeUsers, excludeCIDRs []string
	appPorts, excludePorts     []uint
	capturePort, publicPort    uint
	dryRun                     bool
}

func newRedirectInstallCmd() *cobra.Command {
	var f redirectFlags
	cmd := &cobra.Command{
		Use:     "install --proxy-uid USER [flags]",
		Short:   "install (or replace) the interception rules of one workload",
		Long:    strings.TrimSpace(redirectInstallDescription),
		Example: strings.Trim(redirectInstallExamples, "\n"),
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runRedirectInstall(cmd, &f)
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&f.proxyUser, "proxy-uid", "", "`USER` (name or uid) Envoy runs as; its connections are never captured (required, not root)")
	fs.UintVar(&f.capturePort, "capture-port", uint(mesh.DefaultCapturePort), "`PORT` of the sidecar's capture listener (the catalog's capturePort)")
	fs.UintVar(&f.publicPort, "public-port", 0, "`PORT` of the sidecar's inbound listener (the catalog's publicPort), where --app-port traffic goes")
	fs.UintSliceVar(&f.appPorts, "app-port", nil, "`PORT` of the application whose incoming TCP goes to --public-port (the catalog's appPort); repeat or separate with commas")
	fs.StringSliceVar(&f.excludeUsers, "exclude-uid", nil, "`USER` (name or uid) whose connections are never captured (meshd, mesh-agent); repeat or separate with commas")
	fs.UintSliceVar(&f.excludePorts, "exclude-outbound-port", nil, "destination `PORT` never captured; repeat or separate with commas")
	fs.StringSliceVar(&f.excludeCIDRs, "exclude-outbound-cidr", nil, "destination IPv4 `CIDR` (or address) never captured; repeat or separate with commas")
	addBackendFlags(cmd, &f)
	return cmd
}

func addBackendFlags(cmd *cobra.Command, f *redirectFlags) {
	names := make([]string, len(redirect.Backends))
	for i, b := range redirect.Backends {
		names[i] = string(b)
	}
	cmd.Flags().StringVar(&f.backend, "backend", string(redirect.Auto), "packet filter `BACKEND`: "+strings.Join(names, ", ")+" (auto: nft when it works here, else iptables)")
	cmd.Flags().BoolVar(&f.dryRun, "dry-run", false, "print the commands and their input instead of running them")
	_ = cmd.RegisterFlagCompletionFunc("backend", cobra.FixedCompletions(names, cobra.ShellCompDirectiveNoFileComp))
}

func backendOf(f *redirectFlags) (redirect.Backend, error) {
	b := redirect.Backend(f.backend)
	if !slices.Contains(redirect.Backends, b) {
		return "", usageErrorf("--backend %q: use auto, nft or iptables", f.backend)
	}
	return b, nil
}

func runRedirectInstall(cmd *cobra.Command, f *redirectFlags) error {
	if f.proxyUser == "" {
		return usageErrorf("--proxy-uid is required: the user (name or uid) Envoy runs as, whose connections are let through")
	}
	b, err := backendOf(f)
	if err != nil {
		return err
	}
	c := &redirect.Config{}
	if c.ProxyUID, err = lookupUID("--proxy-uid", f.proxyUser); err != nil {
		return err
	}
	for _, u := range f.excludeUsers {
		uid, err := lookupUID("--exclude-uid", u)
		if err != nil {
			return err
		}
		c.ExcludeUIDs = append(c.ExcludeUIDs, uid)
	}
	var bad []string
	c.CapturePort = port32(f.capturePort, &bad)
	c.InboundPort = port32(f.publicPort, &bad)
	for _, p := range f.appPorts {
		c.AppPorts = append(c.AppPorts, port32(p, &bad))
	}
	for _, p := range f.excludePorts {
		c.ExcludeOutboundPorts = append(c.ExcludeOutboundPorts, port32(p, &bad))
	}
	if len(bad) > 0 {
		return usageErrorf("%s is not a TCP port: use 1-65535", bad[0])
	}
	for _, s := range f.excludeCIDRs {
		p, err := parsePrefix(s)
		if err != nil {
			return usageErrorf("--exclude-outbound-cidr %q: %v", s, err)
		}
		c.ExcludeOutboundCIDRs = append(c.ExcludeOutboundCIDRs, p)
	}
	if err := c.Validate(); err != nil {
		return &usageError{msg: err.Error()}
	}
	ctx := cmd.Context()
	if b, err = redirect.Resolve(ctx, redirect.Exec, b); err != nil {
		return err
	}
	plan, err := redirect.InstallPlan(ctx, redirect.Exec, b, c)
	if err != nil {
		return err
	}
	if f.dryRun {
		return redirect.Print(cmd.OutOrStdout(), plan)
	}
	if err := redirect.Apply(ctx, redirect.Exec, plan); err != nil {
		return fmt.Errorf("installing the rules: %w", err)
	}
	return describeInstalled(cmd.OutOrStdout(), b, c)
}

func describeInstalled(w io.Writer, b redirect.Backend, c *redirect.Config) error {
	if c.InboundPort != 0 {
		fmt.Fprintf(w, "inbound:  TCP to port %s goes to the sidecar's inbound listener on %d\n", joinUints(c.AppPorts), c.InboundPort)
	}
	except := []string{"loopback", "uid " + joinUints(append([]uint32{c.ProxyUID}, c.ExcludeUIDs...))}
	if len(c.ExcludeOutboundPorts) > 0 {
		except = append(except, "port "+joinUints(c.ExcludeOutboundPorts))
	}
	for _, p := range c.ExcludeOutboundCIDRs {
		except = append(except, p.String())
	}
	fmt.Fprintf(w, "outbound: TCP goes to the capture listener on %d, except %s\n", c.CapturePort, strings.Join(except, ", "))
	_, err := fmt.Fprintf(w, "installed with %s; remove with: meshctl redirect-traffic remove\n", b)
	return err
}

func joinUints(ns []uint32) string {
	s := make([]string, len(ns))
	for i, n := range ns {
		s[i] = strconv.FormatUint(uint64(n), 10)
	}
	return strings.Join(s, ",")
}

func port32(p uint, bad *[]string) uint32 {
	if p > 65535 {
		*bad = append(*bad, strconv.FormatUint(uint64(p), 10))
		return 0
	}
	return uint32(p)
}

// lookupUID accepts a uid or a user name of this host.
func lookupUID(flag, s string) (uint32, error) {
	if n, err := strconv.ParseUint(s, 10, 32); err == nil {
		return uint32(n), nil
	}
	u, err := user.Lookup(s)
	if err != nil {
		return 0, usageErrorf("%s %q: no such user here (give a user name of this host or a numeric uid)", flag, s)
	}
	n, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("%s %q: uid %q is not a number", flag, s, u.Uid)
	}
	return uint32(n), nil
}

// parsePrefix accepts a CIDR or a single address.
func parsePrefix(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("not an IPv4 CIDR (10.0.0.0/8) or address")
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

const redirectRemoveDescription = `
Remove meshd's interception rules: the nft table "ip meshd" and the
iptables chains MESHD_INBOUND and MESHD_OUTPUT with the jumps into them,
from every backend available here (--backend: one only). Nothing else is
touched; removing rules that are not there does nothing.`

func newRedirectRemoveCmd() *cobra.Command {
	var f redirectFlags
	cmd := &cobra.Command{
		Use:     "remove [flags]",
		Short:   "remove the interception rules",
		Long:    strings.TrimSpace(redirectRemoveDescription),
		Example: "  sudo meshctl redirect-traffic remove",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			b, err := backendOf(&f)
			if err != nil {
				return err
			}
			plan, err := redirect.RemovePlan(cmd.Context(), redirect.Exec, b)
			if err != nil {
				return err
			}
			if f.dryRun {
				return redirect.Print(cmd.OutOrStdout(), plan)
			}
			if err := redirect.Apply(cmd.Context(), redirect.Exec, plan); err != nil {
				return fmt.Errorf("removing the rules: %w", err)
			}
			if len(plan.Scripts) == 0 {
				_, err = fmt.Fprintln(cmd.OutOrStdout(), "no rules of meshd's were installed")
				return err
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), "removed meshd's interception rules")
			return err
		},
	}
	addBackendFlags(cmd, &f)
	return cmd
}

func newRedirectShowCmd() *cobra.Command {
	var out *outputFlag
	cmd := &cobra.Command{
		Use:   "show [-o table|json|yaml]",
		Short: "show meshd's interception rules installed here",
		Long:  "Show meshd's interception rules in every packet filter backend available here\n(nft and iptables), as each lists them. Exit status 1 when there are none.",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st := redirect.Show(cmd.Context(), redirect.Exec)
			err := out.print(cmd.OutOrStdout(), st, func(w io.Writer) error {
				if !st.Installed() {
					_, err := fmt.Fprintln(w, "no rules of meshd's are installed")
					return err
				}
				t := newTable(w, "BACKEND", "RULE")
				for _, b := range []redirect.Backend{redirect.NFT, redirect.IPTables} {
					for _, r := range st.Rules[b] {
						t.row(b, r)
					}
				}
				return t.flush()
			})
			if err == nil && !st.Installed() {
				return exitStatus(exitError)
			}
			return err
		},
	}
	out = addOutputFlag(cmd, formatTable, formatJSON, formatYAML)
	return cmd
}
