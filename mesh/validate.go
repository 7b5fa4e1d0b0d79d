package mesh

import (
	"fmt"
	"net/netip"
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

func validate(services []*Service, proxies []*Proxy) ValidationErrors {
	v := &validator{}
	byKey := map[ServiceKey]*Service{}
	for i, s := range services {
		obj := fmt.Sprintf("services[%d] %q", i, s.Key().String())
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
		if _, dup := byKey[s.Key()]; dup {
			v.add(obj, "name", "duplicate service %s: each name.namespace may be defined once", s.Key())
		}
		byKey[s.Key()] = s
		seen := map[string]int{}
		for j, e := range s.Endpoints {
			f := fmt.Sprintf("endpoints[%d]", j)
			if a, err := netip.ParseAddr(e.Address); err != nil || a.IsUnspecified() {
				v.add(obj, f+".address", "%q is not a usable IP address (hostnames are not resolved; use an IPv4 or IPv6 address)", e.Address)
			}
			if e.Port == 0 || e.Port > 65535 {
				v.add(obj, f+".port", "%d is not a port: use 1-65535", e.Port)
			}
			if d, ok := e.Labels[DefaultInboundPolicyLabel]; ok && !DefaultInboundPolicy(d).Valid() {
				v.add(obj, f+".labels."+DefaultInboundPolicyLabel, "unknown default inbound policy %q: use %s", d, joinPolicies(DefaultInboundPolicies))
			}
			if !e.Health.valid() {
				v.add(obj, f+".health", "unknown health %q: use healthy, unhealthy, draining or unknown", e.Health)
			}
			if prev, dup := seen[e.HostPort()]; dup {
				v.add(obj, f, "duplicate endpoint %s (also endpoints[%d])", e.HostPort(), prev)
			}
			seen[e.HostPort()] = j
		}
	}
	for _, s := range services {
		sortEndpoints(s)
	}

	ids := map[string]int{}
	// hostPorts maps "address:port" of every listener that binds on a concrete
	// host to the object that owns it, to catch two proxies fighting for a port.
	hostPorts := map[string]string{}
	claim := func(obj, field, address string, port uint32) {
		key := fmt.Sprintf("%s:%d", address, port)
		if owner, ok := hostPorts[key]; ok {
			v.add(obj, field, "port %d on %s is already used by %s", port, address, owner)
			return
		}
		hostPorts[key] = obj + " " + field
	}
	for i, p := range proxies {
		obj := fmt.Sprintf("proxies[%d] %q", i, p.ID)
		if prev, dup := ids[p.ID]; dup {
			v.add(obj, "id", "duplicate proxy id %q (also proxies[%d]); give each proxy its own id", p.ID, prev)
		}
		ids[p.ID] = i
		if p.Flavor != FlavorEnvoy && p.Flavor != FlavorGRPC {
			v.add(obj, "flavor", "unknown flavor %q: use envoy or grpc", p.Flavor)
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
		case FlavorGRPC:
			if p.AppPort != 0 {
				v.add(obj, "appPort", "a proxyless gRPC application has no separate app port; remove it")
			}
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
		ups := map[ServiceKey]int{}
		for j, u := range p.Upstreams {
			f := fmt.Sprintf("upstreams[%d]", j)
			up := byKey[u.Key()]
			if up == nil {
				v.add(obj, f+".service", "upstream %s does not exist in the catalog", u.Key())
			}
			if prev, dup := ups[u.Key()]; dup {
				v.add(obj, f+".service", "upstream %s is listed twice (also upstreams[%d])", u.Key(), prev)
			}
			ups[u.Key()] = j
			switch p.Flavor {
			case FlavorEnvoy:
				if u.LocalPort == 0 || u.LocalPort > 65535 {
					v.add(obj, f+".localPort", "an Envoy sidecar needs a loopback port (1-65535) for each upstream")
				} else {
					if u.LocalPort == p.AppPort {
						v.add(obj, f+".localPort", "equals appPort %d", p.AppPort)
					}
					// A public listener on 0.0.0.0 or :: also holds the port on
					// loopback, where the outbound listener must bind.
					if a, err := netip.ParseAddr(p.Address); err == nil && a.IsUnspecified() && u.LocalPort == p.PublicPort {
						v.add(obj, f+".localPort", "equals publicPort %d, which the sidecar binds on %s (every address, loopback included)", p.PublicPort, p.Address)
					}
					claim(obj, f+".localPort", loopbackOf(p.Address), u.LocalPort)
				}
			case FlavorGRPC:
				if u.LocalPort != 0 {
					v.add(obj, f+".localPort", "a proxyless gRPC application dials xds:///%s directly; remove localPort", u.Key())
				}
				if up != nil && up.Protocol != ProtocolGRPC {
					v.add(obj, f+".service", "upstream %s has protocol %s; proxyless gRPC can only call grpc services", up.Key(), up.Protocol)
				}
			}
		}
	}
	return v.errs
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
