package consul

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/hashicorp/consul/api"

	"github.com/meshd/meshd/mesh"
)

// Keys meshd reads from Consul registrations. They are the whole contract
// between a Consul catalog and meshd and are documented in docs/consul.md;
// renaming one breaks every deployment that uses it.
const (
	// MetaNamespace (service meta of the application service) puts the
	// service in a mesh namespace. Consul CE has no namespaces of its own.
	MetaNamespace = "meshd-namespace"
	// MetaServiceAccount (service meta of the application service) is the
	// identity its instances run as; default: the service name.
	MetaServiceAccount = "meshd-service-account"
	// MetaProtocol (service meta of the application service) is the
	// service's protocol: http, http2, grpc or tcp.
	MetaProtocol = "meshd-protocol"
	// MetaProxyID (service meta of a sidecar registration) overrides the
	// xDS node id of that sidecar; default "<consul node>/<sidecar service id>".
	MetaProxyID = "meshd-proxy-id"
	// MetaSDS (service meta of a sidecar registration) says where that
	// Envoy gets its certificate and trust bundle: "meshd" (over xDS, the
	// default) or "agent" (a mesh-agent on the same machine, over SDS on a
	// Unix socket: meshctl bootstrap --agent-socket), as the catalog's
	// proxy field sds.
	MetaSDS = "meshd-sds"
	// ProxyConfigProtocol is the key in a sidecar's proxy.config (and in an
	// upstream's config) that Consul itself uses for the protocol. meshd reads
	// it so that existing Consul registrations work unchanged.
	ProxyConfigProtocol = "protocol"
	// NodeMetaRegion, NodeMetaZone and NodeMetaSubZone (Consul node meta)
	// set the locality of every endpoint on the node. The region defaults to
	// the node's Consul locality region, then to its datacenter.
	NodeMetaRegion  = "meshd-region"
	NodeMetaZone    = "meshd-zone"
	NodeMetaSubZone = "meshd-subzone"
)

// metaPrefix marks meta keys that are meshd's configuration rather than
// labels of the instance.
const metaPrefix = "meshd-"

// MappingError is one registration in Consul that meshd cannot turn into
// the mesh model. It names the Consul service, the instance and the key so
// that the operator can find and fix the registration.
type MappingError struct {
	// Service is the Consul service name of the registration at fault.
	Service string
	// Instance is "<service id> on node <node>", or "" for a problem of the
	// service as a whole.
	Instance string
	// Key is the field or meta key at fault, e.g. `meta "meshd-protocol"`.
	Key string
	// Message says what is wrong and what would be accepted.
	Message string
}

func (e *MappingError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "consul service %q", e.Service)
	if e.Instance != "" {
		fmt.Fprintf(&b, " (instance %s)", e.Instance)
	}
	if e.Key != "" {
		b.WriteString(": " + e.Key)
	}
	b.WriteString(": " + e.Message)
	return b.String()
}

// MappingErrors is every problem found while mapping one Consul catalog.
type MappingErrors []*MappingError

func (m MappingErrors) Error() string {
	msgs := make([]string, len(m))
	for i, e := range m {
		msgs[i] = e.Error()
	}
	if len(msgs) == 1 {
		return msgs[0]
	}
	return fmt.Sprintf("%d problems in the Consul catalog:\n  %s", len(msgs), strings.Join(msgs, "\n  "))
}

// MapOptions changes how Consul health maps to endpoints.
type MapOptions struct {
	// IncludeWarning keeps instances whose checks are in the warning state
	// (with their Consul warning weight). By default only passing instances
	// receive traffic, as with Consul's own ?passing filter.
	IncludeWarning bool
}

