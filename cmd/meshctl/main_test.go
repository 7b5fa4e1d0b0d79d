package main

import (
	"bufio"
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/internal/envoytest"
	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/sds"
	"github.com/meshd/meshd/xds"
)

type result struct {
	code           int
	stdout, stderr string
}

func runArgs(args ...string) result {
	var out, errb bytes.Buffer
	code := run(args, &out, &errb)
	return result{code, out.String(), errb.String()}
}

func TestUsageErrors(t *testing.T) {
	for _, c := range []struct {
		name       string
		args       []string
		wantStderr []string
	}{
		{"no command", nil, []string{"Commands:", "bootstrap", "certs", "version", "completion"}},
		{"unknown command", []string{"frobnicate"}, []string{`unknown command "frobnicate"; commands: analyze,`, " bootstrap,", "meshctl --help"}},
		{"mistyped command", []string{"bootstarp"}, []string{`meshctl: unknown command "bootstarp"; did you mean "bootstrap"?`}},
		{"mistyped subcommand", []string{"ca", "stauts"}, []string{`meshctl ca: unknown command "stauts"; did you mean "status"?`, "meshctl ca --help"}},
		{"unknown flag", []string{"bootstrap", "--bogus"}, []string{"unknown flag: --bogus", "meshctl bootstrap --help"}},
		{"mistyped flag", []string{"bootstrap", "--servce", "web"}, []string{"unknown flag: --servce; did you mean --service?"}},
		{"single-dash flag", []string{"bootstrap", "-service", "web"}, []string{"unknown flag -service: long flags take two dashes, --service"}},
		{"mistyped output format", []string{"certs", "list", "-o", "jsn"}, []string{"did you mean json?"}},
		{"bad admin address", []string{"certs", "list", "--admin-address", "ftp://x"}, []string{`scheme "ftp" is not supported`}},
		{"missing service", []string{"bootstrap"}, []string{"--service is required", "meshctl bootstrap --help"}},
		{"bad flavor", []string{"bootstrap", "--service", "web", "--flavor", "nginx"}, []string{`--flavor "nginx"`, "envoy, gateway or grpc"}},
		{"grpc needs cert dir", []string{"bootstrap", "--service", "hello", "--flavor", "grpc"}, []string{"--cert-dir is required", "meshctl certs issue --service hello"}},
		{"admin port with grpc", []string{"bootstrap", "--service", "hello", "--flavor", "grpc", "--cert-dir", "c", "--admin-port", "1"}, []string{"--admin-port does not apply to --flavor grpc"}},
		{"inline ca with grpc", []string{"bootstrap", "--service", "hello", "--flavor", "grpc", "--cert-dir", "c", "--inline-ca"}, []string{"--inline-ca does not apply"}},
		{"cert dir with envoy", []string{"bootstrap", "--service", "web", "--cert-dir", "c"}, []string{"--cert-dir does not apply to --flavor envoy"}},
		{"admin port out of range", []string{"bootstrap", "--service", "web", "--admin-port", "70000"}, []string{"--admin-port 70000"}},
		{"stray argument", []string{"bootstrap", "--service", "web", "extra"}, []string{`unexpected argument "extra"`}},
		{"drain time in milliseconds", []string{"bootstrap", "--service", "web", "--drain-time", "500ms"}, []string{"--drain-time", "whole seconds"}},
		{"drain time with grpc", []string{"bootstrap", "--service", "hello", "--flavor", "grpc", "--cert-dir", "c", "--drain-time", "5s"}, []string{"--drain-time does not apply to --flavor grpc"}},
		{"certs without subcommand", []string{"certs"}, []string{"issue"}},
		{"certs unknown subcommand", []string{"certs", "revoke"}, []string{`unknown command "revoke"`}},
		{"certs issue without out", []string{"certs", "issue", "--service", "hello"}, []string{"--out is required"}},
		{"certs issue without service", []string{"certs", "issue", "--out", "x"}, []string{"--service is required"}},
		{"certs issue bad name", []string{"certs", "issue", "--service", "Hello", "--out", "x"}, []string{"--service", "not a valid name"}},
		{"max connections with envoy", []string{"bootstrap", "--service", "web", "--max-connections", "10"}, []string{"--max-connections does not apply to --flavor envoy"}},
		{"mistyped flavor", []string{"bootstrap", "--service", "web", "--flavor", "gatway"}, []string{"did you mean gateway?"}},
		{"redirect without proxy uid", []string{"redirect-traffic", "install", "--app-port", "8080", "--public-port", "15006"}, []string{"--proxy-uid is required"}},
		{"redirect as root", []string{"redirect-traffic", "install", "--proxy-uid", "0"}, []string{"cannot be 0"}},
		{"redirect app port without public port", []string{"redirect-traffic", "install", "--proxy-uid", "1337", "--app-port", "8080"}, []string{"--app-port needs --public-port"}},
		{"redirect unknown user", []string{"redirect-traffic", "install", "--proxy-uid", "no-such-user-here"}, []string{`--proxy-uid "no-such-user-here": no such user here`}},
		{"redirect bad port", []string{"redirect-traffic", "install", "--proxy-uid", "1337", "--capture-port", "70000"}, []string{"70000 is not a TCP port"}},
		{"redirect bad cidr", []string{"redirect-traffic", "install", "--proxy-uid", "1337", "--exclude-outbound-cidr", "10.0.0/8"}, []string{`--exclude-outbound-cidr "10.0.0/8"`}},
		{"redirect bad backend", []string{"redirect-traffic", "remove", "--backend", "pf"}, []string{`--backend "pf": use auto, nft or iptables`}},
		{"redirect unknown subcommand", []string{"redirect-traffic", "instal"}, []string{`did you mean "install"?`}},
		{"help unknown", []string{"help", "nope"}, []string{`unknown command "nope"`}},
		{"help unknown subcommand", []string{"help", "ca", "rotate-roo"}, []string{`unknown command "rotate-roo"; did you mean "rotate-root"?`}},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := runArgs(c.args...)
			if r.code != exitUsage {
				t.Errorf("exit code %d, want %d (stderr: %s)", r.code, exitUsage, r.stderr)
			}
			for _, w := range c.wantStderr {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, r.stderr)
				}
			}
			if r.stdout != "" {
				t.Errorf("a usage error printed to stdout:\n%s", r.stdout)
			}
		})
	}
}

