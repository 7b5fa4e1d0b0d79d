package soak

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/meshd/meshd/bootstrap"
)

// proc is a child process the soak started and must stop, by its pid.
type proc struct {
	name    string
	cmd     *exec.Cmd
	LogPath string
	done    chan struct{}
	err     error // Wait's result, once done is closed
}

// startProc runs bin with args, its stdout and stderr appended to logPath.
func startProc(name, logPath, bin string, args ...string) (*proc, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("%s log: %w", name, err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("starting %s (%s): %w", name, bin, err)
	}
	p := &proc{name: name, cmd: cmd, LogPath: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	return p, nil
}

// Exited reports whether the process has ended, and how.
func (p *proc) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// Stop asks the process to exit (SIGTERM), then kills it after grace.
func (p *proc) Stop(grace time.Duration) {
	if done, _ := p.Exited(); done {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return
	case <-time.After(grace):
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// envoyProc is a real Envoy sidecar.
type envoyProc struct {
	*proc
	ID        string
	adminPath string
	admin     string
	client    http.Client
}

// envoyFlags are the flags every sidecar runs with: those documented for
// users (envoytest.SidecarFlags, scripts/demo.sh) plus a log level that
// keeps a long run's logs small and a short access-log flush, so that a
// failure's dump shows the sidecars' last denials.
func envoyFlags(baseID uint32) []string {
	args := append([]string{"--concurrency", "1", "--disable-hot-restart"}, bootstrap.EnvoyDrainArgs(0)...)
	return append(args, "--base-id", strconv.FormatUint(uint64(baseID), 10), "--log-level", "warning",
		"--file-flush-interval-msec", "1000")
}

func startEnvoy(bin, dir, id, config string, baseID uint32) (*envoyProc, error) {
	adminPath := filepath.Join(dir, "envoy-"+id+".admin")
	args := append([]string{"-c", config, "--admin-address-path", adminPath}, envoyFlags(baseID)...)
	p, err := startProc("envoy "+id, filepath.Join(dir, "envoy-"+id+".log"), bin, args...)
	if err != nil {
		return nil, err
	}
	return &envoyProc{proc: p, ID: id, adminPath: adminPath, client: http.Client{Timeout: 10 * time.Second}}, nil
}

// Admin is the Envoy's admin address, once it has written it.
func (e *envoyProc) Admin() (string, error) {
	if e.admin != "" {
		return e.admin, nil
	}
	b, err := os.ReadFile(e.adminPath)
	if err != nil {
		return "", err
	}
	a := strings.TrimSpace(string(b))
	if _, _, err := net.SplitHostPort(a); err != nil {
		return "", fmt.Errorf("admin address not written yet: %q", a)
	}
	e.admin = a
	return a, nil
}

// Get fetches an admin path.
func (e *envoyProc) Get(ctx context.Context, path string) (int, []byte, error) {
	a, err := e.Admin()
	if err != nil {
		return 0, nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+a+path, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := e.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// WaitReady waits for Envoy's /ready to say LIVE (every initial xDS fetch
// done, listeners ready).
func (e *envoyProc) WaitReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	last := "no answer"
	for time.Now().Before(deadline) {
		if done, err := e.Exited(); done {
			return fmt.Errorf("envoy %s exited during start-up (%v); see %s", e.ID, err, e.LogPath)
		}
		code, body, err := e.Get(ctx, "/ready")
		switch {
		case err != nil:
			last = err.Error()
		case code == http.StatusOK && strings.TrimSpace(string(body)) == "LIVE":
			return nil
		default:
			last = fmt.Sprintf("%d %s", code, strings.TrimSpace(string(body)))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("envoy %s not LIVE within %s (last /ready: %s); see %s", e.ID, timeout, last, e.LogPath)
}

// startApp runs a demo app (demoapp http|grpc|tcp) answering as service
// name on a port the kernel picks, and returns it with the port, read from
// the "serving" line of its log (app-<id>.log).
func startApp(ctx context.Context, bin, dir, mode, name, id string) (*proc, uint32, error) {
	p, err := startProc("demoapp "+id, filepath.Join(dir, "app-"+id+".log"), bin, mode, "--listen", "127.0.0.1:0", "--name", name)
	if err != nil {
		return nil, 0, err
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if done, err := p.Exited(); done {
			return nil, 0, fmt.Errorf("demoapp %s exited during start-up (%v); see %s", id, err, p.LogPath)
		}
		if port, ok := servingPort(p.LogPath); ok {
			return p, port, nil
		}
		select {
		case <-ctx.Done():
			p.Stop(time.Second)
			return nil, 0, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	p.Stop(time.Second)
	return nil, 0, fmt.Errorf("demoapp %s did not log its port within 30s; see %s", id, p.LogPath)
}

// servingPort finds the port in demoapp's `msg=serving … listen=HOST:PORT`
// line.
func servingPort(logPath string) (uint32, bool) {
	f, err := os.Open(logPath)
	if err != nil {
		return 0, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if !strings.Contains(line, "msg=serving") {
			continue
		}
		_, rest, ok := strings.Cut(line, " listen=")
		if !ok {
			continue
		}
		addr, _, _ := strings.Cut(rest, " ")
		_, port, err := net.SplitHostPort(addr)
		if err != nil {
			continue
		}
		n, err := strconv.ParseUint(port, 10, 16)
		if err == nil && n > 0 {
			return uint32(n), true
		}
	}
	return 0, false
}

// errExited reports a child that exited while the soak ran.
var errExited = errors.New("exited")