// Map turns Consul health entries, keyed by Consul service name, into a
// validated catalog. It is pure: the same entries give the same catalog.
//
// Which Consul services become mesh services: every service that a Connect
// sidecar (Kind connect-proxy) fronts, and every service a sidecar names as
// an upstream. Other services (the "consul" service itself, services not in
// the mesh) are ignored, so a name that is not a valid mesh name cannot break
// the mesh unless someone puts it in the mesh.
//
// Every sidecar becomes a proxy whatever its health: an unhealthy instance
// still needs its configuration. Only endpoints follow health: an endpoint
// (the sidecar's address and port) is present only when both the sidecar's
// checks and its application instance's checks (node checks included) are
// passing, or warning if IncludeWarning is set.
func Map(entries map[string][]*api.ServiceEntry, o MapOptions) (*mesh.Catalog, error) {
	return newIncrementalMapper(o).Map(entries)
}

// incrementalMapper is Map with a memory: it re-maps only the mesh services
// whose Consul entries changed since its previous call, which is what keeps
// a health flip in a 10,000-instance catalog cheap. Its result is always
// exactly Map's (TestIncrementalMapperMatchesMap checks this). The watcher
// owns one; it is not safe for concurrent use.
type incrementalMapper struct {
	opts  MapOptions
	cache map[string]*destResult // by mesh service (Consul destination) name
}

func newIncrementalMapper(o MapOptions) *incrementalMapper {
	return &incrementalMapper{opts: o, cache: map[string]*destResult{}}
}

// destResult is everything one mesh service contributes, mapped from its
// application instances and its sidecars.
type destResult struct {
	// apps and sidecars are the inputs, compared by pointer: the watcher
	// keeps the entries of unchanged Consul services, and every new answer
	// from Consul is decoded into new entries.
	apps, sidecars []*api.ServiceEntry
	svc            mesh.Service
	// proxies have upstream namespaces unresolved: they depend on other
	// services and are filled in on every Map.
	proxies []mesh.Proxy
	errs    MappingErrors
}

func (im *incrementalMapper) Map(entries map[string][]*api.ServiceEntry) (*mesh.Catalog, error) {
	apps := map[string][]*api.ServiceEntry{}
	byDest := map[string][]*api.ServiceEntry{}
	var errs MappingErrors
	names := make([]string, 0, len(entries))
	for n := range entries {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		for _, e := range entries[n] {
			if e == nil || e.Service == nil || e.Node == nil {
				continue
			}
			switch e.Service.Kind {
			case api.ServiceKindConnectProxy:
				d := destinationOf(e)
				if d == "" {
					errs = append(errs, &MappingError{Service: e.Service.Service, Instance: instanceName(e), Key: "proxy.destination_service_name",
						Message: "a connect-proxy registration must name the service it fronts"})
					continue
				}
				byDest[d] = append(byDest[d], e)
			case api.ServiceKindTypical:
				apps[e.Service.Service] = append(apps[e.Service.Service], e)
			}
			// Gateways and other kinds are not part of meshd's model.
		}
	}

	// Every service a sidecar fronts, re-mapped only if its inputs changed.
	dests := slices.Sorted(maps.Keys(byDest))
	next := make(map[string]*destResult, len(dests))
	for _, d := range dests {
		r := im.cache[d]
		if r == nil || !slices.Equal(r.apps, apps[d]) || !slices.Equal(r.sidecars, byDest[d]) {
			r = im.mapDest(d, apps, byDest)
		}
		next[d] = r
		errs = append(errs, r.errs...)
	}
	im.cache = next

	// Services that exist only as upstreams; they are few, so they are
	// mapped afresh each time.
	m := &mapper{opts: im.opts, apps: apps, byDest: byDest, services: map[string]*mesh.Service{}}
	for _, d := range dests {
		m.services[d] = &next[d].svc
	}
	for _, d := range dests {
		for _, sc := range byDest[d] {
			for i, u := range upstreamsOf(sc) {
				if u.DestinationName != "" && m.services[u.DestinationName] == nil {
					m.placeholder(u.DestinationName, sc, i, u)
				}
			}
		}
	}
	errs = append(errs, m.errs...)
	if len(errs) > 0 {
		return nil, errs
	}

	services := make([]mesh.Service, 0, len(m.services))
	for _, n := range slices.Sorted(maps.Keys(m.services)) {
		services = append(services, *m.services[n])
	}
	var proxies []mesh.Proxy
	for _, d := range dests {
		for _, p := range next[d].proxies {
			// Copy: the cached proxy must keep its namespaces unresolved.
			ups := make([]mesh.Upstream, len(p.Upstreams))
			for i, u := range p.Upstreams {
				u.Namespace = mesh.DefaultNamespace
				if t := m.services[u.Service]; t != nil && t.Namespace != "" {
					u.Namespace = t.Namespace
				}
				ups[i] = u
			}
			p.Upstreams = ups
			proxies = append(proxies, p)
		}
	}
	cat, err := mesh.NewCatalog(services, proxies)
	if err != nil {
		return nil, fmt.Errorf("catalog built from Consul is invalid: %w", err)
	}
	return cat, nil
}