// TestHelpExplainsEveryFlag checks each subcommand's -h names all its flags
// and has examples, so help cannot fall behind the flags.
func TestHelpExplainsEveryFlag(t *testing.T) {
	for _, c := range []struct {
		args  []string
		flags []string
	}{
		{[]string{"bootstrap", "-h"}, []string{"service", "namespace", "node-id", "xds-address", "admin-port", "ca-file", "inline-ca", "data-dir", "flavor", "cert-dir", "refresh-interval", "output", "drain-time"}},
		{[]string{"bootstrap", "-help"}, []string{"service"}},
		{[]string{"help", "bootstrap"}, []string{"service", "flavor"}},
		{[]string{"certs", "issue", "-h"}, []string{"service", "namespace", "service-account", "trust-domain", "data-dir", "out"}},
		{[]string{"help", "certs", "issue"}, []string{"trust-domain"}},
		{[]string{"version", "-h"}, nil},
	} {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) {
			r := runArgs(c.args...)
			if r.code != exitOK {
				t.Fatalf("exit code %d, want 0; stderr: %s", r.code, r.stderr)
			}
			if !strings.Contains(r.stdout, "Examples:") {
				t.Errorf("help has no examples:\n%s", r.stdout)
			}
			for _, f := range c.flags {
				checkHelpExplains(t, r.stdout, f)
			}
		})
	}
	if r := runArgs("help"); r.code != exitOK || !strings.Contains(r.stdout, "Commands:") {
		t.Errorf("meshctl help: code %d, stdout %q", r.code, r.stdout)
	}
	if r := runArgs("certs", "issue", "-h"); !strings.Contains(r.stdout, "DEVELOPMENT ONLY") {
		t.Errorf("certs issue help does not say it is for development only:\n%s", r.stdout)
	}
}

// checkHelpExplains fails unless help lists --flag (possibly after its
// one-letter form) with a description.
func checkHelpExplains(t *testing.T, help, flag string) {
	t.Helper()
	re := regexp.MustCompile(`(?m)^\s+(-[a-z], )?--` + regexp.QuoteMeta(flag) + `( \S+)?\s{2,}\S`)
	if !re.MatchString(help) {
		t.Errorf("help does not explain --%s:\n%s", flag, help)
	}
}

func TestVersion(t *testing.T) {
	for _, arg := range []string{"version", "--version"} {
		r := runArgs(arg)
		if r.code != exitOK || !strings.HasPrefix(r.stdout, "meshctl ") || !strings.HasSuffix(r.stdout, runtime.Version()+"\n") {
			t.Errorf("meshctl %s: code %d, stdout %q, stderr %q", arg, r.code, r.stdout, r.stderr)
		}
	}
}

