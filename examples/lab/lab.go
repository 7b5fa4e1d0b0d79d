// Package lab is the one description of meshd's lab (examples/lab): meshd,
// a Consul server and three services, frontend → orders → payments (two
// payments instances), each instance with an Envoy sidecar.
//
// Everything that runs is a Container: its image, its address on the lab
// network (or whose network it shares), its command line, its volumes and
// what it waits for. From this one list, Files renders the
// docker-compose.yaml, the Consul service definitions and the mesh policies
// (`go run ./examples/lab/gen` writes them), and the end-to-end test runs
// the very same containers as processes in Linux network namespaces, with
// the same addresses, command lines and files (e2e/lab_test.go). The
// walkthrough of the README is Steps, run by that test command by
// command. A test regenerates the files and fails if the checked-in ones
// differ, so compose file, namespace run and README cannot drift apart.
package lab

import (
	"fmt"
	"slices"
	"strings"

	"github.com/meshd/meshd/bootstrap"
)

// The lab network. Its addresses exist only inside the lab (a compose
// network, or the test's namespaces).
const (
	Subnet     = "10.89.0.0/24"
	ConsulAddr = "10.89.0.2"
	MeshdAddr  = "10.89.0.3"
)

// Ports, the same in every instance.
const (
	// AppPort is where each demo application listens, on its loopback.
	AppPort = 8080
	// PublicPort is each sidecar's mTLS port on the instance's address:
	// the instance's endpoint in the mesh.
	PublicPort = 15001
	// EnvoyAdminPort is each sidecar's admin API, on its loopback.
	EnvoyAdminPort = 15000
	// XDSPort is meshd's xDS server (TLS), on the lab network.
	XDSPort = 15012
	// ConsulHTTPPort is the Consul server's HTTP API.
	ConsulHTTPPort = 8500
)

// Images. Envoy is the official image at the version the tests run; meshd,
// meshctl and demoapp come from the repository's Dockerfile.
const (
	EnvoyImage  = "envoyproxy/envoy:v1.40.0"
	ConsulImage = "hashicorp/consul:1.16.3"
	// ToolsTarget is the stage of the repository's Dockerfile with meshd,
	// meshctl and demoapp (and mesh-agent) on PATH and no entrypoint: the
	// command lines below run as they are, and `docker compose exec meshd
	// meshctl ...` finds meshctl.
	ToolsTarget = "all"
	// ImageUser is the non-root user of the repository's images. The
	// bootstraps meshctl writes (mode 0600: they hold a token) must be
	// readable by Envoy, so Envoy runs as the same user.
	ImageUser = "65532:65532"
)

// TrustDomain is meshd's default trust domain, which the lab keeps.
const TrustDomain = "cluster.local"

// TokenTTL is how long each sidecar's bootstrap token is valid; the
// bootstrap containers sign a new one at every `docker compose up`.
const TokenTTL = "720h"

// EnvoyFlags are the flags every sidecar's Envoy runs with, after
// `-c BOOTSTRAP`: the drain settings `meshctl bootstrap` prints (so a
// policy or mode change reaches open connections within seconds), and
// --disable-hot-restart: a container (or namespace) runs one Envoy, which
// is never hot-restarted, and without it Envoys sharing /dev/shm (the
// namespace run) collide on its shared memory.
var EnvoyFlags = append(bootstrap.EnvoyDrainArgs(0), "--disable-hot-restart", "--log-level", "info")

// Instance is one running copy of a service: an application and its
// sidecar on an address of their own.
type Instance struct {
	// ID names the instance everywhere: the compose service of the app
	// (whose network the sidecar shares), the Consul service id, meshd's
	// proxy id and the demo app's --name.
	ID string
	// Service is the service it is an instance of (Consul and mesh name).
	Service string
	// Addr is its address on the lab network.
	Addr string
	// Upstreams are the services its application calls, each through
	// the sidecar's loopback port.
	Upstreams []Upstream
}

// Upstream is a service an application calls and the loopback port its
// sidecar accepts those calls on.
type Upstream struct {
	Service   string
	LocalPort int
}

// Instances of the lab, in call order.
var Instances = []Instance{
	{ID: "frontend", Service: "frontend", Addr: "10.89.0.10", Upstreams: []Upstream{{"orders", 9001}}},
	{ID: "orders", Service: "orders", Addr: "10.89.0.11", Upstreams: []Upstream{{"payments", 9002}}},
	{ID: "payments-1", Service: "payments", Addr: "10.89.0.12"},
	{ID: "payments-2", Service: "payments", Addr: "10.89.0.13"},
}

// Instance returns the instance called id.
func InstanceByID(id string) Instance {
	for _, in := range Instances {
		if in.ID == id {
			return in
		}
	}
	panic("lab: no instance " + id)
}

