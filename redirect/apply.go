package redirect

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strings"
)

// Backend is the packet filter the rules are written with.
type Backend string

const (
	// Auto picks NFT when the nft command works here, else IPTables.
	Auto     Backend = "auto"
	NFT      Backend = "nft"
	IPTables Backend = "iptables"
)

// Backends lists the values --backend accepts.
var Backends = []Backend{Auto, NFT, IPTables}

// Runner runs a command with the given standard input and returns its
// combined output. Exec is the real one; tests substitute their own.
type Runner func(ctx context.Context, argv []string, stdin string) (string, error)

// Exec runs argv on this host, in the current network namespace.
func Exec(ctx context.Context, argv []string, stdin string) (string, error) {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdin = strings.NewReader(stdin)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err != nil {
		var ee *exec.Error
		if errors.As(err, &ee) {
			return out.String(), fmt.Errorf("%s: %w (install Debian's %s package)", argv[0], err, packageOf(argv[0]))
		}
		return out.String(), fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

func packageOf(cmd string) string {
	if strings.HasPrefix(cmd, "nft") {
		return "nftables"
	}
	return "iptables"
}

// available reports whether a backend's commands work here (as root).
func available(ctx context.Context, run Runner, b Backend) bool {
	switch b {
	case NFT:
		_, err := run(ctx, []string{"nft", "list", "tables"}, "")
		return err == nil
	case IPTables:
		_, err := run(ctx, []string{"iptables-save", "-t", iptablesTable}, "")
		return err == nil
	}
	return false
}

// Resolve turns Auto into the backend to use: nft when it works here,
// else iptables; an explicit backend is returned as it is.
func Resolve(ctx context.Context, run Runner, b Backend) (Backend, error) {
	switch b {
	case NFT, IPTables:
		return b, nil
	case Auto, "":
		for _, x := range []Backend{NFT, IPTables} {
			if available(ctx, run, x) {
				return x, nil
			}
		}
		return "", errors.New("neither nft nor iptables works here: install Debian's nftables or iptables package, and run as root")
	}
	return "", fmt.Errorf("unknown backend %q: use auto, nft or iptables", b)
}

func other(b Backend) Backend {
	if b == NFT {
		return IPTables
	}
	return NFT
}

// Plan is what Install or Remove runs, in order.
type Plan struct {
	Backend Backend
	Scripts []Script
}

// InstallPlan is what installing c with backend b (resolved) runs: the
// backend's rules, and the removal of meshd's rules from the other
// backend if it is available and has any (switching backends must not
// leave two sets of redirects).
func InstallPlan(ctx context.Context, run Runner, b Backend, c *Config) (Plan, error) {
	if err := c.Validate(); err != nil {
		return Plan{}, err
	}
	p := Plan{Backend: b}
	switch b {
	case NFT:
		p.Scripts = append(p.Scripts, NFTInstall(c))
	case IPTables:
		saved, err := run(ctx, []string{"iptables-save", "-t", iptablesTable}, "")
		if err != nil {
			return Plan{}, err
		}
		p.Scripts = append(p.Scripts, IPTablesInstall(c, saved))
	}
	rm, err := removeScripts(ctx, run, other(b))
	if err != nil {
		return Plan{}, err
	}
	p.Scripts = append(p.Scripts, rm...)
	return p, nil
}

// RemovePlan removes meshd's rules from every backend available here
// (from b alone when it is not Auto).
func RemovePlan(ctx context.Context, run Runner, b Backend) (Plan, error) {
	backends := []Backend{NFT, IPTables}
	if b != Auto && b != "" {
		backends = []Backend{b}
	}
	p := Plan{Backend: b}
	for _, x := range backends {
		if b == Auto && !available(ctx, run, x) {
			continue
		}
		s, err := removeScripts(ctx, run, x)
		if err != nil {
			return Plan{}, err
		}
		p.Scripts = append(p.Scripts, s...)
	}
	return p, nil
}

// removeScripts is what removes meshd's rules from backend b, if there
// are any (nothing when b is not available here).
func removeScripts(ctx context.Context, run Runner, b Backend) ([]Script, error) {
	switch b {
	case NFT:
		if _, err := run(ctx, []string{"nft", "list", "table", nftFamily, NFTTable}, ""); err != nil {
			return nil, nil // no table (or no nft)
		}
		return []Script{NFTRemove()}, nil
	case IPTables:
		saved, err := run(ctx, []string{"iptables-save", "-t", iptablesTable}, "")
		if err != nil {
			return nil, nil // no iptables here
		}
		if s, ok := IPTablesRemove(saved); ok {
			return []Script{s}, nil
		}
	}
	return nil, nil
}

// Apply runs a plan's scripts in order.
func Apply(ctx context.Context, run Runner, p Plan) error {
	for _, s := range p.Scripts {
		if _, err := run(ctx, s.Command, s.Input); err != nil {
			return err
		}
	}
	return nil
}

// Print writes a plan's scripts as --dry-run shows them.
func Print(w io.Writer, p Plan) error {
	if len(p.Scripts) == 0 {
		_, err := fmt.Fprintln(w, "# nothing to do: no rules of meshd's are installed")
		return err
	}
	for _, s := range p.Scripts {
		if _, err := io.WriteString(w, s.String()); err != nil {
			return err
		}
	}
	return nil
}

// State is what Show finds: meshd's rules per backend.
type State struct {
	// Rules maps a backend to meshd's rules in it, as the backend lists
	// them; a backend without any is absent.
	Rules map[Backend][]string `json:"rules"`
}

// Installed reports whether any backend has meshd's rules.
func (s State) Installed() bool { return len(s.Rules) > 0 }

// Show lists meshd's rules in every backend available here.
func Show(ctx context.Context, run Runner) State {
	st := State{Rules: map[Backend][]string{}}
	if out, err := run(ctx, []string{"nft", "list", "table", nftFamily, NFTTable}, ""); err == nil {
		var lines []string
		for _, l := range strings.Split(out, "\n") {
			if l = strings.TrimSpace(l); l != "" {
				lines = append(lines, l)
			}
		}
		st.Rules[NFT] = lines
	}
	if out, err := run(ctx, []string{"iptables-save", "-t", iptablesTable}, ""); err == nil {
		if r := IPTablesRules(out); len(r) > 0 {
			st.Rules[IPTables] = r
		}
	}
	return st
}
