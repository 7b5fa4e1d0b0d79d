package mesh

import (
	"strings"
	"testing"
)

func TestLabelSelectorMatches(t *testing.T) {
	labels := map[string]string{"app": "api", "version": "v2"}
	cases := []struct {
		name string
		sel  LabelSelector
		want bool
	}{
		{"empty selects all", LabelSelector{}, true},
		{"matchLabels", LabelSelector{MatchLabels: map[string]string{"app": "api"}}, true},
		{"matchLabels value differs", LabelSelector{MatchLabels: map[string]string{"app": "web"}}, false},
		{"In", LabelSelector{MatchExpressions: []LabelRequirement{{Key: "version", Operator: OpIn, Values: []string{"v1", "v2"}}}}, true},
		{"In absent key", LabelSelector{MatchExpressions: []LabelRequirement{{Key: "track", Operator: OpIn, Values: []string{"a"}}}}, false},
		{"NotIn", LabelSelector{MatchExpressions: []LabelRequirement{{Key: "version", Operator: OpNotIn, Values: []string{"v2"}}}}, false},
		{"NotIn absent key", LabelSelector{MatchExpressions: []LabelRequirement{{Key: "track", Operator: OpNotIn, Values: []string{"a"}}}}, true},
		{"Exists", LabelSelector{MatchExpressions: []LabelRequirement{{Key: "app", Operator: OpExists}}}, true},
		{"DoesNotExist", LabelSelector{MatchExpressions: []LabelRequirement{{Key: "app", Operator: OpDoesNotExist}}}, false},
		{"labels and expressions AND", LabelSelector{MatchLabels: map[string]string{"app": "api"}, MatchExpressions: []LabelRequirement{{Key: "version", Operator: OpIn, Values: []string{"v1"}}}}, false},
		{"unknown operator fails closed", LabelSelector{MatchExpressions: []LabelRequirement{{Key: "app", Operator: "Like"}}}, false},
	}
	for _, c := range cases {
		if got := c.sel.Matches(labels); got != c.want {
			t.Errorf("%s: Matches = %v, want %v", c.name, got, c.want)
		}
	}
}

