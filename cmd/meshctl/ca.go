package main

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshd/meshd/internal/adminclient"
	"github.com/meshd/meshd/sds"
)

func newCACmd() *cobra.Command {
	return group("ca", "mesh CA status and rotation (status, rotate-root, rotate-intermediate)",
		`All talk to meshd's admin API (--admin-address). Rotations advance on their
own: the new root is trusted first, leaves move to the new chain once every
connected proxy has ACKed it, and the rotation is over once no cached leaf
is from the old chain; the next one may then start. An old root stays in
the bundle (retiring) until no leaf under it can still be valid.
rotate-root --abort and rotate-intermediate --abort abandon the rotation in
progress. Follow them with meshctl ca status; docs/identity.md has the
state table.`,
		newCAStatusCmd(), newCARotateCmd("root"), newCARotateCmd("intermediate"))
}

func newCAStatusCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "status [flags]",
		Short:   "show the signing root and intermediate, the trusted roots, rotation progress and every issued identity",
		Long:    "Show meshd's CA: signing chain, trusted roots, rotation progress and issued identities (GET /ca/status).",
		Example: "  meshctl ca status\n  meshctl ca status -o json",
		Args:    noArgs,
	}
	output := addOutputFlag(cmd, formatTable, formatJSON, formatYAML)
	asJSON := cmd.Flags().Bool("json", false, "print meshd's JSON (as -o json)")
	_ = cmd.Flags().MarkDeprecated("json", "use -o json")
	return withAdmin(cmd, func(cmd *cobra.Command, c *adminclient.Client, _ []string) error {
		var st sds.Status
		if err := c.GetJSON(cmd.Context(), "/ca/status", nil, &st); err != nil {
			return err
		}
		if *asJSON {
			output.value = formatJSON
		}
		return output.print(cmd.OutOrStdout(), st, func(w io.Writer) error { return printStatus(w, st) })
	})
}

func short(fp string) string {
	if len(fp) > 16 {
		return fp[:16]
	}
	return fp
}

func printStatus(w io.Writer, st sds.Status) error {
	fmt.Fprintf(w, "trust domain:  %s\n", st.TrustDomain)
	keyNote := ""
	if k := st.SigningRoot.RootKeyAvail; k != nil && !*k {
		keyNote = " (root key offline)"
	}
	fmt.Fprintf(w, "signing root:  %s  sha256 %s  expires %s%s\n", st.SigningRoot.Subject, short(st.SigningRoot.SHA256), st.SigningRoot.NotAfter.Format(time.RFC3339), keyNote)
	fmt.Fprintf(w, "intermediate:  %s  serial %s  expires %s  (%s)\n", st.Signing.Subject, st.Signing.Serial, st.Signing.NotAfter.Format(time.RFC3339), st.Signing.Generation)
	fmt.Fprintf(w, "trust bundle:  %d root(s)\n", len(st.TrustedRoots))
	for _, r := range st.TrustedRoots {
		fmt.Fprintf(w, "  - sha256 %s  expires %s  (%s)\n", short(r.SHA256), r.NotAfter.Format(time.RFC3339), r.Generation)
	}
	if r := st.Rotation; r != nil {
		fmt.Fprintf(w, "rotation:      %s rotation, phase %s (started %s)\n", r.Kind, r.Phase, r.Started.Format(time.RFC3339))
		if !r.Aborted.IsZero() {
			fmt.Fprintf(w, "  aborted %s: rolling back to %s; %s retires once no cached leaf is from it\n", r.Aborted.Format(time.RFC3339), r.To, r.From)
		}
		switch r.Phase {
		case sds.PhasePropagating:
			fmt.Fprintf(w, "  waiting for %d proxy(ies) to ACK the new bundle: %s\n", len(r.PendingProxies), strings.Join(r.PendingProxies, ", "))
		case sds.PhaseReissuing:
			fmt.Fprintf(w, "  %d cached leaf(s) still on the old chain; old leaves valid until %s", r.StaleLeaves, r.OldLeavesValidUntil.Format(time.RFC3339))
			if len(r.PendingProxies) > 0 {
				fmt.Fprintf(w, "; proxies without the new root: %s", strings.Join(r.PendingProxies, ", "))
			}
			fmt.Fprintln(w)
		}
	} else {
		fmt.Fprintf(w, "rotation:      none\n")
	}
	for _, rg := range st.Retiring {
		fmt.Fprintf(w, "retiring:      root sha256 %s (%s) leaves the bundle at %s, when its last leaf has expired\n", short(rg.RootSHA256), rg.Generation, rg.Until.Format(time.RFC3339))
	}
	fmt.Fprintf(w, "identities:    %d\n", len(st.Leaves))
	if len(st.Leaves) > 0 {
		t := newTable(w, "  SPIFFE ID", "SERIAL", "NOT AFTER", "ISSUER")
		for _, l := range st.Leaves {
			t.row("  "+l.SPIFFEID, l.Serial, l.NotAfter.Format(time.RFC3339), l.Generation)
		}
		return t.flush()
	}
	return nil
}

func newCARotateCmd(kind string) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rotate-" + kind + " [flags]",
		Short: "start a " + kind + " rotation (--abort: abandon the one in progress)",
		Long: "Start a " + kind + " rotation in the running meshd (POST /ca/rotate-" + kind + "). It proceeds on its own; watch it with meshctl ca status.\n\n" +
			"With --abort, abandon the " + kind + " rotation in progress (POST /ca/rotate-" + kind + "/abort): before the switch the new generation is deleted; " +
			"after it, signing returns to the old generation, every leaf is reissued under it, and the new root stays trusted until its leaves have expired.",
		Example: "  meshctl ca rotate-" + kind + "\n  meshctl ca rotate-" + kind + " --abort\n  meshctl ca status",
		Args:    noArgs,
	}
	output := addOutputFlag(cmd, formatTable, formatJSON, formatYAML)
	abort := cmd.Flags().Bool("abort", false, "abandon the "+kind+" rotation in progress instead of starting one")
	return withAdmin(cmd, func(cmd *cobra.Command, c *adminclient.Client, _ []string) error {
		path, done := "/ca/rotate-"+kind, "started"
		if *abort {
			path, done = path+"/abort", "aborted"
		}
		var st sds.Status
		if err := c.PostJSON(cmd.Context(), path, nil, &st); err != nil {
			return err
		}
		return output.print(cmd.OutOrStdout(), st, func(w io.Writer) error {
			fmt.Fprintf(w, "%s rotation %s\n", kind, done)
			return printStatus(w, st)
		})
	})
}
