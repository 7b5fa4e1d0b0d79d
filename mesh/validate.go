package mesh

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// FieldError is one problem with one field of one object.
type FieldError struct {
	// Object names the object, e.g. `services[2] "web.default"`.
	Object string
	// Field is the path of the field within the object, e.g. "endpoints[0].port".
	Field string
	// Message says what is wrong and what would be accepted.
	Message string
}

func (e FieldError) Error() string {
	if e.Field == "" {
		return e.Object + ": " + e.Message
	}
	return e.Object + ": field " + e.Field + ": " + e.Message
}

// ValidationErrors is every problem found in one input.
type ValidationErrors []FieldError

func (v ValidationErrors) Error() string {
	msgs := make([]string, len(v))
	for i, e := range v {
		msgs[i] = e.Error()
	}
	if len(msgs) == 1 {
		return msgs[0]
	}
	return fmt.Sprintf("%d problems:\n  %s", len(msgs), strings.Join(msgs, "\n  "))
}

type validator struct{ errs ValidationErrors }

func (v *validator) add(object, field, format string, args ...any) {
	v.errs = append(v.errs, FieldError{Object: object, Field: field, Message: fmt.Sprintf(format, args...)})
}

// ValidName checks a DNS-1123 label, the form Kubernetes, Consul and Istio all
// accept for service and namespace names.
func ValidName(s string) error {
	if s == "" {
		return fmt.Errorf("must not be empty")
	}
	if len(s) > 63 {
		return fmt.Errorf("%q is longer than 63 characters", s)
	}
	for i, r := range s {
		ok := r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || (r == '-' && i > 0 && i < len(s)-1)
		if !ok {
			return fmt.Errorf("%q is not a valid name: use lowercase letters, digits and '-', starting and ending with a letter or digit", s)
		}
	}
	return nil
}

