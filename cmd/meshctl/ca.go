package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/meshd/meshd/sds"
)

// defaultAdminAddress is meshd's default --admin-listen.
const defaultAdminAddress = "127.0.0.1:15014"

func runCA(args []string, stdout, stderr io.Writer) int {
	usage := func(w io.Writer) {
		fmt.Fprint(w, `Usage: meshctl ca <subcommand> [flags]

Subcommands:
  status               show the signing root and intermediate, the trusted
                       roots, rotation progress and every issued identity
  rotate-root          start a root rotation (new root and intermediate)
  rotate-intermediate  start an intermediate rotation under the same root

All talk to meshd's admin API (--admin-address). Rotations advance on their
own: the new root is trusted first, leaves move to the new chain once every
connected proxy has ACKed it, and the old root leaves the bundle when no
leaf under it can still be valid. Follow them with meshctl ca status.
`)
	}
	if len(args) == 0 {
		usage(stderr)
		return exitUsage
	}
	switch args[0] {
	case "status":
		return runCAStatus(args[1:], stdout, stderr)
	case "rotate-root":
		return runCARotate("root", args[1:], stdout, stderr)
	case "rotate-intermediate":
		return runCARotate("intermediate", args[1:], stdout, stderr)
	case "-h", "-help", "--help", "help":
		usage(stdout)
		return exitOK
	}
	fmt.Fprintf(stderr, "meshctl ca: unknown subcommand %q\n\n", args[0])
	usage(stderr)
	return exitUsage
}

func adminCall(method, addr, path string) (sds.Status, error) {
	var st sds.Status
	req, err := http.NewRequest(method, "http://"+addr+path, nil)
	if err != nil {
		return st, err
	}
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		return st, fmt.Errorf("%w (is meshd running with --admin-listen %s?)", err, addr)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return st, err
	}
	if resp.StatusCode/100 != 2 {
		return st, fmt.Errorf("meshd answered %s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	if err := json.Unmarshal(body, &st); err != nil {
		return st, fmt.Errorf("decoding meshd's answer: %w", err)
	}
	return st, nil
}

func runCAStatus(args []string, stdout, stderr io.Writer) int {
	flags := newFlagSet("meshctl ca status", "Show meshd's CA: signing chain, trusted roots, rotation progress and issued identities.", "  meshctl ca status\n  meshctl ca status --json", stderr)
	addr := flags.String("admin-address", defaultAdminAddress, "`HOST:PORT` of meshd's admin API")
	asJSON := flags.Bool("json", false, "print meshd's JSON instead of a table")
	if code, ok := parseFlags(flags, args, stdout); !ok {
		return code
	}
	st, err := adminCall(http.MethodGet, *addr, "/ca/status")
	if err != nil {
		fmt.Fprintf(stderr, "meshctl ca status: %v\n", err)
		return exitError
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(st)
		return exitOK
	}
	printStatus(stdout, st)
	return exitOK
}

func short(fp string) string {
	if len(fp) > 16 {
		return fp[:16]
	}
	return fp
}

func printStatus(w io.Writer, st sds.Status) {
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
	fmt.Fprintf(w, "identities:    %d\n", len(st.Leaves))
	if len(st.Leaves) > 0 {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  SPIFFE ID\tSERIAL\tNOT AFTER\tISSUER")
		for _, l := range st.Leaves {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", l.SPIFFEID, l.Serial, l.NotAfter.Format(time.RFC3339), l.Generation)
		}
		_ = tw.Flush()
	}
}

func runCARotate(kind string, args []string, stdout, stderr io.Writer) int {
	name := "meshctl ca rotate-" + kind
	desc := "Start a " + kind + " rotation in the running meshd (POST /ca/rotate-" + kind + "). It proceeds on its own; watch it with meshctl ca status."
	flags := newFlagSet(name, desc, "  "+name+"\n  meshctl ca status", stderr)
	addr := flags.String("admin-address", defaultAdminAddress, "`HOST:PORT` of meshd's admin API")
	if code, ok := parseFlags(flags, args, stdout); !ok {
		return code
	}
	st, err := adminCall(http.MethodPost, *addr, "/ca/rotate-"+kind)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return exitError
	}
	fmt.Fprintf(stdout, "%s rotation started\n", kind)
	printStatus(stdout, st)
	return exitOK
}
