// Command meshctl is meshd's operator CLI. This file holds the command tree
// and how errors become exit codes; each command's flags and output are in
// its own file, what it renders in the packages it calls (bootstrap, sds,
// policy, internal/adminclient for a running meshd).
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/meshd/meshd/internal/datadir"
	"github.com/meshd/meshd/mesh"
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
func checkDataDir(dir string) error {
	if dir == "" {
		return usageErrorf("--data-dir is required here: neither XDG_STATE_HOME nor HOME is set, so there is no default (meshd's is $XDG_STATE_HOME/meshd or ~/.local/state/meshd)")
	}
	return nil
}

// rootCertPath is where meshd's CA keeps its root certificate: the layout
// sds.LoadOrCreate uses (<data-dir>/ca/root-cert.pem). TestRootCertPathMatchesSDS
// pins the two together.
func rootCertPath(dataDir string) string {
	return filepath.Join(dataDir, "ca", "root-cert.pem")
}

const rootLong = `meshctl is the command-line tool for meshd, an Envoy xDS control plane.

Some commands work on files (bootstrap, token, certs issue, analyze: they
need meshd's --data-dir or the catalog and policy files); the others ask a
running meshd through its admin API (--admin-address, default
127.0.0.1:15014).

Exit status: 0 success; 1 the command ran and failed (or found problems);
2 the command line was wrong; 3 meshd's admin API could not be reached;
4 meshd refused the request's credentials.`

// newRoot builds the command tree.
func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "meshctl",
		Short: "the command-line tool for meshd",
		Long:  rootLong,
		// Commands print their own errors with the command's path, and
		// usage only after a command-line mistake (main.go: report).
		SilenceErrors: true,
		SilenceUsage:  true,
		// Not cobra's own version flag: meshctl --version prints exactly
		// what meshctl version prints.
		Args: cobra.ArbitraryArgs,
		RunE: groupRun,
	}
	root.Flags().Bool("version", false, "print meshctl's version (as meshctl version)")
	root.SetFlagErrorFunc(flagError)
	root.AddCommand(
		newBootstrapCmd(),
		newTokenCmd(),
		newCertsCmd(),
		newCACmd(),
		newAnalyzeCmd(),
		newStatusCmd(),
		newConfigCmd(),
		newCheckCmd(),
		newAuthzCmd(),
		newDescribeCmd(),
		newStatCmd(),
		newEdgesCmd(),
		newTapCmd(),
		newRedirectCmd(),
		newVersionCmd(),
	)
	root.SetHelpCommand(newHelpCmd())
	root.CompletionOptions.HiddenDefaultCmd = false
	return root
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := runContext(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run is main without the process: tests call it with their own writers.
func run(args []string, stdout, stderr io.Writer) int {
	return runContext(context.Background(), args, stdout, stderr)
}

func runContext(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := newRoot()
	root.SetArgs(normalizeArgs(args))
	root.SetOut(stdout)
	root.SetErr(stderr)
	cmd, err := root.ExecuteContextC(ctx)
	if err != nil {
		return report(cmd, err, stderr)
	}
	return exitOK
}

// normalizeArgs accepts Go's single-dash spellings of help (-help), which
// the flag package meshctl used before taught people.
func normalizeArgs(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		if a == "--" {
			copy(out[i:], args[i:])
			break
		}
		if a == "-help" {
			a = "--help"
		}
		out[i] = a
	}
	return out
}

// report prints err for cmd and returns the exit status it stands for.
func report(cmd *cobra.Command, err error, stderr io.Writer) int {
	if cmd == nil {
		cmd = &cobra.Command{Use: "meshctl"}
	}
	code := exitCodeOf(err)
	if msg := errorMessage(err); msg != "" {
		fmt.Fprintf(stderr, "%s: %s\n", cmd.CommandPath(), msg)
	}
	if code == exitUsage && !isSilent(err) {
		fmt.Fprintf(stderr, "Run '%s --help' for usage.\n", cmd.CommandPath())
	}
	return code
}
