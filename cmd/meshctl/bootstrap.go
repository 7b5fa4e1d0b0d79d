package main

import (
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/meshd/meshd/bootstrap"
	"github.com/meshd/meshd/internal/atomicfile"
	"github.com/meshd/meshd/internal/suggest"
	"github.com/meshd/meshd/mesh"
)

const bootstrapDescription = `
Print the bootstrap a proxy starts with: who it is (node id, service,
namespace) and how it reaches meshd's xDS server over TLS. Everything else
(listeners, clusters, certificates) arrives over xDS.

--flavor envoy (default) prints an Envoy bootstrap as YAML. Start Envoy on
  it with meshd's drain settings, which its first lines repeat:
    envoy -c FILE --drain-time-s 5 --drain-strategy immediate
  Without them, a connection opened before an mTLS mode change (plaintext
  after STRICT) or a tcp service's policy change is served for up to Envoy's
  default 600 s; --drain-time sets the bound. Envoy verifies meshd with the
  mesh root CA: by default it reads <data-dir>/ca/root-cert.pem at start-up
  (a relative path is resolved against Envoy's working directory);
  --inline-ca embeds the root instead, so the bootstrap works on another
  machine.
--flavor gateway prints the Envoy bootstrap of an ingress gateway (the
  catalog's flavor: gateway): the same, with the node marked as a gateway
  and its client connections capped by Envoy's overload manager
  (--max-connections).
--flavor grpc prints a proxyless gRPC xDS bootstrap as JSON, for
  GRPC_XDS_BOOTSTRAP=FILE. gRPC reads its identity from --cert-dir
  (cert.pem, key.pem, ca.pem), which "meshctl certs issue" can fill.`

const bootstrapExamples = `
  # The quickstart's web sidecar, meshd running on this machine with its
  # default --data-dir; a new token inside, so the file is a credential
  # (mode 0600): keep it out of any repository.
  meshctl bootstrap --service web --admin-port 15001 --token-ttl 24h -o "$TMPDIR/web.yaml"
  envoy -c "$TMPDIR/web.yaml" --concurrency 1 --disable-hot-restart --drain-time-s 5 --drain-strategy immediate

  # A sidecar on another machine, with meshd at meshd.example:15012 and the
  # root embedded:
  meshctl bootstrap --service api --namespace shop \
      --xds-address meshd.example:15012 --inline-ca > api.yaml

  # An ingress gateway (catalog: id ingress-1, service ingress, flavor gateway):
  meshctl bootstrap --flavor gateway --service ingress --namespace edge --node-id ingress-1 \
      --xds-address meshd.example:15012 --inline-ca --token-ttl 720h -o ingress.yaml

  # A proxyless gRPC server:
  meshctl certs issue --service hello --out ~/.local/state/meshd/certs/hello
  meshctl bootstrap --flavor grpc --service hello --cert-dir ~/.local/state/meshd/certs/hello -o hello.json
  GRPC_XDS_BOOTSTRAP=hello.json ./hello-server`

// Flags that only one flavor uses; giving them to the other is a mistake
// worth reporting rather than ignoring.
var (
	envoyOnlyFlags   = []string{"admin-port", "inline-ca", "trust-domain", "delta", "token-file", "token-ttl", "agent-socket", "drain-time"}
	grpcOnlyFlags    = []string{"cert-dir", "refresh-interval"}
	gatewayOnlyFlags = []string{"max-connections"}
)

type bootstrapFlags struct {
	service, namespace, nodeID, xdsAddr  string
	adminPort                            uint
	caFile, dataDir, flavor, certDir     string
	refresh, out, trustDomain, tokenFile string
	agentSocket                          string
	maxConnections                       uint64
	inlineCA, delta                      bool
	tokenTTL, drainTime                  time.Duration
}

