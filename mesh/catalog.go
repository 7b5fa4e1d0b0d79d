package mesh

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"slices"
)

// Catalog is a whole, validated view of the mesh: every service with its
// endpoints and every known proxy. It is immutable once built by NewCatalog;
// sources build a new one on every change.
type Catalog struct {
	services []*Service
	proxies  []*Proxy
	byKey    map[ServiceKey]*Service
	byID     map[string]*Proxy
}

// NewCatalog applies defaults, sorts everything into a canonical order (so the
// same input always renders the same output) and validates. The returned error,
// if any, is a ValidationErrors listing every problem found. The slices passed
// in are copied; the caller may reuse them.
func NewCatalog(services []Service, proxies []Proxy) (*Catalog, error) {
	c := &Catalog{
		byKey: make(map[ServiceKey]*Service, len(services)),
		byID:  make(map[string]*Proxy, len(proxies)),
	}
	for i := range services {
		s := cloneService(&services[i])
		applyServiceDefaults(s)
		c.services = append(c.services, s)
	}
	for i := range proxies {
		p := cloneProxy(&proxies[i])
		applyProxyDefaults(p)
		c.proxies = append(c.proxies, p)
	}
	// Validate before sorting so that messages refer to the input's indices.
	if errs := validate(c.services, c.proxies); len(errs) > 0 {
		return nil, errs
	}
	slices.SortFunc(c.services, func(a, b *Service) int { return compareKeys(a.Key(), b.Key()) })
	slices.SortFunc(c.proxies, func(a, b *Proxy) int { return cmp.Compare(a.ID, b.ID) })
	for _, s := range c.services {
		c.byKey[s.Key()] = s
	}
	for _, p := range c.proxies {
		c.byID[p.ID] = p
	}
	return c, nil
}

// ErrNotEndpointsOnly is returned by Catalog.WithEndpoints for a change
// that is more than new endpoints for existing services.
var ErrNotEndpointsOnly = errors.New("not an endpoints-only change")

// WithEndpoints returns the catalog NewCatalog would build from c's
// services and proxies with each service of changed in place of the one
// of the same key, in time proportional to changed rather than to the
// catalog: the other services and every proxy are shared with c, neither
// copied nor validated again (issue 14: a one-endpoint edit must not cost
// a validation of 10,000 proxies). That is sound only because nothing but
// a service's own endpoints depends on them, so it applies when each
// changed service differs from the one it replaces in its endpoints alone
// (after defaults); otherwise the error wraps ErrNotEndpointsOnly. Invalid
// endpoints are a ValidationErrors naming the service by key. Either way
// the caller builds the catalog whole with NewCatalog, which also words
// the problems against its input's indices.
func (c *Catalog) WithEndpoints(changed []Service) (*Catalog, error) {
	if len(changed) == 0 {
		return c, nil
	}
	n := &Catalog{services: slices.Clone(c.services), proxies: c.proxies, byKey: maps.Clone(c.byKey), byID: c.byID}
	v := &validator{}
	seen := make(map[ServiceKey]bool, len(changed))
	for i := range changed {
		s := cloneService(&changed[i])
		applyServiceDefaults(s)
		k := s.Key()
		old := c.byKey[k]
		switch {
		case old == nil:
			return nil, fmt.Errorf("%w: service %s is not in the catalog", ErrNotEndpointsOnly, k)
		case seen[k]:
			return nil, fmt.Errorf("%w: service %s is changed twice", ErrNotEndpointsOnly, k)
		case s.Protocol != old.Protocol || s.ServiceAccount != old.ServiceAccount || s.Address != old.Address || s.Port != old.Port:
			return nil, fmt.Errorf("%w: service %s changes more than its endpoints", ErrNotEndpointsOnly, k)
		}
		seen[k] = true
		v.endpoints(fmt.Sprintf("service %q", k.String()), s)
		if len(v.errs) > 0 {
			continue
		}
		sortEndpoints(s)
		i, found := slices.BinarySearchFunc(n.services, k, func(e *Service, k ServiceKey) int { return compareKeys(e.Key(), k) })
		if !found {
			return nil, fmt.Errorf("service %s is in the catalog's map but not its list", k) // cannot happen
		}
		n.services[i] = s
		n.byKey[k] = s
	}
	if len(v.errs) > 0 {
		return nil, v.errs
	}
	return n, nil
}

// Services returns every service in canonical order. Callers must not modify them.
func (c *Catalog) Services() []*Service { return c.services }

// Proxies returns every proxy in canonical order. Callers must not modify them.
func (c *Catalog) Proxies() []*Proxy { return c.proxies }

