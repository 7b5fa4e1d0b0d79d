// Package loadgen is the engine of cmd/xds-load: it generates catalogs at a
// chosen scale, simulates a fleet of Envoy-like xDS clients over ADS (SotW or
// delta), changes the catalog under them and measures how the control plane
// behaves. It is a library so the e2e test can run scenario S in-process.
package loadgen

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"slices"

	"gopkg.in/yaml.v3"

	"github.com/meshd/meshd/discovery/file"
	"github.com/meshd/meshd/internal/atomicfile"
	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/xds"
)

// Scenario is the shape of a generated mesh.
type Scenario struct {
	Name      string
	Proxies   int
	Services  int
	Endpoints int // per service
	Upstreams int // per proxy (ignored with AllServices)
	// AllServices makes every service visible to every proxy, the way a
	// control plane without scoping configures every sidecar: each sidecar
	// is transparent (a capture listener) with upstreamNamespaces ["*"],
	// and each service has a virtual address, so the catalog does not
	// grow with proxies × services. (Every service as an explicit
	// upstream with a local port is --upstreams <services-1>.)
	AllServices bool
}

// Presets are the scenarios of issue 6.
var Presets = map[string]Scenario{
	"S": {Name: "S", Proxies: 100, Services: 50, Endpoints: 2, Upstreams: 3},
	"M": {Name: "M", Proxies: 1000, Services: 200, Endpoints: 10, Upstreams: 5},
	"L": {Name: "L", Proxies: 10000, Services: 1000, Endpoints: 10, Upstreams: 5},
}

// Validate rejects shapes the generator cannot express as a valid catalog.
func (s Scenario) Validate() error {
	switch {
	case s.Proxies < 1 || s.Services < 1:
		return fmt.Errorf("scenario %s: need at least one proxy and one service (got %d proxies, %d services)", s.Name, s.Proxies, s.Services)
	case s.Services > 60000 || s.Proxies > 60000:
		return fmt.Errorf("scenario %s: at most 60000 services and proxies (addresses are generated in 10.0.0.0/8)", s.Name)
	case s.Endpoints < 0 || s.Endpoints > 250:
		return fmt.Errorf("scenario %s: endpoints per service must be 0-250, got %d", s.Name, s.Endpoints)
	case !s.AllServices && (s.Upstreams < 0 || s.Upstreams >= s.Services):
		return fmt.Errorf("scenario %s: upstreams per proxy must be 0-%d (fewer than the services), got %d", s.Name, s.Services-1, s.Upstreams)
	case s.AllServices && s.Services > 250000:
		return fmt.Errorf("scenario %s: --all-services gives every service a virtual address in 10.96.0.0/12; at most 250000 services", s.Name)
	}
	return nil
}

// CatalogFormat is how the catalog file is written. meshd reads both: a file
// whose first non-blank character is '{' is JSON, which it decodes several times
// faster than YAML (docs/catalog.md, "JSON catalogs"), so JSON keeps catalog
// parsing out of the convergence figures of large scenarios.
type CatalogFormat string

const (
	FormatYAML CatalogFormat = "yaml"
	FormatJSON CatalogFormat = "json"
)

// ParseCatalogFormat reads a --catalog-format value; "" stays "" (the
// default: YAML, or a loaded file's own format).
func ParseCatalogFormat(s string) (CatalogFormat, error) {
	switch s {
	case "":
		return "", nil
	case "yaml", "yml":
		return FormatYAML, nil
	case "json":
		return FormatJSON, nil
	}
	return "", fmt.Errorf("catalog format %q: use yaml or json", s)
}

// FileName is the name the tool gives the catalog of a meshd it starts.
func (f CatalogFormat) FileName() string {
	if f == FormatJSON {
		return "catalog.json"
	}
	return "catalog.yaml"
}

// Catalog is a generated catalog held as data, so churn can edit it and the
// tool can tell which proxies a change affects.
type Catalog struct {
	Services []mesh.Service `yaml:"services" json:"services"`
	Proxies  []mesh.Proxy   `yaml:"proxies" json:"proxies"`
	// Format is how Marshal and WriteAtomic render the catalog; "" is YAML.
	// Every write after a churn edit uses it, so a run keeps one format.
	Format CatalogFormat `yaml:"-" json:"-"`
	// extra counts services added by churn, for unique names.
	extra int
}

const (
	publicPort    = 15001
	appPort       = 8080
	capturePort   = 15006
	servicePort   = 80 // at a service's virtual address
	firstUpstream = 10001
)