func newBootstrapCmd() *cobra.Command {
	var f bootstrapFlags
	cmd := &cobra.Command{
		Use:     "bootstrap --service NAME [flags]",
		Short:   "print the bootstrap an Envoy sidecar or gateway, or a proxyless gRPC app, needs to reach meshd",
		Long:    strings.TrimSpace(bootstrapDescription),
		Example: strings.Trim(bootstrapExamples, "\n"),
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runBootstrap(cmd, &f)
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&f.service, "service", "", "catalog name of the service this proxy fronts (required)")
	fs.StringVar(&f.namespace, "namespace", mesh.DefaultNamespace, "namespace of the service")
	fs.StringVar(&f.nodeID, "node-id", "", "xDS node id; must match the proxy's id in the catalog (default SERVICE.NAMESPACE, the catalog's default)")
	fs.StringVar(&f.xdsAddr, "xds-address", bootstrap.DefaultXDSAddress, "`HOST:PORT` of meshd's xDS server (TLS); a DNS name is also sent as SNI")
	fs.UintVar(&f.adminPort, "admin-port", uint(bootstrap.DefaultAdminPort), "envoy only: `PORT` of Envoy's admin API on 127.0.0.1; give each Envoy on a host its own")
	fs.StringVar(&f.caFile, "ca-file", "", "`PATH` of the mesh root CA PEM the proxy verifies meshd with (default <data-dir>/ca/root-cert.pem)")
	fs.BoolVar(&f.inlineCA, "inline-ca", false, "envoy only: embed the root CA read from --ca-file in the bootstrap instead of referring to the file")
	dataDirFlag(fs, &f.dataDir, "`DIR` where meshd keeps its state; the root CA is DIR/ca/root-cert.pem")
	fs.StringVar(&f.flavor, "flavor", string(mesh.FlavorEnvoy), "`FLAVOR` of proxy: envoy (an Envoy sidecar), gateway (an Envoy ingress gateway) or grpc (a proxyless gRPC application)")
	fs.Uint64Var(&f.maxConnections, "max-connections", bootstrap.DefaultMaxDownstreamConnections, "gateway only: the most client connections the gateway holds open at once, across its listeners (Envoy's overload manager); more are refused")
	fs.StringVar(&f.certDir, "cert-dir", "", "grpc only (required): `DIR` holding the app's cert.pem, key.pem and ca.pem (see meshctl certs issue)")
	fs.StringVar(&f.refresh, "refresh-interval", bootstrap.DefaultRefreshInterval, "grpc only: how often gRPC re-reads --cert-dir, as a Go `DURATION` (60s, 5m)")
	fs.StringVarP(&f.out, "output", "o", "", "write to `FILE` instead of standard output")
	fs.BoolVar(&f.delta, "delta", false, "envoy only: use incremental (delta) xDS instead of state-of-the-world")
	fs.StringVar(&f.trustDomain, "trust-domain", defaultTrustDomain, "envoy only: meshd's SPIFFE trust `domain`; Envoy accepts only meshd's own identity in it")
	fs.StringVar(&f.tokenFile, "token-file", "", "envoy only: `FILE` with a bootstrap token (meshctl token create); Envoy sends it to meshd, which serves only that token's service. The output then holds a credential and is written with mode 0600")
	fs.DurationVar(&f.tokenTTL, "token-ttl", 0, "envoy only: instead of --token-file, sign a new bootstrap token for --service valid this long (a Go `DURATION`: 720h) with meshd's token key in --data-dir, and embed it; its id is printed for meshctl token revoke. One command provisions a sidecar (e.g. a container started before its Envoy)")
	fs.DurationVar(&f.drainTime, "drain-time", bootstrap.DefaultDrainTime, "envoy only: the --drain-time-s to start Envoy with, in whole seconds (`DURATION`: 5s, 45s): how long a connection opened before an mTLS mode or tcp policy change may still be served. Written into the bootstrap (a comment with the command, and node metadata)")
	fs.StringVar(&f.agentSocket, "agent-socket", "", "envoy only: `PATH` of a local mesh-agent's SDS Unix socket; Envoy then takes its certificate and key from the agent (keys never leave the machine)")
	_ = cmd.RegisterFlagCompletionFunc("flavor", cobra.FixedCompletions([]string{string(mesh.FlavorEnvoy), string(mesh.FlavorGateway), string(mesh.FlavorGRPC)}, cobra.ShellCompDirectiveNoFileComp))
	_ = cmd.MarkFlagDirname("cert-dir")
	_ = cmd.MarkFlagDirname("data-dir")
	return cmd
}

