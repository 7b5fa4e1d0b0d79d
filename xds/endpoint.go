package xds

import (
	"cmp"
	"slices"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshd/meshd/mesh"
)

// buildEndpoints renders a service's endpoints as the EDS resource of its
// outbound cluster. Envoy and gRPC clients share it. modes[i] is the mTLS
// mode of endpoint i's workload: DISABLE endpoints are marked so callers'
// transport socket matches reach them in plaintext.
func buildEndpoints(s *mesh.Service, modes []mesh.MTLSMode) (*Resource, error) {
	name := OutboundClusterName(s.Key())
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: name}
	byLocality := map[mesh.Locality]*endpointv3.LocalityLbEndpoints{}
	var order []mesh.Locality
	for i := range s.Endpoints {
		e := &s.Endpoints[i]
		loc := byLocality[e.Locality]
		if loc == nil {
			loc = &endpointv3.LocalityLbEndpoints{Locality: &corev3.Locality{
				Region: e.Locality.Region, Zone: e.Locality.Zone, SubZone: e.Locality.SubZone,
			}}
			byLocality[e.Locality] = loc
			order = append(order, e.Locality)
		}
		w := max(e.Weight, 1)
		lb := &endpointv3.LbEndpoint{
			HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
				Address: socketAddress(e.Address, e.Port),
			}},
			HealthStatus:        healthStatus(e.Health),
			LoadBalancingWeight: wrapperspb.UInt32(w),
		}
		if i < len(modes) && modes[i] == mesh.MTLSDisable {
			lb.Metadata = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{
				"envoy.transport_socket_match": {Fields: map[string]*structpb.Value{TransportSocketMatchKey: structpb.NewStringValue(TransportSocketMatchDisabled)}},
			}}
		}
		loc.LbEndpoints = append(loc.LbEndpoints, lb)
	}
	slices.SortFunc(order, func(a, b mesh.Locality) int {
		return cmp.Or(cmp.Compare(a.Region, b.Region), cmp.Compare(a.Zone, b.Zone), cmp.Compare(a.SubZone, b.SubZone))
	})
	for _, l := range order {
		loc := byLocality[l]
		// gRPC silently drops a locality whose weight is 0 or unset, so every
		// locality gets the sum of its endpoints' weights (≥ 1).
		var sum uint32
		for _, lb := range loc.LbEndpoints {
			sum += lb.GetLoadBalancingWeight().GetValue()
		}
		loc.LoadBalancingWeight = wrapperspb.UInt32(sum)
		cla.Endpoints = append(cla.Endpoints, loc)
	}
	return newResource(name, cla)
}

func healthStatus(h mesh.Health) corev3.HealthStatus {
	switch h {
	case mesh.HealthUnhealthy:
		return corev3.HealthStatus_UNHEALTHY
	case mesh.HealthDraining:
		return corev3.HealthStatus_DRAINING
	case mesh.HealthUnknown:
		return corev3.HealthStatus_UNKNOWN
	default:
		return corev3.HealthStatus_HEALTHY
	}
}
