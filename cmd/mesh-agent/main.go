// Command mesh-agent runs next to a workload: it generates the workload's
// private key locally (it never leaves the machine), gets a certificate for
// it from meshd's CA with a CSR (authenticated by a bootstrap token the
// first time, by the current certificate afterwards), renews it at half its
// life, serves it to the local Envoy over SDS on a Unix socket and writes
// cert.pem, key.pem and ca.pem for proxyless gRPC apps. This command parses
// flags; the agent itself is package agent.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/meshd/meshd/agent"
	"github.com/meshd/meshd/internal/buildinfo"
	"github.com/meshd/meshd/internal/datadir"
	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/xds"
)

// config is the agent's Config plus what only the command uses.
type config struct {
	agent.Config
	logLevel string
	version  bool // print the build and exit
}

const usage = `mesh-agent — keeps one workload's mesh identity, with its key generated locally.

Usage:
  mesh-agent --service S --token-file F [--sds-socket PATH] [--cert-dir DIR] [flags]

Example (quickstart web sidecar, Envoy bootstrapped with
meshctl bootstrap --service web --agent-socket /run/meshd/web.sock):
  meshctl token create --service web -o web.token
  mesh-agent --service web --token-file web.token --sds-socket /run/meshd/web.sock

Flags:
`

func parseFlags(args []string, stderr io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("mesh-agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage); fs.PrintDefaults() }
	fs.StringVar(&c.XDSAddress, "xds-address", "127.0.0.1:15012", "`HOST:PORT` of meshd's xDS server, where its CA service listens (TLS)")
	fs.StringVar(&c.CAFile, "ca-file", filepath.Join(datadir.DefaultOr("."), "ca", "root-cert.pem"), "`PATH` of the mesh trust bundle to verify meshd with (default: where a meshd on this machine with the default --data-dir keeps it)")
	fs.StringVar(&c.TokenFile, "token-file", "", "`FILE` with a bootstrap token for this service (meshctl token create); needed for the first certificate")
	fs.StringVar(&c.Service, "service", "", "catalog name of the workload's service (required)")
	fs.StringVar(&c.Namespace, "namespace", mesh.DefaultNamespace, "namespace of the service")
	fs.StringVar(&c.ServiceAccount, "service-account", "", "service account of the SPIFFE ID (default: the service name, as in the catalog)")
	fs.StringVar(&c.NodeID, "node-id", "", "xDS node id of the workload's proxy in the catalog (default SERVICE.NAMESPACE)")
	fs.StringVar(&c.TrustDomain, "trust-domain", mesh.DefaultTrustDomain, "SPIFFE trust `domain` of the mesh")
	fs.StringVar(&c.SDSSocket, "sds-socket", "", "`PATH` of the Unix socket to serve SDS on for the local Envoy")
	fs.StringVar(&c.CertDir, "cert-dir", "", "`DIR` to write cert.pem, key.pem (0600) and ca.pem into for proxyless gRPC apps")
	fs.DurationVar(&c.BundleRefresh, "bundle-refresh", 30*time.Second, "how often to fetch the trust bundle between renewals (root rotations)")
	fs.StringVar(&c.logLevel, "log-level", "info", "log `level`: debug, info, warn or error")
	fs.BoolVar(&c.version, "version", false, "print mesh-agent's version, the commit it was built from and the Go version, and exit")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if c.version {
		return c, nil
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %q: mesh-agent takes only flags", fs.Arg(0))
	}
	if c.Service == "" {
		return c, errors.New("--service is required, e.g. --service web")
	}
	if c.SDSSocket == "" && c.CertDir == "" {
		return c, errors.New("give --sds-socket (for Envoy), --cert-dir (for proxyless gRPC), or both: otherwise the identity goes nowhere")
	}
	if c.TokenFile == "" {
		return c, errors.New("--token-file is required for the first certificate: create one with meshctl token create --service " + c.Service)
	}
	if c.ServiceAccount == "" {
		c.ServiceAccount = c.Service
	}
	if c.NodeID == "" {
		c.NodeID = xds.DefaultNodeID(mesh.ServiceKey{Namespace: c.Namespace, Name: c.Service})
	}
	if c.BundleRefresh <= 0 {
		return c, errors.New("--bundle-refresh must be positive")
	}
	return c, nil
}

func main() {
	c, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "mesh-agent:", err)
		os.Exit(2)
	}
	if c.version {
		fmt.Println(buildinfo.Read().String("mesh-agent"))
		return
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(c.logLevel)); err != nil {
		fmt.Fprintln(os.Stderr, "mesh-agent: --log-level: use debug, info, warn or error")
		os.Exit(2)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := agent.Run(ctx, c.Config, log); err != nil {
		log.Error("mesh-agent stopped", "err", err)
		os.Exit(1)
	}
}
