package consul

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshd/meshd/mesh"
)

// Consul intentions become meshd's authorization model.
//
// Consul's semantics, per destination service: the intention of the most
// specific matching source decides (an exact source name over the "*"
// wildcard). An L4 intention allows or denies outright; an L7 intention's
// permissions are tried in order and the first that matches decides; a
// request no intention (or no permission) matches gets the default
// intention behaviour (allow or deny, Consul's ACL default policy).
//
// In meshd's model (Istio's: DENY before ALLOW, an ALLOW policy denies what
// none of its rules match) each destination becomes one ALLOW policy that
// lists exactly what is allowed: an exact source's rules name its
// principal, the wildcard's rules exclude every exact source, and a later
// L7 permission excludes the requests earlier ones matched (Rule.NotTo).

// IntentionOptions configure MapIntentions.
type IntentionOptions struct {
	TrustDomain string
	// DefaultAllow is the default intention behaviour: what a request that
	// no intention matches gets.
	DefaultAllow bool
	// Catalog gives service accounts of sources and the services to deny
	// by default; nil means service account = name and no defaults.
	Catalog *mesh.Catalog
}

// IntentionPolicyName names the policy an intentions entry becomes.
const IntentionPolicyName = "consul-intentions"

// MapIntentions renders service-intentions config entries as ALLOW
// policies. With DefaultAllow false, every catalog service without an entry
// gets an ALLOW policy with no rules (deny all), as in Consul.
func MapIntentions(entries []*api.ServiceIntentionsConfigEntry, o IntentionOptions) ([]mesh.AuthorizationPolicy, error) {
	var out []mesh.AuthorizationPolicy
	var errs []string
	covered := map[mesh.ServiceKey]bool{}
	for _, e := range entries {
		p, err := mapIntention(e, o)
		if err != nil {
			errs = append(errs, err.Error())
			continue
		}
		covered[mesh.ServiceKey{Namespace: p.Namespace, Name: p.Service}] = true
		if o.DefaultAllow && len(e.Sources) == 0 {
			continue // nothing narrows the default: no policy
		}
		out = append(out, p)
	}
	if len(errs) > 0 {
		slices.Sort(errs)
		return nil, fmt.Errorf("consul intentions: %s", strings.Join(errs, "; "))
	}
	if !o.DefaultAllow && o.Catalog != nil {
		for _, s := range o.Catalog.Services() {
			if !covered[s.Key()] {
				out = append(out, mesh.AuthorizationPolicy{Name: IntentionPolicyName, Namespace: s.Namespace, Service: s.Name,
					Action: mesh.ActionAllow, Source: "consul: default intention deny"})
			}
		}
	}
	slices.SortFunc(out, func(a, b mesh.AuthorizationPolicy) int {
		return strings.Compare(a.Namespace+"/"+a.Service, b.Namespace+"/"+b.Service)
	})
	return out, nil
}

func mapIntention(e *api.ServiceIntentionsConfigEntry, o IntentionOptions) (mesh.AuthorizationPolicy, error) {
	ns := e.Namespace
	if ns == "" {
		ns = mesh.DefaultNamespace
	}
	where := fmt.Sprintf("service-intentions %q", e.Name)
	p := mesh.AuthorizationPolicy{Name: IntentionPolicyName, Namespace: ns, Service: e.Name, Action: mesh.ActionAllow,
		Source: "consul: service-intentions/" + e.Name}
	if e.Name == "*" || e.Name == "" {
		return p, fmt.Errorf("%s: a wildcard destination is not supported: write one entry per service", where)
	}
	if e.Partition != "" || e.JWT != nil {
		return p, fmt.Errorf("%s: partitions and JWT requirements are not supported", where)
	}
	var exact []string
	var wild *api.SourceIntention
	srcs := slices.Clone(e.Sources)
	slices.SortFunc(srcs, func(a, b *api.SourceIntention) int {
		return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
	})
	for _, s := range srcs {
		if err := checkSource(s); err != nil {
			return p, fmt.Errorf("%s: source %q: %w", where, s.Name, err)
		}
		if s.Name == "*" {
			wild = s
			continue
		}
		exact = append(exact, principalOf(s, o))
	}
	var rules []mesh.Rule
	for _, s := range srcs {
		if s.Name == "*" {
			continue
		}
		r, err := sourceRules([]mesh.Source{{Principals: []string{principalOf(s, o)}}}, s, o.DefaultAllow)
		if err != nil {
			return p, fmt.Errorf("%s: source %q: %w", where, s.Name, err)
		}
		rules = append(rules, r...)
	}
	// Callers without an exact intention: the wildcard's, else the default.
	var others []mesh.Source
	if len(exact) > 0 {
		others = []mesh.Source{{NotPrincipals: exact}}
	}
	switch {
	case wild != nil:
		r, err := sourceRules(others, wild, o.DefaultAllow)
		if err != nil {
			return p, fmt.Errorf("%s: source \"*\": %w", where, err)
		}
		rules = append(rules, r...)
	case o.DefaultAllow:
		rules = append(rules, mesh.Rule{From: others})
	}
	p.Rules = rules
	return p, nil
}

