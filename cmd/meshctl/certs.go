package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshd/meshd/internal/adminclient"
	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/sds"
	"github.com/meshd/meshd/xds"
)

func newCertsCmd() *cobra.Command {
	return group("certs", "workload certificates: list what meshd issued, issue one for development",
		"list asks a running meshd for the identities it has issued certificates for;\nissue signs one with the CA key in the data directory (development only).",
		newCertsListCmd(), newCertsIssueCmd())
}

const certsIssueDescription = `
Issue a certificate for a service's identity and write cert.pem, key.pem
(mode 0600) and ca.pem (the trust bundle) into --out, the layout a proxyless
gRPC app's file_watcher certificate provider reads (see meshctl bootstrap
--flavor grpc --cert-dir).

DEVELOPMENT ONLY: meshctl opens meshd's CA in --data-dir and signs with its
private key, so it needs read access to that key, and whoever can run it
can mint any identity. In production run mesh-agent on the workload's host
instead (mesh-agent --cert-dir DIR): it keeps the key on the host, gets it
signed by meshd with a bootstrap token, and renews it. This command never
creates a CA: start meshd once with the same --data-dir first. The
certificate is short-lived (24h) and is not renewed: run the command again
before it expires; gRPC picks the new files up on its next refresh.`

const certsIssueExamples = `
  # Identity for the quickstart's proxyless gRPC server hello:
  meshctl certs issue --service hello --out ~/.local/state/meshd/certs/hello

  # A service running as another service account, in namespace shop:
  meshctl certs issue --service cart --namespace shop --service-account cart-v2 \
      --trust-domain example.org --data-dir /var/lib/meshd --out /run/cart/certs`

func newCertsIssueCmd() *cobra.Command {
	var service, namespace, serviceAccount, trustDomain, dataDir, out string
	cmd := &cobra.Command{
		Use:     "issue --service NAME --out DIR [flags]",
		Short:   "write a workload certificate, key and trust bundle to a directory (development only)",
		Long:    strings.TrimSpace(certsIssueDescription),
		Example: strings.Trim(certsIssueExamples, "\n"),
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if service == "" {
				return usageErrorf("--service is required, e.g. --service hello")
			}
			if out == "" {
				return usageErrorf("--out is required: name the directory the app's bootstrap --cert-dir points at")
			}
			if serviceAccount == "" {
				serviceAccount = service
			}
			for _, c := range []struct{ flag, value string }{{"service", service}, {"namespace", namespace}, {"service-account", serviceAccount}} {
				if err := mesh.ValidName(c.value); err != nil {
					return usageErrorf("--%s: %v", c.flag, err)
				}
			}
			if err := checkDataDir(dataDir); err != nil {
				return err
			}
			ca, err := sds.LoadOrCreate(sds.Options{
				DataDir:     dataDir,
				TrustDomain: trustDomain,
				NoCreate:    true,
				Logger:      slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: slog.LevelWarn})),
			})
			if err != nil {
				if errors.Is(err, fs.ErrPermission) {
					return fmt.Errorf("opening the CA in %s: %w; this command needs read access to the CA key: run it as the user meshd runs as", dataDir, err)
				}
				return fmt.Errorf("opening the CA in %s: %w", dataDir, err)
			}
			key := mesh.ServiceKey{Namespace: namespace, Name: service}
			id := mesh.Identity{TrustDomain: trustDomain, Namespace: namespace, ServiceAccount: serviceAccount}
			leaf, err := ca.IssueCredential(id, xds.DNSNames(key, trustDomain))
			if err != nil {
				return fmt.Errorf("issuing a certificate for %s: %w", id.SPIFFEID(), err)
			}
			if err := sds.WriteFiles(out, leaf, ca.RootCertPEM()); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s, %s and %s for %s (valid until %s; run again before then)\n",
				filepath.Join(out, sds.CertFileName), filepath.Join(out, sds.KeyFileName), filepath.Join(out, sds.BundleFileName),
				id.SPIFFEID(), leaf.NotAfter.UTC().Format(time.RFC3339))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&service, "service", "", "catalog name of the service (required); also its DNS SANs")
	f.StringVar(&namespace, "namespace", mesh.DefaultNamespace, "namespace of the service")
	f.StringVar(&serviceAccount, "service-account", "", "service account in the SPIFFE ID (default: the service name, as in the catalog)")
	f.StringVar(&trustDomain, "trust-domain", defaultTrustDomain, "SPIFFE trust domain; must be meshd's")
	dataDirFlag(f, &dataDir, "`DIR` where meshd keeps its state, including the CA (DIR/ca)")
	f.StringVar(&out, "out", "", "`DIR` to write cert.pem, key.pem and ca.pem into (required; created 0700 if missing)")
	_ = cmd.MarkFlagDirname("out")
	return cmd
}

