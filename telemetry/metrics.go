package telemetry

import (
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// The mesh-level series meshd exports from the sidecars' access logs (see
// docs/operations.md). Labels: source_identity (the caller's SPIFFE ID;
// absent for plaintext callers, which carry source_address instead),
// destination_service and destination_namespace, tls (mtls or plaintext),
// decision (allow or deny), response_class (2xx, 3xx, 4xx, 5xx,
// grpc_error, other). Their number is bounded by Options.MaxEdges (edges ×
// the classes they saw) and MaxServices.
var (
	descRequests = prometheus.NewDesc("meshd_mesh_requests_total",
		"HTTP and gRPC requests received by mesh sidecars, by caller identity, destination service, transport, authorization decision and response class.",
		[]string{"source_identity", "source_address", "destination_service", "destination_namespace", "tls", "decision", "response_class"}, nil)
	descConnections = prometheus.NewDesc("meshd_mesh_tcp_connections_total",
		"tcp connections received by mesh sidecars (counted when they close), by caller identity, destination service, transport and authorization decision.",
		[]string{"source_identity", "source_address", "destination_service", "destination_namespace", "tls", "decision"}, nil)
	descLatency = prometheus.NewDesc("meshd_mesh_request_duration_seconds",
		"Duration of allowed HTTP and gRPC requests as seen by the destination's sidecar, by destination service.",
		[]string{"destination_service", "destination_namespace"}, nil)
	descPlaintextStrict = prometheus.NewDesc("meshd_mesh_plaintext_in_strict_total",
		"Requests and connections that reached a workload in plaintext although policy puts it in STRICT mTLS (a migration not finished, or a sidecar that never got its STRICT listener).",
		[]string{"destination_service", "destination_namespace"}, nil)
	descEdges = prometheus.NewDesc("meshd_telemetry_edges",
		"Edges (caller → service) the telemetry store holds; at most --telemetry-max-edges.", nil, nil)
	descDropped = prometheus.NewDesc("meshd_telemetry_dropped_events_total",
		"Access-log events not kept per edge (reason edge_limit) or per service (reason service_limit) because the store was full; still counted where room was.",
		[]string{"reason"}, nil)
	descEvents = prometheus.NewDesc("meshd_telemetry_events_total",
		"Access-log entries received from sidecars and recorded, by protocol (http, tcp).", []string{"protocol"}, nil)
)

// Describe implements prometheus.Collector.
func (s *Store) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descRequests, descConnections, descLatency, descPlaintextStrict, descEdges, descDropped, descEvents} {
		ch <- d
	}
}

// Collect implements prometheus.Collector: it copies what it exports under
// the lock and builds the metrics after releasing it.
func (s *Store) Collect(ch chan<- prometheus.Metric) {
	type edgeCopy struct {
		k EdgeKey
		e edge
	}
	type svcCopy struct {
		name              string
		hist              [nBuckets]uint64
		sum               float64
		plaintextInStrict uint64
		http              bool
	}
	s.mu.Lock()
	edges := make([]edgeCopy, 0, len(s.edges))
	for k, e := range s.edges {
		edges = append(edges, edgeCopy{k, *e})
	}
	svcs := make([]svcCopy, 0, len(s.services))
	for name, svc := range s.services {
		svcs = append(svcs, svcCopy{name, svc.hist, svc.latencySum, svc.plaintextInStrict, svc.protocol == ProtocolHTTP})
	}
	droppedEdges, droppedServices, events := s.droppedEdges, s.droppedServices, s.events
	s.mu.Unlock()

	decisions := [2]string{"allow", "deny"}
	for _, c := range edges {
		svc, ns, _ := strings.Cut(c.k.Destination, ".")
		tls := "plaintext"
		if c.k.MTLS {
			tls = "mtls"
		}
		for d := range 2 {
			for cl, n := range c.e.requests[d] {
				if n > 0 {
					ch <- prometheus.MustNewConstMetric(descRequests, prometheus.CounterValue, float64(n),
						c.k.Source, c.k.SourceAddress, svc, ns, tls, decisions[d], classes[cl])
				}
			}
			if n := c.e.connections[d]; n > 0 {
				ch <- prometheus.MustNewConstMetric(descConnections, prometheus.CounterValue, float64(n),
					c.k.Source, c.k.SourceAddress, svc, ns, tls, decisions[d])
			}
		}
	}
	for _, c := range svcs {
		svc, ns, _ := strings.Cut(c.name, ".")
		if c.http {
			buckets := make(map[float64]uint64, nBuckets-1)
			var cum uint64
			for i, n := range c.hist {
				cum += n
				if i < nBuckets-1 {
					buckets[bucketBounds[i]] = cum
				}
			}
			ch <- prometheus.MustNewConstHistogram(descLatency, cum, c.sum, buckets, svc, ns)
		}
		// From 0, so that increase() sees the first one.
		ch <- prometheus.MustNewConstMetric(descPlaintextStrict, prometheus.CounterValue, float64(c.plaintextInStrict), svc, ns)
	}
	ch <- prometheus.MustNewConstMetric(descEdges, prometheus.GaugeValue, float64(len(edges)))
	ch <- prometheus.MustNewConstMetric(descDropped, prometheus.CounterValue, float64(droppedEdges), "edge_limit")
	ch <- prometheus.MustNewConstMetric(descDropped, prometheus.CounterValue, float64(droppedServices), "service_limit")
	ch <- prometheus.MustNewConstMetric(descEvents, prometheus.CounterValue, float64(events[0]), ProtocolHTTP)
	ch <- prometheus.MustNewConstMetric(descEvents, prometheus.CounterValue, float64(events[1]), ProtocolTCP)
}