// Policy names, as the walkthrough shows them.
const (
	// DenyPolicy is the AuthorizationPolicy denying /admin on payments.
	DenyPolicy = "payments-deny-admin"
	// DeniedPath is the path it denies.
	DeniedPath = "/admin"
)

// Container is one container of the lab (one process).
type Container struct {
	Name string
	// Image is a published image; Build a stage of the repository's
	// Dockerfile. Exactly one is set.
	Image, Build string
	// Addr is the container's address on the lab network; NetworkOf
	// instead names the container whose network it shares (a sidecar
	// shares its application's); NoNetwork runs it without one.
	Addr      string
	NetworkOf string
	NoNetwork bool
	// User runs the process as this uid:gid (the image's default if
	// empty).
	User string
	// Argv is the command line. Argv[0] is the program: the image's
	// entrypoint runs it.
	Argv []string
	// Mounts are its volumes and bind mounts.
	Mounts []Mount
	// DependsOn lists what must have happened before it starts.
	DependsOn []Dependency
	// Health, if set, is a command whose success means "ready"
	// (a compose healthcheck).
	Health []string
	// OneShot containers run to completion and are not restarted.
	OneShot bool
}

// Mount is a named volume (Source without a slash) or a directory of
// examples/lab (Source "./dir") mounted at Target.
type Mount struct {
	Source, Target string
	ReadOnly       bool
}

// Bind reports whether the mount is a directory of examples/lab.
func (m Mount) Bind() bool { return strings.HasPrefix(m.Source, "./") }

// Dependency conditions, as docker compose names them.
const (
	Started   = "service_started"
	Healthy   = "service_healthy"
	Completed = "service_completed_successfully"
)

// Dependency is one entry of depends_on.
type Dependency struct{ Container, Condition string }

// MeshdData is meshd's data directory in its container: $XDG_STATE_HOME/meshd
// of the images, so meshctl there finds meshd's CA and admin token without
// flags.
const MeshdData = "/var/lib/meshd"

// Paths inside the containers.
const (
	meshdData      = MeshdData
	meshdPolicy    = "/etc/meshd/policy"
	consulData     = "/consul/data"
	consulServices = "/consul/lab"
	envoyDir       = "/etc/envoy"
	// provisionDir is where a bootstrap container writes: a directory of
	// the image owned by its user, so that the volume mounted there
	// starts with that owner (Docker copies it) and meshctl may write.
	provisionDir = "/run/meshd"
	// BootstrapPath is each sidecar's bootstrap as its Envoy reads it
	// (the bootstrap container wrote it to provisionDir of the same
	// volume).
	BootstrapPath = envoyDir + "/bootstrap.yaml"
)

// Container names derived from an instance.
func EnvoyContainer(id string) string     { return id + "-envoy" }
func BootstrapContainer(id string) string { return id + "-bootstrap" }
func envoyVolume(id string) string        { return "envoy-" + id }

func hostPort(host string, port int) string { return fmt.Sprintf("%s:%d", host, port) }

// Containers is the whole lab, in an order that satisfies every
// dependency.
func Containers() []Container {
	cs := []Container{
		{
			Name: "consul", Image: ConsulImage, Addr: ConsulAddr,
			// A single server that elects itself; the lab's services are
			// registered from its configuration directory.
			Argv: []string{"consul", "agent", "-server", "-bootstrap-expect=1", "-node=consul",
				"-bind=" + ConsulAddr, "-client=0.0.0.0", "-data-dir=" + consulData,
				"-config-dir=" + consulServices, "-log-level=warn"},
			Mounts: []Mount{{Source: "consul-data", Target: consulData}, {Source: "./consul", Target: consulServices, ReadOnly: true}},
		},
		{
			Name: "meshd", Build: ToolsTarget, Addr: MeshdAddr,
			Argv: []string{"meshd", "--data-dir", meshdData,
				"--consul-address", hostPort(ConsulAddr, ConsulHTTPPort),
				"--policy-dir", meshdPolicy,
				"--xds-listen", hostPort("0.0.0.0", XDSPort),
				"--server-hosts", MeshdAddr},
			Mounts:    []Mount{{Source: "meshd-data", Target: meshdData}, {Source: "./policy", Target: meshdPolicy, ReadOnly: true}},
			DependsOn: []Dependency{{"consul", Started}},
			// The admin API answers once meshd's CA is loaded, which the
			// bootstrap containers need.
			Health: []string{"meshctl", "ca", "status"},
		},
	}
	for _, in := range Instances {
		app := []string{"demoapp", "http", "--listen", hostPort("127.0.0.1", AppPort), "--name", in.ID}
		for _, u := range in.Upstreams {
			app = append(app, "--upstream", fmt.Sprintf("http://127.0.0.1:%d", u.LocalPort))
		}
		cs = append(cs,
			Container{
				Name: BootstrapContainer(in.ID), Build: ToolsTarget, NoNetwork: true, OneShot: true,
				// One command: a new token for this service only, embedded
				// with the root CA in the sidecar's bootstrap.
				Argv: []string{"meshctl", "bootstrap", "--data-dir", meshdData,
					"--service", in.Service, "--node-id", in.ID, "--token-ttl", TokenTTL, "--inline-ca",
					"--xds-address", hostPort(MeshdAddr, XDSPort), "--admin-port", fmt.Sprint(EnvoyAdminPort),
					"-o", provisionDir + "/bootstrap.yaml"},
				Mounts:    []Mount{{Source: "meshd-data", Target: meshdData, ReadOnly: true}, {Source: envoyVolume(in.ID), Target: provisionDir}},
				DependsOn: []Dependency{{"meshd", Healthy}},
			},
			Container{
				Name: in.ID, Build: ToolsTarget, Addr: in.Addr,
				Argv: app,
			},
			Container{
				Name: EnvoyContainer(in.ID), Image: EnvoyImage, NetworkOf: in.ID, User: ImageUser,
				Argv:      append([]string{"envoy", "-c", BootstrapPath}, EnvoyFlags...),
				Mounts:    []Mount{{Source: envoyVolume(in.ID), Target: envoyDir, ReadOnly: true}},
				DependsOn: []Dependency{{BootstrapContainer(in.ID), Completed}, {in.ID, Started}},
			})
	}
	return cs
}

