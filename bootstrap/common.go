package bootstrap

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/xds"
)

const (
	// DefaultXDSAddress is where the quickstart's meshd serves xDS.
	DefaultXDSAddress = "127.0.0.1:15012"
	// DefaultAdminPort is Envoy's conventional admin port.
	DefaultAdminPort uint32 = 9901
	// DefaultRefreshInterval is how often gRPC's file_watcher re-reads the
	// certificate files. Leaves live 24h and are reissued at half-life, so a
	// minute is far more often than needed and still cheap.
	DefaultRefreshInterval = "60s"

	// DefaultDrainTime bounds how long an Envoy sidecar keeps serving a
	// connection accepted on a filter chain that meshd has since replaced:
	// a plaintext connection after its workload became STRICT, a tcp
	// connection after its service's authorization changed. Envoy's own
	// default is 600 s, drained gradually; meshd's sidecars are started with
	// this and the immediate strategy (EnvoyDrainArgs). HTTP and gRPC
	// callers are told to reconnect at once (Connection: close, GOAWAY) and
	// lose no request; what is still open when the time is up is closed.
	DefaultDrainTime = 5 * time.Second
	// DrainStrategy is the --drain-strategy meshd's sidecars run with:
	// every connection of a drained chain is asked to close at once, not
	// spread over the drain time.
	DrainStrategy = "immediate"
)

// EnvoyDrainArgs are the command-line flags an Envoy sidecar must be
// started with so that mode and tcp policy changes reach connections that
// are already open within d (default DefaultDrainTime): Envoy has no
// bootstrap field for them. Every documented way of starting Envoy, and the
// test harness, uses these.
func EnvoyDrainArgs(d time.Duration) []string {
	return []string{"--drain-time-s", strconv.FormatInt(int64(drainOrDefault(d)/time.Second), 10), "--drain-strategy", DrainStrategy}
}

// EnvoyCommand is the command line that starts Envoy on the bootstrap at
// configPath with meshd's drain settings, for people to copy.
func EnvoyCommand(configPath string, d time.Duration) string {
	return "envoy -c " + configPath + " " + strings.Join(EnvoyDrainArgs(d), " ")
}

// CheckDrainTime says what is wrong with a drain time, if anything: Envoy
// takes whole seconds, at least one.
func CheckDrainTime(d time.Duration) error {
	if d < time.Second || d%time.Second != 0 {
		return fmt.Errorf("drain time %s: Envoy takes whole seconds, at least 1s (e.g. 5s, 45s)", d)
	}
	return nil
}

func drainOrDefault(d time.Duration) time.Duration {
	if d == 0 {
		return DefaultDrainTime
	}
	return d
}

// identity is what both bootstrap flavors say about the proxy.
type identity struct {
	nodeID    string
	service   string
	namespace string
}

// resolveIdentity applies the defaults shared by both flavors and checks the
// names the way the catalog does, so a bootstrap can only name a proxy the
// catalog could also contain.
func resolveIdentity(nodeID, service, namespace string) (identity, error) {
	if service == "" {
		return identity{}, fmt.Errorf("service is required: set it to the catalog name of the service this proxy fronts")
	}
	if err := mesh.ValidName(service); err != nil {
		return identity{}, fmt.Errorf("service: %w", err)
	}
	if namespace == "" {
		namespace = mesh.DefaultNamespace
	}
	if err := mesh.ValidName(namespace); err != nil {
		return identity{}, fmt.Errorf("namespace: %w", err)
	}
	if nodeID == "" {
		nodeID = xds.DefaultNodeID(mesh.ServiceKey{Namespace: namespace, Name: service})
	}
	return identity{nodeID: nodeID, service: service, namespace: namespace}, nil
}

// xdsServer is meshd's address split into its parts.
type xdsServer struct {
	host string
	port uint32
	isIP bool
}

func parseXDSAddress(addr string) (xdsServer, error) {
	if addr == "" {
		addr = DefaultXDSAddress
	}
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return xdsServer{}, fmt.Errorf("xDS address %q: %w (want HOST:PORT, e.g. %s)", addr, err, DefaultXDSAddress)
	}
	if host == "" {
		return xdsServer{}, fmt.Errorf("xDS address %q has no host: want HOST:PORT, e.g. %s", addr, DefaultXDSAddress)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil || port == 0 {
		return xdsServer{}, fmt.Errorf("xDS address %q: port %q must be a number from 1 to 65535", addr, portStr)
	}
	ip, err := netip.ParseAddr(host)
	if err == nil && ip.Zone() != "" {
		return xdsServer{}, fmt.Errorf("xDS address %q: IPv6 zones are not supported by Envoy socket addresses; use a global address or a DNS name", addr)
	}
	return xdsServer{host: host, port: uint32(port), isIP: err == nil}, nil
}

// String renders the address back as HOST:PORT (brackets around IPv6).
func (s xdsServer) String() string {
	return net.JoinHostPort(s.host, strconv.FormatUint(uint64(s.port), 10))
}