func TestLinkerdSelection(t *testing.T) {
	deny := &AuthorizationPolicy{Name: "default:deny", Action: ActionDeny, Rules: []Rule{{}}}
	authn := &AuthorizationPolicy{Name: "default:all-authenticated", Action: ActionDeny, Rules: []Rule{{NotFrom: []Source{{Principals: []string{"*"}}}}}}
	zeta := &AuthorizationPolicy{Name: "server:zeta", Namespace: "prod", Action: ActionDeny, Rules: []Rule{{}}}
	alpha := &AuthorizationPolicy{Name: "server:alpha", Namespace: "prod", Action: ActionDeny, Rules: []Rule{{}}}
	ps := &PolicySet{
		RootNamespace: DefaultRootNamespace,
		Authorizations: []AuthorizationPolicy{
			{Name: "istio", Namespace: "prod", Action: ActionAllow, Rules: []Rule{{}}},
		},
		Linkerd: &LinkerdPolicy{
			Default:           DefaultAllAuthenticated,
			NamespaceDefaults: map[string]DefaultInboundPolicy{"vault": DefaultDeny, "open": DefaultAllUnauthenticated},
			Defaults:          map[DefaultInboundPolicy]*AuthorizationPolicy{DefaultDeny: deny, DefaultAllAuthenticated: authn},
			Servers: []LinkerdServer{
				// Out of name order on purpose: the first by name wins.
				{Name: "zeta", Namespace: "prod", Selector: LabelSelector{MatchLabels: map[string]string{"app": "api"}}, Port: 8080, Decision: zeta},
				{Name: "alpha", Namespace: "prod", Port: 8080, Decision: alpha},
				{Name: "named", Namespace: "prod", PortName: "api-admin"},
			},
		},
	}
	cases := []struct {
		name     string
		w        Workload
		server   string
		def      DefaultInboundPolicy
		decision *AuthorizationPolicy
	}{
		{"two Servers: the first by name", Workload{Service: "api", Namespace: "prod", Labels: map[string]string{"app": "api"}, Port: 8080}, "alpha", "", alpha},
		{"port name is the service name; no decision admits all", Workload{Service: "api-admin", Namespace: "prod", Port: 9000}, "named", "", nil},
		{"other port: mesh default", Workload{Service: "api", Namespace: "prod", Port: 9090}, "", DefaultAllAuthenticated, authn},
		{"other namespace: Servers do not reach it", Workload{Service: "api", Namespace: "shop", Port: 8080}, "", DefaultAllAuthenticated, authn},
		{"namespace default", Workload{Service: "db", Namespace: "vault", Port: 5432}, "", DefaultDeny, deny},
		{"namespace default all-unauthenticated: no decision", Workload{Service: "web", Namespace: "open", Port: 80}, "", DefaultAllUnauthenticated, nil},
		{"endpoint label beats the namespace", Workload{Service: "db", Namespace: "vault", Port: 5432, Labels: map[string]string{DefaultInboundPolicyLabel: "all-authenticated"}}, "", DefaultAllAuthenticated, authn},
	}
	for _, c := range cases {
		srv := ps.LinkerdServerFor(c.w)
		switch {
		case c.server == "" && srv != nil:
			t.Errorf("%s: Server %s selected, want none", c.name, srv.Name)
		case c.server != "" && (srv == nil || srv.Name != c.server):
			t.Errorf("%s: Server %v selected, want %s", c.name, srv, c.server)
		}
		if c.server == "" {
			if got := ps.LinkerdDefaultFor(c.w); got != c.def {
				t.Errorf("%s: default %s, want %s", c.name, got, c.def)
			}
		}
		if got := ps.LinkerdDecisionFor(c.w); got != c.decision {
			t.Errorf("%s: decision %v, want %v", c.name, got, c.decision)
		}
		// AuthorizationsFor adds the decision to Istio's policies.
		all := ps.AuthorizationsFor(c.w)
		found := false
		for _, a := range all {
			found = found || a == c.decision
		}
		if c.decision != nil && !found {
			t.Errorf("%s: AuthorizationsFor %v lacks the decision", c.name, all)
		}
	}

	// Every decision is visited once by EachAuthorization, so translation
	// fingerprints them.
	seen := map[*AuthorizationPolicy]int{}
	ps.EachAuthorization(func(a *AuthorizationPolicy) { seen[a]++ })
	for _, p := range []*AuthorizationPolicy{deny, authn, zeta, alpha, &ps.Authorizations[0]} {
		if seen[p] != 1 {
			t.Errorf("EachAuthorization visited %s %d times", p.Name, seen[p])
		}
	}
	if len(seen) != 5 {
		t.Errorf("EachAuthorization visited %d policies, want 5", len(seen))
	}

	// Without Linkerd policy nothing is added, labels included.
	none := &PolicySet{}
	if d := none.LinkerdDecisionFor(Workload{Labels: map[string]string{DefaultInboundPolicyLabel: "deny"}}); d != nil {
		t.Errorf("no Linkerd policy, decision %v", d)
	}
}

func TestCatalogRejectsUnknownDefaultInboundPolicyLabel(t *testing.T) {
	_, err := NewCatalog([]Service{{Name: "api", Protocol: ProtocolHTTP, Endpoints: []Endpoint{
		{Address: "10.0.0.1", Port: 8080, Labels: map[string]string{DefaultInboundPolicyLabel: "allow-all"}},
		{Address: "10.0.0.2", Port: 8080, Labels: map[string]string{DefaultInboundPolicyLabel: "deny"}},
	}}}, nil)
	if err == nil || !strings.Contains(err.Error(), `endpoints[0].labels.config.linkerd.io/default-inbound-policy: unknown default inbound policy "allow-all"`) ||
		strings.Contains(err.Error(), "endpoints[1]") {
		t.Fatalf("got %v", err)
	}
}
