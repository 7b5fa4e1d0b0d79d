package server

import (
	"crypto/sha256"
	"slices"
	"sync"
)

// nameList is one sorted list of subscribed resource names, shared by every
// stream that subscribes to exactly those names. Envoy names every endpoint
// set, route and secret its clusters and listeners use, so in a mesh where
// proxies see the same services each stream would otherwise hold its own
// copy of the same list: at 200 services that is 200 names (3.2 KiB of
// string headers) for endpoints alone, per proxy (issue 14's heap target).
// Never modified once interned.
type nameList struct {
	names []string
	key   [sha256.Size]byte
	refs  int // streams holding the list; guarded by nameLists.mu
}

// nameLists is the table of one server's shared name lists, owned by its
// Cache. Streams hold lists by reference count: a stream acquires the list
// of the names it subscribes to and releases the one it held, and releases
// every list when it ends, so a list leaves the table with its last
// stream (no process-wide table, nothing left to the collector).
type nameLists struct {
	mu sync.Mutex
	m  map[[sha256.Size]byte]*nameList
}

// acquire returns the shared list holding exactly sorted (sorted, without
// duplicates), interning sorted (and its strings) if none exists, with one
// more reference for the caller. nil for no names.
func (t *nameLists) acquire(sorted []string) *nameList {
	if len(sorted) == 0 {
		return nil
	}
	h := sha256.New()
	for _, n := range sorted {
		h.Write([]byte(n))
		h.Write([]byte{0})
	}
	var key [sha256.Size]byte
	h.Sum(key[:0])
	t.mu.Lock()
	defer t.mu.Unlock()
	if l := t.m[key]; l != nil && slices.Equal(l.names, sorted) {
		l.refs++
		return l
	}
	// A list under this key with other names (a hash collision) keeps its
	// holders and is left out of the table.
	internNames(sorted)
	l := &nameList{names: sorted, key: key, refs: 1}
	if t.m == nil {
		t.m = map[[sha256.Size]byte]*nameList{}
	}
	t.m[key] = l
	return l
}

// release gives back one reference to l (nil: nothing), removing l from
// the table when no stream holds it.
func (t *nameLists) release(l *nameList) {
	if l == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	l.refs--
	if l.refs <= 0 && t.m[l.key] == l {
		delete(t.m, l.key)
	}
}

// replace acquires the list of sorted and releases old: what a stream does
// when its subscription changes.
func (t *nameLists) replace(old *nameList, sorted []string) *nameList {
	l := t.acquire(sorted)
	t.release(old)
	return l
}

// size counts the lists held (for tests).
func (t *nameLists) size() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.m)
}

// list returns the names (nil for a nil list).
func (l *nameList) list() []string {
	if l == nil {
		return nil
	}
	return l.names
}

// contains reports whether name is in the list.
func (l *nameList) contains(name string) bool {
	_, found := slices.BinarySearch(l.list(), name)
	return found
}