func checkSource(s *api.SourceIntention) error {
	switch {
	case s.Peer != "" || s.Partition != "" || s.SamenessGroup != "":
		return fmt.Errorf("peers, partitions and sameness groups are not supported")
	case s.Action != "" && len(s.Permissions) > 0:
		return fmt.Errorf("has both Action and Permissions: Consul accepts one")
	case s.Action == "" && len(s.Permissions) == 0:
		return fmt.Errorf("has neither Action nor Permissions")
	case s.Action != "" && s.Action != api.IntentionActionAllow && s.Action != api.IntentionActionDeny:
		return fmt.Errorf("action %q: use allow or deny", s.Action)
	}
	return nil
}

// principalOf is the SPIFFE principal (Istio form) of a source service.
func principalOf(s *api.SourceIntention, o IntentionOptions) string {
	ns := s.Namespace
	if ns == "" || ns == "*" {
		ns = mesh.DefaultNamespace
	}
	sa := s.Name
	if o.Catalog != nil {
		if svc := o.Catalog.Service(mesh.ServiceKey{Namespace: ns, Name: s.Name}); svc != nil {
			sa = svc.ServiceAccount
		}
	}
	return o.TrustDomain + "/ns/" + ns + "/sa/" + sa
}

// sourceRules lists what one source's intention allows.
func sourceRules(from []mesh.Source, s *api.SourceIntention, defaultAllow bool) ([]mesh.Rule, error) {
	switch s.Action {
	case api.IntentionActionAllow:
		return []mesh.Rule{{From: from}}, nil
	case api.IntentionActionDeny:
		return nil, nil
	}
	var rules []mesh.Rule
	var earlier []mesh.Operation
	for i, perm := range s.Permissions {
		op, err := permissionOperation(perm)
		if err != nil {
			return nil, fmt.Errorf("permissions[%d]: %w", i, err)
		}
		switch perm.Action {
		case api.IntentionActionAllow:
			rules = append(rules, mesh.Rule{From: from, To: []mesh.Operation{op}, NotTo: slices.Clone(earlier)})
		case api.IntentionActionDeny:
		default:
			return nil, fmt.Errorf("permissions[%d]: action %q: use allow or deny", i, perm.Action)
		}
		earlier = append(earlier, op)
	}
	if defaultAllow {
		rules = append(rules, mesh.Rule{From: from, NotTo: earlier})
	}
	return rules, nil
}

func permissionOperation(p *api.IntentionPermission) (mesh.Operation, error) {
	var op mesh.Operation
	if p.JWT != nil {
		return op, fmt.Errorf("JWT requirements are not supported")
	}
	h := p.HTTP
	if h == nil {
		return op, fmt.Errorf("a permission needs HTTP match criteria")
	}
	switch {
	case h.PathRegex != "":
		return op, fmt.Errorf("PathRegex is not supported: use PathExact or PathPrefix")
	case h.PathExact != "" && h.PathPrefix != "":
		return op, fmt.Errorf("PathExact and PathPrefix are exclusive")
	case h.PathExact != "":
		op.Paths = []string{h.PathExact}
	case h.PathPrefix != "":
		op.Paths = []string{h.PathPrefix + "*"}
	}
	for _, m := range h.Methods {
		op.Methods = append(op.Methods, strings.ToUpper(m))
	}
	for j, hd := range h.Header {
		if hd.Contains != "" || hd.IgnoreCase {
			return op, fmt.Errorf("header[%d] %q: Contains and IgnoreCase are not supported", j, hd.Name)
		}
		if hd.Name == "" {
			return op, fmt.Errorf("header[%d]: Name is empty", j)
		}
		op.Headers = append(op.Headers, mesh.HeaderMatch{Name: hd.Name, Present: hd.Present, Exact: hd.Exact,
			Prefix: hd.Prefix, Suffix: hd.Suffix, Regex: hd.Regex, Invert: hd.Invert})
	}
	return op, nil
}

