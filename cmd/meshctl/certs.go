package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/sds"
	"github.com/meshd/meshd/xds"
)

func runCerts(args []string, stdout, stderr io.Writer) int {
	usage := func(w io.Writer) {
		fmt.Fprint(w, `Usage: meshctl certs <subcommand> [flags]

Subcommands:
  list    the identities meshd has issued certificates for: serial, expiry
          and issuer chain (asks meshd's admin API)
  issue   write a workload certificate, key and trust bundle to a directory
          (development only: it signs with the CA key in the data directory)

Run "meshctl certs <subcommand> -h" for its flags.
`)
	}
	if len(args) == 0 {
		usage(stderr)
		return exitUsage
	}
	switch args[0] {
	case "issue":
		return runCertsIssue(args[1:], stdout, stderr)
	case "list":
		return runCertsList(args[1:], stdout, stderr)
	case "-h", "-help", "--help", "help":
		usage(stdout)
		return exitOK
	}
	fmt.Fprintf(stderr, "meshctl certs: unknown subcommand %q\n\n", args[0])
	usage(stderr)
	return exitUsage
}

const certsIssueDescription = `
Issue a certificate for a service's identity and write cert.pem, key.pem
(mode 0600) and ca.pem (the trust bundle) into --out, the layout a proxyless
gRPC app's file_watcher certificate provider reads (see meshctl bootstrap
--flavor grpc --cert-dir).

DEVELOPMENT ONLY, until the node agent exists: meshctl opens meshd's CA in
--data-dir and signs with its private key, so it needs read access to that
key, and whoever can run it can mint any identity. It never creates a CA:
start meshd once with the same --data-dir first. The certificate is
short-lived (24h) and is not renewed: run the command again before it
expires; gRPC picks the new files up on its next refresh.`

const certsIssueExamples = `
  # Identity for the quickstart's proxyless gRPC server hello:
  meshctl certs issue --service hello --out ~/.local/state/meshd/certs/hello

  # A service running as another service account, in namespace shop:
  meshctl certs issue --service cart --namespace shop --service-account cart-v2 \
      --trust-domain example.org --data-dir /var/lib/meshd --out /run/cart/certs`

func runCertsIssue(args []string, stdout, stderr io.Writer) int {
	flags := newFlagSet("meshctl certs issue", certsIssueDescription, certsIssueExamples, stderr)
	service := flags.String("service", "", "catalog name of the service (required); also its DNS SANs")
	namespace := flags.String("namespace", mesh.DefaultNamespace, "namespace of the service")
	serviceAccount := flags.String("service-account", "", "service account in the SPIFFE ID (default: the service name, as in the catalog)")
	trustDomain := flags.String("trust-domain", defaultTrustDomain, "SPIFFE trust domain; must be meshd's")
	dataDir := flags.String("data-dir", defaultDataDir(), "`DIR` where meshd keeps its state, including the CA (DIR/ca)")
	out := flags.String("out", "", "`DIR` to write cert.pem, key.pem and ca.pem into (required; created 0700 if missing)")
	if code, ok := parseFlags(flags, args, stdout); !ok {
		return code
	}
	if *service == "" {
		usageErrorf(flags, "--service is required, e.g. --service hello")
		return exitUsage
	}
	if *out == "" {
		usageErrorf(flags, "--out is required: name the directory the app's bootstrap --cert-dir points at")
		return exitUsage
	}
	if *serviceAccount == "" {
		*serviceAccount = *service
	}
	for _, c := range []struct{ flag, value string }{{"service", *service}, {"namespace", *namespace}, {"service-account", *serviceAccount}} {
		if err := mesh.ValidName(c.value); err != nil {
			usageErrorf(flags, "--%s: %v", c.flag, err)
			return exitUsage
		}
	}

	if !checkDataDir(flags, *dataDir) {
		return exitUsage
	}
	ca, err := sds.LoadOrCreate(sds.Options{
		DataDir:     *dataDir,
		TrustDomain: *trustDomain,
		NoCreate:    true,
		Logger:      slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		fmt.Fprintf(stderr, "meshctl certs issue: opening the CA in %s: %v\n", *dataDir, err)
		if errors.Is(err, fs.ErrPermission) {
			fmt.Fprintln(stderr, "meshctl certs issue: this command needs read access to the CA key; run it as the user meshd runs as")
		}
		return exitError
	}
	key := mesh.ServiceKey{Namespace: *namespace, Name: *service}
	id := mesh.Identity{TrustDomain: *trustDomain, Namespace: *namespace, ServiceAccount: *serviceAccount}
	leaf, err := ca.IssueLeaf(id, xds.DNSNames(key, *trustDomain))
	if err != nil {
		fmt.Fprintf(stderr, "meshctl certs issue: issuing a certificate for %s: %v\n", id.SPIFFEID(), err)
		return exitError
	}
	if err := sds.WriteFiles(*out, leaf, ca.RootCertPEM()); err != nil {
		fmt.Fprintf(stderr, "meshctl certs issue: %v\n", err)
		return exitError
	}
	fmt.Fprintf(stdout, "wrote %s, %s and %s for %s (valid until %s; run again before then)\n",
		filepath.Join(*out, sds.CertFileName), filepath.Join(*out, sds.KeyFileName), filepath.Join(*out, sds.BundleFileName),
		id.SPIFFEID(), leaf.NotAfter.UTC().Format(time.RFC3339))
	return exitOK
}

func runCertsList(args []string, stdout, stderr io.Writer) int {
	flags := newFlagSet("meshctl certs list", "List the workload identities meshd has certificates for: SPIFFE ID, serial,\nvalidity and the chain each was issued under (intermediate, then root).",
		"  meshctl certs list\n  meshctl certs list --admin-address 10.0.0.5:15014", stderr)
	addr := flags.String("admin-address", defaultAdminAddress, "`HOST:PORT` of meshd's admin API")
	if code, ok := parseFlags(flags, args, stdout); !ok {
		return code
	}
	st, err := adminCall(http.MethodGet, *addr, "/ca/status")
	if err != nil {
		fmt.Fprintf(stderr, "meshctl certs list: %v\n", err)
		return exitError
	}
	printCerts(stdout, st)
	return exitOK
}

// printCerts shows each identity's certificate with its issuer chain. The
// chain is named by generation: the intermediate and root of that
// generation, as listed by meshctl ca status.
func printCerts(w io.Writer, st sds.Status) {
	chain := map[string]string{}
	if st.Signing.Generation != "" {
		chain[st.Signing.Generation] = fmt.Sprintf("intermediate %s (serial %s) -> root sha256 %s", st.Signing.Subject, st.Signing.Serial, short(st.SigningRoot.SHA256))
	}
	for _, r := range st.TrustedRoots {
		if _, ok := chain[r.Generation]; !ok {
			chain[r.Generation] = "root sha256 " + short(r.SHA256)
		}
	}
	if len(st.Leaves) == 0 {
		fmt.Fprintln(w, "no identities issued yet (meshd issues a certificate when it first renders a proxy of that identity)")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SPIFFE ID\tSERIAL\tNOT BEFORE\tNOT AFTER\tISSUED UNDER")
	for _, l := range st.Leaves {
		issuer := chain[l.Generation]
		if issuer == "" {
			issuer = l.Generation + " (no longer trusted)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", l.SPIFFEID, l.Serial, l.NotBefore.Format(time.RFC3339), l.NotAfter.Format(time.RFC3339), issuer)
	}
	_ = tw.Flush()
}