// validate checks every service and proxy. A catalog is validated whole on
// every change, so the hot paths (endpoints, upstreams, port claims) make
// their field names only for the problems they report: at 1,000 proxies
// that each call 199 services, formatting them up front and keying one
// mesh-wide map by formatted host:port strings was most of a reload
// (issue 14).
func validate(services []*Service, proxies []*Proxy) ValidationErrors {
	v := &validator{}
	byKey := make(map[ServiceKey]*Service, len(services))
	vips := map[string]string{} // "address:port" → the service that has it
	for i, s := range services {
		obj := fmt.Sprintf("services[%d] %q", i, s.Key().String())
		v.serviceNames(obj, s)
		if _, dup := byKey[s.Key()]; dup {
			v.add(obj, "name", "duplicate service %s: each name.namespace may be defined once", s.Key())
		}
		byKey[s.Key()] = s
		v.virtualAddress(obj, s, vips)
		v.endpoints(obj, s)
	}
	for _, s := range services {
		sortEndpoints(s)
	}

	ids := make(map[string]int, len(proxies))
	// hostPorts maps the address and port of every listener that binds on
	// a concrete host to the object and field that own it, to catch two
	// proxies fighting for a port: one small map per host rather than one
	// entry per listener in a map of the whole mesh (199,000 at 1,000
	// proxies calling 199 services each).
	type owner struct {
		obj, field string
		upstream   int // ≥ 0: the field is that upstream's localPort
	}
	fieldOf := func(o owner) string {
		if o.upstream >= 0 {
			return fmt.Sprintf("upstreams[%d].localPort", o.upstream)
		}
		return o.field
	}
	hostPorts := map[string]map[uint32]owner{}
	portsOf := func(address string) map[uint32]owner {
		m := hostPorts[address]
		if m == nil {
			m = map[uint32]owner{}
			hostPorts[address] = m
		}
		return m
	}
	claimIn := func(ports map[uint32]owner, o owner, address string, port uint32) {
		if prev, ok := ports[port]; ok {
			v.add(o.obj, fieldOf(o), "port %d on %s is already used by %s", port, address, prev.obj+" "+fieldOf(prev))
			return
		}
		ports[port] = o
	}
	claim := func(obj, field, address string, port uint32) {
		claimIn(portsOf(address), owner{obj, field, -1}, address, port)
	}
	ups := map[ServiceKey]int{} // one proxy's upstreams, reused
	for i, p := range proxies {
		obj := fmt.Sprintf("proxies[%d] %q", i, p.ID)
		if prev, dup := ids[p.ID]; dup {
			v.add(obj, "id", "duplicate proxy id %q (also proxies[%d]); give each proxy its own id", p.ID, prev)
		}
		ids[p.ID] = i
		if p.Flavor != FlavorEnvoy && p.Flavor != FlavorGRPC && p.Flavor != FlavorGateway {
			v.add(obj, "flavor", "unknown flavor %q: use envoy, grpc or gateway", p.Flavor)
		}
		svc := byKey[p.ServiceKey()]
		if svc == nil {
			v.add(obj, "service", "no service %s in the catalog: define it under services", p.ServiceKey())
		}
		if p.Address != "" {
			if _, err := netip.ParseAddr(p.Address); err != nil {
				v.add(obj, "address", "%q is not an IP address", p.Address)
			}
		}
		if p.PublicPort > 65535 {
			v.add(obj, "publicPort", "%d is not a port: use 1-65535", p.PublicPort)
		}
		if p.SDS != "" && p.SDS != SDSMeshd && p.SDS != SDSAgent {
			v.add(obj, "sds", "unknown SDS source %q: use meshd or agent", p.SDS)
		}
		if p.Flavor == FlavorGRPC && p.SDS != "" {
			v.add(obj, "sds", "a proxyless gRPC application reads its certificates from files (mesh-agent --cert-dir); remove sds")
		}
		switch p.Flavor {
		case FlavorEnvoy:
			if p.Inbound() {
				if p.AppPort == 0 || p.AppPort > 65535 {
					v.add(obj, "appPort", "an Envoy sidecar with a publicPort needs the application's port (1-65535)")
				} else if p.AppPort == p.PublicPort {
					v.add(obj, "appPort", "equals publicPort %d: the sidecar and the application cannot share a port", p.PublicPort)
				}
				claim(obj, "publicPort", p.Address, p.PublicPort)
			} else if p.AppPort != 0 {
				v.add(obj, "appPort", "set without publicPort: a client-only sidecar has no inbound side; set publicPort or remove appPort")
			}
			v.transparent(obj, p, claim)
		case FlavorGateway:
			v.gateway(obj, p, byKey, claim)
		case FlavorGRPC:
			if p.AppPort != 0 {
				v.add(obj, "appPort", "a proxyless gRPC application has no separate app port; remove it")
			}
			if p.Mode != "" || p.CapturePort != 0 || p.Passthrough != "" {
				v.add(obj, "mode", "a proxyless gRPC application dials its upstreams itself: nothing is intercepted; remove mode, capturePort and passthrough")
			}
			v.namespaces(obj, p)
			if p.Inbound() {
				if a, err := netip.ParseAddr(p.Address); p.Address == "" || (err == nil && a.IsUnspecified()) {
					v.add(obj, "address", "a gRPC server needs the concrete IP it listens on (gRPC names its server listener by it)")
				}
				if svc != nil && svc.Protocol != ProtocolGRPC {
					v.add(obj, "service", "service %s has protocol %s; a proxyless gRPC server must front a grpc service", svc.Key(), svc.Protocol)
				}
				claim(obj, "publicPort", p.Address, p.PublicPort)
			}
		}
		clear(ups)
		// A public listener on 0.0.0.0 or :: also holds the port on
		// loopback, where the outbound listeners must bind.
		addr, addrErr := netip.ParseAddr(p.Address)
		unspecified := addrErr == nil && addr.IsUnspecified()
		var loopback string
		var loopbackPorts map[uint32]owner
		for j, u := range p.Upstreams {
			f := func() string { return fmt.Sprintf("upstreams[%d]", j) }
			up := byKey[u.Key()]
			if up == nil {
				v.add(obj, f()+".service", "upstream %s does not exist in the catalog", u.Key())
			}
			if prev, dup := ups[u.Key()]; dup {
				v.add(obj, f()+".service", "upstream %s is listed twice (also upstreams[%d])", u.Key(), prev)
			}
			ups[u.Key()] = j
			switch p.Flavor {
			case FlavorGateway:
				v.add(obj, f(), "a gateway calls the services its listeners' routes name; remove upstreams")
			case FlavorEnvoy:
				if p.Transparent() && u.LocalPort == 0 {
					// Reached at its address through the capture listener.
					if up != nil && !up.VirtualAddress() {
						v.add(obj, f()+".service", "upstream %s has no address: an application behind a transparent sidecar calls a service at its address and port; give the service an address and port, or give this upstream a localPort", up.Key())
					}
				} else if u.LocalPort == 0 || u.LocalPort > 65535 {
					v.add(obj, f()+".localPort", "an Envoy sidecar needs a loopback port (1-65535) for each upstream")
				} else {
					if u.LocalPort == p.AppPort {
						v.add(obj, f()+".localPort", "equals appPort %d", p.AppPort)
					}
					if unspecified && u.LocalPort == p.PublicPort {
						v.add(obj, f()+".localPort", "equals publicPort %d, which the sidecar binds on %s (every address, loopback included)", p.PublicPort, p.Address)
					}
					if loopbackPorts == nil {
						loopback = loopbackOf(p.Address)
						loopbackPorts = portsOf(loopback)
					}
					claimIn(loopbackPorts, owner{obj: obj, upstream: j}, loopback, u.LocalPort)
				}
			case FlavorGRPC:
				if u.LocalPort != 0 {
					v.add(obj, f()+".localPort", "a proxyless gRPC application dials xds:///%s directly; remove localPort", u.Key())
				}
				if up != nil && up.Protocol != ProtocolGRPC {
					v.add(obj, f()+".service", "upstream %s has protocol %s; proxyless gRPC can only call grpc services", up.Key(), up.Protocol)
				}
			}
		}
	}
	return v.errs
}

