package telemetry

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	accesslogdatav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
)

// floodEvent is an event no other event resembles: its own path and, for
// a mesh with more callers than MaxEdges, its own caller.
func floodEvent(i int) Event {
	e := ev(fmt.Sprintf("spiffe://cluster.local/ns/flood/sa/caller-%d", i), true, false, 200, time.Millisecond)
	e.Path = fmt.Sprintf("/items/%d?q=%d", i, i*7)
	e.Destination = fmt.Sprintf("svc-%d.flood", i%50)
	return e
}

// TestMemoryBoundedUnderFlood records a million events with distinct paths
// and callers: the store keeps at most MaxEdges edges and MaxServices
// services (paths are never kept), and its heap stays within their cost.
func TestMemoryBoundedUnderFlood(t *testing.T) {
	if testing.Short() {
		t.Skip("a million events")
	}
	s := NewStore(Options{MaxEdges: 10000})
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	before := heap()
	batch := make([]Event, 100)
	for i := 0; i < 1_000_000; i += len(batch) {
		for j := range batch {
			batch[j] = floodEvent(i + j)
		}
		s.Record(batch, false)
	}
	grown := int64(heap()) - int64(before)
	r := s.Edges()
	if len(r.Edges) != 10000 || r.DroppedEvents != 990_000 {
		t.Errorf("edges %d, dropped %d; want 10000 and 990000", len(r.Edges), r.DroppedEvents)
	}
	if st := s.Stats(time.Minute, ""); len(st.Services) != 50 {
		t.Errorf("%d services, want 50", len(st.Services))
	}
	// 10,000 edges of ~250 B with their keys' strings, 50 services of
	// ~4 KiB: a few MiB, whatever the number of distinct paths.
	if grown > 16<<20 {
		t.Errorf("heap grew %d MiB under the flood, want < 16", grown>>20)
	}
	t.Logf("heap grew %.1f MiB for 10,000 edges and 50 services after 1,000,000 distinct events", float64(grown)/(1<<20))
	runtime.KeepAlive(s)
}

// BenchmarkRecord is the store's cost per event: batches of 100 events of
// 50 edges.
func BenchmarkRecord(b *testing.B) {
	s := NewStore(Options{})
	batch := make([]Event, 100)
	for j := range batch {
		batch[j] = ev(fmt.Sprintf("spiffe://cluster.local/ns/default/sa/c%d", j%50), true, false, 200, time.Duration(j)*time.Millisecond)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		s.Record(batch, false)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(batch)), "ns/event")
}

// BenchmarkFlood records events that are all distinct (path and caller)
// into a store at its edge limit, and reports the heap it holds.
func BenchmarkFlood(b *testing.B) {
	s := NewStore(Options{MaxEdges: 10000})
	batch := make([]Event, 100)
	i := 0
	b.ReportAllocs()
	for b.Loop() {
		for j := range batch {
			batch[j] = floodEvent(i)
			i++
		}
		s.Record(batch, false)
	}
	b.StopTimer()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	b.ReportMetric(float64(m.HeapAlloc)/(1<<20), "heap-MiB")
	b.ReportMetric(float64(len(s.Edges().Edges)), "edges")
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(batch)), "ns/event")
}

// BenchmarkCollector is meshd's cost per access-log entry end to end: a
// gRPC stream over loopback carrying batches of 100 entries shaped as
// Envoy's (decode, convert, record, publish with no tap open).
func BenchmarkCollector(b *testing.B) {
	c, client := startCollector(b)
	entries := make([]*accesslogdatav3.HTTPAccessLogEntry, 100)
	for i := range entries {
		entries[i] = httpEntry(webID, 200, "via_upstream", time.Duration(i)*time.Millisecond, map[string]string{"grpc-status": "0"})
	}
	st, err := client.StreamAccessLogs(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	first := &alsv3.StreamAccessLogsMessage{Identifier: &alsv3.StreamAccessLogsMessage_Identifier{Node: &corev3.Node{Id: "api-1"}, LogName: testLogName}}
	if err := st.Send(first); err != nil {
		b.Fatal(err)
	}
	msg := &alsv3.StreamAccessLogsMessage{LogEntries: &alsv3.StreamAccessLogsMessage_HttpLogs{HttpLogs: &alsv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: entries}}}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if err := st.Send(msg); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := st.CloseAndRecv(); err != nil { // waits until all were recorded
		b.Fatal(err)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(entries)), "ns/entry")
	if got := c.Store.Edges().Edges[0].Requests; got != uint64(b.N*len(entries)) {
		b.Fatalf("recorded %d, sent %d", got, b.N*len(entries))
	}
}