// ContainerByName returns the container called name.
func ContainerByName(name string) Container {
	i := slices.IndexFunc(Containers(), func(c Container) bool { return c.Name == name })
	if i < 0 {
		panic("lab: no container " + name)
	}
	return Containers()[i]
}

// Step is one command of the README's walkthrough: run in a container
// (`docker compose exec CONTAINER ARGV...`).
type Step struct {
	Container string
	Argv      []string
}

// Compose is the command a user types for the step.
func (s Step) Compose() string {
	return "docker compose exec " + s.Container + " " + strings.Join(s.Argv, " ")
}

func call(path string, more ...string) []string {
	return append([]string{"demoapp", "call", "--http", fmt.Sprintf("http://127.0.0.1:%d%s", AppPort, path)}, more...)
}

// Steps of the walkthrough, in README order.
var (
	// StepCall: the chain, each hop showing its caller's SPIFFE ID.
	StepCall = Step{"frontend", call("/")}
	// StepPlaintext: plaintext to orders' public port, refused (STRICT).
	StepPlaintext = Step{"frontend", []string{"demoapp", "call", "--http", fmt.Sprintf("http://%s:%d/", InstanceByID("orders").Addr, PublicPort)}}
	// StepDenied: orders calls payments' denied path through its sidecar.
	StepDenied = Step{"orders", []string{"demoapp", "call", "--http", fmt.Sprintf("http://127.0.0.1:%d%s", InstanceByID("orders").Upstreams[0].LocalPort, DeniedPath)}}
	// StepLoad: calls through the chain until stopped, in a second
	// terminal, while the certificates rotate and Consul's health changes.
	StepLoad = Step{"frontend", call("/", "--count", "0", "--interval", "50ms", "--quiet")}
	// StepRotate: a new intermediate CA; every leaf is reissued under it.
	StepRotate = Step{"meshd", []string{"meshctl", "ca", "rotate-intermediate"}}
	// StepCAStatus: the signing chain and every identity's certificate.
	StepCAStatus = Step{"meshd", []string{"meshctl", "ca", "status"}}
	// StepMaintOn / StepMaintOff: payments-2 into and out of Consul
	// maintenance mode (its health turns critical, then passing).
	StepMaintOn  = Step{"consul", []string{"consul", "maint", "-enable", "-service", "payments-2", "-reason", "lab"}}
	StepMaintOff = Step{"consul", []string{"consul", "maint", "-disable", "-service", "payments-2"}}
	// StepCalls: ten calls, to see which payments instances answer.
	StepCalls = Step{"frontend", call("/", "--count", "10")}
	// StepStatus: every proxy's xDS sync state.
	StepStatus = Step{"meshd", []string{"meshctl", "status"}}
	// StepTap: a few of the requests payments serves, live, with the
	// caller and the decision (while StepLoad runs); it ends by itself.
	StepTap = Step{"meshd", []string{"meshctl", "tap", "payments", "--count", fmt.Sprint(TapCount)}}
	// StepCheck: meshd, the CA and every proxy, each check passed or not.
	StepCheck = Step{"meshd", []string{"meshctl", "check"}}
)

// TapCount is how many requests StepTap shows.
const TapCount = 5

// Steps is every step, for the test that finds each in the README.
func Steps() []Step {
	return []Step{StepCall, StepPlaintext, StepDenied, StepLoad, StepRotate, StepCAStatus, StepMaintOn, StepCalls, StepMaintOff,
		StepStatus, StepTap, StepCheck}
}
