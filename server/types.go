package server

import (
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
