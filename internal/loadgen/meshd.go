package loadgen

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/meshd/meshd/internal/startline"
)

// Meshd is a meshd process the tool started, on loopback ports the kernel
// picks, with a temporary data directory.
type Meshd struct {
	Binary  string
	Dir     string // holds the catalog, data dir and log
	Catalog string // catalog.yaml, or catalog.json for a JSON catalog (CatalogFormat.FileName)
	DataDir string
	// XDSAddr and AdminAddr are 127.0.0.1:0 until the first Start, which
	// reads the ports meshd bound from its start line; a restart binds the
	// same addresses again, so that clients reconnect to where they were.
	XDSAddr   string
	AdminAddr string
	LogPath   string
	Args      []string // extra flags

	cmd  *exec.Cmd
	done chan struct{}
}

// NewMeshd lays out a meshd under dir (created if needed).
func NewMeshd(binary, dir string, args []string) (*Meshd, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("meshd work dir: %w", err)
	}
	return &Meshd{
		Binary: binary, Dir: dir, Args: args,
		Catalog:   filepath.Join(dir, FormatYAML.FileName()),
		DataDir:   filepath.Join(dir, "data"),
		XDSAddr:   "127.0.0.1:0",
		AdminAddr: "127.0.0.1:0",
		LogPath:   filepath.Join(dir, "meshd.log"),
	}, nil
}

// CAFile is the root certificate meshd's xDS server chains to.
func (m *Meshd) CAFile() string { return filepath.Join(m.DataDir, "ca", "root-cert.pem") }

// Start runs meshd (log appended to LogPath) and waits until it is ready.
func (m *Meshd) Start(ctx context.Context) error {
	logf, err := os.OpenFile(m.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("meshd log: %w", err)
	}
	args := append([]string{
		"--catalog", m.Catalog, "--data-dir", m.DataDir,
		"--xds-listen", m.XDSAddr, "--admin-listen", m.AdminAddr,
	}, m.Args...)
	// Not CommandContext: a cancelled run must still stop meshd with
	// SIGTERM and collect it, which Stop does.
	m.cmd = exec.Command(m.Binary, args...)
	m.cmd.Stdout, m.cmd.Stderr = logf, logf
	logStart, err := logf.Seek(0, io.SeekEnd) // a restart appends
	if err != nil {
		logf.Close()
		return fmt.Errorf("meshd log: %w", err)
	}
	if err := m.cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("starting meshd %s: %w", m.Binary, err)
	}
	done := make(chan struct{})
	m.done = done
	cmd := m.cmd
	go func() { _ = cmd.Wait(); logf.Close(); close(done) }()
	deadline := time.Now().Add(60 * time.Second)
	xds, adminAddr, err := startline.Wait(ctx, m.LogPath, logStart, done, time.Until(deadline))
	if err != nil {
		return err
	}
	m.XDSAddr, m.AdminAddr = xds, adminAddr
	admin := NewAdmin(m.AdminAddr, AdminTokenFile(m.DataDir))
	for time.Now().Before(deadline) {
		select {
		case <-done:
			return fmt.Errorf("meshd exited during start-up; see %s", m.LogPath)
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		if err := admin.WaitReady(ctx, 100*time.Millisecond); err == nil {
			return nil
		}
	}
	return errors.New("meshd not ready within 60s; see " + m.LogPath)
}

// PID is the running meshd's process id (0 if not running).
func (m *Meshd) PID() int {
	if m.cmd == nil || m.cmd.Process == nil || m.Exited() {
		return 0
	}
	return m.cmd.Process.Pid
}

// Exited reports whether the process has ended.
func (m *Meshd) Exited() bool {
	if m.done == nil {
		return true
	}
	select {
	case <-m.done:
		return true
	default:
		return false
	}
}

// Stop ends meshd gracefully (SIGTERM), killing it after 10 s.
func (m *Meshd) Stop() {
	if m.Exited() {
		return
	}
	_ = m.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-m.done:
	case <-time.After(10 * time.Second):
		_ = m.cmd.Process.Kill()
		<-m.done
	}
}

// Kill ends meshd at once (SIGKILL), as a crash would.
func (m *Meshd) Kill() {
	if m.Exited() {
		return
	}
	_ = m.cmd.Process.Kill()
	<-m.done
}
