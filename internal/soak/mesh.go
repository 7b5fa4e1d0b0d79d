package soak

import (
	"fmt"
	"slices"

	"github.com/meshd/meshd/internal/loadgen"
	"github.com/meshd/meshd/mesh"
)

// replicaPorts are one real server replica's ports: its sidecar's public
// port and admin port, and its app's port (bound by the app on :0).
type replicaPorts struct {
	Public, App, Admin uint32
}

// callerPorts are one caller identity's sidecar's admin port and its
// loopback port per server.
type callerPorts struct {
	Admin uint32
	Local map[string]uint32
}

// layout is the real mesh's ports, decided before meshd starts (they are
// in the catalog).
type layout struct {
	Replicas map[string][]replicaPorts // by server name
	Callers  []callerPorts
}

// fleetLayout is the simulated fleet's part of the catalog.
type fleetLayout struct {
	Services int
	Proxies  int
}

// buildCatalog assembles the catalog meshd serves: the real mesh (with the
// toggled replica in or out) and the simulated fleet's generated services
// and proxies, which churn edits. fleet may be nil (no fleet).
func buildCatalog(l *layout, replicaIn bool, fleet *loadgen.Catalog) *loadgen.Catalog {
	c := &loadgen.Catalog{}
	if fleet != nil {
		c.Services = slices.Clone(fleet.Services)
		c.Proxies = slices.Clone(fleet.Proxies)
		c.Format = fleet.Format
	}
	for _, sv := range Servers {
		s := mesh.Service{Name: sv.Name, Namespace: Namespace, Protocol: sv.Protocol}
		for r, p := range l.Replicas[sv.Name] {
			if sv.Name == toggledServer && r > 0 && !replicaIn {
				// Out of the catalog's endpoints; its sidecar stays a
				// proxy of the catalog (and loses its workload labels).
			} else {
				s.Endpoints = append(s.Endpoints, mesh.Endpoint{Address: "127.0.0.1", Port: p.Public, Labels: map[string]string{"app": sv.Name}})
			}
			c.Proxies = append(c.Proxies, mesh.Proxy{ID: ProxyID(sv.Name, r), Service: sv.Name, Namespace: Namespace,
				Address: "127.0.0.1", PublicPort: p.Public, AppPort: p.App})
		}
		c.Services = append(c.Services, s)
	}
	for i, cp := range l.Callers {
		name := CallerName(i)
		c.Services = append(c.Services, mesh.Service{Name: name, Namespace: Namespace, Protocol: mesh.ProtocolHTTP})
		p := mesh.Proxy{ID: callerProxyID(i), Service: name, Namespace: Namespace}
		for _, sv := range Servers {
			p.Upstreams = append(p.Upstreams, mesh.Upstream{Service: sv.Name, Namespace: Namespace, LocalPort: cp.Local[sv.Name]})
		}
		c.Proxies = append(c.Proxies, p)
	}
	return c
}

// callerProxyID is the node id of caller identity i's sidecar.
func callerProxyID(i int) string { return CallerName(i) + "." + Namespace }

// realProxyIDs lists every real sidecar's node id.
func realProxyIDs(l *layout) []string {
	var ids []string
	for _, sv := range Servers {
		for r := range l.Replicas[sv.Name] {
			ids = append(ids, ProxyID(sv.Name, r))
		}
	}
	for i := range l.Callers {
		ids = append(ids, callerProxyID(i))
	}
	return ids
}

// fleetEndpoint is the address endpoint churn adds to fleet service i.
func fleetEndpoint(i int) string { return fmt.Sprintf("10.252.%d.%d", i/250%250, i%250+1) }

// applyFleetChange edits the fleet catalog; it returns the service changed
// and the endpoint address concerned.
func applyFleetChange(fleet *loadgen.Catalog, ch FleetChange) (*mesh.Service, string, error) {
	if fleet == nil || ch.Service < 0 || ch.Service >= len(fleet.Services) {
		return nil, "", fmt.Errorf("fleet service %d does not exist", ch.Service)
	}
	s := &fleet.Services[ch.Service]
	addr := fleetEndpoint(ch.Service)
	switch ch.Op {
	case "add":
		s.Endpoints = append(s.Endpoints, mesh.Endpoint{Address: addr, Port: s.Endpoints[0].Port, Locality: s.Endpoints[0].Locality})
	case "remove":
		s.Endpoints = slices.DeleteFunc(s.Endpoints, func(e mesh.Endpoint) bool { return e.Address == addr })
	case "unhealthy":
		s.Endpoints[0].Health = mesh.HealthUnhealthy
		addr = s.Endpoints[0].Address
	case "healthy":
		s.Endpoints[0].Health = ""
		addr = s.Endpoints[0].Address
	default:
		return nil, "", fmt.Errorf("unknown fleet change %q", ch.Op)
	}
	return s, addr, nil
}
