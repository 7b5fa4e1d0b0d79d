package main

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshd/meshd/internal/adminclient"
	"github.com/meshd/meshd/internal/meshcheck"
)

const checkDescription = `
Check a running mesh, each check passed (✓) or failed (✗) with what was
found and, for a failure, what to do:

  - meshd is reachable, live (/healthz) and ready (a catalog is published);
  - the CA chain is valid: the signing intermediate and the roots are within
    their validity, and the signing root is in the trust bundle;
  - the CA certificates stay valid for --ca-min-validity or more;
  - workload certificates are renewed on time (none has less than a quarter
    of its life left: meshd reissues at half life);
  - every connected proxy has ACKed its configuration (none behind for
    --stale-after or more);
  - no proxy rejected its configuration (NACK);
  - no mTLS migration is overdue (--mtls-migration-overdue of meshd);
  - every connected proxy is in the catalog;
  - every proxy's configuration renders;
  - Envoy sidecars are started with the drain flags (as far as meshd can
    tell: what their bootstraps ask for).

Exit status 1 if any check fails, 3 if meshd cannot be reached.`

const checkExamples = `
  meshctl check
  meshctl check --stale-after 5s -o json`

func newCheckCmd() *cobra.Command {
	var o meshcheck.Options
	cmd := &cobra.Command{
		Use:     "check",
		Short:   "check meshd, the CA and every proxy: each ✓ or ✗ with a hint; exit 1 on a failure",
		Long:    strings.TrimSpace(checkDescription),
		Example: strings.Trim(checkExamples, "\n"),
		Args:    noArgs,
	}
	output := addOutputFlag(cmd, formatTable, formatJSON, formatYAML)
	cmd.Flags().DurationVar(&o.StaleAfter, "stale-after", 30*time.Second, "a connected proxy that has not ACKed its configuration for this `DURATION` fails the check")
	cmd.Flags().DurationVar(&o.CAMinValidity, "ca-min-validity", 30*24*time.Hour, "the signing intermediate and trusted roots must stay valid at least this `DURATION`")
	return withAdmin(cmd, func(cmd *cobra.Command, c *adminclient.Client, _ []string) error {
		in, err := meshcheck.Fetch(cmd.Context(), c)
		if err != nil {
			return err
		}
		results := meshcheck.Evaluate(in, o)
		if err := output.print(cmd.OutOrStdout(), results, func(w io.Writer) error { return printChecks(w, results) }); err != nil {
			return err
		}
		if meshcheck.Failed(results) {
			return exitStatus(exitError)
		}
		return nil
	})
}

func printChecks(w io.Writer, rs []meshcheck.Result) error {
	failed := 0
	for _, r := range rs {
		mark := "✓"
		if !r.OK {
			mark = "✗"
			failed++
		}
		fmt.Fprintf(w, "%s %s\n    %s\n", mark, r.Name, r.Detail)
		for _, p := range r.Problems {
			fmt.Fprintf(w, "    - %s\n", p)
		}
		if !r.OK && r.Hint != "" {
			fmt.Fprintf(w, "    hint: %s\n", r.Hint)
		}
	}
	var err error
	if failed > 0 {
		_, err = fmt.Fprintf(w, "\n%d of %d checks failed\n", failed, len(rs))
	} else {
		_, err = fmt.Fprintf(w, "\nall %d checks passed\n", len(rs))
	}
	return err
}