func TestBootstrapEnvoyDefault(t *testing.T) {
	// The default data directory, as meshd's: $XDG_STATE_HOME/meshd. No
	// CA there yet: expect a warning, not a failure.
	state := t.TempDir()
	t.Setenv("XDG_STATE_HOME", state)
	caFile := filepath.Join(state, "meshd", "ca", "root-cert.pem")
	r := runArgs("bootstrap", "--service", "web")
	if r.code != exitOK {
		t.Fatalf("exit code %d; stderr: %s", r.code, r.stderr)
	}
	if !strings.Contains(r.stderr, "warning: CA file "+caFile) {
		t.Errorf("no warning about the missing CA file; stderr: %s", r.stderr)
	}
	b, err := envoytest.ParseBootstrapYAML([]byte(r.stdout))
	if err != nil {
		t.Fatalf("output is not a valid Envoy bootstrap: %v\n%s", err, r.stdout)
	}
	if got := b.GetNode().GetId(); got != "web.default" {
		t.Errorf("node id %q, want web.default", got)
	}
	if !strings.Contains(r.stdout, "filename: "+caFile) {
		t.Errorf("trusted_ca is not the default data dir's root:\n%s", r.stdout)
	}
	if got := b.GetAdmin().GetAddress().GetSocketAddress().GetPortValue(); got != 9901 {
		t.Errorf("admin port %d, want 9901", got)
	}
}

// Without HOME and XDG_STATE_HOME there is no default data directory: the
// commands that need one say so instead of using the working directory.
func TestNoDefaultDataDir(t *testing.T) {
	t.Setenv("XDG_STATE_HOME", "")
	t.Setenv("HOME", "")
	for _, args := range [][]string{
		{"bootstrap", "--service", "web"},
		{"token", "create", "--service", "web"},
		{"certs", "issue", "--service", "hello", "--out", t.TempDir()},
	} {
		r := runArgs(args...)
		if r.code != exitUsage || !strings.Contains(r.stderr, "--data-dir is required here") {
			t.Errorf("meshctl %v: code %d, stderr %q", args, r.code, r.stderr)
		}
	}
	// An explicit --ca-file needs no data directory.
	if r := runArgs("bootstrap", "--service", "web", "--ca-file", "/etc/meshd/root-cert.pem"); r.code != exitOK {
		t.Errorf("bootstrap --ca-file: code %d, stderr %q", r.code, r.stderr)
	}
}

func TestBootstrapInlineCA(t *testing.T) {
	dir := t.TempDir()
	caPath := envoytest.WriteRootCA(t, dir, "ca/root-cert.pem")
	root, err := os.ReadFile(caPath)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "api.yaml")
	r := runArgs("bootstrap", "--service", "api", "--namespace", "shop", "--node-id", "api-7",
		"--xds-address", "meshd.example:15012", "--admin-port", "15002", "--data-dir", dir, "--inline-ca", "-o", out)
	if r.code != exitOK {
		t.Fatalf("exit code %d; stderr: %s", r.code, r.stderr)
	}
	// With -o and an existing CA, the only output is how to start Envoy.
	if want := "meshctl bootstrap: wrote " + out + "; start Envoy with: envoy -c " + out + " --drain-time-s 5 --drain-strategy immediate\n"; r.stdout != "" || r.stderr != want {
		t.Errorf("stdout %q, stderr %q; want no stdout and stderr %q", r.stdout, r.stderr, want)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	b, err := envoytest.ParseBootstrapYAML(data)
	if err != nil {
		t.Fatal(err)
	}
	if b.GetNode().GetId() != "api-7" || b.GetNode().GetCluster() != "api" {
		t.Errorf("node = %v, want id api-7 cluster api", b.GetNode())
	}
	if !strings.Contains(string(data), "inline_bytes:") || strings.Contains(string(data), "filename:") {
		t.Errorf("--inline-ca did not embed the root:\n%s", data)
	}
	// Envoy itself accepts it, and the root it embeds is the file's.
	envoytest.Validate(t, out)
	tls := b.GetStaticResources().GetClusters()[0].GetTransportSocket().GetTypedConfig()
	if !bytes.Contains(tls.GetValue(), root) {
		t.Error("the embedded trusted_ca is not the root read from --data-dir")
	}
}

