package sds

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/meshd/meshd/mesh"
)

// BenchmarkRotationStorm: 10,000 cached identities, then a root rotation
// switches signing and every leaf is reissued (what the publisher does after
// the switch). Reports the storm's time and the heap in use afterwards.
//
//	go test ./sds -run '^$' -bench RotationStorm -benchtime 1x
func BenchmarkRotationStorm(b *testing.B) {
	const n = 10000
	for b.Loop() {
		b.StopTimer()
		ca := newTestCA(b)
		ids := make([]mesh.Identity, n)
		for i := range ids {
			ids[i] = mesh.Identity{TrustDomain: "cluster.local", Namespace: "ns", ServiceAccount: fmt.Sprintf("svc-%d", i)}
			if _, err := ca.Leaf(ids[i], []string{ids[i].ServiceAccount}); err != nil {
				b.Fatal(err)
			}
		}
		if err := ca.RotateRoot(); err != nil {
			b.Fatal(err)
		}
		if changed, err := ca.Advance(nil); !changed || err != nil {
			b.Fatalf("switch: %v %v", changed, err)
		}
		if !ca.NextRenewal().Equal(ca.clock.Now()) {
			b.Fatal("leaves not due after the switch")
		}
		b.StartTimer()
		start := time.Now()
		for _, id := range ids {
			if _, err := ca.Leaf(id, []string{id.ServiceAccount}); err != nil {
				b.Fatal(err)
			}
		}
		took := time.Since(start)
		b.StopTimer()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		b.ReportMetric(took.Seconds(), "storm-s")
		b.ReportMetric(float64(n)/took.Seconds(), "leaves/s")
		b.ReportMetric(float64(ms.HeapInuse)/(1<<20), "heap-MiB")
		if st := ca.Status(nil); st.Rotation.StaleLeaves != 0 {
			b.Fatalf("%d leaves still on the old chain", st.Rotation.StaleLeaves)
		}
		b.StartTimer()
	}
}
