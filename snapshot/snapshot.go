package snapshot

import (
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"strings"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"

	"github.com/meshd/meshd/xds"
)

// Snapshot is one proxy's configuration as meshd serves it: per type, a
// set of resources (sorted by name, with the shared encodings the
// publisher made once) and its content-hash version. Sets are shared
// between the snapshots of proxies whose resources of a type are identical
// (the sidecars of a service, callers of the same upstreams), which is most
// of what keeps meshd's heap per proxy small (docs/performance.md).
//
// It implements go-control-plane's cachev3.ResourceSnapshot so that the
// snapshot cache (and go-control-plane's fetch) can hold it; meshd's own
// stream loops type-assert it and answer from Resources without
// marshalling anything again. Never modified once built.
type Snapshot struct {
	sets [types.UnknownType]*typeSet // by response type
}

var _ cachev3.ResourceSnapshot = (*Snapshot)(nil)

// typeSet is one type's resources as snapshots hold them. Never modified
// once built: many snapshots share it.
type typeSet struct {
	key typeSetKey // its entry in the publisher's setTable
	// held counts the publisher's snapshots holding the set (setTable: the
	// publisher's goroutine only; the stream loops never read it).
	held    int
	version string
	// sorted is the set's resources sorted by name, with their shared
	// encodings (xds.Resource.Wire). A slice, not a map: a set is held per
	// proxy for listeners (each inbound listener carries its address).
	sorted []*xds.Resource
}

func (s *Snapshot) set(typeURL string) *typeSet {
	if s == nil {
		return nil
	}
	if i := cachev3.GetResponseType(typeURL); i != types.UnknownType {
		return s.sets[i]
	}
	return nil
}

// Resources returns the snapshot's resources of typeURL sorted by name,
// with their shared encodings, and the type's version ("" if the snapshot
// has no set of that type). The slice must not be modified.
func (s *Snapshot) Resources(typeURL string) (sorted []*xds.Resource, version string) {
	if ts := s.set(typeURL); ts != nil {
		return ts.sorted, ts.version
	}
	return nil, ""
}

// GetVersion implements cachev3.ResourceSnapshot.
func (s *Snapshot) GetVersion(typeURL string) string {
	if ts := s.set(typeURL); ts != nil {
		return ts.version
	}
	return ""
}

// GetResourcesAndTTL implements cachev3.ResourceSnapshot. The map is built
// on each call: only go-control-plane's fetch and config dumps ask for it,
// and a map kept per set would cost every proxy memory for nothing.
func (s *Snapshot) GetResourcesAndTTL(typeURL string) map[string]types.ResourceWithTTL {
	ts := s.set(typeURL)
	if ts == nil {
		return nil
	}
	out := make(map[string]types.ResourceWithTTL, len(ts.sorted))
	for _, r := range ts.sorted {
		out[r.Name] = types.ResourceWithTTL{Resource: r.Message}
	}
	return out
}

// GetResources implements cachev3.ResourceSnapshot (built on each call, as
// GetResourcesAndTTL).
func (s *Snapshot) GetResources(typeURL string) map[string]types.Resource {
	ts := s.set(typeURL)
	if ts == nil {
		return nil
	}
	out := make(map[string]types.Resource, len(ts.sorted))
	for _, r := range ts.sorted {
		out[r.Name] = r.Message
	}
	return out
}

// ConstructVersionMap implements cachev3.ResourceSnapshot: the per-resource
// versions are the resources' content hashes, computed when they were
// built, so there is nothing to construct.
func (s *Snapshot) ConstructVersionMap() error { return nil }

// GetVersionMap implements cachev3.ResourceSnapshot: each resource's
// content hash (go-control-plane's delta version), built on each call.
func (s *Snapshot) GetVersionMap(typeURL string) map[string]string {
	ts := s.set(typeURL)
	if ts == nil {
		return nil
	}
	out := make(map[string]string, len(ts.sorted))
	for _, r := range ts.sorted {
		out[r.Name] = r.Hash
	}
	return out
}

// versions returns the snapshot's version of each type it has.
func (s *Snapshot) versions() map[string]string {
	out := map[string]string{}
	for i, ts := range s.sets {
		if ts != nil {
			typ, _ := cachev3.GetResponseTypeURL(types.ResponseType(i))
			out[typ] = ts.version
		}
	}
	return out
}

