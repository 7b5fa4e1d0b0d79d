package xds

import (
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