// Service looks a service up by key.
func (c *Catalog) Service(k ServiceKey) *Service { return c.byKey[k] }

// Proxy looks a proxy up by node id.
func (c *Catalog) Proxy(id string) *Proxy { return c.byID[id] }

// Merge combines catalogs from several sources. A service or proxy defined by
// two sources is an error naming both, never a silent override.
func Merge(sources map[string]*Catalog) (*Catalog, error) {
	names := make([]string, 0, len(sources))
	for n := range sources {
		names = append(names, n)
	}
	slices.Sort(names)
	var services []Service
	var proxies []Proxy
	svcFrom := map[ServiceKey]string{}
	proxyFrom := map[string]string{}
	for _, n := range names {
		c := sources[n]
		if c == nil {
			continue
		}
		for _, s := range c.services {
			if prev, ok := svcFrom[s.Key()]; ok {
				return nil, fmt.Errorf("service %s is defined by both %s and %s: remove it from one of them", s.Key(), prev, n)
			}
			svcFrom[s.Key()] = n
			services = append(services, *s)
		}
		for _, p := range c.proxies {
			if prev, ok := proxyFrom[p.ID]; ok {
				return nil, fmt.Errorf("proxy %q is defined by both %s and %s: remove it from one of them", p.ID, prev, n)
			}
			proxyFrom[p.ID] = n
			proxies = append(proxies, *p)
		}
	}
	return NewCatalog(services, proxies)
}

func compareKeys(a, b ServiceKey) int {
	if c := cmp.Compare(a.Namespace, b.Namespace); c != 0 {
		return c
	}
	return cmp.Compare(a.Name, b.Name)
}

func cloneService(in *Service) *Service {
	s := *in
	s.Endpoints = make([]Endpoint, len(in.Endpoints))
	for i, e := range in.Endpoints {
		if e.Labels != nil {
			l := make(map[string]string, len(e.Labels))
			for k, v := range e.Labels {
				l[k] = v
			}
			e.Labels = l
		}
		s.Endpoints[i] = e
	}
	return &s
}

func cloneProxy(in *Proxy) *Proxy {
	p := *in
	p.Upstreams = slices.Clone(in.Upstreams)
	p.UpstreamNamespaces = slices.Clone(in.UpstreamNamespaces)
	p.Listeners = slices.Clone(in.Listeners)
	for i := range p.Listeners {
		p.Listeners[i].Routes = slices.Clone(in.Listeners[i].Routes)
	}
	return &p
}

func applyServiceDefaults(s *Service) {
	if s.Namespace == "" {
		s.Namespace = DefaultNamespace
	}
	if s.Protocol == "" {
		// Opaque TCP is the one protocol that never breaks an application,
		// so it is the default, as in Consul and Istio.
		s.Protocol = ProtocolTCP
	}
	if s.ServiceAccount == "" {
		s.ServiceAccount = s.Name
	}
	for i := range s.Endpoints {
		if s.Endpoints[i].Health == "" {
			s.Endpoints[i].Health = HealthHealthy
		}
	}
}

// sortEndpoints puts endpoints in canonical order; called after validation.
func sortEndpoints(s *Service) {
	slices.SortFunc(s.Endpoints, func(a, b Endpoint) int {
		if c := cmp.Compare(a.Address, b.Address); c != 0 {
			return c
		}
		return cmp.Compare(a.Port, b.Port)
	})
}

func applyProxyDefaults(p *Proxy) {
	if p.Namespace == "" {
		p.Namespace = DefaultNamespace
	}
	if p.Flavor == "" {
		p.Flavor = FlavorEnvoy
	}
	if p.ID == "" {
		p.ID = p.Service + "." + p.Namespace
	}
	if p.Address == "" && p.Flavor.IsEnvoy() {
		p.Address = "0.0.0.0"
	}
	for i := range p.Upstreams {
		if p.Upstreams[i].Namespace == "" {
			p.Upstreams[i].Namespace = p.Namespace
		}
	}
	if p.Mode == ModeTransparent && p.Flavor == FlavorEnvoy {
		if p.CapturePort == 0 {
			p.CapturePort = DefaultCapturePort
		}
		if p.Passthrough == "" {
			// Istio's default (ALLOW_ANY): turning interception on does
			// not cut the application off from everything outside the mesh.
			p.Passthrough = PassthroughAllow
		}
	}
	for i := range p.Listeners {
		for j := range p.Listeners[i].Routes {
			r := &p.Listeners[i].Routes[j]
			if r.Namespace == "" {
				r.Namespace = p.Namespace
			}
			if r.Host == "" {
				r.Host = "*"
			}
			if r.PathPrefix == "" {
				r.PathPrefix = "/"
			}
		}
	}
}
