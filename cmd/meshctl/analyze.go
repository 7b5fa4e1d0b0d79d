package main

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/meshd/meshd/discovery/file"
	"github.com/meshd/meshd/internal/inputfile"
	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/policy"
)

const analyzeDescription = `
Check a catalog and mesh policy offline, before meshd sees them.

Errors (exit status 1) are input meshd would refuse: a catalog or policy file
that does not parse or validate, and policy meshd cannot enforce as written
(PERMISSIVE on a proxyless gRPC server). Every error is listed, not only the
first.

Warnings (exit status 0) are policy that loads but probably does not do what
was meant: selectors that select no workload of the catalog, principals and
namespaces that name no identity of the catalog, several PeerAuthentications
competing for one workload, port-level modes for ports no workload has,
identity rules on workloads that accept plaintext (PERMISSIVE or DISABLE),
HTTP-only fields in rules for tcp services, methods other than POST for
gRPC services, Linkerd Servers and authorizations that select nothing or
compete, unauthenticated Linkerd clients on STRICT workloads, and workloads
under both Istio's and Linkerd's authorization (a request must pass both).

Policy comes from --policy-dir (every *.yaml and *.yml in it, as meshd reads
it) or from the files named as arguments. Without --catalog only the policy's
own validity and its principals' trust domain are checked.

Each finding is one line:
  error|warning: <file>:<line>: <kind> <namespace>/<name>: <field>: <message>
See docs/policy.md.`

const analyzeExamples = `
  # The quickstart, as meshd would load it:
  meshctl analyze --catalog examples/quickstart/catalog.yaml \
      --policy-dir examples/quickstart/policy

  # One file being edited, against the live catalog, as JSON:
  meshctl analyze --catalog /etc/meshd/catalog.yaml -o json new-policy.yaml

  # Policy only, for a mesh whose root namespace is istio-system:
  meshctl analyze --root-namespace istio-system policies/*.yaml

  # With the settings meshd runs with:
  meshctl analyze --catalog catalog.yaml --policy-dir policy \
      --root-namespace mesh-root --mtls-mode STRICT --trust-domain example.org`

// analyzeReport is the JSON output.
type analyzeReport struct {
	Findings []policy.Finding `json:"findings"`
	Errors   int              `json:"errors"`
	Warnings int              `json:"warnings"`
}

func newAnalyzeCmd() *cobra.Command {
	var catalogPath, policyDir, rootNamespace, trustDomain, defaultMode, defaultInbound, clusterNetworks string
	cmd := &cobra.Command{
		Use:     "analyze [--catalog FILE] [--policy-dir DIR | POLICY-FILE...] [flags]",
		Short:   "check a catalog and mesh policy offline: errors and likely mistakes",
		Long:    strings.TrimSpace(analyzeDescription),
		Example: strings.Trim(analyzeExamples, "\n"),
		Args:    cobra.ArbitraryArgs,
	}
	fs := cmd.Flags()
	fs.StringVar(&catalogPath, "catalog", "", "catalog `FILE` to check, and to check the policy against")
	fs.StringVar(&policyDir, "policy-dir", "", "`DIR` of policy files, read as meshd reads it (or name policy files as arguments)")
	fs.StringVar(&rootNamespace, "root-namespace", mesh.DefaultRootNamespace, "`NAMESPACE` whose policies apply mesh-wide; must be meshd's")
	fs.StringVar(&trustDomain, "trust-domain", defaultTrustDomain, "SPIFFE trust `domain` of the mesh, for checking principals; must be meshd's")
	fs.StringVar(&defaultMode, "mtls-mode", string(mesh.MTLSPermissive), "mTLS `MODE` of workloads no PeerAuthentication sets (STRICT, PERMISSIVE or DISABLE); must be meshd's --mtls-mode")
	fs.StringVar(&defaultMode, "default-mode", string(mesh.MTLSPermissive), "same as --mtls-mode")
	fs.StringVar(&defaultInbound, "default-inbound-policy", string(mesh.DefaultAllUnauthenticated), "Linkerd default inbound `policy` of workloads no Server selects; must be meshd's --default-inbound-policy")
	fs.StringVar(&clusterNetworks, "cluster-networks", strings.Join(policy.DefaultClusterNetworks, ","), "comma-separated cluster `CIDRs` for Linkerd's cluster-* policies; must be meshd's --cluster-networks")
	maxSize := inputfile.Size(inputfile.DefaultMaxSize)
	fs.Var(&maxSize, "max-file-size", "largest catalog file, and most bytes the policy files may hold together, as meshd's --max-file-size (`SIZE`: bytes, or with B, KiB, MiB, GiB)")
	output := addOutputFlag(cmd, formatText, formatJSON, formatYAML)
	_ = cmd.MarkFlagFilename("catalog", "yaml", "yml", "json")
	_ = cmd.MarkFlagDirname("policy-dir")
	_ = cmd.RegisterFlagCompletionFunc("mtls-mode", cobra.FixedCompletions([]string{"STRICT", "PERMISSIVE", "DISABLE"}, cobra.ShellCompDirectiveNoFileComp))
	cmd.RunE = func(cmd *cobra.Command, files []string) error {
		stdout, stderr := cmd.OutOrStdout(), cmd.ErrOrStderr()
		if policyDir != "" && len(files) > 0 {
			return usageErrorf("give --policy-dir or policy files, not both")
		}
		if catalogPath == "" && policyDir == "" && len(files) == 0 {
			return usageErrorf("nothing to analyze: give --catalog, --policy-dir or policy files")
		}
		if err := mesh.ValidName(rootNamespace); err != nil {
			return usageErrorf("--root-namespace: %v", err)
		}
		if err := mesh.ValidTrustDomain(trustDomain); err != nil {
			return usageErrorf("--trust-domain: %v", err)
		}
		mode, err := policy.ParseMode(defaultMode)
		if err != nil {
			return usageErrorf("--mtls-mode: %v", err)
		}
		inbound, err := policy.ParseDefaultInboundPolicy(defaultInbound)
		if err != nil {
			return usageErrorf("--default-inbound-policy: %v", err)
		}
		var networks []string
		for _, n := range strings.Split(clusterNetworks, ",") {
			if n = strings.TrimSpace(n); n != "" {
				networks = append(networks, n)
			}
		}
		if err := policy.ParseClusterNetworks(networks); err != nil {
			return usageErrorf("--cluster-networks: %v", err)
		}

		var findings []policy.Finding
		var cat *mesh.Catalog
		if catalogPath != "" {
			var catErr error
			if cat, catErr = file.Load(catalogPath, int64(maxSize)); catErr != nil {
				findings = append(findings, catalogFindings(catalogPath, catErr)...)
			}
		}
		// Its own error variable: the catalog's error must not be reported
		// again as the policy's (it was, once per catalog problem).
		var pols *policy.Policies
		var polErr error
		switch {
		case policyDir != "":
			pols, polErr = policy.LoadDir(policyDir, int64(maxSize))
		case len(files) > 0:
			pols, polErr = policy.LoadFiles(files, int64(maxSize))
		default:
			pols = &policy.Policies{}
		}
		if polErr != nil {
			findings = append(findings, policyFindings(polErr)...)
		}
		// Analysis needs valid policy; a bad catalog only limits it to the
		// checks that need none, so policy mistakes are still all reported.
		if pols != nil {
			findings = append(findings, policy.Analyze(policy.AnalyzeInput{
				Catalog:     cat,
				CatalogPath: catalogPath,
				Policy: pols.SetWith(policy.Settings{RootNamespace: rootNamespace, DefaultMode: mode, TrustDomain: trustDomain,
					DefaultInboundPolicy: inbound, ClusterNetworks: networks}),
				TrustDomain: trustDomain,
				Policies:    pols,
			})...)
		}

		report := analyzeReport{Findings: findings}
		if report.Findings == nil {
			report.Findings = []policy.Finding{}
		}
		for _, f := range findings {
			if f.Severity == policy.SeverityError {
				report.Errors++
			} else {
				report.Warnings++
			}
		}
		err = output.print(stdout, report, func(w io.Writer) error {
			for _, f := range findings {
				fmt.Fprintln(w, f.String())
			}
			_, err := fmt.Fprintf(stderr, "meshctl analyze: %s, %s%s\n", plural(report.Errors, "error"), plural(report.Warnings, "warning"), summary(cat, pols, policyDir != "" || len(files) > 0))
			return err
		})
		if err != nil {
			return fmt.Errorf("writing output: %w", err)
		}
		if report.Errors > 0 {
			return exitStatus(exitError)
		}
		return nil
	}
	return cmd
}

