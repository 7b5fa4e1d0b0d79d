package server

import (
	"crypto/sha256"
	"runtime"
	"slices"
	"sync"
	"weak"
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
}

// nameLists finds the interned list of given names. Entries are weak: a
// list lives as long as a stream holds it, and its entry is deleted once
// the collector has freed it.
var nameLists = struct {
	mu sync.Mutex
	m  map[[sha256.Size]byte]weak.Pointer[nameList]
}{m: map[[sha256.Size]byte]weak.Pointer[nameList]{}}

// internNameList returns the shared list holding exactly sorted (sorted,
// without duplicates), interning sorted (and its strings) if none exists.
// nil for no names.
func internNameList(sorted []string) *nameList {
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
	nameLists.mu.Lock()
	defer nameLists.mu.Unlock()
	if l := nameLists.m[key].Value(); l != nil && slices.Equal(l.names, sorted) {
		return l
	}
	internNames(sorted)
	l := &nameList{names: sorted}
	nameLists.m[key] = weak.Make(l)
	runtime.AddCleanup(l, func(key [sha256.Size]byte) {
		nameLists.mu.Lock()
		defer nameLists.mu.Unlock()
		if nameLists.m[key].Value() == nil {
			delete(nameLists.m, key)
		}
	}, key)
	return l
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

// internedNameLists counts the lists currently interned (for tests).
func internedNameLists() int {
	nameLists.mu.Lock()
	defer nameLists.mu.Unlock()
	return len(nameLists.m)
}