func TestBootstrapInlineCAErrors(t *testing.T) {
	dir := t.TempDir()
	r := runArgs("bootstrap", "--service", "web", "--data-dir", dir, "--inline-ca")
	if r.code != exitError || !strings.Contains(r.stderr, "start meshd once") {
		t.Errorf("missing CA: code %d, stderr %q; want 1 and advice to start meshd", r.code, r.stderr)
	}
	notPEM := filepath.Join(dir, "key.pem")
	if err := os.WriteFile(notPEM, []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r = runArgs("bootstrap", "--service", "web", "--ca-file", notPEM, "--inline-ca")
	if r.code != exitError || !strings.Contains(r.stderr, "no PEM CERTIFICATE") {
		t.Errorf("non-certificate CA: code %d, stderr %q", r.code, r.stderr)
	}
	r = runArgs("bootstrap", "--service", "web", "--ca-file", "x.pem", "-o", filepath.Join(dir, "no", "such", "dir", "web.yaml"))
	if r.code != exitError || !strings.Contains(r.stderr, "check the directory exists") {
		t.Errorf("unwritable -o: code %d, stderr %q", r.code, r.stderr)
	}
	r = runArgs("bootstrap", "--service", "web", "--ca-file", "x.pem", "--xds-address", "meshd")
	if r.code != exitError || !strings.Contains(r.stderr, "HOST:PORT") {
		t.Errorf("bad xDS address: code %d, stderr %q", r.code, r.stderr)
	}
}

func TestRootCertPathMatchesSDS(t *testing.T) {
	dir := t.TempDir()
	ca, err := sds.LoadOrCreate(sds.Options{DataDir: dir, TrustDomain: defaultTrustDomain})
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(rootCertPath(dir))
	if err != nil {
		t.Fatalf("sds does not keep its root where meshctl looks (%s): %v", rootCertPath(dir), err)
	}
	if !bytes.Equal(got, ca.RootCertPEM()) {
		t.Errorf("%s is not the CA's root", rootCertPath(dir))
	}
}

func TestCertsIssueThenGRPCBootstrap(t *testing.T) {
	dataDir := filepath.Join(t.TempDir(), "data")
	out := filepath.Join(t.TempDir(), "certs", "hello")
	// Without meshd's CA, meshctl refuses rather than minting a stray root.
	r := runArgs("certs", "issue", "--service", "hello", "--namespace", "shop", "--service-account", "hello-sa",
		"--trust-domain", "example.org", "--data-dir", dataDir, "--out", out)
	if r.code != exitError || !strings.Contains(r.stderr, "start meshd once with this data directory") {
		t.Fatalf("certs issue without a CA: code %d; stderr: %s", r.code, r.stderr)
	}
	if _, err := os.Stat(rootCertPath(dataDir)); err == nil {
		t.Fatal("meshctl created a CA")
	}
	if _, err := sds.LoadOrCreate(sds.Options{DataDir: dataDir, TrustDomain: "example.org"}); err != nil {
		t.Fatal(err)
	}
	r = runArgs("certs", "issue", "--service", "hello", "--namespace", "shop", "--service-account", "hello-sa",
		"--trust-domain", "example.org", "--data-dir", dataDir, "--out", out)
	if r.code != exitOK {
		t.Fatalf("certs issue: code %d; stderr: %s", r.code, r.stderr)
	}
	if !strings.Contains(r.stdout, "spiffe://example.org/ns/shop/sa/hello-sa") {
		t.Errorf("stdout does not name the identity: %s", r.stdout)
	}

	certPEM, err := os.ReadFile(filepath.Join(out, sds.CertFileName))
	if err != nil {
		t.Fatal(err)
	}
	block, rest := pem.Decode(certPEM)
	if block == nil {
		t.Fatalf("%s is not PEM", sds.CertFileName)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	// cert.pem is the chain gRPC presents: leaf, then the intermediate.
	inters := x509.NewCertPool()
	if !inters.AppendCertsFromPEM(rest) {
		t.Fatalf("%s carries no intermediate after the leaf", sds.CertFileName)
	}
	if len(cert.URIs) != 1 || cert.URIs[0].String() != "spiffe://example.org/ns/shop/sa/hello-sa" {
		t.Errorf("URI SANs %v, want the SPIFFE ID", cert.URIs)
	}
	wantDNS := xds.DNSNames(mesh.ServiceKey{Namespace: "shop", Name: "hello"}, "example.org")
	for _, d := range wantDNS {
		if !slices.Contains(cert.DNSNames, d) {
			t.Errorf("DNS SANs %v lack %s", cert.DNSNames, d)
		}
	}
	bundle, err := os.ReadFile(filepath.Join(out, sds.BundleFileName))
	if err != nil {
		t.Fatal(err)
	}
	root, err := os.ReadFile(rootCertPath(dataDir))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(bundle, root) {
		t.Error("ca.pem is not the data dir's root")
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(bundle)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inters, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}, CurrentTime: time.Now()}); err != nil {
		t.Errorf("the issued certificate does not chain to ca.pem: %v", err)
	}
	fi, err := os.Stat(filepath.Join(out, sds.KeyFileName))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("key.pem mode %v, want 0600", fi.Mode().Perm())
	}

	// A second issue reuses the CA.
	r = runArgs("certs", "issue", "--service", "hello", "--namespace", "shop", "--service-account", "hello-sa",
		"--trust-domain", "example.org", "--data-dir", dataDir, "--out", out)
	if r.code != exitOK || strings.Contains(r.stderr, "created") {
		t.Errorf("second certs issue: code %d, stderr %q", r.code, r.stderr)
	}
	// The wrong trust domain for an existing CA is refused.
	r = runArgs("certs", "issue", "--service", "hello", "--trust-domain", "other.org", "--data-dir", dataDir, "--out", out)
	if r.code != exitError {
		t.Errorf("certs issue with a foreign trust domain: code %d, stderr %q; want 1", r.code, r.stderr)
	}

	// The gRPC bootstrap for that directory points at those files.
	r = runArgs("bootstrap", "--flavor", "grpc", "--service", "hello", "--namespace", "shop", "--data-dir", dataDir, "--cert-dir", out)
	if r.code != exitOK {
		t.Fatalf("grpc bootstrap: code %d; stderr: %s", r.code, r.stderr)
	}
	for _, want := range []string{filepath.Join(out, sds.CertFileName), filepath.Join(out, sds.KeyFileName), filepath.Join(out, sds.BundleFileName), rootCertPath(dataDir)} {
		if !strings.Contains(r.stdout, `"`+want+`"`) {
			t.Errorf("gRPC bootstrap does not refer to %s:\n%s", want, r.stdout)
		}
	}
}

