// Package mesh is meshd's model of the world: services, their endpoints, the
// identities they run as and the proxies that front them. It is pure data with
// defaults and validation; every source (file, Consul) produces a *Catalog
// through NewCatalog so that everything downstream can trust its input.
//
// The package imports only the standard library.
package mesh
