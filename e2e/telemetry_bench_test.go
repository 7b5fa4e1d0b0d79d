package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/meshd/meshd/internal/loadgen"
	"github.com/meshd/meshd/telemetry"
)

// BenchmarkAccessLogOverhead is what traffic telemetry costs per request,
// as users run it: HTTP requests from web's sidecar to api's (keep-alive,
// one at a time), with meshd's telemetry on and off. It reports the CPU
// time (user + system, from /proc) of api's Envoy — the sidecar that logs
// each request to meshd — and of meshd, per request. Run with a fixed
// count (the /proc clock ticks every 10 ms) and record the figures in
// docs/performance.md:
//
//	go test ./e2e -run '^$' -bench AccessLogOverhead -benchtime 20000x
func BenchmarkAccessLogOverhead(b *testing.B) {
	for _, on := range []bool{false, true} {
		b.Run(fmt.Sprintf("telemetry=%v", on), func(b *testing.B) {
			e := startEnforceMeshWith(b, "STRICT", "", fmt.Sprintf("--telemetry=%v", on))
			url := fmt.Sprintf("http://127.0.0.1:%d/hello", e.webAPI)
			client := &http.Client{Timeout: 10 * time.Second}
			call := func() {
				resp, err := client.Get(url)
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					b.Fatalf("status %d", resp.StatusCode)
				}
			}
			eventually(b, 30*time.Second, func() error {
				resp, err := client.Get(url)
				if err != nil {
					return err
				}
				resp.Body.Close()
				if resp.StatusCode != 200 {
					return fmt.Errorf("status %d", resp.StatusCode)
				}
				return nil
			})
			for range 200 { // warm up connections and Envoy's buffers
				call()
			}
			before := e.requestsSeen(b, on)
			cpu := func() (envoy, meshd time.Duration) {
				a, err := loadgen.ReadProc(e.apiEnvoy.PID())
				if err != nil {
					b.Fatal(err)
				}
				m, err := loadgen.ReadProc(e.m.cmd.Process.Pid)
				if err != nil {
					b.Fatal(err)
				}
				return a.CPU, m.CPU
			}
			envoy0, meshd0 := cpu()
			b.ResetTimer()
			for range b.N {
				call()
			}
			b.StopTimer()
			if on {
				// meshd has recorded every request: its share is all in.
				eventually(b, 30*time.Second, func() error {
					if n := e.requestsSeen(b, on); n < before+uint64(b.N) {
						return fmt.Errorf("meshd has recorded %d of %d requests", n-before, b.N)
					}
					return nil
				})
			}
			envoy1, meshd1 := cpu()
			b.ReportMetric(float64((envoy1-envoy0).Microseconds())/float64(b.N), "api-envoy-cpu-µs/req")
			b.ReportMetric(float64((meshd1-meshd0).Microseconds())/float64(b.N), "meshd-cpu-µs/req")
		})
	}
}

// requestsSeen is what meshd's telemetry recorded of web → api (0 without
// telemetry).
func (e *enforceMesh) requestsSeen(b testing.TB, on bool) uint64 {
	if !on {
		return 0
	}
	code, body := e.m.adminGET("/telemetry/edges")
	if code != 200 {
		b.Fatalf("/telemetry/edges: %d %s", code, body)
	}
	var r telemetry.EdgesReport
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		b.Fatal(err)
	}
	var n uint64
	for _, ed := range r.Edges {
		if ed.Destination == "api.default" {
			n += ed.Requests
		}
	}
	return n
}