// TestReadmeCommandsReproduceEnvoyConfigs runs the meshctl commands that
// envoy-configs/README.md documents and checks they print exactly the
// checked-in files, so the README cannot drift from what is there.
func TestReadmeCommandsReproduceEnvoyConfigs(t *testing.T) {
	root, err := envoytest.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(filepath.Join(root, "envoy-configs", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const prefix = "go run ./cmd/meshctl "
	n := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		// Only the commands that produce the checked-in files; the README
		// also shows how to make token-bearing copies elsewhere.
		if !strings.HasPrefix(line, prefix) || !strings.Contains(line, "-o envoy-configs/") {
			continue
		}
		args := strings.Fields(strings.TrimPrefix(line, prefix))
		i := slices.Index(args, "-o")
		if i < 0 || i+1 >= len(args) {
			t.Errorf("README command has no -o FILE: %s", line)
			continue
		}
		file := args[i+1]
		args = slices.Delete(args, i, i+2) // print instead of overwriting the checked-in file
		n++
		t.Run(file, func(t *testing.T) {
			t.Chdir(root) // README commands run from the repo root
			r := runArgs(args...)
			if r.code != exitOK {
				t.Fatalf("%s: code %d; stderr: %s", line, r.code, r.stderr)
			}
			want, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			if r.stdout != string(want) {
				t.Errorf("%s prints something other than the checked-in %s:\n%s", line, file, r.stdout)
			}
		})
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Fatal("envoy-configs/README.md has no `go run ./cmd/meshctl` commands")
	}
}

// --dry-run prints what would be run and changes nothing; the rules are
// redirect's (tested there and, on real kernels, in e2e).
func TestRedirectTrafficDryRun(t *testing.T) {
	r := runArgs("redirect-traffic", "install", "--backend", "nft", "--proxy-uid", "1337", "--exclude-uid", "999",
		"--app-port", "8080", "--public-port", "15006", "--exclude-outbound-port", "22", "--exclude-outbound-cidr", "10.1.0.0/16,192.168.0.1", "--dry-run")
	if r.code != exitOK {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	for _, want := range []string{"# nft -f -", "tcp dport 8080 redirect to :15006", "meta skuid { 999, 1337 } return",
		"ip daddr { 10.1.0.0/16, 192.168.0.1/32 } return", "tcp dport 22 return", "meta l4proto tcp redirect to :15001"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("dry run lacks %q:\n%s", want, r.stdout)
		}
	}
}