// summary says what was analyzed, so "0 errors" cannot hide an empty input.
func summary(cat *mesh.Catalog, p *policy.Policies, policyGiven bool) string {
	s := ""
	if cat != nil {
		s += fmt.Sprintf("; catalog: %s, %s", plural(len(cat.Services()), "service"), plural(len(cat.Proxies()), "proxy"))
	}
	if p != nil && policyGiven {
		s += fmt.Sprintf("; policy: %s, %s, %s", plural(len(p.Files), "file"),
			plural(len(p.Peer), "PeerAuthentication"), plural(len(p.Authorizations), "AuthorizationPolicy"))
		counts := p.LinkerdCounts()
		for _, k := range slices.Sorted(maps.Keys(counts)) {
			s += ", " + plural(counts[k], k)
		}
	}
	return s
}

func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	switch word {
	case "proxy":
		return fmt.Sprintf("%d proxies", n)
	case "AuthorizationPolicy":
		return fmt.Sprintf("%d AuthorizationPolicies", n)
	case "AuthorizationPolicy.policy.linkerd.io":
		return fmt.Sprintf("%d AuthorizationPolicies.policy.linkerd.io", n)
	}
	return fmt.Sprintf("%d %ss", n, word)
}

// catalogFindings turns a catalog error into one error finding per problem.
func catalogFindings(path string, err error) []policy.Finding {
	var pe *file.ParseError
	if !errors.As(err, &pe) {
		// A catalog that cannot be read: the message starts with its path.
		return []policy.Finding{{Severity: policy.SeverityError, Message: err.Error()}}
	}
	var out []policy.Finding
	for _, p := range pe.Problems {
		loc := pe.Path
		if p.Line > 0 {
			loc = fmt.Sprintf("%s:%d", pe.Path, p.Line)
		}
		out = append(out, policy.Finding{Severity: policy.SeverityError, File: loc, Message: p.Message})
	}
	return out
}

// policyFindings turns a policy load error into one error finding per
// problem.
func policyFindings(err error) []policy.Finding {
	var pe *policy.Error
	if !errors.As(err, &pe) {
		// A file or directory that cannot be read: the message starts with
		// its path.
		return []policy.Finding{{Severity: policy.SeverityError, Message: err.Error()}}
	}
	var out []policy.Finding
	for _, p := range pe.Problems {
		out = append(out, policy.Finding{Severity: policy.SeverityError, File: p.Location(), Policy: p.Policy, Field: p.Field, Message: p.Message})
	}
	return out
}
