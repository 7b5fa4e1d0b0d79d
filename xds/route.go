package xds

import (
	"slices"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/meshd/meshd/mesh"
)

// noTimeout disables Envoy's 15 s default route timeout, which would cut
// long-lived gRPC streams and slow requests; the application owns deadlines.
var noTimeout = durationpb.New(0)

// buildInboundRoute routes everything arriving at a sidecar's public port to
// the local application, with the workload's authorization policies as
// per-filter overrides of the inbound RBAC filters on the virtual host (so
// every route of it, and any added later, carries them). Envoy applies an
// RDS update to the next request of every connection, open ones included:
// this is what makes a policy change reach a keep-alive caller (see
// envoyRBACFilters). Shared by every sidecar of the service with the same
// policies.
func buildInboundRoute(s *mesh.Service, rbac *rbacSets) (*Resource, error) {
	name := InboundRouteName(s.Key())
	cluster := LocalAppClusterName(s.Key())
	vh := forwardAll(name, []string{"*"}, cluster)
	var err error
	if vh.TypedPerFilterConfig, err = rbac.perRouteRBAC(); err != nil {
		return nil, err
	}
	rc := &routev3.RouteConfiguration{
		Name:         name,
		VirtualHosts: []*routev3.VirtualHost{vh},
	}
	return newResource(name, rc, Ref{TypeURL: resourcev3.ClusterType, Name: cluster})
}

// buildOutboundRoute routes a sidecar's outbound listener for a service to
// that service's cluster. It depends only on the service, so every sidecar
// calling the service shares it.
func buildOutboundRoute(s *mesh.Service) (*Resource, error) {
	name := OutboundRouteName(s.Key())
	cluster := OutboundClusterName(s.Key())
	rc := &routev3.RouteConfiguration{
		Name:         name,
		VirtualHosts: []*routev3.VirtualHost{forwardAll(name, []string{"*"}, cluster)},
	}
	return newResource(name, rc, Ref{TypeURL: resourcev3.ClusterType, Name: cluster})
}

func forwardAll(name string, domains []string, cluster string) *routev3.VirtualHost {
	return &routev3.VirtualHost{
		Name:    name,
		Domains: domains,
		Routes: []*routev3.Route{{
			Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
			Action: &routev3.Route_Route{Route: &routev3.RouteAction{
				ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster},
				Timeout:          noTimeout,
			}},
		}},
	}
}

// buildGatewayRoute routes one gateway listener's requests, by host and
// path prefix, to mesh services' outbound clusters (which originate mTLS
// with the gateway's identity). One virtual host per host: Envoy prefers
// an exact host, then the longest wildcard, then "*"; within a host the
// longest path prefix wins (routes are tried in order, so they are sorted
// by prefix length, longest first, keeping the catalog's order on ties).
func buildGatewayRoute(gl *mesh.GatewayListener) (*Resource, error) {
	name := GatewayListenerName(gl.Port)
	byHost := map[string][]*mesh.GatewayRoute{}
	var hosts []string
	for i := range gl.Routes {
		r := &gl.Routes[i]
		if _, ok := byHost[r.Host]; !ok {
			hosts = append(hosts, r.Host)
		}
		byHost[r.Host] = append(byHost[r.Host], r)
	}
	slices.Sort(hosts)
	rc := &routev3.RouteConfiguration{Name: name}
	var refs []Ref
	for _, h := range hosts {
		routes := byHost[h]
		slices.SortStableFunc(routes, func(a, b *mesh.GatewayRoute) int { return len(b.PathPrefix) - len(a.PathPrefix) })
		vh := &routev3.VirtualHost{Name: name + "|" + h, Domains: []string{h}}
		for _, r := range routes {
			cluster := OutboundClusterName(r.Key())
			vh.Routes = append(vh.Routes, &routev3.Route{
				Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: r.PathPrefix}},
				Action: &routev3.Route_Route{Route: &routev3.RouteAction{
					ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster},
					Timeout:          noTimeout,
				}},
			})
			refs = append(refs, Ref{TypeURL: resourcev3.ClusterType, Name: cluster})
		}
		rc.VirtualHosts = append(rc.VirtualHosts, vh)
	}
	return newResource(name, rc, dedupRefs(refs)...)
}
