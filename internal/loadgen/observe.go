package loadgen

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Admin reads a control plane's admin HTTP endpoints.
type Admin struct {
	Address string // host:port; empty means no admin endpoint
	client  http.Client
	// token is meshd's admin token, sent with every request; "" for none
	// (another control plane, or a meshd whose token file is elsewhere).
	token string
}

// NewAdmin returns a reader for the admin endpoint at address. tokenFile,
// if it exists, holds meshd's admin token (<data-dir>/admin.token), which
// meshd requires for everything but health, readiness and metrics.
func NewAdmin(address, tokenFile string) *Admin {
	a := &Admin{Address: address, client: http.Client{Timeout: 30 * time.Second}}
	if tokenFile != "" {
		if b, err := os.ReadFile(tokenFile); err == nil {
			a.token = strings.TrimSpace(string(b))
		}
	}
	return a
}

// AdminTokenFile is where a meshd with data directory dir keeps its admin
// token ("" without a data directory).
func AdminTokenFile(dir string) string {
	if dir == "" {
		return ""
	}
	return filepath.Join(dir, "admin.token")
}

// authorize adds the admin token, and for actions the content type meshd
// requires of them.
func (a *Admin) authorize(req *http.Request) {
	if a.token != "" {
		req.Header.Set("Authorization", "Bearer "+a.token)
	}
	if req.Method == http.MethodPost {
		req.Header.Set("Content-Type", "application/json")
	}
}

func (a *Admin) get(ctx context.Context, path string) ([]byte, int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+a.Address+path, nil)
	if err != nil {
		return nil, 0, fmt.Errorf("admin %s: %w", path, err)
	}
	a.authorize(req)
	resp, err := a.client.Do(req)
	if err != nil {
		return nil, 0, fmt.Errorf("admin %s: %w", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, resp.StatusCode, fmt.Errorf("admin %s: %w", path, err)
	}
	return b, resp.StatusCode, nil
}

// post sends an empty POST (meshd's admin actions) and returns the status
// and body.
func (a *Admin) post(ctx context.Context, path string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+a.Address+path, nil)
	if err != nil {
		return 0, "", fmt.Errorf("admin %s: %w", path, err)
	}
	a.authorize(req)
	resp, err := a.client.Do(req)
	if err != nil {
		return 0, "", fmt.Errorf("admin %s: %w", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return resp.StatusCode, "", fmt.Errorf("admin %s: %w", path, err)
	}
	return resp.StatusCode, string(b), nil
}

// Metrics is one scrape of a Prometheus text endpoint: each series by its
// full name with labels, and each metric name summed over its labels.
type Metrics map[string]float64

// Get returns the value of a series or of a metric summed over labels
// (0 if absent).
func (m Metrics) Get(name string) float64 { return m[name] }

// Has reports whether the scrape contained name.
func (m Metrics) Has(name string) bool { _, ok := m[name]; return ok }

// Scrape reads /metrics.
func (a *Admin) Scrape(ctx context.Context) (Metrics, error) {
	b, code, err := a.get(ctx, "/metrics")
	if err != nil {
		return nil, err
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("admin /metrics: HTTP %d", code)
	}
	return ParseMetrics(string(b)), nil
}

// ParseMetrics parses the Prometheus text exposition format (the subset
// every exporter emits: comments, `name{labels} value [timestamp]`).
func ParseMetrics(text string) Metrics {
	m := Metrics{}
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		series, rest := line, ""
		if i := strings.LastIndexByte(line, '}'); i >= 0 {
			series, rest = line[:i+1], strings.TrimSpace(line[i+1:])
		} else if i := strings.IndexByte(line, ' '); i >= 0 {
			series, rest = line[:i], strings.TrimSpace(line[i+1:])
		}
		val := rest
		if i := strings.IndexByte(rest, ' '); i >= 0 {
			val = rest[:i]
		}
		v, err := strconv.ParseFloat(val, 64)
		if err != nil {
			continue
		}
		m[series] += v
		if i := strings.IndexByte(series, '{'); i >= 0 {
			m[series[:i]] += v
		}
	}
	return m
}

// HeapAfterGC asks meshd for a full collection and its heap right after it
// (POST /debug/gc): heap in use and live bytes, without the garbage a
// profile or a scrape would add. ok is false when the server has no such
// endpoint (another control plane, an older meshd).
func (a *Admin) HeapAfterGC(ctx context.Context) (inuse, live float64, ok bool) {
	code, body, err := a.post(ctx, "/debug/gc")
	if err != nil || code != http.StatusOK {
		return 0, 0, false
	}
	var h struct {
		Inuse uint64 `json:"heapInuseBytes"`
		Live  uint64 `json:"heapLiveBytes"`
	}
	if err := json.Unmarshal([]byte(body), &h); err != nil || h.Inuse == 0 {
		return 0, 0, false
	}
	return float64(h.Inuse), float64(h.Live), true
}