// Generate builds the scenario's catalog. It is deterministic: the same
// scenario always gives the same file.
func Generate(s Scenario) (*Catalog, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	c := &Catalog{Services: make([]mesh.Service, s.Services), Proxies: make([]mesh.Proxy, s.Proxies)}
	for i := range c.Services {
		proto := mesh.ProtocolHTTP
		switch i % 5 {
		case 0:
			proto = mesh.ProtocolGRPC
		case 1:
			proto = mesh.ProtocolTCP
		}
		svc := mesh.Service{Name: fmt.Sprintf("svc-%05d", i), Namespace: fmt.Sprintf("ns-%d", i%10), Protocol: proto}
		if s.AllServices {
			svc.Address, svc.Port = serviceVIP(i), servicePort
		}
		for e := range s.Endpoints {
			svc.Endpoints = append(svc.Endpoints, mesh.Endpoint{
				Address:  serviceEndpointAddr(i, e),
				Port:     publicPort,
				Locality: mesh.Locality{Region: "r1", Zone: fmt.Sprintf("z%d", e%3)},
			})
		}
		c.Services[i] = svc
	}
	for i := range c.Proxies {
		own := &c.Services[i%s.Services]
		p := mesh.Proxy{
			ID: fmt.Sprintf("proxy-%05d", i), Service: own.Name, Namespace: own.Namespace,
			// Each proxy on its own host address, so local ports never clash.
			Address:    fmt.Sprintf("10.%d.%d.%d", 128+i/62500, (i/250)%250, i%250+1),
			PublicPort: publicPort, AppPort: appPort,
		}
		var ups []int
		if s.AllServices {
			p.Mode, p.CapturePort, p.Passthrough = mesh.ModeTransparent, capturePort, mesh.PassthroughAllow
			p.UpstreamNamespaces = []string{mesh.AllNamespaces}
		} else {
			// A spread that gives every service about the same number of
			// consumers and never the proxy's own service.
			for u := 0; len(ups) < s.Upstreams; u++ {
				j := (i + 1 + u*7) % s.Services
				if j != i%s.Services && !slices.Contains(ups, j) {
					ups = append(ups, j)
				}
			}
		}
		for k, j := range ups {
			up := &c.Services[j]
			p.Upstreams = append(p.Upstreams, mesh.Upstream{Service: up.Name, Namespace: up.Namespace, LocalPort: localPort(k)})
		}
		c.Proxies[i] = p
	}
	return c, nil
}

// localPort is the loopback port of a proxy's k-th upstream; it steps over
// the public port, which the proxy also binds.
func localPort(k int) uint32 {
	p := uint32(firstUpstream + k)
	if p >= publicPort {
		p++
	}
	return p
}

// serviceVIP is service i's virtual address (in 10.96.0.0/12, apart from
// the endpoints' and proxies' addresses).
func serviceVIP(i int) string {
	return fmt.Sprintf("10.%d.%d.%d", 96+i/62500, (i/250)%250, i%250+1)
}

func serviceEndpointAddr(svc, ep int) string {
	return fmt.Sprintf("10.%d.%d.%d", svc/250, svc%250, ep+1)
}

// Marshal renders the catalog as meshd reads it (docs/catalog.md), in
// c.Format.
func (c *Catalog) Marshal() ([]byte, error) {
	if c.Format == FormatJSON {
		return c.marshalJSON()
	}
	var b bytes.Buffer
	b.WriteString("# generated by xds-load; see docs/performance.md\n")
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(c); err != nil {
		return nil, fmt.Errorf("encoding catalog: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("encoding catalog: %w", err)
	}
	return b.Bytes(), nil
}

// marshalJSON writes one service or proxy per line: nearly as compact as
// json.Marshal (so as quick for meshd to read), yet an error meshd reports
// with a line number still points at one object.
func (c *Catalog) marshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.Grow(256 * (len(c.Services) + len(c.Proxies)))
	list := func(name string, n int, item func(i int) any) error {
		fmt.Fprintf(&b, "%q: [", name)
		for i := range n {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString("\n  ")
			j, err := json.Marshal(item(i))
			if err != nil {
				return fmt.Errorf("encoding catalog: %s[%d]: %w", name, i, err)
			}
			b.Write(j)
		}
		b.WriteString("\n]")
		return nil
	}
	b.WriteString("{")
	if err := list("services", len(c.Services), func(i int) any { return &c.Services[i] }); err != nil {
		return nil, err
	}
	b.WriteString(",\n")
	if err := list("proxies", len(c.Proxies), func(i int) any { return &c.Proxies[i] }); err != nil {
		return nil, err
	}
	b.WriteString("}\n")
	return b.Bytes(), nil
}

// WriteAtomic writes the catalog to path through a temporary file and a
// rename, so the watcher never reads a half-written file.
func (c *Catalog) WriteAtomic(path string) error {
	b, err := c.Marshal()
	if err != nil {
		return err
	}
	if err := atomicfile.Write(path, b, 0o644); err != nil {
		return fmt.Errorf("writing catalog: %w", err)
	}
	return nil
}

