package consul

import (
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/meshd/meshd/mesh"
)

// request is what the evaluator below decides on.
type request struct {
	caller, path, method string
	header               string // "name=value", or empty
}

// allowed evaluates ALLOW policies by the model's semantics (Istio's: an
// ALLOW policy selecting the destination denies what none of its rules
// match), independently of the xDS translation.
func allowed(pols []mesh.AuthorizationPolicy, dest string, r request) bool {
	var sel []mesh.AuthorizationPolicy
	for _, p := range pols {
		if p.Service == dest {
			sel = append(sel, p)
		}
	}
	if len(sel) == 0 {
		return true
	}
	for _, p := range sel {
		for _, rule := range p.Rules {
			if ruleMatches(rule, r) {
				return true
			}
		}
	}
	return false
}

func ruleMatches(rule mesh.Rule, r request) bool {
	if len(rule.From) > 0 {
		ok := false
		for _, s := range rule.From {
			m := (len(s.Principals) == 0 || contains(s.Principals, r.caller)) && !contains(s.NotPrincipals, r.caller)
			ok = ok || m
		}
		if !ok {
			return false
		}
	}
	if len(rule.To) > 0 {
		ok := false
		for _, o := range rule.To {
			ok = ok || opMatches(o, r)
		}
		if !ok {
			return false
		}
	}
	for _, o := range rule.NotTo {
		if opMatches(o, r) {
			return false
		}
	}
	return true
}

