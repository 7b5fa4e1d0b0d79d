// Package meshcheck is meshctl check: a list of checks of a running mesh,
// each passed or failed with what was found and, on failure, what to do.
// Fetch reads meshd's admin API; Evaluate decides, without I/O, so each
// check is tested on its own.
package meshcheck

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/meshd/meshd/internal/adminclient"
	"github.com/meshd/meshd/sds"
	"github.com/meshd/meshd/server/admin"
)

// Options are the checks' thresholds.
type Options struct {
	// StaleAfter: a connected proxy that has not ACKed what meshd serves
	// for this long fails "every proxy is synced" (default 30s; a push is
	// normally ACKed within a second).
	StaleAfter time.Duration
	// CAMinValidity: the signing intermediate and the trusted roots must
	// stay valid at least this long (default 30 days).
	CAMinValidity time.Duration
	// Now is the clock (tests); default time.Now.
	Now func() time.Time
}

func (o Options) withDefaults() Options {
	if o.StaleAfter <= 0 {
		o.StaleAfter = 30 * time.Second
	}
	if o.CAMinValidity <= 0 {
		o.CAMinValidity = 30 * 24 * time.Hour
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// Result is one check.
type Result struct {
	Name string `json:"name"`
	OK   bool   `json:"ok"`
	// Detail says what was found; Problems lists each offender.
	Detail   string   `json:"detail"`
	Problems []string `json:"problems,omitempty"`
	// Hint says what to do about a failure.
	Hint string `json:"hint,omitempty"`
}

// Input is what the checks read from meshd.
type Input struct {
	Address string
	// Health is the error of GET /healthz (nil: 200), Ready of /readyz.
	Health, Ready error
	CA            *sds.Status
	CAErr         error
	Proxies       *admin.ProxiesReport
	ProxiesErr    error
}

// Fetch reads meshd's admin API. It fails only when meshd cannot be
// reached at all; other errors are the checks' findings.
func Fetch(ctx context.Context, c *adminclient.Client) (Input, error) {
	in := Input{Address: c.Base()}
	if _, err := c.Do(ctx, "GET", "/healthz", nil); err != nil {
		if adminclient.IsUnreachable(err) {
			return in, err
		}
		in.Health = err
	}
	if _, err := c.Do(ctx, "GET", "/readyz", nil); err != nil {
		in.Ready = err
	}
	var st sds.Status
	if in.CAErr = c.GetJSON(ctx, "/ca/status", nil, &st); in.CAErr == nil {
		in.CA = &st
	}
	var pr admin.ProxiesReport
	if in.ProxiesErr = c.GetJSON(ctx, "/proxies", nil, &pr); in.ProxiesErr == nil {
		in.Proxies = &pr
	}
	return in, nil
}

// Evaluate runs every check on in.
func Evaluate(in Input, o Options) []Result {
	o = o.withDefaults()
	now := o.Now()
	out := []Result{meshdReady(in)}
	out = append(out, caChecks(in, now, o)...)
	out = append(out, proxyChecks(in, now, o)...)
	return out
}

// Failed reports whether any check failed.
func Failed(rs []Result) bool {
	return slices.ContainsFunc(rs, func(r Result) bool { return !r.OK })
}

func meshdReady(in Input) Result {
	r := Result{Name: "meshd is reachable, live and ready", OK: true, Detail: "admin API at " + in.Address + " answers; a catalog is published"}
	switch {
	case in.Health != nil:
		r.OK, r.Detail = false, "/healthz fails: "+in.Health.Error()
		r.Hint = "meshd's publisher or stream machinery is wedged: see meshd's log for \"liveness check failed\", and restart meshd"
	case in.Ready != nil:
		r.OK, r.Detail = false, "/readyz fails: "+in.Ready.Error()
		r.Hint = "meshd has not published a catalog yet: check --catalog or --consul-address and meshd's log"
	}
	return r
}

func caChecks(in Input, now time.Time, o Options) []Result {
	valid := Result{Name: "the CA chain is valid", OK: true}
	expiry := Result{Name: fmt.Sprintf("CA certificates stay valid for %s or more", days(o.CAMinValidity)), OK: true}
	leaves := Result{Name: "workload certificates are renewed on time", OK: true}
	if in.CA == nil {
		for _, r := range []*Result{&valid, &expiry, &leaves} {
			r.OK, r.Detail, r.Hint = false, fmt.Sprintf("GET /ca/status: %v", in.CAErr), "meshd runs without its CA admin endpoints, or refused the request"
		}
		return []Result{valid, expiry, leaves}
	}
	st := in.CA
	certs := []struct {
		what string
		c    sds.CertInfo
	}{{"signing intermediate " + st.Signing.Subject, st.Signing}, {"signing root " + st.SigningRoot.Subject, st.SigningRoot}}
	for _, r := range st.TrustedRoots {
		if r.SHA256 != st.SigningRoot.SHA256 {
			certs = append(certs, struct {
				what string
				c    sds.CertInfo
			}{"trusted root " + r.Generation, r})
		}
	}
	// Valid: every certificate within its validity, and the signing root
	// among the roots proxies trust.
	for _, c := range certs {
		if now.Before(c.c.NotBefore) || !now.Before(c.c.NotAfter) {
			valid.Problems = append(valid.Problems, fmt.Sprintf("%s is valid %s to %s only", c.what, c.c.NotBefore.Format(time.RFC3339), c.c.NotAfter.Format(time.RFC3339)))
		}
	}
	if !slices.ContainsFunc(st.TrustedRoots, func(r sds.CertInfo) bool { return r.SHA256 == st.SigningRoot.SHA256 }) {
		valid.Problems = append(valid.Problems, "the signing root is not in the trust bundle proxies get: nothing meshd issues would verify")
	}
	if len(valid.Problems) > 0 {
		valid.OK, valid.Detail = false, fmt.Sprintf("%d problem(s)", len(valid.Problems))
		valid.Hint = "rotate to a new chain (meshctl ca rotate-root), or give meshd a valid operator CA (--ca-root-cert, --ca-intermediate-cert, --ca-intermediate-key)"
	} else {
		valid.Detail = fmt.Sprintf("intermediate %s signs under root %s, which the trust bundle (%d root(s)) holds", st.Signing.Subject, st.SigningRoot.Subject, len(st.TrustedRoots))
	}
	// Expiry.
	soonest := ""
	var soonestLeft time.Duration = -1
	for _, c := range certs {
		left := c.c.NotAfter.Sub(now)
		if soonestLeft < 0 || left < soonestLeft {
			soonest, soonestLeft = c.what, left
		}
		if left < o.CAMinValidity {
			expiry.Problems = append(expiry.Problems, fmt.Sprintf("%s expires %s (in %s)", c.what, c.c.NotAfter.Format(time.RFC3339), days(left)))
		}
	}
	if len(expiry.Problems) > 0 {
		expiry.OK, expiry.Detail = false, fmt.Sprintf("%d certificate(s) expire within %s", len(expiry.Problems), days(o.CAMinValidity))
		expiry.Hint = "meshctl ca rotate-intermediate (or rotate-root) well before then; with an operator CA, replace --ca-intermediate-cert and --ca-intermediate-key"
	} else {
		expiry.Detail = fmt.Sprintf("the first to expire is %s, in %s", soonest, days(soonestLeft))
	}
	// Leaves are reissued at half their life: one with less than a
	// quarter left has missed its renewal.
	for _, l := range st.Leaves {
		life := l.NotAfter.Sub(l.NotBefore)
		if left := l.NotAfter.Sub(now); life > 0 && left < life/4 {
			leaves.Problems = append(leaves.Problems, fmt.Sprintf("%s expires %s, %s left of %s", l.SPIFFEID, l.NotAfter.Format(time.RFC3339), left.Round(time.Second), life.Round(time.Second)))
		}
	}
	if len(leaves.Problems) > 0 {
		leaves.OK, leaves.Detail = false, fmt.Sprintf("%d identity certificate(s) past their renewal", len(leaves.Problems))
		leaves.Hint = "meshd reissues at half life: look for CA errors in meshd's log (an expired or offline intermediate, a full disk)"
	} else {
		leaves.Detail = fmt.Sprintf("%d identity certificate(s), each with at least a quarter of its life left", len(st.Leaves))
	}
	return []Result{valid, expiry, leaves}
}

func proxyChecks(in Input, now time.Time, o Options) []Result {
	names := []string{
		"every connected proxy has ACKed its configuration",
		"no proxy rejected its configuration (NACK)",
		"no mTLS migration is stuck",
		"every connected proxy is in the catalog",
		"every proxy's configuration renders",
		"Envoy sidecars are started with the drain flags",
	}
	if in.Proxies == nil {
		var out []Result
		for _, n := range names {
			out = append(out, Result{Name: n, Detail: fmt.Sprintf("GET /proxies: %v", in.ProxiesErr), Hint: "a meshd older than meshctl has no /proxies: upgrade meshd"})
		}
		return out
	}
	synced := Result{Name: names[0], OK: true}
	nacks := Result{Name: names[1], OK: true}
	migr := Result{Name: names[2], OK: true}
	known := Result{Name: names[3], OK: true}
	render := Result{Name: names[4], OK: true}
	drain := Result{Name: names[5], OK: true}
	connected, envoys := 0, 0
	for _, p := range in.Proxies.Proxies {
		if !p.InCatalog {
			if p.Connected {
				known.Problems = append(known.Problems, fmt.Sprintf("%s (%s) is connected but not in the catalog: it gets no configuration", p.ID, p.Node.UserAgent))
			}
			continue
		}
		if p.RenderError != "" {
			render.Problems = append(render.Problems, fmt.Sprintf("%s: %s", p.ID, oneLine(p.RenderError)))
		}
		if !p.Connected {
			continue
		}
		connected++
		for _, t := range p.Types {
			switch {
			case t.State == admin.StateNacked:
				nacks.Problems = append(nacks.Problems, fmt.Sprintf("%s rejected %s version %s: %s", p.ID, t.Short, short(t.Nacked), oneLine(t.NackError)))
			case t.State == admin.StateStale && t.StaleSeconds >= o.StaleAfter.Seconds():
				synced.Problems = append(synced.Problems, fmt.Sprintf("%s has not ACKed %s version %s for %s", p.ID, t.Short, short(t.Version), (time.Duration(t.StaleSeconds)*time.Second).String()))
			}
		}
		if p.Flavor == "envoy" {
			envoys++
			if p.DrainWarning != "" {
				drain.Problems = append(drain.Problems, p.ID+": "+p.DrainWarning)
			}
		}
	}
	for _, m := range in.Proxies.Migrations {
		if m.Overdue {
			migr.Problems = append(migr.Problems, fmt.Sprintf("%s %s→%s has waited %s for %s", m.Proxy, m.From, m.To,
				(time.Duration(m.PendingSeconds)*time.Second).String(), m.WaitingFor))
		}
	}
	fail := func(r *Result, detail, hint string) {
		if len(r.Problems) > 0 {
			r.OK, r.Detail, r.Hint = false, fmt.Sprintf(detail, len(r.Problems)), hint
		}
	}
	synced.Detail = fmt.Sprintf("%d connected proxies, none behind for %s or more", connected, o.StaleAfter)
	fail(&synced, "%d proxy type(s) behind", "a proxy that stops ACKing is hung or overloaded: meshctl status PROXY shows what it waits for; restart the proxy if it does not recover")
	nacks.Detail = "no NACK on record"
	fail(&nacks, "%d rejection(s)", "the proxy keeps its previous configuration: fix what the error names (often a catalog or policy value Envoy refuses), see docs/operations.md \"Why did proxy X reject its configuration?\"")
	migr.Detail = fmt.Sprintf("%d migration(s) in progress, none overdue", len(in.Proxies.Migrations))
	fail(&migr, "%d overdue migration(s)", "a step waits for proxies to ACK: bring them back, or force it with POST /migrations/force?proxy=<node-id> on the admin API (docs/policy.md)")
	known.Detail = "no unknown node ids connected"
	fail(&known, "%d unknown node(s)", "add the proxy to the catalog, or fix the node id in its bootstrap (meshctl bootstrap --node-id)")
	render.Detail = "every proxy of the catalog renders"
	fail(&render, "%d proxy(ies) cannot be rendered", "they keep their last good configuration; the error names the catalog or policy object to fix")
	drain.Detail = fmt.Sprintf("%d connected Envoy sidecar(s), each bootstrap asking for the drain flags (what Envoy actually runs with is not reported over xDS)", envoys)
	fail(&drain, "%d sidecar(s) without them", "without --drain-time-s (at most 60 s) and --drain-strategy immediate, connections opened before an mTLS or tcp policy change live on for Envoy's default 600 s: regenerate the bootstrap with meshctl bootstrap and start Envoy as its first lines say")
	return []Result{synced, nacks, migr, known, render, drain}
}

func days(d time.Duration) string {
	if d >= 48*time.Hour {
		return fmt.Sprintf("%d days", int(d.Hours()/24))
	}
	return d.Round(time.Minute).String()
}

func short(v string) string {
	if len(v) > 12 {
		return v[:12]
	}
	return v
}

func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 160 {
		s = s[:160] + "…"
	}
	return s
}