// certRow is one identity of meshctl certs list -o json.
type certRow struct {
	SPIFFEID   string    `json:"spiffeId"`
	Serial     string    `json:"serial"`
	NotBefore  time.Time `json:"notBefore"`
	NotAfter   time.Time `json:"notAfter"`
	Generation string    `json:"generation"`
	// Chain is what the leaf was issued under, leaf's issuer first; empty
	// when its generation is no longer trusted.
	Chain   []chainLink `json:"chain"`
	Trusted bool        `json:"trusted"`
}

type chainLink struct {
	Kind     string    `json:"kind"` // intermediate or root
	Subject  string    `json:"subject,omitempty"`
	Serial   string    `json:"serial,omitempty"`
	SHA256   string    `json:"sha256,omitempty"`
	NotAfter time.Time `json:"notAfter"`
}

func newCertsListCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "list [flags]",
		Short:   "the identities meshd has issued certificates for: serial, expiry and issuer chain",
		Long:    "List the workload identities meshd has certificates for: SPIFFE ID, serial,\nvalidity and the chain each was issued under (intermediate, then root).\nAsks meshd's admin API (GET /ca/status).",
		Example: "  meshctl certs list\n  meshctl certs list -o json\n  meshctl certs list --admin-address http://10.0.0.5:15014",
		Args:    noArgs,
	}
	output := addOutputFlag(cmd, formatTable, formatJSON, formatYAML)
	return withAdmin(cmd, func(cmd *cobra.Command, c *adminclient.Client, _ []string) error {
		var st sds.Status
		if err := c.GetJSON(cmd.Context(), "/ca/status", nil, &st); err != nil {
			return err
		}
		rows := certRows(st)
		return output.print(cmd.OutOrStdout(), rows, func(w io.Writer) error { return printCerts(w, rows) })
	})
}

// certRows joins each leaf to the chain of its generation.
func certRows(st sds.Status) []certRow {
	chains := map[string][]chainLink{}
	if g := st.Signing.Generation; g != "" {
		chains[g] = []chainLink{
			{Kind: "intermediate", Subject: st.Signing.Subject, Serial: st.Signing.Serial, NotAfter: st.Signing.NotAfter},
			{Kind: "root", Subject: st.SigningRoot.Subject, SHA256: st.SigningRoot.SHA256, NotAfter: st.SigningRoot.NotAfter},
		}
	}
	for _, r := range st.TrustedRoots {
		if _, ok := chains[r.Generation]; !ok {
			chains[r.Generation] = []chainLink{{Kind: "root", Subject: r.Subject, SHA256: r.SHA256, NotAfter: r.NotAfter}}
		}
	}
	rows := []certRow{}
	for _, l := range st.Leaves {
		chain, ok := chains[l.Generation]
		if chain == nil {
			chain = []chainLink{}
		}
		rows = append(rows, certRow{SPIFFEID: l.SPIFFEID, Serial: l.Serial, NotBefore: l.NotBefore, NotAfter: l.NotAfter,
			Generation: l.Generation, Chain: chain, Trusted: ok})
	}
	return rows
}

// printCerts shows each identity's certificate with its issuer chain.
func printCerts(w io.Writer, rows []certRow) error {
	if len(rows) == 0 {
		_, err := fmt.Fprintln(w, "no identities issued yet (meshd issues a certificate when it first renders a proxy of that identity)")
		return err
	}
	t := newTable(w, "SPIFFE ID", "SERIAL", "NOT BEFORE", "NOT AFTER", "ISSUED UNDER")
	for _, r := range rows {
		var issuer []string
		for _, c := range r.Chain {
			if c.Kind == "intermediate" {
				issuer = append(issuer, fmt.Sprintf("intermediate %s (serial %s)", c.Subject, c.Serial))
			} else {
				issuer = append(issuer, "root sha256 "+short(c.SHA256))
			}
		}
		if !r.Trusted {
			issuer = []string{r.Generation + " (no longer trusted)"}
		}
		t.row(r.SPIFFEID, r.Serial, r.NotBefore.Format(time.RFC3339), r.NotAfter.Format(time.RFC3339), strings.Join(issuer, " -> "))
	}
	return t.flush()
}
