package server

import (
	"unique"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

// nonWildcardTypes are the types xDS subscribes to by name only: an empty
// name list subscribes to nothing (go-control-plane's delta server is told
// so; the SotW loop knows it, sotw.go).
var nonWildcardTypes = []string{
	resourcev3.RouteType, resourcev3.EndpointType, resourcev3.SecretType,
	resourcev3.ScopedRouteType, resourcev3.VirtualHostType, resourcev3.RuntimeType,
	resourcev3.ExtensionConfigType,
}

// canonicalType returns go-control-plane's constant for a type URL meshd
// serves. go-control-plane keeps every stream's latest request of each type
// (with its watch), so each would otherwise hold its own copy of the
// string, decoded from the wire.
func canonicalType(typeURL string) string {
	if i := cachev3.GetResponseType(typeURL); i != types.UnknownType {
		if u, err := cachev3.GetResponseTypeURL(i); err == nil && u == typeURL {
			return u
		}
	}
	return typeURL
}

// internNames replaces requested resource names by canonical copies: every
// caller of a service names the same clusters, routes and secrets, and
// go-control-plane keeps each stream's requested names (in the request it
// holds and in the subscription's set).
func internNames(names []string) {
	for i, n := range names {
		names[i] = unique.Make(n).Value()
	}
}
