package mesh

import "fmt"

// Protocol is the application protocol a service speaks. It decides whether
// the proxy treats traffic as HTTP (and can route and authorize requests) or
// as opaque TCP.
type Protocol string

const (
	ProtocolHTTP  Protocol = "http"
	ProtocolHTTP2 Protocol = "http2"
	ProtocolGRPC  Protocol = "grpc"
	ProtocolTCP   Protocol = "tcp"
)

// IsHTTP reports whether the proxy should run an HTTP connection manager.
func (p Protocol) IsHTTP() bool { return p == ProtocolHTTP || p == ProtocolHTTP2 || p == ProtocolGRPC }

// UsesHTTP2 reports whether connections to this service must speak HTTP/2.
func (p Protocol) UsesHTTP2() bool { return p == ProtocolHTTP2 || p == ProtocolGRPC }

func (p Protocol) valid() bool { return p == ProtocolHTTP || p.UsesHTTP2() || p == ProtocolTCP }

// Flavor is the kind of xDS client a proxy is.
type Flavor string

const (
	// FlavorEnvoy is an Envoy sidecar: inbound listener on the public port,
	// outbound listeners on loopback, secrets over SDS.
	FlavorEnvoy Flavor = "envoy"
	// FlavorGRPC is a proxyless gRPC application using gRPC's xDS support.
	FlavorGRPC Flavor = "grpc"
	// FlavorGateway is an Envoy ingress gateway: listeners for clients
	// outside the mesh (plaintext or TLS), routes by host and path to mesh
	// services, which it calls over mesh mTLS with its own identity.
	FlavorGateway Flavor = "gateway"
)

// IsEnvoy reports whether the flavor is an Envoy (sidecar or gateway),
// which takes its certificates over SDS.
func (f Flavor) IsEnvoy() bool { return f == FlavorEnvoy || f == FlavorGateway }

// ProxyMode is how the application behind an Envoy sidecar reaches its
// upstreams.
type ProxyMode string

const (
	// ModeExplicit: the application calls 127.0.0.1:<localPort>, one
	// loopback listener per upstream (the default).
	ModeExplicit ProxyMode = "explicit"
	// ModeTransparent: the application calls a service's own address and
	// port; the host's packet filter (meshctl redirect-traffic) sends the
	// connection to the sidecar's outbound capture listener, and
	// connections to the application's port to the sidecar's inbound
	// listener.
	ModeTransparent ProxyMode = "transparent"
)

// Passthrough is what a transparent sidecar does with a connection to a
// destination that is not a mesh service it sees.
type Passthrough string

const (
	// PassthroughAllow forwards it, unchanged, to where it was going.
	PassthroughAllow Passthrough = "allow"
	// PassthroughBlock closes it (and logs the destination).
	PassthroughBlock Passthrough = "block"
)

// AllNamespaces in a proxy's upstreamNamespaces makes every service of the
// mesh an upstream.
const AllNamespaces = "*"

// DefaultCapturePort is where a transparent sidecar's outbound capture
// listener listens unless the catalog says otherwise: 15001, the port
// Istio, Consul and Kuma use for the same purpose.
const DefaultCapturePort uint32 = 15001

// Health is an endpoint's health as discovery reports it.
type Health string

const (
	HealthHealthy   Health = "healthy"
	HealthUnhealthy Health = "unhealthy"
	HealthDraining  Health = "draining"
	HealthUnknown   Health = "unknown"
)

func (h Health) valid() bool {
	switch h {
	case HealthHealthy, HealthUnhealthy, HealthDraining, HealthUnknown:
		return true
	}
	return false
}

// Locality places an endpoint for locality-aware load balancing.
type Locality struct {
	Region  string `yaml:"region,omitempty" json:"region,omitempty"`
	Zone    string `yaml:"zone,omitempty" json:"zone,omitempty"`
	SubZone string `yaml:"subZone,omitempty" json:"subZone,omitempty"`
}

// ServiceKey names a service uniquely within the mesh.
type ServiceKey struct {
	Namespace string
	Name      string
}

// String renders the key as "name.namespace", the form used in messages and
// in the catalog's upstream references.
func (k ServiceKey) String() string { return k.Name + "." + k.Namespace }

