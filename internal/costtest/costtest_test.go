package costtest

import (
	"testing"
	"time"
)

var sink []byte

func TestMeasure(t *testing.T) {
	u := Measure(func() {
		sink = make([]byte, 64<<20)
		for i := range sink {
			sink[i] = 1
		}
	})
	if u.Allocated < 64<<20 || u.Peak < 64<<20 {
		t.Errorf("a 64 MiB allocation measured as %+v", u)
	}
	sink = nil
	small := Measure(func() {})
	if small.Peak > 1<<20 || small.Allocated > 1<<20 || small.CPU > 100*time.Millisecond {
		t.Errorf("nothing measured as %+v", small)
	}
	// Spin until the process has used 200 ms more CPU (however long that
	// takes on a busy machine, within reason).
	busy := Measure(func() {
		start, deadline := processCPU(), time.Now().Add(time.Minute)
		for processCPU()-start < 200*time.Millisecond && time.Now().Before(deadline) {
		}
	})
	if busy.CPU < 200*time.Millisecond || busy.CPU > 5*time.Second {
		t.Errorf("200 ms of spinning measured as %v of CPU", busy.CPU)
	}
}
