package admin

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshd/meshd/internal/atomicfile"
	"github.com/meshd/meshd/internal/ratelog"
)

// Who may use the admin API (issue 13).
//
// Health, readiness and metrics are open: a load balancer, a supervisor or
// Prometheus must be able to read them, and they change nothing. Every
// other endpoint — CA status and rotations, forced migrations, status and
// config dumps, telemetry, the profiler, /debug/gc, and whatever is added
// later (the default is closed) — needs meshd's admin token, and is refused
// to requests a web browser could have been tricked into making:
//
//   - Authorization: Bearer <admin token>: a random token meshd writes to
//     <data-dir>/admin.token (0600) at first start (or --admin-token-file);
//     meshctl reads it from there. A bearer token, unlike a cookie or HTTP
//     basic credentials, is never attached by a browser on its own, and
//     needs the file, so another user of the host cannot use the API.
//   - Host must be an IP address, localhost, or a name in --admin-hosts: a
//     page that re-points its own name at 127.0.0.1 (DNS rebinding) sends
//     its own name.
//   - Origin (and Sec-Fetch-Site), when a browser sends them, must be the
//     admin API's own origin.
//   - POSTs must say Content-Type: application/json: a form or a
//     text/plain fetch, which a page may send without asking, is refused.
//
// A Unix socket instead was considered: it would bind access to file
// permissions just as well, but not reach meshd from another host or from
// a container beside it, and curl, Prometheus and the soak tools all speak
// TCP.

// TokenFileName is the admin token's file in the data directory.
const TokenFileName = "admin.token"

// publicPaths are served to anyone (GET and HEAD).
var publicPaths = []string{"/healthz", "/readyz", "/metrics"}

// Access checks requests for the sensitive endpoints.
type Access struct {
	// Token is the admin token (LoadOrCreateToken).
	Token string
	// Hosts are the names, besides localhost and IP addresses, that a
	// request's Host may carry (--admin-hosts).
	Hosts  []string
	Logger *slog.Logger

	refused *prometheus.CounterVec
	log     *slog.Logger
}

// NewAccess returns the access check for token and hosts; its refusals are
// logged at most every 10 s per kind and counted in
// meshd_admin_requests_refused_total{reason}.
func NewAccess(token string, hosts []string, log *slog.Logger) *Access {
	a := &Access{Token: token, Logger: log, log: ratelog.New(log.Handler(), 10*time.Second),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshd_admin_requests_refused_total",
			Help: "Admin API requests refused, by reason: credential (no or wrong admin token), host (a Host not in --admin-hosts), origin (a cross-site browser request), content_type (a POST that is not application/json).",
		}, []string{"reason"})}
	for _, h := range hosts {
		if h = strings.TrimSpace(h); h != "" {
			a.Hosts = append(a.Hosts, strings.ToLower(h))
		}
	}
	return a
}

// RegisterMetrics adds the refusal counter to reg.
func (a *Access) RegisterMetrics(reg prometheus.Registerer) { reg.MustRegister(a.refused) }

// Public reports whether a request may be served without credentials.
func Public(r *http.Request) bool {
	return (r.Method == http.MethodGet || r.Method == http.MethodHead) && slices.Contains(publicPaths, r.URL.Path)
}

// Wrap returns next behind the checks.
func (a *Access) Wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if Public(r) {
			next.ServeHTTP(w, r)
			return
		}
		if code, reason, msg := a.check(r); code != 0 {
			a.refused.WithLabelValues(reason).Inc()
			a.log.Warn("admin API request refused", "reason", reason, "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr, "host", r.Host)
			if code == http.StatusUnauthorized {
				w.Header().Set("WWW-Authenticate", `Bearer realm="meshd admin"`)
			}
			http.Error(w, msg, code)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// check returns 0 for a request that may be served, else the status,
// reason label and message of its refusal.
func (a *Access) check(r *http.Request) (int, string, string) {
	if !a.hostAllowed(r.Host) {
		return http.StatusForbidden, "host", fmt.Sprintf("Host %q is not a name of this admin API: use an IP address or localhost, or add the name to meshd --admin-hosts", r.Host)
	}
	if o := r.Header.Get("Origin"); o != "" && !sameOrigin(o, r.Host) {
		return http.StatusForbidden, "origin", fmt.Sprintf("cross-origin request from %q refused: the admin API is not for web pages", o)
	}
	if s := r.Header.Get("Sec-Fetch-Site"); s != "" && s != "same-origin" && s != "none" {
		return http.StatusForbidden, "origin", fmt.Sprintf("%s request refused (Sec-Fetch-Site): the admin API is not for web pages", s)
	}
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || subtle.ConstantTimeCompare([]byte(strings.TrimSpace(tok)), []byte(a.Token)) != 1 {
		return http.StatusUnauthorized, "credential",
			"this endpoint needs meshd's admin token: send Authorization: Bearer <token> with the token in meshd's <data-dir>/" + TokenFileName + " (meshctl reads it: --admin-token-file)"
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
		if err != nil || mt != "application/json" {
			return http.StatusUnsupportedMediaType, "content_type", "admin API actions take Content-Type: application/json"
		}
	}
	return 0, "", ""
}

// hostAllowed accepts an IP address (a page cannot make a browser send
// another site's request to an address under the address's own name),
// localhost, and the configured names.
func (a *Access) hostAllowed(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.ToLower(strings.TrimSuffix(strings.Trim(host, "[]"), "."))
	if host == "" {
		return false
	}
	if net.ParseIP(host) != nil || host == "localhost" {
		return true
	}
	return slices.Contains(a.Hosts, host)
}

// sameOrigin reports whether a browser's Origin header names the admin
// API itself (scheme http or https, the request's own host and port).
func sameOrigin(origin, host string) bool {
	u, err := url.Parse(origin)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") {
		return false
	}
	return strings.EqualFold(u.Host, host)
}

// LoadOrCreateToken returns the admin token in path, creating the file
// (mode 0600, a 256-bit random token) if there is none. created says
// whether it did; warn, if not empty, says what is wrong with an existing
// file's permissions.
func LoadOrCreateToken(path string) (token string, created bool, warn string, err error) {
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		raw := make([]byte, 32)
		if _, err := rand.Read(raw); err != nil {
			return "", false, "", fmt.Errorf("admin token: %w", err)
		}
		tok := base64.RawURLEncoding.EncodeToString(raw)
		if err := atomicfile.Write(path, []byte(tok+"\n"), 0o600); err != nil {
			return "", false, "", fmt.Errorf("admin token: %w", err)
		}
		return tok, true, "", nil
	case err != nil:
		return "", false, "", fmt.Errorf("admin token: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if len(tok) < 16 || strings.ContainsAny(tok, " \t\r\n") {
		return "", false, "", fmt.Errorf("admin token file %s must hold one token of at least 16 characters (delete it and meshd makes a new one)", path)
	}
	if info, err := os.Stat(path); err == nil && info.Mode().Perm()&0o077 != 0 {
		warn = fmt.Sprintf("admin token file %s has mode %v: other users of this host can read it and use the admin API; chmod 600 it", path, info.Mode().Perm())
	}
	return tok, false, warn, nil
}

// Loopback reports whether a listen address only accepts connections
// from this host.
func Loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
