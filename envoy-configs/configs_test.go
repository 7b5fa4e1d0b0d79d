// Package envoyconfigs checks the checked-in quickstart bootstraps: they are
// exactly what package bootstrap generates for the catalog's Envoy sidecars,
// and Envoy accepts them. Regenerate with `go test ./envoy-configs -update`.
package envoyconfigs

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/meshd/meshd/bootstrap"
	"github.com/meshd/meshd/discovery/file"
	"github.com/meshd/meshd/internal/envoytest"
	"github.com/meshd/meshd/internal/inputfile"
	"github.com/meshd/meshd/mesh"
)

var update = flag.Bool("update", false, "rewrite the bootstraps in envoy-configs/ and delete stale ones")

const (
	catalogPath = "../examples/quickstart/catalog.yaml"
	// caFile is where meshd keeps its root in the container images and on
	// the VMs (--data-dir /var/lib/meshd); it names no user's home, and no
	// place in a checkout.
	caFile = "/var/lib/meshd/ca/root-cert.pem"
)

// adminPorts gives each quickstart sidecar its own admin port (they share
// one host). The catalog has no admin ports, so they are fixed here and in
// README.md.
var adminPorts = map[string]uint32{
	"web":     15001,
	"api":     15002,
	"greeter": 15003,
	"db":      15004,
}

// sidecars are the catalog's Envoy proxies, which must be exactly the
// services in adminPorts.
func sidecars(t *testing.T) []*mesh.Proxy {
	t.Helper()
	cat, err := file.Load(catalogPath, inputfile.DefaultMaxSize)
	if err != nil {
		t.Fatal(err)
	}
	var out []*mesh.Proxy
	var names []string
	for _, p := range cat.Proxies() {
		if p.Flavor == mesh.FlavorEnvoy {
			out = append(out, p)
			names = append(names, p.Service)
		}
	}
	var want []string
	for s := range adminPorts {
		want = append(want, s)
	}
	slices.Sort(names)
	slices.Sort(want)
	if !slices.Equal(names, want) {
		t.Fatalf("the catalog's Envoy sidecars are %v but adminPorts (and README.md) cover %v: update both", names, want)
	}
	return out
}

func options(p *mesh.Proxy) bootstrap.EnvoyOptions {
	return bootstrap.EnvoyOptions{
		NodeID:     p.ID,
		Service:    p.Service,
		Namespace:  p.Namespace,
		XDSAddress: bootstrap.DefaultXDSAddress,
		AdminPort:  adminPorts[p.Service],
		CAFile:     caFile,
	}
}

func TestConfigsAreGenerated(t *testing.T) {
	want := map[string]bool{}
	for _, p := range sidecars(t) {
		name := p.Service + ".yaml"
		want[name] = true
		got, err := bootstrap.EnvoyYAML(options(p))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if *update {
			if err := os.WriteFile(name, got, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		have, err := os.ReadFile(name)
		if err != nil {
			t.Errorf("%v (run go test ./envoy-configs -update)", err)
			continue
		}
		if !bytes.Equal(have, got) {
			t.Errorf("envoy-configs/%s is not what meshd generates (run go test ./envoy-configs -update and review the diff):\n%s", name, got)
		}
	}
	files, err := filepath.Glob("*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if want[f] {
			continue
		}
		if *update {
			if err := os.Remove(f); err != nil {
				t.Fatal(err)
			}
			t.Logf("deleted stale envoy-configs/%s", f)
			continue
		}
		t.Errorf("envoy-configs/%s belongs to no Envoy sidecar in %s: run go test ./envoy-configs -update to delete it", f, catalogPath)
	}
}

func TestConfigsParseAndValidate(t *testing.T) {
	for _, p := range sidecars(t) {
		t.Run(p.Service, func(t *testing.T) {
			data, err := os.ReadFile(p.Service + ".yaml")
			if err != nil {
				t.Fatal(err)
			}
			b, err := envoytest.ParseBootstrapYAML(data)
			if err != nil {
				t.Fatal(err)
			}
			if got := b.GetNode().GetId(); got != p.ID {
				t.Errorf("node id %q, want the catalog's proxy id %q", got, p.ID)
			}
		})
	}
}

// TestEnvoyAcceptsConfigs runs `envoy --mode validate` on each checked-in
// file. Validate mode loads the trusted_ca file, which the test cannot
// create at caFile's absolute path: each file is validated with that one
// path, and nothing else, pointing at a generated stand-in root.
func TestEnvoyAcceptsConfigs(t *testing.T) {
	envoytest.Binary(t)
	root := t.TempDir()
	standIn := envoytest.WriteRootCA(t, root, "ca/root-cert.pem")
	for _, p := range sidecars(t) {
		t.Run(p.Service, func(t *testing.T) {
			data, err := os.ReadFile(p.Service + ".yaml")
			if err != nil {
				t.Fatal(err)
			}
			if n := bytes.Count(data, []byte("filename: "+caFile+"\n")); n != 1 {
				t.Fatalf("%s refers to %s %d times, want once (as trusted_ca)", p.Service, caFile, n)
			}
			copyPath := filepath.Join(root, p.Service+".yaml")
			if err := os.WriteFile(copyPath, bytes.Replace(data, []byte(caFile), []byte(standIn), 1), 0o644); err != nil {
				t.Fatal(err)
			}
			envoytest.ValidateInDir(t, root, copyPath)
		})
	}
}

// TestAdminPortsDoNotCollide keeps the admin ports clear of every port the
// quickstart catalog uses, since everything runs on one host.
func TestAdminPortsDoNotCollide(t *testing.T) {
	cat, err := file.Load(catalogPath, inputfile.DefaultMaxSize)
	if err != nil {
		t.Fatal(err)
	}
	used := map[uint32]string{15012: "meshd xDS"}
	for _, s := range cat.Services() {
		for _, e := range s.Endpoints {
			used[e.Port] = "endpoint of " + s.Key().String()
		}
	}
	for _, p := range cat.Proxies() {
		used[p.PublicPort] = "public port of " + p.ID
		used[p.AppPort] = "app port of " + p.ID
		for _, u := range p.Upstreams {
			used[u.LocalPort] = "local port of " + p.ID + " for " + u.Key().String()
		}
	}
	seen := map[uint32]string{}
	for svc, port := range adminPorts {
		if what, ok := used[port]; ok && port != 0 {
			t.Errorf("admin port %d of %s is also the %s", port, svc, what)
		}
		if other, ok := seen[port]; ok {
			t.Errorf("admin port %d is given to both %s and %s", port, svc, other)
		}
		seen[port] = svc
	}
}

func TestReadmeListsEveryConfig(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range sidecars(t) {
		if !strings.Contains(string(readme), "envoy-configs/"+p.Service+".yaml") {
			t.Errorf("README.md does not mention envoy-configs/%s.yaml", p.Service)
		}
	}
}
