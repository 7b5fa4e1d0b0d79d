package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshd/meshd/internal/atomicfile"
	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/sds"
)

func newTokenCmd() *cobra.Command {
	return group("token", "bootstrap tokens that authenticate proxies to meshd (create, list, revoke)",
		"Bootstrap tokens authenticate proxies to meshd: a token names one service, and a\nproxy presenting it gets that service's configuration and certificates only.\nThese commands work on meshd's data directory (--data-dir).",
		newTokenCreateCmd(), newTokenListCmd(), newTokenRevokeCmd())
}

const tokenCreateDescription = `
Sign a bootstrap token for one service. A proxy presenting it (Envoy sends it
as gRPC metadata: meshctl bootstrap --token-file FILE) gets that service's
configuration and certificates from meshd, and nothing else: a node claiming
another service is refused.

The token is a bearer credential: keep it like a password (the file is
written with mode 0600). It expires after --ttl and can be revoked with
meshctl token revoke. meshctl signs with meshd's token key in --data-dir, so
it needs read access to that directory (run it as meshd's user).`

const tokenCreateExamples = `
  meshctl token create --service web --ttl 720h -o web.token
  meshctl bootstrap --service web --token-file web.token -o web.yaml`

func openTokens(dataDir, trustDomain string) (*sds.TokenAuthority, error) {
	ta, err := sds.LoadOrCreateTokens(dataDir, trustDomain, true, nil)
	if err != nil {
		if errors.Is(err, fs.ErrPermission) {
			return nil, fmt.Errorf("%w; this command needs read access to meshd's token key: run it as the user meshd runs as", err)
		}
		return nil, err
	}
	return ta, nil
}

// recordToken adds a signed token to the register meshctl token list reads;
// a read-only data directory is only worth a warning.
func recordToken(ta *sds.TokenAuthority, c sds.TokenClaims, stderr io.Writer) {
	if err := ta.Record(c); err != nil {
		fmt.Fprintf(stderr, "meshctl: warning: %v; meshctl token list will not show this token (it is valid nonetheless)\n", err)
	}
}

func newTokenCreateCmd() *cobra.Command {
	var (
		service, namespace, trustDomain, dataDir, out string
		ttl                                           time.Duration
	)
	cmd := &cobra.Command{
		Use:     "create --service NAME [flags]",
		Short:   "sign a bootstrap token that lets one proxy fetch its service's configuration and certificates",
		Long:    strings.TrimSpace(tokenCreateDescription),
		Example: strings.Trim(tokenCreateExamples, "\n"),
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if service == "" {
				return usageErrorf("--service is required, e.g. --service web")
			}
			if ttl <= 0 {
				return usageErrorf("--ttl %s must be positive, e.g. 720h", ttl)
			}
			if err := checkDataDir(dataDir); err != nil {
				return err
			}
			ta, err := openTokens(dataDir, trustDomain)
			if err != nil {
				return err
			}
			tok, claims, err := ta.Create(namespace, service, ttl)
			if err != nil {
				return err
			}
			// The one deliberate conversion of a token to its text.
			text := string(tok) + "\n"
			if out == "" || out == "-" {
				fmt.Fprint(cmd.OutOrStdout(), text)
			} else if err := atomicfile.Write(out, []byte(text), 0o600); err != nil {
				// A new 0600 file renamed over the path: os.WriteFile kept
				// an existing file's mode and wrote the token into it.
				return fmt.Errorf("writing the token: %w", err)
			}
			recordToken(ta, claims, cmd.ErrOrStderr())
			fmt.Fprintf(cmd.ErrOrStderr(), "token %s for %s/%s, valid until %s\n", claims.ID, claims.Namespace, claims.Service, claims.Expires.Format(time.RFC3339))
			return nil
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&service, "service", "", "catalog name of the service the token grants (required)")
	fs.StringVar(&namespace, "namespace", mesh.DefaultNamespace, "namespace of the service")
	fs.DurationVar(&ttl, "ttl", 30*24*time.Hour, "how long the token is valid, as a Go `DURATION` (720h, 90m)")
	fs.StringVar(&trustDomain, "trust-domain", defaultTrustDomain, "SPIFFE trust domain; must be meshd's")
	dataDirFlag(fs, &dataDir, "`DIR` where meshd keeps its state (the token key is DIR/tokens/signing-key.pem)")
	fs.StringVarP(&out, "output", "o", "", "write the token to `FILE` (mode 0600) instead of standard output")
	return cmd
}

const tokenListDescription = `
List the bootstrap tokens signed with meshd's token key: id, service, when
issued, when it expires, and whether it is valid, expired or revoked. The
tokens themselves are never kept or shown, only their claims, which meshctl
records when it signs one (DIR/tokens/issued.jsonl). A token signed where
the data directory was read-only, or before meshctl kept the record, is
listed only once revoked.`

