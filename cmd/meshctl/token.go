package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"time"

	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/sds"
)

func runToken(args []string, stdout, stderr io.Writer) int {
	usage := func(w io.Writer) {
		fmt.Fprint(w, `Usage: meshctl token <subcommand> [flags]

Subcommands:
  create   sign a bootstrap token that lets one proxy fetch its service's
           configuration and certificates from meshd
  revoke   refuse a token from now on (meshd re-reads the list on every
           new xDS stream)

Run "meshctl token <subcommand> -h" for its flags.
`)
	}
	if len(args) == 0 {
		usage(stderr)
		return exitUsage
	}
	switch args[0] {
	case "create":
		return runTokenCreate(args[1:], stdout, stderr)
	case "revoke":
		return runTokenRevoke(args[1:], stdout, stderr)
	case "-h", "-help", "--help", "help":
		usage(stdout)
		return exitOK
	}
	fmt.Fprintf(stderr, "meshctl token: unknown subcommand %q\n\n", args[0])
	usage(stderr)
	return exitUsage
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

func openTokens(dataDir, trustDomain string, stderr io.Writer, cmd string) (*sds.TokenAuthority, bool) {
	ta, err := sds.LoadOrCreateTokens(dataDir, trustDomain, true, nil)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", cmd, err)
		if errors.Is(err, fs.ErrPermission) {
			fmt.Fprintf(stderr, "%s: this command needs read access to meshd's token key; run it as the user meshd runs as\n", cmd)
		}
		return nil, false
	}
	return ta, true
}

func runTokenCreate(args []string, stdout, stderr io.Writer) int {
	flags := newFlagSet("meshctl token create", tokenCreateDescription, tokenCreateExamples, stderr)
	service := flags.String("service", "", "catalog name of the service the token grants (required)")
	namespace := flags.String("namespace", mesh.DefaultNamespace, "namespace of the service")
	ttl := flags.Duration("ttl", 30*24*time.Hour, "how long the token is valid, as a Go `DURATION` (720h, 90m)")
	trustDomain := flags.String("trust-domain", defaultTrustDomain, "SPIFFE trust domain; must be meshd's")
	dataDir := flags.String("data-dir", defaultDataDir(), "`DIR` where meshd keeps its state (the token key is DIR/tokens/signing-key.pem)")
	out := flags.String("o", "", "write the token to `FILE` (mode 0600) instead of standard output")
	if code, ok := parseFlags(flags, args, stdout); !ok {
		return code
	}
	if *service == "" {
		usageErrorf(flags, "--service is required, e.g. --service web")
		return exitUsage
	}
	if *ttl <= 0 {
		usageErrorf(flags, "--ttl %s must be positive, e.g. 720h", *ttl)
		return exitUsage
	}
	if !checkDataDir(flags, *dataDir) {
		return exitUsage
	}
	ta, ok := openTokens(*dataDir, *trustDomain, stderr, "meshctl token create")
	if !ok {
		return exitError
	}
	tok, claims, err := ta.Create(*namespace, *service, *ttl)
	if err != nil {
		fmt.Fprintf(stderr, "meshctl token create: %v\n", err)
		return exitError
	}
	// The one deliberate conversion of a token to its text.
	text := string(tok) + "\n"
	if *out == "" || *out == "-" {
		fmt.Fprint(stdout, text)
	} else if err := os.WriteFile(*out, []byte(text), 0o600); err != nil {
		fmt.Fprintf(stderr, "meshctl token create: writing %s: %v\n", *out, err)
		return exitError
	}
	fmt.Fprintf(stderr, "token %s for %s/%s, valid until %s\n", claims.ID, claims.Namespace, claims.Service, claims.Expires.Format(time.RFC3339))
	return exitOK
}

const tokenRevokeDescription = `
Revoke a bootstrap token: meshd refuses it on every new xDS stream from now
on (streams already open continue until they reconnect). Name the token by
its file or by the id meshctl token create printed.`

const tokenRevokeExamples = `
  meshctl token revoke --token-file web.token
  meshctl token revoke --id 3f2a9c0d41b7e85a11c2d3e4`

func runTokenRevoke(args []string, stdout, stderr io.Writer) int {
	flags := newFlagSet("meshctl token revoke", tokenRevokeDescription, tokenRevokeExamples, stderr)
	tokenFile := flags.String("token-file", "", "`FILE` holding the token to revoke")
	id := flags.String("id", "", "`ID` of the token to revoke")
	trustDomain := flags.String("trust-domain", defaultTrustDomain, "SPIFFE trust domain; must be meshd's")
	dataDir := flags.String("data-dir", defaultDataDir(), "`DIR` where meshd keeps its state")
	if code, ok := parseFlags(flags, args, stdout); !ok {
		return code
	}
	if (*tokenFile == "") == (*id == "") {
		usageErrorf(flags, "give exactly one of --token-file and --id")
		return exitUsage
	}
	if !checkDataDir(flags, *dataDir) {
		return exitUsage
	}
	ta, ok := openTokens(*dataDir, *trustDomain, stderr, "meshctl token revoke")
	if !ok {
		return exitError
	}
	claims := sds.TokenClaims{ID: strings.TrimSpace(*id)}
	if *tokenFile != "" {
		b, err := os.ReadFile(*tokenFile)
		if err != nil {
			fmt.Fprintf(stderr, "meshctl token revoke: %v\n", err)
			return exitError
		}
		// Parse checks the signature only: an expired token may still be
		// revoked, and a token from another meshd cannot be.
		if claims, err = ta.Parse(string(b)); err != nil {
			fmt.Fprintf(stderr, "meshctl token revoke: %s: %v\n", *tokenFile, err)
			return exitError
		}
	}
	if err := ta.Revoke(claims); err != nil {
		fmt.Fprintf(stderr, "meshctl token revoke: %v\n", err)
		return exitError
	}
	fmt.Fprintf(stdout, "revoked token %s\n", claims.ID)
	return exitOK
}
