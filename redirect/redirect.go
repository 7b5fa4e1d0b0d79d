// Package redirect renders, installs and removes the packet filter rules
// of transparent interception for one workload (one host or network
// namespace): TCP arriving for the application's ports goes to the
// sidecar's inbound listener, and the workload's outbound TCP to the
// sidecar's capture listener, except Envoy's own connections (by uid) and
// whatever the operator excludes. meshctl redirect-traffic is its
// command line; docs/interception.md its guide.
//
// Two backends write the same rules. nft: one table, "ip meshd", replaced
// or deleted whole in one transaction. iptables (iptables-restore, either
// of Debian's iptables-nft or iptables-legacy): two chains of the nat
// table, MESHD_INBOUND and MESHD_OUTPUT, jumped to from PREROUTING and
// OUTPUT, filled and emptied in one iptables-restore transaction. Both
// are idempotent (installing again replaces the rules, removing what is
// not there does nothing) and touch nothing else.
//
// Rendering is pure (Config → script) and tested against golden text;
// applying runs the backend's own command, as root, in the current
// network namespace.
package redirect

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Names of what the rules create: the iptables chains and the nft table.
const (
	InboundChain  = "MESHD_INBOUND"
	OutputChain   = "MESHD_OUTPUT"
	NFTTable      = "meshd"
	nftFamily     = "ip"
	iptablesTable = "nat"
)

// Config is one workload's interception. Ports and uids are those of the
// catalog's proxy (capturePort, publicPort, appPort) and of the processes
// on the host.
type Config struct {
	// ProxyUID is the uid Envoy runs as: its own connections (to meshd, to
	// upstream endpoints, passthrough) must not be captured again.
	ProxyUID uint32
	// CapturePort is the sidecar's outbound capture listener.
	CapturePort uint32
	// InboundPort is the sidecar's inbound listener (publicPort); AppPorts
	// are redirected to it. Both zero: no inbound capture (a client-only
	// workload).
	InboundPort uint32
	AppPorts    []uint32
	// ExcludeUIDs are further processes' uids whose connections are never
	// captured: meshd and mesh-agent when they run on the host (mesh-agent
	// must reach meshd before Envoy can start).
	ExcludeUIDs []uint32
	// ExcludeOutboundPorts are destination ports never captured (ssh to
	// other hosts, a database reached directly).
	ExcludeOutboundPorts []uint32
	// ExcludeOutboundCIDRs are destinations never captured.
	ExcludeOutboundCIDRs []netip.Prefix
}

// Validate reports every problem with c, naming the flag (as meshctl
// redirect-traffic spells it) each comes from.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	port := func(flag string, p uint32) bool {
		if p == 0 || p > 65535 {
			bad("--%s %d is not a TCP port: use 1-65535", flag, p)
			return false
		}
		return true
	}
	if c.ProxyUID == 0 {
		bad("--proxy-uid is required and cannot be 0: Envoy must run as a user of its own, whose connections are let through (as root, every root process would bypass the mesh)")
	}
	port("capture-port", c.CapturePort)
	switch {
	case c.InboundPort == 0 && len(c.AppPorts) > 0:
		bad("--app-port needs --public-port: the sidecar's inbound listener (the catalog's publicPort) that the application's ports are redirected to")
	case c.InboundPort != 0 && len(c.AppPorts) == 0:
		bad("--public-port needs at least one --app-port: the application's ports to redirect to it")
	case c.InboundPort != 0:
		if port("public-port", c.InboundPort) && c.InboundPort == c.CapturePort {
			bad("--public-port and --capture-port are both %d: the inbound and capture listeners need ports of their own", c.CapturePort)
		}
	}
	seen := map[uint32]bool{}
	for _, p := range c.AppPorts {
		if !port("app-port", p) {
			continue
		}
		if p == c.InboundPort || p == c.CapturePort {
			bad("--app-port %d is the sidecar's own listener: redirecting it would loop", p)
		}
		if seen[p] {
			bad("--app-port %d is given twice", p)
		}
		seen[p] = true
	}
	for _, p := range c.ExcludeOutboundPorts {
		port("exclude-outbound-port", p)
	}
	for _, u := range c.ExcludeUIDs {
		if u == c.ProxyUID {
			bad("--exclude-uid %d is --proxy-uid, which is always excluded", u)
		}
	}
	for _, p := range c.ExcludeOutboundCIDRs {
		if !p.IsValid() || !p.Addr().Is4() {
			bad("--exclude-outbound-cidr %s: interception is IPv4 only; give an IPv4 address or CIDR", p)
		}
	}
	return errors.Join(errs...)
}