// serviceNames and endpoints check what of a service depends on no other
// object: its names, protocol and identity, and its endpoints
// (Catalog.WithEndpoints checks a changed service with them alone).
func (v *validator) serviceNames(obj string, s *Service) {
	if err := ValidName(s.Name); err != nil {
		v.add(obj, "name", "%v", err)
	}
	if err := ValidName(s.Namespace); err != nil {
		v.add(obj, "namespace", "%v", err)
	}
	if !s.Protocol.valid() {
		v.add(obj, "protocol", "unknown protocol %q: use http, http2, grpc or tcp", s.Protocol)
	}
	// A defaulted service account equals the name, already checked above.
	if s.ServiceAccount != s.Name {
		if err := ValidName(s.ServiceAccount); err != nil {
			v.add(obj, "serviceAccount", "%v", err)
		}
	}
}

func (v *validator) endpoints(obj string, s *Service) {
	type hostPort struct {
		address string
		port    uint32
	}
	seen := make(map[hostPort]int, len(s.Endpoints))
	for j, e := range s.Endpoints {
		f := func() string { return fmt.Sprintf("endpoints[%d]", j) }
		if a, err := netip.ParseAddr(e.Address); err != nil || a.IsUnspecified() {
			v.add(obj, f()+".address", "%q is not a usable IP address (hostnames are not resolved; use an IPv4 or IPv6 address)", e.Address)
		}
		if e.Port == 0 || e.Port > 65535 {
			v.add(obj, f()+".port", "%d is not a port: use 1-65535", e.Port)
		}
		if d, ok := e.Labels[DefaultInboundPolicyLabel]; ok && !DefaultInboundPolicy(d).Valid() {
			v.add(obj, f()+".labels."+DefaultInboundPolicyLabel, "unknown default inbound policy %q: use %s", d, joinPolicies(DefaultInboundPolicies))
		}
		if !e.Health.valid() {
			v.add(obj, f()+".health", "unknown health %q: use healthy, unhealthy, draining or unknown", e.Health)
		}
		hp := hostPort{e.Address, e.Port}
		if prev, dup := seen[hp]; dup {
			v.add(obj, f(), "duplicate endpoint %s (also endpoints[%d])", e.HostPort(), prev)
		}
		seen[hp] = j
	}
}

// virtualAddress checks a service's virtual address and port: both or
// neither, a usable IP that is not loopback (the packet filter never
// captures loopback), and no two services at one address and port.
func (v *validator) virtualAddress(obj string, s *Service, vips map[string]string) {
	if s.Address == "" {
		if s.Port != 0 {
			v.add(obj, "port", "port %d without an address: port is what applications behind transparent sidecars call at the service's address; set address, or remove port", s.Port)
		}
		return
	}
	a, err := netip.ParseAddr(s.Address)
	switch {
	case err != nil:
		v.add(obj, "address", "%q is not an IP address (the service's virtual address; hostnames are not resolved)", s.Address)
	case a.IsUnspecified() || a.IsLoopback() || a.IsMulticast():
		v.add(obj, "address", "%s cannot be a service address: use an IP applications can connect to that is not loopback (the packet filter never captures loopback traffic)", s.Address)
	case !a.Is4():
		v.add(obj, "address", "%s: transparent interception captures IPv4 only; use an IPv4 address", s.Address)
	}
	if s.Port == 0 || s.Port > 65535 {
		v.add(obj, "port", "%d is not a port: a service with an address needs the port applications call (1-65535)", s.Port)
		return
	}
	key := net.JoinHostPort(s.Address, strconv.FormatUint(uint64(s.Port), 10))
	if other, dup := vips[key]; dup {
		v.add(obj, "address", "%s is also the address and port of %s: give each service its own", key, other)
	}
	vips[key] = s.Key().String()
}

