package telemetry

import (
	"errors"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"

	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/mesh"
)

// Target is what the collector needs to know about the proxy reporting.
type Target struct {
	// Service is the proxy's service in the catalog: the destination of
	// every request it reports.
	Service mesh.ServiceKey
	// Strict says policy puts the proxy's workload in STRICT mTLS mode, so
	// plaintext reaching it is worth an alert (meshd_mesh_plaintext_in_strict_total).
	Strict bool
}

// Collector serves Envoy's gRPC access log service on meshd's xDS server.
// Streams are authenticated there, like xDS streams: the node id of a
// stream's first message must be one the stream's credential grants, so a
// proxy can only report as itself; and the stream ends when that
// credential is revoked or expires (the authenticator's interceptor,
// server/auth, receives for StreamAccessLogs and ends it then).
type Collector struct {
	alsv3.UnimplementedAccessLogServiceServer

	Store *Store
	Hub   *Hub
	// Resolve maps a node id to its service and policy, reading meshd's
	// current catalog; ok is false for a node meshd does not know.
	Resolve func(nodeID string) (t Target, ok bool)
	// LogName is the log name meshd gives the inbound access log
	// (xds.TelemetryLogName); streams with another are ignored.
	LogName string
	Logger  *slog.Logger

	streams atomic.Int64
	once    sync.Once
	ignored *prometheus.CounterVec
}

func (c *Collector) init() {
	c.once.Do(func() {
		if c.Logger == nil {
			c.Logger = slog.Default()
		}
		c.ignored = prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshd_telemetry_ignored_entries_total",
			Help: "Access-log entries meshd did not record, by reason (unknown_node: the reporting node is not in the catalog; other_log: a log meshd did not configure).",
		}, []string{"reason"})
	})
}

// Register adds the access log service to the xDS gRPC server.
func (c *Collector) Register(s *grpc.Server) {
	c.init()
	alsv3.RegisterAccessLogServiceServer(s, c)
}

// RegisterMetrics adds the store's series and the collector's own to reg.
func (c *Collector) RegisterMetrics(reg prometheus.Registerer) {
	c.init()
	reg.MustRegister(c.Store, c.ignored,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "meshd_telemetry_streams",
			Help: "Open access-log streams from sidecars (Envoy opens one per worker thread).",
		}, func() float64 { return float64(c.streams.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "meshd_telemetry_tap_dropped_events_total",
			Help: "Live events not delivered to a tap (meshctl tap) that fell behind.",
		}, func() float64 { return float64(c.Hub.Dropped()) }),
	)
}

// StreamAccessLogs receives one sidecar's batches of entries until it
// closes the stream.
func (c *Collector) StreamAccessLogs(stream alsv3.AccessLogService_StreamAccessLogsServer) error {
	c.init()
	c.streams.Add(1)
	defer c.streams.Add(-1)
	var (
		node    string
		logName string
		evs     []Event
	)
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return stream.SendAndClose(&alsv3.StreamAccessLogsResponse{})
		}
		if err != nil {
			return err
		}
		if node == "" {
			// Envoy identifies itself on a stream's first message only.
			node, logName = m.GetIdentifier().GetNode().GetId(), m.GetIdentifier().GetLogName()
			if node == "" {
				return status.Error(codes.InvalidArgument, "access log stream: the first message must identify the node")
			}
		}
		n := len(m.GetHttpLogs().GetLogEntry()) + len(m.GetTcpLogs().GetLogEntry())
		if logName != c.LogName {
			c.ignored.WithLabelValues("other_log").Add(float64(n))
			continue
		}
		t, ok := c.Resolve(node)
		if !ok {
			c.ignored.WithLabelValues("unknown_node").Add(float64(n))
			continue
		}
		evs = evs[:0]
		for _, x := range m.GetHttpLogs().GetLogEntry() {
			evs = append(evs, FromHTTP(x))
		}
		for _, x := range m.GetTcpLogs().GetLogEntry() {
			evs = append(evs, FromTCP(x))
		}
		dest := t.Service.String()
		for i := range evs {
			evs[i].Node, evs[i].Destination = node, dest
		}
		c.Store.Record(evs, t.Strict)
		c.Hub.Publish(evs)
	}
}