// uids is the proxy's uid then the excluded ones, sorted and unique.
func (c *Config) uids() []uint32 {
	u := append([]uint32{c.ProxyUID}, c.ExcludeUIDs...)
	slices.Sort(u)
	return slices.Compact(u)
}

func sortedPorts(ps []uint32) []uint32 {
	out := slices.Clone(ps)
	slices.Sort(out)
	return slices.Compact(out)
}

func sortedPrefixes(ps []netip.Prefix) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(ps))
	for _, p := range ps {
		out = append(out, p.Masked())
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	return slices.Compact(out)
}

// Script is what a backend runs: the command and its standard input.
type Script struct {
	Command []string
	Input   string
}

// String renders the script for --dry-run: the command, then its input.
func (s Script) String() string {
	return "# " + strings.Join(s.Command, " ") + " <<'EOF'\n" + s.Input + "EOF\n"
}

// NFTInstall is the nft script that replaces the meshd table with c's
// rules in one transaction (adding the table first makes the delete
// succeed whether or not it existed).
func NFTInstall(c *Config) Script {
	var b strings.Builder
	fmt.Fprintf(&b, "table %s %s\ndelete table %s %s\ntable %s %s {\n", nftFamily, NFTTable, nftFamily, NFTTable, nftFamily, NFTTable)
	if c.InboundPort != 0 {
		b.WriteString("\tchain prerouting {\n\t\ttype nat hook prerouting priority -100; policy accept;\n")
		fmt.Fprintf(&b, "\t\ttcp dport %s redirect to :%d\n", nftSet(numbers(sortedPorts(c.AppPorts))), c.InboundPort)
		b.WriteString("\t}\n")
	}
	b.WriteString("\tchain output {\n\t\ttype nat hook output priority -100; policy accept;\n")
	b.WriteString("\t\toifname \"lo\" return\n")
	fmt.Fprintf(&b, "\t\tmeta skuid %s return\n", nftSet(numbers(c.uids())))
	if cidrs := sortedPrefixes(c.ExcludeOutboundCIDRs); len(cidrs) > 0 {
		s := make([]string, len(cidrs))
		for i, p := range cidrs {
			s[i] = p.String()
		}
		fmt.Fprintf(&b, "\t\tip daddr %s return\n", nftSet(s))
	}
	if ports := sortedPorts(c.ExcludeOutboundPorts); len(ports) > 0 {
		fmt.Fprintf(&b, "\t\ttcp dport %s return\n", nftSet(numbers(ports)))
	}
	fmt.Fprintf(&b, "\t\tmeta l4proto tcp redirect to :%d\n", c.CapturePort)
	b.WriteString("\t}\n}\n")
	return Script{Command: []string{"nft", "-f", "-"}, Input: b.String()}
}

// NFTRemove deletes the meshd table, whether or not it exists.
func NFTRemove() Script {
	return Script{Command: []string{"nft", "-f", "-"},
		Input: fmt.Sprintf("table %s %s\ndelete table %s %s\n", nftFamily, NFTTable, nftFamily, NFTTable)}
}

func nftSet(items []string) string {
	if len(items) == 1 {
		return items[0]
	}
	return "{ " + strings.Join(items, ", ") + " }"
}

func numbers(ns []uint32) []string {
	out := make([]string, len(ns))
	for i, n := range ns {
		out[i] = strconv.FormatUint(uint64(n), 10)
	}
	return out
}

// The jumps from the nat table's built-in chains into meshd's, exactly as
// iptables-save prints them (so that an installed jump is recognised).
var (
	inboundJump = "-A PREROUTING -p tcp -j " + InboundChain
	outputJump  = "-A OUTPUT -p tcp -j " + OutputChain
)

