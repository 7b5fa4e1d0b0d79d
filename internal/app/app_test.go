package app

import (
	"path/filepath"
	"strings"
	"time"

	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/policy"
)

// testConfig is meshd's defaults (cmd/meshd's flags) on loopback ports
// chosen by the kernel, with the catalog file and data under dir.
func testConfig(dir, catalog string) *Config {
	return &Config{
		Catalog: catalog, DataDir: filepath.Join(dir, "data"), TrustDomain: mesh.DefaultTrustDomain,
		XDSListen: "127.0.0.1:0", AdminListen: "127.0.0.1:0",
		LeafTTL: 24 * time.Hour, Holdoff: 100 * time.Millisecond, MaxDelay: time.Second,
		CatalogHoldoff: 100 * time.Millisecond, MTLSMode: string(mesh.MTLSPermissive), RootNS: mesh.DefaultRootNamespace,
		DefaultInbound: string(mesh.DefaultAllUnauthenticated), ClusterNetworks: strings.Join(policy.DefaultClusterNetworks, ","),
		MigrationOverdue: time.Minute, LivenessTimeout: 30 * time.Second, ConsulDefaultIntention: "allow", ConsulSyncTimeout: 30 * time.Second,
	}
}