// mapDest maps mesh service d: its attributes, its endpoints (one per
// healthy sidecar) and its proxies (one per sidecar).
func (im *incrementalMapper) mapDest(d string, apps, byDest map[string][]*api.ServiceEntry) *destResult {
	m := &mapper{opts: im.opts, apps: apps, byDest: byDest, services: map[string]*mesh.Service{}}
	m.service(d)
	r := &destResult{apps: apps[d], sidecars: byDest[d]}
	svc := m.services[d]
	sidecars := slices.Clone(byDest[d])
	slices.SortFunc(sidecars, func(a, b *api.ServiceEntry) int {
		return cmp.Or(cmp.Compare(a.Node.Node, b.Node.Node), cmp.Compare(a.Service.ID, b.Service.ID))
	})
	for _, sc := range sidecars {
		app := m.appOf(sc, d)
		if ep, ok := m.endpoint(sc, app); ok {
			svc.Endpoints = append(svc.Endpoints, ep)
		}
		if p, ok := m.proxy(sc, app, svc); ok {
			r.proxies = append(r.proxies, p)
		}
	}
	r.svc = *svc
	r.errs = m.errs
	return r
}

type mapper struct {
	opts     MapOptions
	apps     map[string][]*api.ServiceEntry // application instances by Consul service name
	services map[string]*mesh.Service       // mesh services by Consul service name
	byDest   map[string][]*api.ServiceEntry // connect-proxy instances by the service they front
	errs     MappingErrors
}

func (m *mapper) fail(e *api.ServiceEntry, key, format string, args ...any) {
	m.errs = append(m.errs, &MappingError{Service: e.Service.Service, Instance: instanceName(e), Key: key, Message: fmt.Sprintf(format, args...)})
}

func instanceName(e *api.ServiceEntry) string {
	return fmt.Sprintf("%s on node %s", e.Service.ID, e.Node.Node)
}

// attr is a service-level value read from several registrations, which must
// agree: one instance saying http and another tcp is a mistake that must not
// be settled by whichever instance happens to be read first.
type attr struct {
	key, value string
	from       *api.ServiceEntry
}

func (m *mapper) agree(name string, a *attr, key, value string, from *api.ServiceEntry) {
	if value == "" {
		return
	}
	if a.value == "" {
		*a = attr{key: key, value: value, from: from}
		return
	}
	if a.value != value {
		m.errs = append(m.errs, &MappingError{Service: name, Key: key,
			Message: fmt.Sprintf("instances disagree: %q on %s but %q on %s; give every instance the same value",
				a.value, instanceName(a.from), value, instanceName(from))})
	}
}