// transparent checks an Envoy sidecar's interception fields (mode,
// capturePort, passthrough) and its visible service set.
func (v *validator) transparent(obj string, p *Proxy, claim func(obj, field, address string, port uint32)) {
	switch p.Mode {
	case "", ModeExplicit:
		if p.CapturePort != 0 {
			v.add(obj, "capturePort", "only a transparent sidecar has a capture listener; set mode: transparent, or remove capturePort")
		}
		if p.Passthrough != "" {
			v.add(obj, "passthrough", "only a transparent sidecar captures connections to other destinations; set mode: transparent, or remove passthrough")
		}
		if len(p.UpstreamNamespaces) > 0 {
			v.add(obj, "upstreamNamespaces", "an explicit sidecar needs a localPort for each upstream, so it cannot take whole namespaces; set mode: transparent, or list upstreams")
		}
		return
	case ModeTransparent:
	default:
		v.add(obj, "mode", "unknown mode %q: use explicit or transparent", p.Mode)
		return
	}
	if p.Passthrough != PassthroughAllow && p.Passthrough != PassthroughBlock {
		v.add(obj, "passthrough", "unknown passthrough %q: use allow or block", p.Passthrough)
	}
	switch {
	case p.CapturePort == 0 || p.CapturePort > 65535:
		v.add(obj, "capturePort", "%d is not a port: use 1-65535", p.CapturePort)
	case p.CapturePort == p.PublicPort:
		v.add(obj, "capturePort", "equals publicPort %d: the capture listener needs a port of its own", p.PublicPort)
	case p.CapturePort == p.AppPort:
		v.add(obj, "capturePort", "equals appPort %d, which the application holds on loopback", p.AppPort)
	default:
		// The capture listener binds every address of the host, loopback
		// included.
		claim(obj, "capturePort", p.Address, p.CapturePort)
		for j, u := range p.Upstreams {
			if u.LocalPort == p.CapturePort {
				v.add(obj, fmt.Sprintf("upstreams[%d].localPort", j), "equals capturePort %d, which the capture listener binds on every address, loopback included", p.CapturePort)
			}
		}
	}
	v.namespaces(obj, p)
}

// namespaces checks a visible service set's namespaces.
func (v *validator) namespaces(obj string, p *Proxy) {
	seen := map[string]int{}
	for i, ns := range p.UpstreamNamespaces {
		f := fmt.Sprintf("upstreamNamespaces[%d]", i)
		if ns != AllNamespaces {
			if err := ValidName(ns); err != nil {
				v.add(obj, f, "%v (or \"*\" for every namespace)", err)
			}
		}
		if prev, dup := seen[ns]; dup {
			v.add(obj, f, "namespace %q is listed twice (also upstreamNamespaces[%d])", ns, prev)
		}
		seen[ns] = i
	}
}

