package server

import (
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

// nonWildcardTypes are the types xDS subscribes to by name only.
var nonWildcardTypes = []string{
	resourcev3.RouteType, resourcev3.EndpointType, resourcev3.SecretType,
	resourcev3.ScopedRouteType, resourcev3.VirtualHostType, resourcev3.RuntimeType,
	resourcev3.ExtensionConfigType,
}

// VersionSource reports the version of typeURL in node's current snapshot
// ("" if none).
type VersionSource func(node, typeURL string) string

// CacheVersions reads versions from a go-control-plane snapshot cache.
func CacheVersions(c cachev3.SnapshotCache) VersionSource {
	return func(node, typeURL string) string {
		s, err := c.GetSnapshot(node)
		if err != nil {
			return ""
		}
		return s.GetVersion(typeURL)
	}
}

// SetVersionSource enables holdEmptySubscription.
func (t *Tracker) SetVersionSource(v VersionSource) { t.versions = v }

// holdEmptySubscription stops a request loop go-control-plane has with
// Envoy. When a listener is rejected, the routes and secrets only it used
// lose their last watch, and Envoy sends requests naming no resources of
// those types. go-control-plane answers a request whose version differs
// from the snapshot's with every resource of the type; Envoy, watching
// nothing of that type, ignores the answer without recording its version,
// asks again with an empty version, and the exchange repeats thousands of
// times a second (measured: ~8,000/s, 70% of a core). An empty name list for
// a non-wildcard type subscribes to nothing, so the request is marked as
// up to date: the cache then waits for a new snapshot instead of answering.
func (t *Tracker) holdEmptySubscription(id streamKey, req *discoveryv3.DiscoveryRequest) {
	if len(req.GetResourceNames()) > 0 || req.GetErrorDetail() != nil || t.versions == nil {
		return
	}
	wildcard := true
	for _, typ := range nonWildcardTypes {
		if typ == req.GetTypeUrl() {
			wildcard = false
		}
	}
	if wildcard {
		return
	}
	t.mu.Lock()
	s := t.streams[id]
	node := ""
	if s != nil {
		node = s.node
	}
	t.mu.Unlock()
	if node == "" {
		return
	}
	if v := t.versions(node, req.GetTypeUrl()); v != "" {
		req.VersionInfo = v
	}
}