func runBootstrap(cmd *cobra.Command, f *bootstrapFlags) error {
	stdout, stderr := cmd.OutOrStdout(), cmd.ErrOrStderr()
	if f.service == "" {
		return usageErrorf("--service is required: name the catalog service this proxy fronts, e.g. --service web")
	}
	given := setFlags(cmd)
	var wrongFlavor []string
	switch mesh.Flavor(f.flavor) {
	case mesh.FlavorEnvoy:
		wrongFlavor = intersect(given, append(grpcOnlyFlags, gatewayOnlyFlags...))
	case mesh.FlavorGateway:
		wrongFlavor = intersect(given, grpcOnlyFlags)
	case mesh.FlavorGRPC:
		wrongFlavor = intersect(given, append(envoyOnlyFlags, gatewayOnlyFlags...))
	default:
		msg := fmt.Sprintf("--flavor %q is not supported: use envoy, gateway or grpc", f.flavor)
		if c := suggest.Closest(f.flavor, []string{string(mesh.FlavorEnvoy), string(mesh.FlavorGateway), string(mesh.FlavorGRPC)}); c != "" {
			msg = fmt.Sprintf("--flavor %q is not supported: did you mean %s? (use envoy, gateway or grpc)", f.flavor, c)
		}
		return usageErrorf("%s", msg)
	}
	if f.maxConnections == 0 {
		return usageErrorf("--max-connections must be at least 1")
	}
	if len(wrongFlavor) > 0 {
		return usageErrorf("--%s does not apply to --flavor %s", wrongFlavor[0], f.flavor)
	}
	if mesh.Flavor(f.flavor) == mesh.FlavorGRPC && f.certDir == "" {
		return usageErrorf("--cert-dir is required with --flavor grpc: gRPC reads its certificate from files; create them with `meshctl certs issue --service %s --out DIR` and pass --cert-dir DIR", f.service)
	}
	if f.tokenFile != "" && f.tokenTTL != 0 {
		return usageErrorf("--token-file and --token-ttl exclude each other: embed an existing token or sign a new one")
	}
	if f.tokenTTL < 0 {
		return usageErrorf("--token-ttl %s must be positive, e.g. 720h", f.tokenTTL)
	}
	if f.adminPort == 0 || f.adminPort > 65535 {
		return usageErrorf("--admin-port %d is not a TCP port: use 1 to 65535", f.adminPort)
	}
	if err := bootstrap.CheckDrainTime(f.drainTime); err != nil {
		return usageErrorf("--drain-time: %v", err)
	}
	if f.caFile == "" || f.tokenTTL != 0 {
		if err := checkDataDir(f.dataDir); err != nil {
			return err
		}
	}
	if f.caFile == "" {
		f.caFile = rootCertPath(f.dataDir)
	}

	var (
		data   []byte
		err    error
		minted string // what to print about a token signed here
	)
	if mesh.Flavor(f.flavor) == mesh.FlavorGRPC {
		data, err = bootstrap.GRPC(bootstrap.GRPCOptions{
			NodeID: f.nodeID, Service: f.service, Namespace: f.namespace, XDSAddress: f.xdsAddr,
			CAFile: f.caFile, CertDir: f.certDir, RefreshInterval: f.refresh,
		})
	} else {
		o := bootstrap.EnvoyOptions{
			NodeID: f.nodeID, Service: f.service, Namespace: f.namespace, XDSAddress: f.xdsAddr,
			AdminPort: uint32(f.adminPort), TrustDomain: f.trustDomain, Delta: f.delta,
			AgentSocket: f.agentSocket, DrainTime: f.drainTime,
			Gateway: mesh.Flavor(f.flavor) == mesh.FlavorGateway, MaxDownstreamConnections: f.maxConnections,
		}
		if f.tokenFile != "" {
			tok, err := os.ReadFile(f.tokenFile)
			if err != nil {
				return fmt.Errorf("reading the token: %w (create one with meshctl token create --service %s -o FILE)", err, f.service)
			}
			o.Token = strings.TrimSpace(string(tok))
		}
		if f.inlineCA {
			if o.CAPEM, err = readRootPEM(f.caFile); err != nil {
				return err
			}
		} else {
			o.CAFile = f.caFile
			warnIfMissing(stderr, f.caFile)
		}
		// Signed last, so that a mistake above mints no token.
		if f.tokenTTL > 0 {
			ta, err := openTokens(f.dataDir, f.trustDomain)
			if err != nil {
				return err
			}
			tok, claims, err := ta.Create(f.namespace, f.service, f.tokenTTL)
			if err != nil {
				return fmt.Errorf("signing a token: %w", err)
			}
			o.Token = string(tok)
			recordToken(ta, claims, stderr)
			minted = fmt.Sprintf("token %s for %s/%s, valid until %s, embedded in the bootstrap\n", claims.ID, claims.Namespace, claims.Service, claims.Expires.Format(time.RFC3339))
		}
		data, err = bootstrap.EnvoyYAML(o)
	}
	if err != nil {
		return err
	}
	perm := os.FileMode(0o644)
	if f.tokenFile != "" || f.tokenTTL > 0 {
		perm = 0o600 // the bootstrap carries the token
	}
	if err := writeOutput(f.out, data, stdout, perm); err != nil {
		return err
	}
	fmt.Fprint(stderr, minted)
	if mesh.Flavor(f.flavor).IsEnvoy() && f.out != "" && f.out != "-" {
		// Envoy has no bootstrap field for its drain settings: say how to
		// start it where an operator sees it (with no -o, standard output
		// is the bootstrap, whose first lines say the same).
		fmt.Fprintf(stderr, "meshctl bootstrap: wrote %s; start Envoy with: %s\n", f.out, bootstrap.EnvoyCommand(f.out, f.drainTime))
	}
	return nil
}