// service defines the mesh service for Consul service name (once), reading
// its attributes from every application instance and every sidecar.
func (m *mapper) service(name string) {
	if m.services[name] != nil {
		return
	}
	var ns, sa, proto, proxyProto attr
	for _, e := range m.apps[name] {
		m.agree(name, &ns, metaKey(MetaNamespace), e.Service.Meta[MetaNamespace], e)
		m.agree(name, &sa, metaKey(MetaServiceAccount), e.Service.Meta[MetaServiceAccount], e)
		m.agree(name, &proto, metaKey(MetaProtocol), e.Service.Meta[MetaProtocol], e)
	}
	// Sidecars of this service, for Consul's own proxy.config.protocol.
	for _, e := range m.byDest[name] {
		if v, ok := e.Service.Proxy.Config[ProxyConfigProtocol]; ok {
			s, isString := v.(string)
			if !isString {
				m.fail(e, `proxy.config "protocol"`, "%v is not a string: use http, http2, grpc or tcp", v)
				continue
			}
			m.agree(name, &proxyProto, `proxy.config "protocol"`, s, e)
		}
	}
	svc := &mesh.Service{Name: name}
	if err := mesh.ValidName(name); err != nil {
		m.errs = append(m.errs, &MappingError{Service: name, Key: "service name",
			Message: fmt.Sprintf("%v (a service fronted by a Connect sidecar joins the mesh, so its Consul name must be a mesh name)", err)})
	}
	if ns.value != "" {
		if err := mesh.ValidName(ns.value); err != nil {
			m.failAttr(name, ns, err.Error())
		}
		svc.Namespace = ns.value
	}
	if sa.value != "" {
		if err := mesh.ValidName(sa.value); err != nil {
			m.failAttr(name, sa, err.Error())
		}
		svc.ServiceAccount = sa.value
	}
	switch {
	case proto.value != "" && proxyProto.value != "" && !strings.EqualFold(proto.value, proxyProto.value):
		m.errs = append(m.errs, &MappingError{Service: name, Key: metaKey(MetaProtocol),
			Message: fmt.Sprintf("%q on %s contradicts proxy.config \"protocol\" %q on sidecar %s; set one, or make them equal",
				proto.value, instanceName(proto.from), proxyProto.value, instanceName(proxyProto.from))})
	case proto.value != "":
		svc.Protocol = m.protocol(name, proto)
	case proxyProto.value != "":
		svc.Protocol = m.protocol(name, proxyProto)
	}
	m.services[name] = svc
}

// placeholder defines a service that a sidecar lists as an upstream but that
// has no sidecar of its own (not deployed yet, or every instance gone). It
// has no endpoints: the upstream's listener exists and connections fail,
// which is what Consul does too, instead of the whole catalog being refused.
func (m *mapper) placeholder(name string, sc *api.ServiceEntry, i int, u api.Upstream) {
	m.service(name)
	svc := m.services[name]
	if svc.Protocol != "" {
		return
	}
	if v, ok := u.Config[ProxyConfigProtocol]; ok {
		s, isString := v.(string)
		if !isString {
			m.fail(sc, fmt.Sprintf(`proxy.upstreams[%d].config "protocol"`, i), "%v is not a string: use http, http2, grpc or tcp", v)
			return
		}
		svc.Protocol = m.protocol(sc.Service.Service, attr{key: fmt.Sprintf(`proxy.upstreams[%d].config "protocol"`, i), value: s, from: sc})
	}
}

func (m *mapper) failAttr(name string, a attr, msg string) {
	m.errs = append(m.errs, &MappingError{Service: name, Instance: instanceName(a.from), Key: a.key, Message: msg})
}

func (m *mapper) protocol(name string, a attr) mesh.Protocol {
	switch p := mesh.Protocol(strings.ToLower(a.value)); p {
	case mesh.ProtocolHTTP, mesh.ProtocolHTTP2, mesh.ProtocolGRPC, mesh.ProtocolTCP:
		return p
	}
	m.failAttr(name, a, fmt.Sprintf("%q is not a protocol meshd knows: use http, http2, grpc or tcp", a.value))
	return ""
}