func newTokenListCmd() *cobra.Command {
	var trustDomain, dataDir, service, namespace string
	var all bool
	cmd := &cobra.Command{
		Use:     "list [flags]",
		Short:   "list the tokens signed with meshd's key, with their expiry and revocation",
		Long:    strings.TrimSpace(tokenListDescription),
		Example: "  meshctl token list\n  meshctl token list --service web -o json\n  meshctl token list --all   # expired ones too",
		Args:    noArgs,
	}
	output := addOutputFlag(cmd, formatTable, formatJSON, formatYAML)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := checkDataDir(dataDir); err != nil {
			return err
		}
		ta, err := openTokens(dataDir, trustDomain)
		if err != nil {
			return err
		}
		recs, err := ta.List()
		if err != nil {
			return err
		}
		now := time.Now()
		type row struct {
			sds.TokenRecord
			State string `json:"state"`
		}
		rows := []row{}
		for _, r := range recs {
			st := r.State(now)
			if (service != "" && r.Service != service) || (cmd.Flags().Changed("namespace") && r.Namespace != namespace) || (!all && st == "expired") {
				continue
			}
			rows = append(rows, row{r, st})
		}
		return output.print(cmd.OutOrStdout(), rows, func(w io.Writer) error {
			if len(rows) == 0 {
				_, err := fmt.Fprintln(w, "no tokens (meshctl token create signs one; --all shows expired ones)")
				return err
			}
			t := newTable(w, "ID", "SERVICE", "ISSUED", "EXPIRES", "STATE")
			for _, r := range rows {
				state := r.State
				if r.RevokedAt != nil {
					state += " " + r.RevokedAt.Format(time.RFC3339)
				}
				t.row(r.ID, r.Namespace+"/"+r.Service, timeOrDash(r.IssuedAt), timeOrDash(r.Expires), state)
			}
			return t.flush()
		})
	}
	fs := cmd.Flags()
	fs.StringVar(&service, "service", "", "only tokens for this `SERVICE`")
	fs.StringVar(&namespace, "namespace", mesh.DefaultNamespace, "only tokens for services in this `NAMESPACE` (when given)")
	fs.BoolVar(&all, "all", false, "include expired tokens")
	fs.StringVar(&trustDomain, "trust-domain", defaultTrustDomain, "SPIFFE trust domain; must be meshd's")
	dataDirFlag(fs, &dataDir, "`DIR` where meshd keeps its state")
	return cmd
}

func timeOrDash(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

const tokenRevokeDescription = `
Revoke a bootstrap token: meshd refuses it on every new xDS stream from now
on (streams already open continue until they reconnect). Name the token by
its file or by the id meshctl token create printed.`

const tokenRevokeExamples = `
  meshctl token revoke --token-file web.token
  meshctl token revoke --id 3f2a9c0d41b7e85a11c2d3e4`

func newTokenRevokeCmd() *cobra.Command {
	var tokenFile, id, trustDomain, dataDir string
	cmd := &cobra.Command{
		Use:     "revoke (ID | --id ID | --token-file FILE) [flags]",
		Short:   "refuse a token from now on (meshd re-reads the list on every new xDS stream)",
		Long:    strings.TrimSpace(tokenRevokeDescription),
		Example: strings.Trim(tokenRevokeExamples, "\n"),
		Args:    cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 {
				if id != "" {
					return usageErrorf("give the token id once: as an argument or with --id")
				}
				id = args[0]
			}
			if (tokenFile == "") == (id == "") {
				return usageErrorf("give exactly one of an ID, --id and --token-file")
			}
			if err := checkDataDir(dataDir); err != nil {
				return err
			}
			ta, err := openTokens(dataDir, trustDomain)
			if err != nil {
				return err
			}
			claims := sds.TokenClaims{ID: strings.TrimSpace(id)}
			if tokenFile != "" {
				b, err := os.ReadFile(tokenFile)
				if err != nil {
					return err
				}
				// Parse checks the signature only: an expired token may still be
				// revoked, and a token from another meshd cannot be.
				if claims, err = ta.Parse(string(b)); err != nil {
					return fmt.Errorf("%s: %w", tokenFile, err)
				}
			}
			if err := ta.Revoke(claims); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "revoked token %s\n", claims.ID)
			return nil
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&tokenFile, "token-file", "", "`FILE` holding the token to revoke")
	fs.StringVar(&id, "id", "", "`ID` of the token to revoke (as meshctl token create and token list print it)")
	fs.StringVar(&trustDomain, "trust-domain", defaultTrustDomain, "SPIFFE trust domain; must be meshd's")
	dataDirFlag(fs, &dataDir, "`DIR` where meshd keeps its state")
	return cmd
}
