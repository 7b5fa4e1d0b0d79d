// Package inputs turns meshd's sources — catalogs from the file and Consul,
// the policy directory, Consul intentions — into one ordered stream of
// (catalog, policy) updates for the publisher.
//
// One goroutine (Combiner.Run) owns every piece of state: the latest
// catalog of each source, the merged catalog, the policy directory's set,
// the intentions and their mapping. It takes one source change at a time
// and hands the publisher one Update with the merged catalog and the policy
// in force together, so a catalog is never published with intentions
// mapped against another catalog, and two changes can never land in the
// wrong order. Status is read through an atomic pointer.
package inputs

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync/atomic"

	"github.com/hashicorp/consul/api"

	"github.com/meshd/meshd/discovery/consul"
	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/snapshot"
)

// Options configure a Combiner.
type Options struct {
	// Intentions, when set, maps Consul intentions into ALLOW policies
	// (its Catalog is filled in with the merged catalog).
	Intentions *consul.IntentionOptions
	// Publish receives every update, in order. It must not block for long
	// (the publisher's Update only stores it).
	Publish func(snapshot.Update)
	Logger  *slog.Logger
}

// Initial is every source's first value; sources not configured are nil.
type Initial struct {
	Catalogs map[string]*mesh.Catalog // by source: "file", "consul"
	// Policy is the policy directory's set (or the defaults).
	Policy *mesh.PolicySet
	// Intentions are Consul's service-intentions entries (with
	// Options.Intentions).
	Intentions []*api.ServiceIntentionsConfigEntry
}

// Sources are the channels Run follows; nil channels are sources not
// configured.
type Sources struct {
	FileCatalogs, ConsulCatalogs <-chan *mesh.Catalog
	Policies                     <-chan *mesh.PolicySet
	Intentions                   <-chan []*api.ServiceIntentionsConfigEntry
}

// Status is the merge's and the intentions mapping's state, for
// /debug/status.
type Status struct {
	Merge      MergeStatus      `json:"merge"`
	Intentions IntentionsStatus `json:"intentions"`
}

// MergeStatus is the catalog merge's state: a service or proxy defined by
// two sources is a refused merge.
type MergeStatus struct {
	Error     string `json:"error"`
	Conflicts uint64 `json:"conflicts"`
}

// IntentionsStatus is the intentions mapping's state.
type IntentionsStatus struct {
	Policies     int    `json:"policies"`
	MappingError string `json:"mappingError"`
}

// Combiner merges sources into updates (see the package comment).
type Combiner struct {
	opts   Options
	log    *slog.Logger
	status atomic.Pointer[Status]

	// Owned by New, then by Run's goroutine.
	catalogs   map[string]*mesh.Catalog
	merged     *mesh.Catalog
	base       *mesh.PolicySet
	entries    []*api.ServiceIntentionsConfigEntry
	intentions []mesh.AuthorizationPolicy
	st         Status
}

// New merges the initial values and returns the combiner with the first
// update, which it has not published: the caller publishes it (before
// serving) or lets Run do it.
func New(init Initial, o Options) (*Combiner, snapshot.Update, error) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	c := &Combiner{opts: o, log: o.Logger, catalogs: map[string]*mesh.Catalog{}, base: init.Policy, entries: init.Intentions}
	if c.base == nil {
		c.base = &mesh.PolicySet{RootNamespace: mesh.DefaultRootNamespace}
	}
	for src, cat := range init.Catalogs {
		c.catalogs[src] = cat
	}
	merged, err := merge(c.catalogs)
	if err != nil {
		return nil, snapshot.Update{}, err
	}
	c.merged = merged
	u := snapshot.Update{Catalog: merged, Policy: c.policy()}
	c.status.Store(&Status{Merge: c.st.Merge, Intentions: c.st.Intentions})
	return c, u, nil
}

func merge(catalogs map[string]*mesh.Catalog) (*mesh.Catalog, error) {
	switch len(catalogs) {
	case 0:
		return nil, fmt.Errorf("no catalog source")
	case 1:
		for _, c := range catalogs {
			return c, nil // one source: already validated by NewCatalog
		}
	}
	m, err := mesh.Merge(catalogs)
	if err != nil {
		return nil, fmt.Errorf("merging catalog sources: %w", err)
	}
	return m, nil
}

// Status returns the latest status.
func (c *Combiner) Status() Status { return *c.status.Load() }

// policy is the set in force: the directory's (or the defaults) plus the
// intentions mapped against the merged catalog. A mapping error keeps the
// previous intentions in force.
func (c *Combiner) policy() *mesh.PolicySet {
	if c.opts.Intentions != nil {
		// Mapped even with no entries: deleting the last intention must
		// drop its policy (and a default-deny maps to policies anyway).
		o := *c.opts.Intentions
		o.Catalog = c.merged
		pols, err := consul.MapIntentions(c.entries, o)
		if err != nil {
			if err.Error() != c.st.Intentions.MappingError {
				c.log.Warn("consul intentions refused; the previous intentions stay in force", "err", err)
			}
			c.st.Intentions.MappingError = err.Error()
		} else {
			c.intentions, c.st.Intentions.MappingError = pols, ""
		}
		c.st.Intentions.Policies = len(c.intentions)
	}
	if len(c.intentions) == 0 {
		return c.base
	}
	ps := *c.base
	ps.Authorizations = append(slices.Clone(c.base.Authorizations), c.intentions...)
	return &ps
}

// Run follows the sources until ctx ends, publishing one update per
// accepted change.
func (c *Combiner) Run(ctx context.Context, s Sources) {
	for {
		var u snapshot.Update
		select {
		case <-ctx.Done():
			return
		case cat := <-s.FileCatalogs:
			u = c.catalogChanged("file", cat)
		case cat := <-s.ConsulCatalogs:
			u = c.catalogChanged("consul", cat)
		case ps := <-s.Policies:
			c.base = ps
			u = snapshot.Update{Policy: c.policy()}
		case e := <-s.Intentions:
			c.entries = e
			u = snapshot.Update{Policy: c.policy()}
		}
		st := c.st
		c.status.Store(&st)
		if u.Catalog != nil || u.Policy != nil {
			c.opts.Publish(u)
		}
	}
}

// catalogChanged merges a source's new catalog; the intentions are mapped
// again against it and go in the same update. A refused merge publishes
// nothing: the previous catalog keeps serving.
func (c *Combiner) catalogChanged(source string, cat *mesh.Catalog) snapshot.Update {
	next := make(map[string]*mesh.Catalog, len(c.catalogs)+1)
	for k, v := range c.catalogs {
		next[k] = v
	}
	next[source] = cat
	merged, err := merge(next)
	if err != nil {
		c.st.Merge.Conflicts++
		c.st.Merge.Error = err.Error()
		c.log.Warn("catalog update refused; the previous catalog keeps serving", "source", source, "err", err)
		return snapshot.Update{}
	}
	c.catalogs, c.merged, c.st.Merge.Error = next, merged, ""
	return snapshot.Update{Catalog: merged, Policy: c.policy()}
}