func opMatches(o mesh.Operation, r request) bool {
	if len(o.Methods) > 0 && !contains(o.Methods, r.method) {
		return false
	}
	if len(o.Paths) > 0 {
		ok := false
		for _, p := range o.Paths {
			if strings.HasSuffix(p, "*") {
				ok = ok || strings.HasPrefix(r.path, strings.TrimSuffix(p, "*"))
			} else {
				ok = ok || r.path == p
			}
		}
		if !ok {
			return false
		}
	}
	for _, h := range o.Headers {
		name, v, present := strings.Cut(r.header, "=")
		present = present && name == h.Name
		m := present && (h.Exact == "" || v == h.Exact) && (h.Prefix == "" || strings.HasPrefix(v, h.Prefix))
		if m == h.Invert {
			return false
		}
	}
	return true
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

const (
	pWeb = "cluster.local/ns/default/sa/web"
	pOps = "cluster.local/ns/default/sa/ops"
	pBad = "cluster.local/ns/default/sa/other"
)

func entry(sources ...*api.SourceIntention) *api.ServiceIntentionsConfigEntry {
	return &api.ServiceIntentionsConfigEntry{Kind: api.ServiceIntentions, Name: "api", Sources: sources}
}

func TestMapIntentionsSemantics(t *testing.T) {
	allow, deny := api.IntentionActionAllow, api.IntentionActionDeny
	get := func(caller, path string) request { return request{caller: caller, path: path, method: "GET"} }
	cases := []struct {
		name         string
		defaultAllow bool
		entries      []*api.ServiceIntentionsConfigEntry
		want         map[request]bool
	}{
		{"exact allow, default deny", false, []*api.ServiceIntentionsConfigEntry{entry(&api.SourceIntention{Name: "web", Action: allow})},
			map[request]bool{get(pWeb, "/"): true, get(pBad, "/"): false}},
		{"exact allow beats wildcard deny", true, []*api.ServiceIntentionsConfigEntry{entry(
			&api.SourceIntention{Name: "*", Action: deny}, &api.SourceIntention{Name: "web", Action: allow})},
			map[request]bool{get(pWeb, "/"): true, get(pBad, "/"): false, get(pOps, "/"): false}},
		{"exact deny beats wildcard allow", false, []*api.ServiceIntentionsConfigEntry{entry(
			&api.SourceIntention{Name: "*", Action: allow}, &api.SourceIntention{Name: "web", Action: deny})},
			map[request]bool{get(pWeb, "/"): false, get(pBad, "/"): true}},
		{"default allow, no entry", true, nil, map[request]bool{get(pBad, "/"): true}},
		{"default allow, exact deny", true, []*api.ServiceIntentionsConfigEntry{entry(&api.SourceIntention{Name: "web", Action: deny})},
			map[request]bool{get(pWeb, "/"): false, get(pBad, "/"): true}},
		{"L7 first match wins, default deny", false, []*api.ServiceIntentionsConfigEntry{entry(&api.SourceIntention{Name: "web", Permissions: []*api.IntentionPermission{
			{Action: deny, HTTP: &api.IntentionHTTPPermission{PathPrefix: "/admin"}},
			{Action: allow, HTTP: &api.IntentionHTTPPermission{PathPrefix: "/", Methods: []string{"get"}}},
		}})}, map[request]bool{
			get(pWeb, "/x"): true, get(pWeb, "/admin/users"): false,
			{caller: pWeb, path: "/x", method: "POST"}: false, get(pBad, "/x"): false,
		}},
		{"L7 unmatched falls to default allow", true, []*api.ServiceIntentionsConfigEntry{entry(&api.SourceIntention{Name: "web", Permissions: []*api.IntentionPermission{
			{Action: deny, HTTP: &api.IntentionHTTPPermission{PathExact: "/admin"}},
		}})}, map[request]bool{get(pWeb, "/admin"): false, get(pWeb, "/x"): true, get(pBad, "/admin"): true}},
		{"L7 header", false, []*api.ServiceIntentionsConfigEntry{entry(&api.SourceIntention{Name: "*", Permissions: []*api.IntentionPermission{
			{Action: allow, HTTP: &api.IntentionHTTPPermission{Header: []api.IntentionHTTPHeaderPermission{{Name: "x-role", Exact: "admin"}}}},
		}})}, map[request]bool{
			{caller: pOps, path: "/", method: "GET", header: "x-role=admin"}: true,
			get(pOps, "/"): false,
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			pols, err := MapIntentions(c.entries, IntentionOptions{TrustDomain: "cluster.local", DefaultAllow: c.defaultAllow})
			if err != nil {
				t.Fatal(err)
			}
			for r, want := range c.want {
				if got := allowed(pols, "api", r); got != want {
					t.Errorf("%+v: allowed=%v, want %v (policies %+v)", r, got, want, pols)
				}
			}
		})
	}
}

func TestMapIntentionsDefaultDenyCoversCatalog(t *testing.T) {
	cat, err := mesh.NewCatalog([]mesh.Service{{Name: "api"}, {Name: "db", ServiceAccount: "db-sa"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	pols, err := MapIntentions([]*api.ServiceIntentionsConfigEntry{entry(&api.SourceIntention{Name: "db", Action: api.IntentionActionAllow})},
		IntentionOptions{TrustDomain: "cluster.local", Catalog: cat})
	if err != nil {
		t.Fatal(err)
	}
	if len(pols) != 2 || pols[1].Service != "db" || len(pols[1].Rules) != 0 {
		t.Fatalf("want api's intentions and a deny-all for db, got %+v", pols)
	}
	// The source's service account comes from the catalog.
	if !allowed(pols, "api", request{caller: "cluster.local/ns/default/sa/db-sa", path: "/", method: "GET"}) {
		t.Error("db (service account db-sa) not allowed to api")
	}
}

func TestMapIntentionsRejectsUnsupported(t *testing.T) {
	for _, c := range []struct {
		src  *api.SourceIntention
		want string
	}{
		{&api.SourceIntention{Name: "web", Permissions: []*api.IntentionPermission{{Action: api.IntentionActionAllow, HTTP: &api.IntentionHTTPPermission{PathRegex: "/a.*"}}}}, "PathRegex is not supported"},
		{&api.SourceIntention{Name: "web", Action: api.IntentionActionAllow, Permissions: []*api.IntentionPermission{{Action: api.IntentionActionAllow}}}, "both Action and Permissions"},
		{&api.SourceIntention{Name: "web", Peer: "other-dc", Action: api.IntentionActionAllow}, "peers"},
		{&api.SourceIntention{Name: "web"}, "neither Action nor Permissions"},
	} {
		_, err := MapIntentions([]*api.ServiceIntentionsConfigEntry{entry(c.src)}, IntentionOptions{TrustDomain: "cluster.local"})
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), `service-intentions "api"`) {
			t.Errorf("%+v: got %v, want an error containing %q naming the entry", c.src, err, c.want)
		}
	}
}