// IPTablesInstall is the iptables-restore input (applied with --noflush,
// so nothing else of the nat table changes) that (re)creates meshd's
// chains with c's rules: declaring a chain creates or empties it. A jump
// is added only if saved, the nat table as iptables-save printed it, does
// not have it yet, so installing twice leaves one.
func IPTablesInstall(c *Config, saved string) Script {
	var b strings.Builder
	b.WriteString("*" + iptablesTable + "\n")
	inbound := c.InboundPort != 0
	if inbound {
		b.WriteString(":" + InboundChain + " - [0:0]\n")
	}
	b.WriteString(":" + OutputChain + " - [0:0]\n")
	if inbound {
		for _, p := range sortedPorts(c.AppPorts) {
			fmt.Fprintf(&b, "-A %s -p tcp -m tcp --dport %d -j REDIRECT --to-ports %d\n", InboundChain, p, c.InboundPort)
		}
	}
	fmt.Fprintf(&b, "-A %s -o lo -j RETURN\n", OutputChain)
	for _, u := range c.uids() {
		fmt.Fprintf(&b, "-A %s -m owner --uid-owner %d -j RETURN\n", OutputChain, u)
	}
	for _, p := range sortedPrefixes(c.ExcludeOutboundCIDRs) {
		fmt.Fprintf(&b, "-A %s -d %s -j RETURN\n", OutputChain, p)
	}
	for _, p := range sortedPorts(c.ExcludeOutboundPorts) {
		fmt.Fprintf(&b, "-A %s -p tcp -m tcp --dport %d -j RETURN\n", OutputChain, p)
	}
	fmt.Fprintf(&b, "-A %s -p tcp -j REDIRECT --to-ports %d\n", OutputChain, c.CapturePort)
	have := savedLines(saved)
	if inbound && !have[inboundJump] {
		b.WriteString(inboundJump + "\n")
	}
	if !inbound && have[inboundJump] {
		// The workload no longer has an inbound side: drop the old one.
		b.WriteString(strings.Replace(inboundJump, "-A", "-D", 1) + "\n")
		b.WriteString("-F " + InboundChain + "\n-X " + InboundChain + "\n")
	}
	if !have[outputJump] {
		b.WriteString(outputJump + "\n")
	}
	b.WriteString("COMMIT\n")
	return Script{Command: []string{"iptables-restore", "--noflush"}, Input: b.String()}
}

// IPTablesRemove is the iptables-restore input that deletes every jump
// into meshd's chains and the chains, as saved shows them; ok is false
// when there is nothing of meshd's to remove.
func IPTablesRemove(saved string) (s Script, ok bool) {
	var b strings.Builder
	b.WriteString("*" + iptablesTable + "\n")
	var chains []string
	for _, line := range strings.Split(saved, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "-A ") && (strings.HasSuffix(line, "-j "+InboundChain) || strings.HasSuffix(line, "-j "+OutputChain)) &&
			!strings.HasPrefix(line, "-A "+InboundChain+" ") && !strings.HasPrefix(line, "-A "+OutputChain+" "):
			// A jump from another chain (PREROUTING, OUTPUT): deleted by
			// its exact specification, however it was added.
			b.WriteString("-D" + line[2:] + "\n")
		case line == ":"+InboundChain+" - [0:0]" || strings.HasPrefix(line, ":"+InboundChain+" "):
			chains = append(chains, InboundChain)
		case line == ":"+OutputChain+" - [0:0]" || strings.HasPrefix(line, ":"+OutputChain+" "):
			chains = append(chains, OutputChain)
		}
	}
	for _, c := range chains {
		b.WriteString("-F " + c + "\n")
	}
	for _, c := range chains {
		b.WriteString("-X " + c + "\n")
	}
	b.WriteString("COMMIT\n")
	ok = len(chains) > 0 || strings.Contains(b.String(), "\n-D ")
	return Script{Command: []string{"iptables-restore", "--noflush"}, Input: b.String()}, ok
}

// savedLines are the trimmed lines of an iptables-save output.
func savedLines(saved string) map[string]bool {
	m := map[string]bool{}
	for _, line := range strings.Split(saved, "\n") {
		m[strings.TrimSpace(line)] = true
	}
	return m
}

// IPTablesRules are meshd's lines in an iptables-save output of the nat
// table: its chains, their rules and the jumps into them.
func IPTablesRules(saved string) []string {
	var out []string
	for _, line := range strings.Split(saved, "\n") {
		line = strings.TrimSpace(line)
		if strings.Contains(line, InboundChain) || strings.Contains(line, OutputChain) {
			out = append(out, line)
		}
	}
	return out
}
