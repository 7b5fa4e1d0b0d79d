package inputs

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshd/meshd/discovery/consul"
	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/snapshot"
)

func catalog(t *testing.T, svcs ...string) *mesh.Catalog {
	t.Helper()
	var s []mesh.Service
	for _, n := range svcs {
		s = append(s, mesh.Service{Name: n})
	}
	c, err := mesh.NewCatalog(s, nil)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// recorder collects published updates.
type recorder struct {
	mu  sync.Mutex
	got []snapshot.Update
	ch  chan struct{}
}

func newRecorder() *recorder { return &recorder{ch: make(chan struct{}, 100)} }

func (r *recorder) publish(u snapshot.Update) {
	r.mu.Lock()
	r.got = append(r.got, u)
	r.mu.Unlock()
	r.ch <- struct{}{}
}

func (r *recorder) next(t *testing.T) snapshot.Update {
	t.Helper()
	select {
	case <-r.ch:
	case <-time.After(10 * time.Second):
		t.Fatal("no update published")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.got[len(r.got)-1]
}

func names(c *mesh.Catalog) string {
	var out []string
	for _, s := range c.Services() {
		out = append(out, s.Name)
	}
	return strings.Join(out, ",")
}

// With a file and Consul both configured, a service defined by both is a
// refused merge that keeps the previous catalog, never a silent override;
// disjoint sources merge.
func TestCatalogSourcesRefuseConflicts(t *testing.T) {
	rec := newRecorder()
	c, first, err := New(Initial{Catalogs: map[string]*mesh.Catalog{"file": catalog(t, "web"), "consul": catalog(t, "api")}},
		Options{Publish: rec.publish})
	if err != nil {
		t.Fatal(err)
	}
	if names(first.Catalog) != "api,web" || first.Policy == nil {
		t.Fatalf("first update: %s, policy %v", names(first.Catalog), first.Policy)
	}
	file, consulC := make(chan *mesh.Catalog), make(chan *mesh.Catalog)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go c.Run(ctx, Sources{FileCatalogs: file, ConsulCatalogs: consulC})
	consulC <- catalog(t, "api", "web") // web is the file's
	file <- catalog(t, "web", "db")
	if u := rec.next(t); names(u.Catalog) != "api,db,web" {
		t.Fatalf("after a refused merge and a good one: %s", names(u.Catalog))
	}
	if st := c.Status(); st.Merge.Conflicts != 1 || st.Merge.Error != "" {
		t.Errorf("status %+v, want one conflict and no current error", st)
	}
	consulC <- catalog(t, "api", "db")
	file <- catalog(t, "web")
	if u := rec.next(t); names(u.Catalog) != "api,web" {
		t.Fatalf("after a second conflict: %s", names(u.Catalog))
	}
	if st := c.Status(); st.Merge.Conflicts != 2 {
		t.Errorf("status %+v, want two conflicts", st)
	}
	if _, _, err := New(Initial{Catalogs: map[string]*mesh.Catalog{"file": catalog(t, "web"), "consul": catalog(t, "web")}}, Options{Publish: rec.publish}); err == nil {
		t.Error("conflicting first catalogs accepted")
	}
}

func intention(dest string, sources ...string) *api.ServiceIntentionsConfigEntry {
	e := &api.ServiceIntentionsConfigEntry{Kind: api.ServiceIntentions, Name: dest}
	for _, s := range sources {
		e.Sources = append(e.Sources, &api.SourceIntention{Name: s, Action: api.IntentionActionAllow})
	}
	return e
}

// Intentions are mapped against the merged catalog and published with it
// as one update, in the order the changes arrived; the policy directory's
// set and the intentions combine.
func TestCatalogAndIntentionsArePublishedTogetherInOrder(t *testing.T) {
	rec := newRecorder()
	dir := &mesh.PolicySet{RootNamespace: "meshd-system", DefaultMode: mesh.MTLSStrict,
		Authorizations: []mesh.AuthorizationPolicy{{Name: "from-dir", Namespace: "default", Action: mesh.ActionAllow}}}
	c, first, err := New(Initial{Catalogs: map[string]*mesh.Catalog{"consul": catalog(t, "api", "web")}, Policy: dir,
		Intentions: []*api.ServiceIntentionsConfigEntry{intention("api", "web")}},
		Options{Publish: rec.publish, Intentions: &consul.IntentionOptions{TrustDomain: "cluster.local", DefaultAllow: true}})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(first.Policy.Authorizations); n != 2 || first.Policy.DefaultMode != mesh.MTLSStrict {
		t.Fatalf("first policy: %d authorizations (want the directory's and api's intention), mode %s", n, first.Policy.DefaultMode)
	}
	cats, ints, pols := make(chan *mesh.Catalog), make(chan []*api.ServiceIntentionsConfigEntry), make(chan *mesh.PolicySet)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go c.Run(ctx, Sources{ConsulCatalogs: cats, Intentions: ints, Policies: pols})

	// A catalog change: the intentions re-mapped against it travel with it.
	cats <- catalog(t, "api", "web", "db")
	u := rec.next(t)
	if u.Catalog == nil || u.Policy == nil || names(u.Catalog) != "api,db,web" {
		t.Fatalf("catalog change published as %+v", u)
	}
	// Intentions, then the directory: each applied in order.
	ints <- []*api.ServiceIntentionsConfigEntry{intention("api", "web"), intention("db", "api")}
	if u := rec.next(t); u.Catalog != nil || len(u.Policy.Authorizations) != 3 {
		t.Fatalf("intentions change: %+v", u)
	}
	pols <- &mesh.PolicySet{RootNamespace: "meshd-system", DefaultMode: mesh.MTLSDisable}
	if u := rec.next(t); u.Policy.DefaultMode != mesh.MTLSDisable || len(u.Policy.Authorizations) != 2 {
		t.Fatalf("directory change: mode %s, %d authorizations", u.Policy.DefaultMode, len(u.Policy.Authorizations))
	}
	if st := c.Status(); st.Intentions.Policies != 2 || st.Intentions.MappingError != "" {
		t.Errorf("status %+v", st)
	}
	// Every intention deleted: no intention policy is left.
	ints <- nil
	if u := rec.next(t); len(u.Policy.Authorizations) != 0 {
		t.Fatalf("all intentions deleted, %d authorizations left", len(u.Policy.Authorizations))
	}
}

// A bad intentions entry keeps the previous intentions in force and is
// reported; a later good one clears the report.
func TestBadIntentionsKeepThePrevious(t *testing.T) {
	rec := newRecorder()
	c, _, err := New(Initial{Catalogs: map[string]*mesh.Catalog{"consul": catalog(t, "api", "web")},
		Intentions: []*api.ServiceIntentionsConfigEntry{intention("api", "web")}},
		Options{Publish: rec.publish, Intentions: &consul.IntentionOptions{TrustDomain: "cluster.local", DefaultAllow: true}})
	if err != nil {
		t.Fatal(err)
	}
	ints := make(chan []*api.ServiceIntentionsConfigEntry)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go c.Run(ctx, Sources{Intentions: ints})
	bad := intention("api")
	bad.Sources = []*api.SourceIntention{{Name: "web", Action: "maybe"}}
	ints <- []*api.ServiceIntentionsConfigEntry{bad}
	u := rec.next(t)
	if len(u.Policy.Authorizations) != 1 || c.Status().Intentions.MappingError == "" {
		t.Fatalf("bad intentions: %d authorizations, status %+v", len(u.Policy.Authorizations), c.Status())
	}
	ints <- []*api.ServiceIntentionsConfigEntry{intention("api", "web")}
	rec.next(t)
	if st := c.Status(); st.Intentions.MappingError != "" {
		t.Errorf("error not cleared: %+v", st)
	}
}
