package app

import (
	"fmt"
	"log/slog"
	"net"
	"runtime"

	"github.com/meshd/meshd/internal/fdlimit"
	"github.com/meshd/meshd/internal/metrics"
	"github.com/meshd/meshd/server/auth"
	"github.com/meshd/meshd/server/connlimit"
)

// AdminMaxConnections bounds the admin API's connections (the oldest is
// closed for a newcomer), so a flood there cannot take the descriptors
// the xDS port needs, nor one on the xDS port those of /readyz.
const AdminMaxConnections = 256

// fdReserve is what --max-connections leaves of the file-descriptor limit
// by default: the admin API's connections, and files, Consul, the
// watchers and the runtime (at most 1024, a quarter of a small limit).
func fdReserve(limit uint64) uint64 {
	return AdminMaxConnections + min(1024, limit/4)
}

// DefaultMaxConnections is --max-connections when not set: the
// file-descriptor limit less the reserve, at least 64.
func DefaultMaxConnections(fdLimit uint64) int {
	if fdLimit <= fdReserve(fdLimit)+64 {
		return 64
	}
	return int(fdLimit - fdReserve(fdLimit))
}

// DefaultMaxHandshakes is --max-concurrent-handshakes when not set: 8 per
// CPU meshd may use. A slot is held only while a handshake has bytes to
// work on (about a millisecond of CPU at a time), so a few per CPU keep
// every CPU busy even when some holders are descheduled, and at 8 per CPU
// a handshake gets at least an eighth of a CPU: tens of milliseconds of
// wall time, far inside --xds-handshake-timeout, even on a loaded machine.
// Unbounded, 10,000 handshakes that start together each get a
// ten-thousandth and none finishes in time (issue 14).
func DefaultMaxHandshakes() int { return 8 * runtime.GOMAXPROCS(0) }

// listen opens the xDS and admin listeners within meshd's connection
// limits, after raising the file-descriptor limit to its maximum.
func listen(c *Config, log *slog.Logger, m *metrics.Metrics, au *auth.Authenticator) (*connlimit.Listener, *connlimit.Listener, error) {
	soft, hard, err := fdlimit.Raise()
	if err != nil {
		log.Warn("cannot raise the file descriptor limit", "err", err, "soft", soft, "hard", hard)
	}
	max := c.MaxConnections
	if max <= 0 {
		max = DefaultMaxConnections(soft)
	}
	if soft > 0 && uint64(max)+AdminMaxConnections+64 > soft {
		log.Warn("--max-connections leaves almost no file descriptors for the admin API and files; lower it or raise meshd's limit (LimitNOFILE, ulimit -n)",
			"max_connections", max, "fd_limit", soft)
	}
	handshakes := c.MaxHandshakes
	if handshakes <= 0 {
		handshakes = DefaultMaxHandshakes()
	}
	log.Info("connection limits", "fd_limit", soft, "fd_hard_limit", hard, "max_connections", max,
		"max_pending_connections", c.MaxPendingConnections, "auth_timeout", c.AuthTimeout,
		"max_concurrent_handshakes", handshakes, "handshake_timeout", c.HandshakeTimeout, "admin_max_connections", AdminMaxConnections)
	xraw, err := net.Listen("tcp", c.XDSListen)
	if err != nil {
		return nil, nil, fmt.Errorf("--xds-listen %s: %w", c.XDSListen, err)
	}
	araw, err := net.Listen("tcp", c.AdminListen)
	if err != nil {
		xraw.Close()
		return nil, nil, fmt.Errorf("--admin-listen %s: %w", c.AdminListen, err)
	}
	xlis := connlimit.New(xraw, connlimit.Options{Max: max, MaxPending: c.MaxPendingConnections,
		PendingTimeout: c.AuthTimeout, MaxHandshakes: handshakes, HandshakeTimeout: c.HandshakeTimeout, Logger: log, What: "xds"})
	xlis.RegisterMetrics(m.Registry)
	au.OnAuthenticated = xlis.Authenticated
	// The admin API has no authenticated state to protect: every
	// connection counts as pending (the oldest goes for a newcomer), and
	// the HTTP server's own timeouts end idle ones.
	alis := connlimit.New(araw, connlimit.Options{Max: AdminMaxConnections, Logger: log, What: "admin"})
	alis.RegisterMetrics(m.Registry)
	return xlis, alis, nil
}
