// Package costtest measures what a test's operation costs the process: CPU
// time and heap, so that tests can state and check bounds that do not depend
// on how busy the machine is (issue 13: a hostile file must be refused in
// well under a second of CPU, and must not make meshd's memory follow it).
package costtest

import (
	"runtime"
	"runtime/metrics"
	"sync"
	"time"
)

// Usage is what the process spent during a measurement.
type Usage struct {
	// CPU is the CPU time (user and system) of the whole process: every
	// goroutine, the garbage collector included. Unlike wall time, it does
	// not grow when other processes keep the machine busy.
	CPU time.Duration
	// Peak is the most the heap (live objects, and dead ones not yet swept)
	// grew above where it was at the start, sampled every millisecond.
	Peak uint64
	// Allocated counts the bytes allocated meanwhile, by every goroutine:
	// a bound on what any one operation can have held.
	Allocated uint64
}

const (
	heapObjects = "/memory/classes/heap/objects:bytes"
	heapAllocs  = "/gc/heap/allocs:bytes"
)

// Measure runs f and reports the process's CPU time, the heap's growth and
// the allocations while it ran. It collects garbage first so that the start
// is the live heap.
func Measure(f func()) Usage {
	runtime.GC()
	cpu := processCPU()
	s := []metrics.Sample{{Name: heapObjects}, {Name: heapAllocs}}
	metrics.Read(s)
	base, allocs := s[0].Value.Uint64(), s[1].Value.Uint64()

	var (
		mu   sync.Mutex
		peak = base
		stop = make(chan struct{})
		done = make(chan struct{})
	)
	go func() {
		defer close(done)
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		sample := []metrics.Sample{{Name: heapObjects}}
		for {
			metrics.Read(sample)
			mu.Lock()
			peak = max(peak, sample[0].Value.Uint64())
			mu.Unlock()
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	}()
	f()
	close(stop)
	<-done
	metrics.Read(s)
	mu.Lock()
	defer mu.Unlock()
	peak = max(peak, s[0].Value.Uint64())
	return Usage{CPU: processCPU() - cpu, Peak: peak - base, Allocated: s[1].Value.Uint64() - allocs}
}