// appOf finds the application instance a sidecar fronts: the instance with
// the sidecar's destination_service_id on the sidecar's node, or, if the
// sidecar names no id, the only instance of the service on that node.
func (m *mapper) appOf(sc *api.ServiceEntry, dest string) *api.ServiceEntry {
	id := sc.Service.Proxy.DestinationServiceID
	var found *api.ServiceEntry
	n := 0
	for _, e := range m.apps[dest] {
		if e.Node.Node != sc.Node.Node {
			continue
		}
		if id != "" && e.Service.ID == id {
			return e
		}
		found = e
		n++
	}
	if id == "" && n == 1 {
		return found
	}
	return nil
}

// status is the aggregated health of an entry: its own checks and its
// node's (Consul returns both with the entry). Maintenance counts as down.
func status(e *api.ServiceEntry) string {
	s := e.Checks.AggregatedStatus()
	if s == api.HealthMaint {
		return api.HealthCritical
	}
	if len(e.Checks) == 0 {
		// No checks at all: Consul treats the instance as passing.
		return api.HealthPassing
	}
	return s
}

func worst(a, b string) string {
	rank := map[string]int{api.HealthPassing: 0, api.HealthWarning: 1, api.HealthCritical: 2}
	if rank[b] > rank[a] {
		return b
	}
	return a
}

func addressOf(e *api.ServiceEntry) string {
	if e.Service.Address != "" {
		return e.Service.Address
	}
	return e.Node.Address
}

func (m *mapper) endpoint(sc, app *api.ServiceEntry) (mesh.Endpoint, bool) {
	if app == nil {
		// The sidecar fronts nothing registered: there is nothing to route to.
		return mesh.Endpoint{}, false
	}
	st := worst(status(sc), status(app))
	weight := 1
	switch st {
	case api.HealthPassing:
		if w := app.Service.Weights.Passing; w > 0 {
			weight = w
		}
	case api.HealthWarning:
		if !m.opts.IncludeWarning {
			return mesh.Endpoint{}, false
		}
		// Consul's warning weight 0 means "no traffic while warning".
		weight = app.Service.Weights.Warning
		if weight <= 0 {
			return mesh.Endpoint{}, false
		}
	default:
		return mesh.Endpoint{}, false
	}
	var labels map[string]string
	for k, v := range app.Service.Meta {
		if strings.HasPrefix(k, metaPrefix) {
			continue
		}
		if labels == nil {
			labels = map[string]string{}
		}
		labels[k] = v
	}
	ep := mesh.Endpoint{
		Address:  addressOf(sc),
		Port:     uint32(max(sc.Service.Port, 0)),
		Labels:   labels,
		Health:   mesh.HealthHealthy,
		Locality: localityOf(sc),
		Weight:   uint32(weight),
	}
	return ep, true
}

func localityOf(e *api.ServiceEntry) mesh.Locality {
	var l mesh.Locality
	switch {
	case e.Service.Locality != nil:
		l.Region, l.Zone = e.Service.Locality.Region, e.Service.Locality.Zone
	case e.Node.Locality != nil:
		l.Region, l.Zone = e.Node.Locality.Region, e.Node.Locality.Zone
	}
	if l.Region == "" {
		l.Region = e.Node.Datacenter
	}
	if v := e.Node.Meta[NodeMetaRegion]; v != "" {
		l.Region = v
	}
	if v := e.Node.Meta[NodeMetaZone]; v != "" {
		l.Zone = v
	}
	if v := e.Node.Meta[NodeMetaSubZone]; v != "" {
		l.SubZone = v
	}
	return l
}