// LoadCatalog reads a catalog file, YAML or JSON, for churn against a
// running meshd. Defaults are applied the way meshd applies them (namespace
// "default", id "service.namespace"), so affected-proxy sets match meshd's
// view. The catalog keeps the file's format, so churn rewrites it in the
// format it was found in.
func LoadCatalog(path string) (*Catalog, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading catalog: %w", err)
	}
	// meshd's own parser first: a file meshd would refuse is refused here
	// with meshd's message (path, line, field), and a field this tool does
	// not know can never be dropped by the rewrite after a churn edit.
	if _, err := file.Parse(path, b); err != nil {
		return nil, fmt.Errorf("loading catalog: %w", err)
	}
	// Then the file in its own order, for a rewrite that differs from it
	// only by the edit. yaml.v3 reads JSON too, and is the reading meshd's
	// JSON fast path is defined to agree with; this runs once, at start-up.
	var c Catalog
	if err := yaml.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("catalog %s: %w", path, err)
	}
	c.Format = DetectCatalogFormat(b)
	for i := range c.Services {
		if c.Services[i].Namespace == "" {
			c.Services[i].Namespace = mesh.DefaultNamespace
		}
	}
	for i := range c.Proxies {
		p := &c.Proxies[i]
		if p.Namespace == "" {
			p.Namespace = mesh.DefaultNamespace
		}
		if p.ID == "" {
			p.ID = p.Service + "." + p.Namespace
		}
		for j := range p.Upstreams {
			if p.Upstreams[j].Namespace == "" {
				p.Upstreams[j].Namespace = p.Namespace
			}
		}
	}
	return &c, nil
}

// DetectCatalogFormat tells the format of catalog data the way meshd does:
// JSON if the first non-blank character opens an object.
func DetectCatalogFormat(data []byte) CatalogFormat {
	if t := bytes.TrimLeft(data, " \t\r\n"); len(t) > 0 && t[0] == '{' {
		return FormatJSON
	}
	return FormatYAML
}

// ProxyIDs lists the node ids of the catalog's Envoy proxies (the simulated
// fleet speaks Envoy's subscription pattern, so gRPC proxies are left out).
func (c *Catalog) ProxyIDs() []string {
	var ids []string
	for i := range c.Proxies {
		if c.Proxies[i].Flavor == "" || c.Proxies[i].Flavor == mesh.FlavorEnvoy {
			ids = append(ids, c.Proxies[i].ID)
		}
	}
	return ids
}

// Consumers returns the ids of proxies that call k (an upstream, or in
// their visible service set): exactly the proxies whose configuration a
// change to k's endpoints alters.
func (c *Catalog) Consumers(k mesh.ServiceKey) []string {
	var ids []string
	svc := c.Service(k)
	for i := range c.Proxies {
		if c.calls(&c.Proxies[i], k, svc) {
			ids = append(ids, c.Proxies[i].ID)
		}
	}
	return ids
}

// calls reports whether p calls service k (svc: its definition, nil if
// the catalog has none), as meshd reads p.
func (c *Catalog) calls(p *mesh.Proxy, k mesh.ServiceKey, svc *mesh.Service) bool {
	if svc != nil {
		if sel := xds.VisibleSelector(p); sel != nil {
			return sel.Includes(svc)
		}
	}
	return slices.ContainsFunc(p.Upstreams, func(u mesh.Upstream) bool { return u.Key() == k })
}

// Service returns the service with key k, or nil.
func (c *Catalog) Service(k mesh.ServiceKey) *mesh.Service {
	for i := range c.Services {
		if c.Services[i].Key() == k {
			return &c.Services[i]
		}
	}
	return nil
}

// Proxy returns the proxy with the given id, or nil.
func (c *Catalog) Proxy(id string) *mesh.Proxy {
	for i := range c.Proxies {
		if c.Proxies[i].ID == id {
			return &c.Proxies[i]
		}
	}
	return nil
}

// MostConsumed returns the service with the most consumers, skipping any in
// avoid, so churn measures the widest fan-out the catalog has.
func (c *Catalog) MostConsumed(avoid ...mesh.ServiceKey) *mesh.Service {
	counts := map[mesh.ServiceKey]int{}
	for i := range c.Proxies {
		p := &c.Proxies[i]
		if sel := xds.VisibleSelector(p); sel != nil {
			for j := range c.Services {
				if sel.Includes(&c.Services[j]) {
					counts[c.Services[j].Key()]++
				}
			}
			continue
		}
		for _, u := range p.Upstreams {
			counts[u.Key()]++
		}
	}
	var best *mesh.Service
	for i := range c.Services {
		s := &c.Services[i]
		if slices.Contains(avoid, s.Key()) || len(s.Endpoints) == 0 && counts[s.Key()] == 0 {
			continue
		}
		if best == nil || counts[s.Key()] > counts[best.Key()] {
			best = s
		}
	}
	return best
}
