package e2e

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	testgrpc "google.golang.org/grpc/interop/grpc_testing"

	"github.com/meshd/meshd/internal/testwait"
)

// How long a policy or mode change takes to govern a connection that is
// already open, as users run meshd (default debounce) with real Envoys and
// the documented drain flags. Run with a fixed count, and record the
// figures in docs/performance.md:
//
//	go test ./e2e -run '^$' -bench 'Enforcement|Drain' -benchtime 50x
//
// Each iteration is one change, timed from the rename of the policy file
// into place to the end of the first call that shows it; callers call back
// to back, so a figure includes at most one call's duration (about a
// millisecond on loopback).

// hotCaller calls back to back until stopped, recording each call.
type hotCaller struct {
	mu    sync.Mutex
	calls []callRecord
	stopc chan struct{}
	done  chan struct{}
}

func startHotCaller(b testing.TB, call func() callRecord) *hotCaller {
	h := &hotCaller{stopc: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(h.done)
		for {
			select {
			case <-h.stopc:
				return
			default:
			}
			r := call()
			h.mu.Lock()
			h.calls = append(h.calls, r)
			h.mu.Unlock()
		}
	}()
	b.Cleanup(func() { close(h.stopc); <-h.done })
	return h
}

// firstAfter waits for the first call started after since whose outcome
// satisfies ok and returns when it ended. Calls that started after since
// and do not satisfy ok are allowed only before that one (the change
// had not arrived yet).
func (h *hotCaller) firstAfter(b testing.TB, since time.Time, ok func(string) bool) time.Time {
	b.Helper()
	// The time returned is the call's own end, recorded by the caller:
	// how soon this wait notices it does not change the figure.
	var end time.Time
	testwait.Until(b, 30*time.Second, func() error {
		h.mu.Lock()
		defer h.mu.Unlock()
		for _, r := range h.calls {
			if r.start.After(since) && ok(r.outcome) {
				end = r.end
				return nil
			}
		}
		// Keep memory flat over many iterations.
		if n := len(h.calls); n > 10000 {
			h.calls = slices.Delete(h.calls, 0, n-1000)
		}
		return fmt.Errorf("no call after %s showed the change", since.Format(time.StampMilli))
	})
	return end
}

// reportPercentiles reports p50 and p99 of d in milliseconds under name.
func reportPercentiles(b *testing.B, name string, d []time.Duration) {
	slices.Sort(d)
	p := func(q float64) float64 {
		return float64(d[min(len(d)-1, int(q*float64(len(d))))].Microseconds()) / 1000
	}
	b.ReportMetric(p(0.50), name+"-p50-ms")
	b.ReportMetric(p(0.99), name+"-p99-ms")
	b.ReportMetric(float64(d[len(d)-1].Microseconds())/1000, name+"-max-ms")
	b.Logf("%s over %d changes: p50 %.1f ms, p99 %.1f ms, max %.1f ms", name, len(d), p(0.50), p(0.99), float64(d[len(d)-1].Microseconds())/1000)
}

// meshd with its default debounce, as users run it (the harness's own
// defaults are shorter, for quick tests).
var defaultDebounce = []string{"--debounce-holdoff", "100ms", "--debounce-max", "1s"}

// BenchmarkPolicyEnforcementOnOpenConnection alternates a DENY for web on
// api (http) and greeter (grpc) with no policy, and times each change to
// the first call of web's keep-alive HTTP and gRPC clients (one connection
// each, through web's sidecar) that shows it.
func BenchmarkPolicyEnforcementOnOpenConnection(b *testing.B) {
	e := startEnforceMeshWith(b, "STRICT", "", defaultDebounce...)
	webHTTP := keepAliveClient()
	webURL := fmt.Sprintf("http://127.0.0.1:%d/items", e.webAPI)
	var webGRPC testgrpc.TestServiceClient = grpcClient(b, e.webGreeter)
	eventually(b, 20*time.Second, func() error {
		for _, r := range []callRecord{httpCall(webHTTP, webURL), grpcCall(webGRPC)} {
			if r.outcome != "ok" {
				return fmt.Errorf("mesh not up yet: %s", r.outcome)
			}
		}
		return nil
	})
	httpCalls := startHotCaller(b, func() callRecord { return httpCall(webHTTP, webURL) })
	grpcCalls := startHotCaller(b, func() callRecord { return grpcCall(webGRPC) })
	var httpLat, grpcLat []time.Duration
	b.ResetTimer()
	for i := range b.N {
		docs, want := denyWeb("api", "greeter"), "denied"
		if i%2 == 1 {
			docs, want = "", "ok"
		}
		renamed := e.writePolicy(b, "STRICT", docs)
		is := func(o string) bool { return o == want }
		httpLat = append(httpLat, httpCalls.firstAfter(b, renamed, is).Sub(renamed))
		grpcLat = append(grpcLat, grpcCalls.firstAfter(b, renamed, is).Sub(renamed))
		// Let the next change be an isolated one, as an operator's edit is.
		time.Sleep(200 * time.Millisecond)
	}
	b.StopTimer()
	reportPercentiles(b, "http", httpLat)
	reportPercentiles(b, "grpc", grpcLat)
}

// BenchmarkStrictDrainsPlaintext switches api from PERMISSIVE to STRICT
// while a plaintext keep-alive client calls it back to back, and times the
// change to the end of the call on which api's sidecar closed the
// connection (or the first refused call). Each iteration then goes back to
// PERMISSIVE (not timed) and waits for plaintext to be served again.
func BenchmarkStrictDrainsPlaintext(b *testing.B) {
	e := startEnforceMeshWith(b, "PERMISSIVE", "", defaultDebounce...)
	plain := fmt.Sprintf("http://127.0.0.1:%d/plain", e.api.public)
	eventually(b, 20*time.Second, func() error {
		if code, err := do("GET", plain, nil); err != nil || code != 200 {
			return fmt.Errorf("plaintext not served yet: %d %v", code, err)
		}
		return nil
	})
	client := keepAliveClient()
	calls := startHotCaller(b, func() callRecord { return httpCall(client, plain) })
	closed := func(o string) bool { return o != "ok" }
	var lat []time.Duration
	b.ResetTimer()
	for range b.N {
		renamed := e.writePolicy(b, "STRICT", "")
		lat = append(lat, calls.firstAfter(b, renamed, closed).Sub(renamed))
		b.StopTimer()
		back := e.writePolicy(b, "PERMISSIVE", "")
		calls.firstAfter(b, back, func(o string) bool { return o == "ok" })
		time.Sleep(200 * time.Millisecond) // pacing: isolated changes, as above
		b.StartTimer()
	}
	b.StopTimer()
	reportPercentiles(b, "plaintext-closed", lat)
}