// gateway checks an ingress gateway: no mesh inbound side, no upstreams
// (its routes name what it calls), and listeners with routes to HTTP
// services.
func (v *validator) gateway(obj string, p *Proxy, byKey map[ServiceKey]*Service, claim func(obj, field, address string, port uint32)) {
	if p.PublicPort != 0 {
		v.add(obj, "publicPort", "a gateway accepts clients from outside the mesh on its listeners, not mesh traffic; remove publicPort")
	}
	if p.AppPort != 0 {
		v.add(obj, "appPort", "a gateway fronts no application; remove appPort")
	}
	if p.Mode != "" {
		v.add(obj, "mode", "a gateway is not a sidecar and intercepts nothing; remove mode")
	}
	if p.CapturePort != 0 || p.Passthrough != "" {
		v.add(obj, "capturePort", "a gateway has no capture listener; remove capturePort and passthrough")
	}
	if len(p.UpstreamNamespaces) > 0 {
		v.add(obj, "upstreamNamespaces", "a gateway calls the services its listeners' routes name; remove upstreamNamespaces")
	}
	if len(p.Listeners) == 0 {
		v.add(obj, "listeners", "a gateway needs at least one listener (port, routes, optional tls)")
	}
	ports := map[uint32]int{}
	for i := range p.Listeners {
		l := &p.Listeners[i]
		f := fmt.Sprintf("listeners[%d]", i)
		if l.Port == 0 || l.Port > 65535 {
			v.add(obj, f+".port", "%d is not a port: use 1-65535", l.Port)
		} else if prev, dup := ports[l.Port]; dup {
			v.add(obj, f+".port", "port %d is also listeners[%d]'s", l.Port, prev)
		} else {
			ports[l.Port] = i
			claim(obj, f+".port", p.Address, l.Port)
		}
		v.gatewayTLS(obj, f+".tls", &l.TLS)
		if len(l.Routes) == 0 {
			v.add(obj, f+".routes", "a listener needs at least one route (host, pathPrefix, service)")
		}
		matches := map[string]int{}
		for j := range l.Routes {
			r := &l.Routes[j]
			rf := fmt.Sprintf("%s.routes[%d]", f, j)
			if err := validRouteHost(r.Host); err != nil {
				v.add(obj, rf+".host", "%v", err)
			}
			if !strings.HasPrefix(r.PathPrefix, "/") {
				v.add(obj, rf+".pathPrefix", "%q must start with /", r.PathPrefix)
			}
			m := r.Host + " " + r.PathPrefix
			if prev, dup := matches[m]; dup {
				v.add(obj, rf, "host %q and pathPrefix %q are also routes[%d]'s: the second could never match", r.Host, r.PathPrefix, prev)
			}
			matches[m] = j
			switch svc := byKey[r.Key()]; {
			case svc == nil:
				v.add(obj, rf+".service", "no service %s in the catalog", r.Key())
			case !svc.Protocol.IsHTTP():
				v.add(obj, rf+".service", "service %s has protocol %s; a gateway routes HTTP requests, to http, http2 or grpc services", svc.Key(), svc.Protocol)
			}
		}
	}
}

func (v *validator) gatewayTLS(obj, f string, t *GatewayTLS) {
	files := t.CertificateFile != "" || t.KeyFile != ""
	sds := t.SDSSecret != "" || t.SDSSocket != ""
	switch {
	case files && sds:
		v.add(obj, f, "give the certificate either as files (certificateFile, keyFile) or from SDS (sdsSecret, sdsSocket), not both")
	case files:
		for _, x := range []struct{ field, path string }{{"certificateFile", t.CertificateFile}, {"keyFile", t.KeyFile}} {
			if !strings.HasPrefix(x.path, "/") {
				v.add(obj, f+"."+x.field, "%q: give the absolute path of the PEM file on the gateway's host (certificateFile and keyFile go together)", x.path)
			}
		}
	case sds:
		if t.SDSSecret == "" {
			v.add(obj, f+".sdsSecret", "the name of the secret to ask the SDS server for is required with sdsSocket")
		}
		if !strings.HasPrefix(t.SDSSocket, "/") {
			v.add(obj, f+".sdsSocket", "%q: give the absolute path of the SDS server's Unix socket on the gateway's host", t.SDSSocket)
		}
	}
}

// validRouteHost accepts a DNS name, "*", or "*." followed by a DNS name
// (any subdomain), as Envoy's virtual host domains do.
func validRouteHost(h string) error {
	if h == "*" {
		return nil
	}
	name := strings.TrimPrefix(h, "*.")
	if name == "" || len(name) > 253 {
		return fmt.Errorf("%q is not a host name: use a DNS name (shop.example.com), *.example.com, or * for any", h)
	}
	for _, label := range strings.Split(name, ".") {
		if ValidName(label) != nil {
			return fmt.Errorf("%q is not a host name: use a lowercase DNS name (shop.example.com), *.example.com, or * for any", h)
		}
	}
	return nil
}

// loopbackOf names the loopback interface of the host a proxy runs on, for
// port-clash detection: outbound listeners bind 127.0.0.1, so two sidecars on
// different hosts may reuse a local port, but sidecars on one host may not.
// Proxies whose address is itself loopback (a one-machine setup such as the
// quickstart) share the real 127.0.0.1 with every public port bound there.
func loopbackOf(address string) string {
	if a, err := netip.ParseAddr(address); err == nil && a.IsLoopback() {
		return "127.0.0.1"
	}
	return "loopback of " + address
}

func joinPolicies(l []DefaultInboundPolicy) string {
	s := make([]string, len(l))
	for i, d := range l {
		s[i] = string(d)
	}
	return strings.Join(s, ", ")
}
