// Command meshctl is meshd's operator CLI. This file holds only argument
// parsing and wiring; what meshctl renders is decided in package bootstrap
// (and sds for certificates).
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/meshd/meshd/internal/datadir"
	"github.com/meshd/meshd/mesh"
)

// Exit codes.
const (
	exitOK    = 0
	exitError = 1 // the command ran and failed
	exitUsage = 2 // the command line was wrong
)

// Defaults shared by several subcommands.
const (
	// defaultTrustDomain must match meshd's own default trust domain.
	defaultTrustDomain = mesh.DefaultTrustDomain
)

// defaultDataDir is where meshd keeps its state unless told otherwise
// ($XDG_STATE_HOME/meshd, else ~/.local/state/meshd: internal/datadir, the
// same function meshd uses), or "" if there is no such place (no HOME):
// then the commands that need it ask for --data-dir.
func defaultDataDir() string { return datadir.DefaultOr("") }

// checkDataDir reports an empty --data-dir (no default could be found).
func checkDataDir(fs *flagSet, dir string) bool {
	if dir == "" {
		usageErrorf(fs, "--data-dir is required here: neither XDG_STATE_HOME nor HOME is set, so there is no default (meshd's is $XDG_STATE_HOME/meshd or ~/.local/state/meshd)")
		return false
	}
	return true
}

// rootCertPath is where meshd's CA keeps its root certificate: the layout
// sds.LoadOrCreate uses (<data-dir>/ca/root-cert.pem). TestRootCertPathMatchesSDS
// pins the two together.
func rootCertPath(dataDir string) string {
	return filepath.Join(dataDir, "ca", "root-cert.pem")
}

type command struct {
	name    string
	summary string
	run     func(args []string, stdout, stderr io.Writer) int
}

func commands() []command {
	return []command{
		{"bootstrap", "print the bootstrap an Envoy sidecar or a proxyless gRPC app needs to reach meshd", runBootstrap},
		{"certs", "certificate helpers for development (certs issue)", runCerts},
		{"analyze", "check a catalog and mesh policy offline: errors and likely mistakes", runAnalyze},
		{"token", "bootstrap tokens that authenticate proxies to meshd (token create, token revoke)", runToken},
		{"ca", "mesh CA status and rotation (ca status, ca rotate-root, ca rotate-intermediate)", runCA},
		{"version", "print meshctl's version", runVersion},
		{"help", "explain a command: meshctl help <command>", runHelp},
	}
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run is main without the process: tests call it with their own writers.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		printUsage(stderr)
		return exitUsage
	}
	name := args[0]
	switch name {
	case "-h", "-help", "--help":
		printUsage(stdout)
		return exitOK
	case "-version", "--version":
		return runVersion(args[1:], stdout, stderr)
	}
	for _, c := range commands() {
		if c.name == name {
			return c.run(args[1:], stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "meshctl: unknown command %q\n\n", name)
	printUsage(stderr)
	return exitUsage
}

func printUsage(w io.Writer) {
	fmt.Fprint(w, `meshctl is the command-line tool for meshd, an Envoy xDS control plane.

Usage:
  meshctl <command> [flags]

Commands:
`)
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
	}
	fmt.Fprint(w, `
Run "meshctl <command> -h" (or "meshctl help <command>") for a command's flags and examples.
`)
}

func runHelp(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		printUsage(stdout)
		return exitOK
	}
	if len(args) > 1 && args[0] == "certs" {
		return runCerts(append(args[1:], "-h"), stdout, stderr)
	}
	if len(args) > 1 && args[0] == "token" {
		return runToken(append(args[1:], "-h"), stdout, stderr)
	}
	if len(args) > 1 && args[0] == "ca" {
		return runCA(append(args[1:], "-h"), stdout, stderr)
	}
	for _, c := range commands() {
		if c.name == args[0] && c.name != "help" {
			return c.run([]string{"-h"}, stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "meshctl help: unknown command %q\n\n", args[0])
	printUsage(stderr)
	return exitUsage
}

// flagSet is a subcommand's flags plus its full help text.
type flagSet struct {
	*flag.FlagSet
	help func(w io.Writer)
}

// newFlagSet makes a subcommand's flag set. Its -h output (to stdout) is the
// description, the flags and the examples; after a mistake only the mistake
// and a pointer to -h are printed (to stderr), so the message is not buried
// under the whole manual.
func newFlagSet(name, description, examples string, stderr io.Writer) *flagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	f := &flagSet{FlagSet: fs}
	f.help = func(w io.Writer) {
		fmt.Fprintf(w, "Usage: %s [flags]\n\n%s\n\nFlags:\n", name, strings.TrimSpace(description))
		fs.SetOutput(w)
		fs.PrintDefaults()
		fs.SetOutput(stderr)
		fmt.Fprintf(w, "\nExamples:\n%s\n", strings.Trim(examples, "\n"))
	}
	fs.Usage = func() { fmt.Fprintf(fs.Output(), "Run '%s -h' for every flag, with examples.\n", name) }
	return f
}

// parseFlags parses args; ok is false when the caller should return code
// (0 after -h, 2 after a usage error).
func parseFlags(fs *flagSet, args []string, stdout io.Writer) (code int, ok bool) {
	for _, a := range args {
		if a == "--" {
			break
		}
		if a == "-h" || a == "-help" || a == "--help" {
			fs.help(stdout)
			return exitOK, false
		}
	}
	if err := fs.Parse(args); err != nil {
		// flag has already printed the error and the pointer to -h.
		return exitUsage, false
	}
	if fs.NArg() > 0 {
		usageErrorf(fs, "unexpected argument %q: %s takes only flags", fs.Arg(0), fs.Name())
		return exitUsage, false
	}
	return exitOK, true
}

// usageErrorf reports a command-line mistake and where to find help.
func usageErrorf(fs *flagSet, format string, args ...any) {
	fmt.Fprintf(fs.Output(), "%s: %s\n", fs.Name(), fmt.Sprintf(format, args...))
	fs.Usage()
}

// setFlags lists the flags given on the command line (as opposed to
// defaults), sorted.
func setFlags(fs *flagSet) []string {
	var names []string
	fs.Visit(func(f *flag.Flag) { names = append(names, f.Name) })
	sort.Strings(names)
	return names
}