// Service is a named, single-port, single-protocol destination (as in Consul:
// a workload exposing two ports is two services).
type Service struct {
	Name      string   `yaml:"name" json:"name"`
	Namespace string   `yaml:"namespace,omitempty" json:"namespace,omitempty"`
	Protocol  Protocol `yaml:"protocol,omitempty" json:"protocol,omitempty"`
	// ServiceAccount is the identity the service's instances run as.
	// Defaults to the service name.
	ServiceAccount string     `yaml:"serviceAccount,omitempty" json:"serviceAccount,omitempty"`
	Endpoints      []Endpoint `yaml:"endpoints,omitempty" json:"endpoints,omitempty"`
	// Address is the service's virtual address: what an application
	// behind a transparent sidecar calls (Address:Port), as it would a
	// Kubernetes ClusterIP or a Consul virtual IP. Nothing listens on it:
	// the caller's sidecar captures the connection and sends it to one of
	// the endpoints over mTLS. Optional; a service without one is reached
	// only through explicit upstreams.
	Address string `yaml:"address,omitempty" json:"address,omitempty"`
	// Port is the port applications call at Address.
	Port uint32 `yaml:"port,omitempty" json:"port,omitempty"`
}

// VirtualAddress reports whether transparent callers can reach the
// service (it has an address and port).
func (s *Service) VirtualAddress() bool { return s.Address != "" && s.Port != 0 }

// Key returns the service's unique key.
func (s *Service) Key() ServiceKey { return ServiceKey{Namespace: s.Namespace, Name: s.Name} }

// Endpoint is one reachable instance of a service: the address and port where
// mesh traffic for it is accepted (a sidecar's public port, or a proxyless
// gRPC server's listening port).
type Endpoint struct {
	Address  string            `yaml:"address" json:"address"`
	Port     uint32            `yaml:"port" json:"port"`
	Labels   map[string]string `yaml:"labels,omitempty" json:"labels,omitempty"`
	Health   Health            `yaml:"health,omitempty" json:"health,omitempty"`
	Locality Locality          `yaml:"locality,omitempty" json:"locality,omitempty"`
	// Weight is the endpoint's load-balancing weight; 0 means 1.
	Weight uint32 `yaml:"weight,omitempty" json:"weight,omitempty"`
}

// HostPort renders the endpoint's address for messages.
func (e *Endpoint) HostPort() string { return fmt.Sprintf("%s:%d", e.Address, e.Port) }

// Upstream is a service a proxy is allowed and configured to call.
type Upstream struct {
	Service   string `yaml:"service" json:"service"`
	Namespace string `yaml:"namespace,omitempty" json:"namespace,omitempty"`
	// LocalPort is the loopback port an Envoy sidecar listens on for this
	// upstream. Unused (and rejected) for proxyless gRPC; optional for a
	// transparent sidecar, whose application can call the service's
	// address instead.
	LocalPort uint32 `yaml:"localPort,omitempty" json:"localPort,omitempty"`
}

// Key returns the upstream's service key.
func (u *Upstream) Key() ServiceKey { return ServiceKey{Namespace: u.Namespace, Name: u.Service} }

// Proxy is one xDS client: an Envoy sidecar or a proxyless gRPC application.
type Proxy struct {
	// ID is the xDS node id the proxy presents. Defaults to "service.namespace".
	ID        string `yaml:"id,omitempty" json:"id,omitempty"`
	Flavor    Flavor `yaml:"flavor,omitempty" json:"flavor,omitempty"`
	Service   string `yaml:"service" json:"service"`
	Namespace string `yaml:"namespace,omitempty" json:"namespace,omitempty"`
	// Address is the IP the proxy's public listener binds. Envoy defaults to
	// 0.0.0.0; a gRPC server needs its concrete listening IP because gRPC
	// names its server listener by it.
	Address string `yaml:"address,omitempty" json:"address,omitempty"`
	// PublicPort accepts mesh (mTLS) traffic. 0 means a client-only proxy.
	PublicPort uint32 `yaml:"publicPort,omitempty" json:"publicPort,omitempty"`
	// AppPort is where an Envoy sidecar finds the application on 127.0.0.1.
	AppPort   uint32     `yaml:"appPort,omitempty" json:"appPort,omitempty"`
	Upstreams []Upstream `yaml:"upstreams,omitempty" json:"upstreams,omitempty"`
	// SDS says where an Envoy sidecar gets its certificate and trust
	// bundle: from meshd over its ADS stream (the default), or from a
	// mesh-agent on its host over a Unix socket (meshctl bootstrap
	// --agent-socket), which keeps the private key on the workload.
	SDS SDSSource `yaml:"sds,omitempty" json:"sds,omitempty"`
	// Mode is how an Envoy sidecar's application reaches its upstreams:
	// explicit (loopback ports, the default) or transparent.
	Mode ProxyMode `yaml:"mode,omitempty" json:"mode,omitempty"`
	// CapturePort is a transparent sidecar's outbound capture listener
	// (DefaultCapturePort when not set).
	CapturePort uint32 `yaml:"capturePort,omitempty" json:"capturePort,omitempty"`
	// Passthrough is what a transparent sidecar does with connections to
	// destinations that are not mesh services it sees (allow by default).
	Passthrough Passthrough `yaml:"passthrough,omitempty" json:"passthrough,omitempty"`
	// UpstreamNamespaces makes every service in these namespaces an
	// upstream (AllNamespaces: every service), besides Upstreams: the
	// proxy's visible service set, without listing every service.
	// Transparent sidecars and proxyless gRPC only (an explicit sidecar
	// needs a local port per upstream).
	UpstreamNamespaces []string `yaml:"upstreamNamespaces,omitempty" json:"upstreamNamespaces,omitempty"`
	// Listeners are a gateway's listeners for clients outside the mesh.
	Listeners []GatewayListener `yaml:"listeners,omitempty" json:"listeners,omitempty"`
}