// sameVersions reports whether s and o have the same types at the same
// versions (o may be nil).
func (s *Snapshot) sameVersions(o *Snapshot) bool {
	if o == nil {
		return false
	}
	for i, ts := range s.sets {
		os := o.sets[i]
		if (ts == nil) != (os == nil) || (ts != nil && ts.version != os.version) {
			return false
		}
	}
	return true
}

type typeSetKey struct {
	typ string
	sum [sha256.Size]byte // of every resource's name and hash, by name
}

// setTable finds the set of identical content built for another proxy. It
// belongs to one publisher and is used only by the goroutine that renders
// (no lock). It is keyed by content (the full SHA-256 over names and
// resource hashes), so a hit is always the same resources, and it counts
// the snapshots it handed each set to: a set whose last snapshot is
// replaced or removed leaves the table (held counts what the publisher
// holds; a stream still answering from an older snapshot keeps its set
// alive through the snapshot, not through the table).
type setTable struct {
	sets map[typeSetKey]*typeSet
	buf  []byte // scratch for key
}

func newSetTable() *setTable { return &setTable{sets: map[typeSetKey]*typeSet{}} }

// key returns the table's key of a sorted set: the full SHA-256 over every
// resource's name and hash, written to one reused buffer (the same digest
// as writing each to a hash.Hash, without garbage per proxy).
func (t *setTable) key(typ string, sorted []*xds.Resource) typeSetKey {
	buf := t.buf[:0]
	for _, r := range sorted {
		buf = append(append(buf, r.Name...), 0)
		buf = append(append(buf, r.Hash...), 0)
	}
	t.buf = buf
	return typeSetKey{typ: typ, sum: sha256.Sum256(buf)}
}

var byResourceName = func(a, b *xds.Resource) int { return strings.Compare(a.Name, b.Name) }

// build assembles a snapshot from per-type resources, sharing every set
// the table already has. The snapshot is held (counted) until release.
func (t *setTable) build(sets map[string][]*xds.Resource) *Snapshot {
	snap := &Snapshot{}
	for typ, list := range sets {
		i := cachev3.GetResponseType(typ)
		if i == types.UnknownType {
			continue
		}
		sorted := list
		if !slices.IsSortedFunc(list, byResourceName) {
			sorted = slices.SortedFunc(slices.Values(list), byResourceName)
		}
		ts := t.entry(typ, sorted)
		ts.held++
		snap.sets[i] = ts
	}
	return snap
}

// entry returns the table's set for a sorted set of typ, made if new (not
// yet held).
func (t *setTable) entry(typ string, sorted []*xds.Resource) *typeSet {
	key := t.key(typ, sorted)
	ts := t.sets[key]
	if ts == nil {
		// The version is the first 8 bytes of the content hash, as
		// since versions were content hashes: unchanged across
		// releases, replicas and restarts.
		v := hex.EncodeToString(key.sum[:8])
		if len(sorted) == 0 {
			// An empty set still needs a version so subscribers get an
			// (empty) answer instead of waiting forever.
			v = "empty"
		}
		// A copy: sorted may be the caller's slice.
		ts = &typeSet{key: key, version: v, sorted: slices.Clone(sorted)}
		t.sets[key] = ts
	}
	return ts
}

// with returns a snapshot equal to old but for type i, whose set is
// replaced by set (a set of this table), and holds it: old's other sets
// are shared, not rebuilt.
func (t *setTable) with(old *Snapshot, i types.ResponseType, set *typeSet) *Snapshot {
	snap := &Snapshot{sets: old.sets}
	snap.sets[i] = set
	for _, ts := range snap.sets {
		if ts != nil {
			ts.held++
		}
	}
	return snap
}

// release forgets one hold on each of a snapshot's sets (nil: nothing).
func (t *setTable) release(s *Snapshot) {
	if s == nil {
		return
	}
	for _, ts := range s.sets {
		if ts == nil {
			continue
		}
		if ts.held--; ts.held <= 0 && t.sets[ts.key] == ts {
			delete(t.sets, ts.key)
		}
	}
}

// size is the number of distinct sets held.
func (t *setTable) size() int { return len(t.sets) }