// ForceGC asks the server to collect garbage before a heap reading, through
// Go's /debug/pprof/heap?gc=1. It reports false if the endpoint is absent.
func (a *Admin) ForceGC(ctx context.Context) bool {
	_, code, err := a.get(ctx, "/debug/pprof/heap?gc=1")
	return err == nil && code == http.StatusOK
}

// Profile saves a CPU profile of the server (needs /debug/pprof).
func (a *Admin) Profile(ctx context.Context, d time.Duration, path string) error {
	b, code, err := a.get(ctx, fmt.Sprintf("/debug/pprof/profile?seconds=%d", int(d.Seconds())))
	if err != nil {
		return err
	}
	if code != http.StatusOK {
		return fmt.Errorf("admin /debug/pprof/profile: HTTP %d (is pprof served?)", code)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return fmt.Errorf("saving profile: %w", err)
	}
	return nil
}

// HeapProfile saves a heap profile (after a GC) of the server.
func (a *Admin) HeapProfile(ctx context.Context, path string) error {
	b, code, err := a.get(ctx, "/debug/pprof/heap?gc=1")
	if err != nil {
		return err
	}
	if code != http.StatusOK {
		return fmt.Errorf("admin /debug/pprof/heap: HTTP %d (is pprof served?)", code)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return fmt.Errorf("saving heap profile: %w", err)
	}
	return nil
}

// MeshdStatus is the part of meshd's /debug/status the tool checks.
type MeshdStatus struct {
	Proxies []struct {
		ID       string            `json:"id"`
		Versions map[string]string `json:"versions"`
		Error    string            `json:"error"`
		XDS      *struct {
			Connected bool `json:"connected"`
			Types     map[string]struct {
				Acked     string `json:"acked"`
				Nacked    string `json:"nacked"`
				NackError string `json:"nackError"`
			} `json:"types"`
		} `json:"xds"`
	} `json:"proxies"`
}

// StatusCheck summarises meshd's own view of the fleet.
type StatusCheck struct {
	Checked      bool
	Connected    int // catalog proxies with an open stream
	FullyACKed   int // connected proxies whose ACKed version equals the current one for every type
	NACKed       []string
	RenderErrors []string
}

// CheckStatus reads meshd's /debug/status (meshd only; a generic control
// plane has none).
func (a *Admin) CheckStatus(ctx context.Context) (StatusCheck, error) {
	var sc StatusCheck
	b, code, err := a.get(ctx, "/debug/status")
	if err != nil {
		return sc, err
	}
	if code != http.StatusOK {
		return sc, fmt.Errorf("admin /debug/status: HTTP %d", code)
	}
	var st MeshdStatus
	if err := json.Unmarshal(b, &st); err != nil {
		return sc, fmt.Errorf("admin /debug/status: %w", err)
	}
	sc.Checked = true
	for _, p := range st.Proxies {
		if p.Error != "" {
			sc.RenderErrors = append(sc.RenderErrors, p.ID+": "+p.Error)
		}
		if p.XDS == nil || !p.XDS.Connected {
			continue
		}
		sc.Connected++
		full := true
		for typ, ts := range p.XDS.Types {
			if ts.Nacked != "" || ts.NackError != "" {
				sc.NACKed = append(sc.NACKed, fmt.Sprintf("%s %s: %s", p.ID, typ, ts.NackError))
			}
			if ts.Acked != p.Versions[typ] {
				full = false
			}
		}
		if full {
			sc.FullyACKed++
		}
	}
	return sc, nil
}

// WaitReady polls /readyz until it answers 200.
func (a *Admin) WaitReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		if _, code, err := a.get(ctx, "/readyz"); err == nil && code == http.StatusOK {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("control plane admin %s not ready within %s", a.Address, timeout)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// ProcStat is a process's CPU time and resident memory from /proc.
type ProcStat struct {
	CPU time.Duration // user + system
	RSS int64         // bytes
}

// ReadProc reads /proc/<pid>/stat and /proc/<pid>/status.
func ReadProc(pid int) (ProcStat, error) {
	var ps ProcStat
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ps, fmt.Errorf("reading process %d CPU: %w", pid, err)
	}
	// The command name (field 2) may contain spaces; fields are counted
	// after its closing parenthesis.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return ps, fmt.Errorf("process %d: short /proc stat", pid)
	}
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	// USER_HZ is 100 on every Linux ABI Go supports.
	ps.CPU = time.Duration(utime+stime) * (time.Second / 100)
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return ps, fmt.Errorf("reading process %d memory: %w", pid, err)
	}
	for _, line := range strings.Split(string(st), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			ps.RSS = kb << 10
		}
	}
	return ps, nil
}

// SelfUsage is this process's own CPU time and peak RSS (getrusage).
func SelfUsage() (cpu time.Duration, maxRSS int64) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, 0
	}
	cpu = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	return cpu, ru.Maxrss << 10
}
