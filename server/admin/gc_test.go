package admin

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"runtime"
	"testing"

	"github.com/meshd/meshd/internal/metrics"
)

// keep is garbage-collector bait the test holds on to.
var keep [][]byte

// POST /debug/gc reports the heap after collections: live bytes include
// what the process holds, heap in use is at least the live bytes, and
// memory dropped before the call is not counted.
func TestAdminGCReportsSettledHeap(t *testing.T) {
	h := (&Admin{Metrics: metrics.New()}).Handler()
	read := func() HeapAfterGC {
		t.Helper()
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/debug/gc", nil))
		if rec.Code != http.StatusOK {
			t.Fatalf("POST /debug/gc: HTTP %d %s", rec.Code, rec.Body)
		}
		var out HeapAfterGC
		if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
			t.Fatalf("POST /debug/gc: %v in %q", err, rec.Body)
		}
		if out.LiveBytes == 0 || out.InuseBytes < out.LiveBytes {
			t.Fatalf("POST /debug/gc: %+v", out)
		}
		return out
	}
	base := read()
	const n, size = 64, 1 << 20
	for range n {
		keep = append(keep, make([]byte, size))
	}
	held := read()
	// The rest of the process is not frozen between two readings: what
	// earlier tests of the package leave winding down (goroutines, closed
	// servers' buffers) can die in between, and the runtime and the testing
	// package allocate, so the growth is 64 MiB give or take their change.
	// That change measured 0 to 112 bytes (go test -race over the package,
	// 10 readings); slack allows 4 MiB, 1/16 of what is held, either way. A
	// reading that missed the held memory would be 64 MiB short, one that
	// counted it twice 64 MiB over.
	const slack = 4 << 20
	if grew := int64(held.LiveBytes) - int64(base.LiveBytes); grew < n*size-slack || grew > n*size+slack {
		t.Fatalf("holding %d MiB more: live %d → %d bytes (%+d), want %d MiB ± %d MiB",
			n*size>>20, base.LiveBytes, held.LiveBytes, grew, n*size>>20, slack>>20)
	}
	keep = nil
	runtime.KeepAlive(keep)
	freed := read()
	if freed.LiveBytes >= held.LiveBytes-n*size/2 {
		t.Fatalf("after dropping %d MiB: live %d → %d bytes", n*size>>20, held.LiveBytes, freed.LiveBytes)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/debug/gc", nil))
	if rec.Code != http.StatusMethodNotAllowed {
		t.Fatalf("GET /debug/gc: HTTP %d, want 405 (a collection is an action)", rec.Code)
	}
}