// IntentionsWatcher follows Consul's service-intentions config entries with
// blocking queries and delivers every change of content.
type IntentionsWatcher struct {
	client *api.Client
	opts   Options
	log    *slog.Logger

	updates chan []*api.ServiceIntentionsConfigEntry
	synced  chan struct{}

	mu      sync.Mutex
	current []*api.ServiceIntentionsConfigEntry
	status  IntentionsStatus
}

// IntentionsStatus is the watcher's state for /debug/status.
type IntentionsStatus struct {
	Synced    bool      `json:"synced"`
	Entries   int       `json:"entries"`
	SHA256    string    `json:"sha256"`
	LoadedAt  time.Time `json:"loadedAt"`
	LastError string    `json:"lastError"`
	Errors    uint64    `json:"errors"`
}

// NewIntentionsWatcher uses the same options as the catalog watcher.
func NewIntentionsWatcher(o Options) (*IntentionsWatcher, error) {
	w, err := NewWatcher(o) // validates the options and builds the client
	if err != nil {
		return nil, err
	}
	return &IntentionsWatcher{client: w.client, opts: w.opts, log: w.opts.Logger,
		updates: make(chan []*api.ServiceIntentionsConfigEntry, 1), synced: make(chan struct{})}, nil
}

// Updates delivers the latest entries (latest-value semantics).
func (w *IntentionsWatcher) Updates() <-chan []*api.ServiceIntentionsConfigEntry { return w.updates }

// Synced is closed once the first answer arrived.
func (w *IntentionsWatcher) Synced() <-chan struct{} { return w.synced }

// Current returns the entries in force.
func (w *IntentionsWatcher) Current() []*api.ServiceIntentionsConfigEntry {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.current
}

// Status reports the watcher's state.
func (w *IntentionsWatcher) Status() IntentionsStatus {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.status
}

// Run follows the entries until ctx ends. On errors the last entries stay
// in force and the query is retried with jittered exponential backoff.
func (w *IntentionsWatcher) Run(ctx context.Context) error {
	var index uint64
	backoff := w.opts.MinBackoff
	for {
		q := (&api.QueryOptions{WaitIndex: index, WaitTime: w.opts.WaitTime, AllowStale: w.opts.Stale, Datacenter: w.opts.Datacenter}).WithContext(ctx)
		raw, meta, err := w.client.ConfigEntries().List(api.ServiceIntentions, q)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			w.mu.Lock()
			w.status.LastError, w.status.Errors = err.Error(), w.status.Errors+1
			w.mu.Unlock()
			w.log.Warn("consul intentions query failed; the last intentions stay in force", "err", err, "retry_in", backoff)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(time.Duration(rand.Int64N(int64(backoff)) + 1)):
			}
			backoff = min(2*backoff, w.opts.MaxBackoff)
			index = 0 // re-read at once after an error, as the catalog watcher does
			continue
		}
		backoff = w.opts.MinBackoff
		if meta.LastIndex < index {
			index = 0 // index went backwards (agent restarted): resync
		} else {
			index = meta.LastIndex
		}
		var entries []*api.ServiceIntentionsConfigEntry
		for _, r := range raw {
			if e, ok := r.(*api.ServiceIntentionsConfigEntry); ok {
				e.CreateIndex, e.ModifyIndex = 0, 0 // not content
				entries = append(entries, e)
			}
		}
		slices.SortFunc(entries, func(a, b *api.ServiceIntentionsConfigEntry) int {
			return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
		})
		b, _ := json.Marshal(entries)
		sum := sha256.Sum256(b)
		hash := hex.EncodeToString(sum[:])
		w.mu.Lock()
		changed := hash != w.status.SHA256 || !w.status.Synced
		first := !w.status.Synced
		w.status.LastError = ""
		if changed {
			w.current = entries
			w.status = IntentionsStatus{Synced: true, Entries: len(entries), SHA256: hash, LoadedAt: time.Now(), Errors: w.status.Errors}
		}
		w.mu.Unlock()
		if first {
			close(w.synced)
		}
		if changed {
			w.log.Info("consul intentions loaded", "entries", len(entries), "sha256", hash[:16])
			select {
			case <-w.updates:
			default:
			}
			w.updates <- entries
		}
	}
}