// GatewayListener is one port of an ingress gateway for clients outside
// the mesh: plaintext HTTP, or HTTPS when TLS is set.
type GatewayListener struct {
	Port uint32     `yaml:"port" json:"port"`
	TLS  GatewayTLS `yaml:"tls,omitempty" json:"tls,omitempty"`
	// Routes send requests, by host and path, to mesh services. The most
	// specific match wins: an exact host over a wildcard, then the longest
	// path prefix.
	Routes []GatewayRoute `yaml:"routes" json:"routes"`
}

// GatewayTLS is where a gateway listener's server certificate comes from:
// files on the gateway's host (CertificateFile and KeyFile), or an SDS
// server on its host (SDSSecret from the Unix socket SDSSocket). Empty
// means plaintext.
type GatewayTLS struct {
	CertificateFile string `yaml:"certificateFile,omitempty" json:"certificateFile,omitempty"`
	KeyFile         string `yaml:"keyFile,omitempty" json:"keyFile,omitempty"`
	SDSSecret       string `yaml:"sdsSecret,omitempty" json:"sdsSecret,omitempty"`
	SDSSocket       string `yaml:"sdsSocket,omitempty" json:"sdsSocket,omitempty"`
}

// Enabled reports whether the listener terminates TLS.
func (t *GatewayTLS) Enabled() bool { return *t != GatewayTLS{} }

// FromFiles reports whether the certificate comes from files.
func (t *GatewayTLS) FromFiles() bool { return t.CertificateFile != "" || t.KeyFile != "" }

// GatewayRoute sends requests for Host (any host when empty or "*"; a
// leading "*." matches any subdomain) whose path starts with PathPrefix
// ("/" when empty) to a mesh service.
type GatewayRoute struct {
	Host       string `yaml:"host,omitempty" json:"host,omitempty"`
	PathPrefix string `yaml:"pathPrefix,omitempty" json:"pathPrefix,omitempty"`
	Service    string `yaml:"service" json:"service"`
	// Namespace of the service; the gateway's own namespace when empty.
	Namespace string `yaml:"namespace,omitempty" json:"namespace,omitempty"`
}

// Key returns the route's destination service key.
func (r *GatewayRoute) Key() ServiceKey { return ServiceKey{Namespace: r.Namespace, Name: r.Service} }

// Transparent reports whether the proxy is a transparent sidecar.
func (p *Proxy) Transparent() bool { return p.Mode == ModeTransparent }

// SDSSource is where an Envoy sidecar's secrets come from.
type SDSSource string

const (
	SDSMeshd SDSSource = "meshd"
	SDSAgent SDSSource = "agent"
)

// SecretsFromMeshd reports whether meshd serves this proxy its secrets over
// SDS: Envoy sidecars and gateways not fed by a mesh-agent. (Proxyless gRPC
// reads files.)
func (p *Proxy) SecretsFromMeshd() bool { return p.Flavor.IsEnvoy() && p.SDS != SDSAgent }

// ServiceKey returns the key of the service the proxy fronts.
func (p *Proxy) ServiceKey() ServiceKey { return ServiceKey{Namespace: p.Namespace, Name: p.Service} }

// Inbound reports whether the proxy accepts mesh traffic.
func (p *Proxy) Inbound() bool { return p.PublicPort != 0 }

// DefaultNamespace is used wherever a namespace is omitted.
const DefaultNamespace = "default"