// setFlags lists the flags given on the command line (as opposed to
// defaults), sorted.
func setFlags(cmd *cobra.Command) []string {
	var names []string
	cmd.Flags().Visit(func(f *pflag.Flag) { names = append(names, f.Name) })
	sort.Strings(names)
	return names
}

// readRootPEM reads the root CA to embed and checks it holds a certificate,
// so a wrong path (a key, an empty file) fails here and not in Envoy.
func readRootPEM(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("reading the root CA to inline: %w (start meshd once with this --data-dir to create its CA, or pass --ca-file)", err)
	}
	if err != nil {
		return nil, fmt.Errorf("reading the root CA to inline: %w", err)
	}
	rest := data
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return nil, fmt.Errorf("%s holds no PEM CERTIFICATE: pass the mesh root certificate (root-cert.pem) with --ca-file", path)
		}
		if block.Type == "CERTIFICATE" {
			return data, nil
		}
	}
}

// warnIfMissing notes a CA file that does not exist here. It is only a
// warning: the bootstrap may be meant for another machine or container
// where the path is valid.
func warnIfMissing(stderr io.Writer, path string) {
	if _, err := os.Stat(path); err != nil {
		fmt.Fprintf(stderr, "meshctl bootstrap: warning: CA file %s: %v; Envoy reads it at start-up and will refuse to start without it (start meshd to create it, or use --inline-ca)\n", path, err)
	}
}

func writeOutput(path string, data []byte, stdout io.Writer, perm os.FileMode) error {
	if path == "" || path == "-" {
		_, err := stdout.Write(data)
		return err
	}
	// A new file with perm from its first byte renamed over path: a
	// bootstrap carrying a token must never be readable through an older,
	// world-readable file (os.WriteFile keeps an existing file's mode, and
	// a chmod afterwards leaves the token readable in between).
	if err := atomicfile.Write(path, data, perm); err != nil {
		return fmt.Errorf("writing the bootstrap: %w", err)
	}
	return nil
}

func intersect(a, b []string) []string {
	var out []string
	for _, x := range a {
		if slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}