func (m *mapper) proxy(sc, app *api.ServiceEntry, svc *mesh.Service) (mesh.Proxy, bool) {
	px := sc.Service.Proxy // not nil: destinationOf(sc) was not empty
	ok := true
	id := sc.Service.Meta[MetaProxyID]
	if id == "" {
		id = sc.Node.Node + "/" + sc.Service.ID
	}
	p := mesh.Proxy{
		ID:         id,
		Flavor:     mesh.FlavorEnvoy,
		Service:    svc.Name,
		Namespace:  svc.Namespace,
		Address:    addressOf(sc),
		PublicPort: uint32(max(sc.Service.Port, 0)),
	}
	if sc.Service.Port <= 0 {
		m.fail(sc, "port", "a sidecar needs the port it accepts mesh traffic on (1-65535)")
		ok = false
	}
	switch v := mesh.SDSSource(sc.Service.Meta[MetaSDS]); v {
	case "", mesh.SDSMeshd, mesh.SDSAgent:
		p.SDS = v
	default:
		m.fail(sc, metaKey(MetaSDS), "%q is not an SDS source: use %q (certificates from meshd over xDS, the default) or %q (from a local mesh-agent)", string(v), mesh.SDSMeshd, mesh.SDSAgent)
		ok = false
	}
	// meshd's sidecar reaches the application on 127.0.0.1 only.
	if a := px.LocalServiceAddress; a != "" {
		if ip, err := netip.ParseAddr(a); err != nil || ip != netip.MustParseAddr("127.0.0.1") {
			m.fail(sc, "proxy.local_service_address", "%q is not supported: meshd's sidecar reaches the application on 127.0.0.1; remove the field or set 127.0.0.1", a)
			ok = false
		}
	}
	if px.LocalServiceSocketPath != "" {
		m.fail(sc, "proxy.local_service_socket_path", "unix sockets are not supported: use proxy.local_service_port")
		ok = false
	}
	switch {
	case px.LocalServicePort > 0:
		p.AppPort = uint32(px.LocalServicePort)
	case app != nil && app.Service.Port > 0:
		// Consul's default: the application's registered port.
		p.AppPort = uint32(app.Service.Port)
	default:
		m.fail(sc, "proxy.local_service_port", "cannot tell the application's port: set proxy.local_service_port or register %q with a port on node %s", svc.Name, sc.Node.Node)
		ok = false
	}
	for i, u := range px.Upstreams {
		key := "proxy.upstreams[" + strconv.Itoa(i) + "]"
		switch {
		case u.DestinationType != "" && u.DestinationType != api.UpstreamDestTypeService:
			m.fail(sc, key+".destination_type", "%q is not supported: meshd resolves upstreams to services only", u.DestinationType)
			ok = false
			continue
		case u.DestinationName == "":
			m.fail(sc, key+".destination_name", "an upstream must name a service")
			ok = false
			continue
		case u.DestinationPeer != "" || (u.Datacenter != "" && u.Datacenter != sc.Node.Datacenter):
			m.fail(sc, key, "upstreams in another datacenter or peer are not supported yet")
			ok = false
			continue
		case u.LocalBindSocketPath != "":
			m.fail(sc, key+".local_bind_socket_path", "unix sockets are not supported: use local_bind_port")
			ok = false
			continue
		case u.LocalBindPort <= 0:
			m.fail(sc, key+".local_bind_port", "an Envoy sidecar needs a loopback port (1-65535) for each upstream")
			ok = false
			continue
		}
		if a := u.LocalBindAddress; a != "" && a != "127.0.0.1" {
			m.fail(sc, key+".local_bind_address", "%q is not supported: meshd binds upstream listeners on 127.0.0.1; remove the field", a)
			ok = false
			continue
		}
		// The namespace is the target's, resolved by Map once every service
		// is known.
		p.Upstreams = append(p.Upstreams, mesh.Upstream{Service: u.DestinationName, LocalPort: uint32(u.LocalBindPort)})
	}
	return p, ok
}

// metaKey names a meta key in messages; strconv.Quote rather than
// fmt.Sprintf because it is called for every instance on every rebuild.
func metaKey(k string) string { return "meta " + strconv.Quote(k) }

// destinationOf is the service a sidecar fronts.
func destinationOf(e *api.ServiceEntry) string {
	if e.Service.Proxy == nil {
		return ""
	}
	return e.Service.Proxy.DestinationServiceName
}

func upstreamsOf(e *api.ServiceEntry) []api.Upstream {
	if e.Service.Proxy == nil {
		return nil
	}
	return e.Service.Proxy.Upstreams
}
