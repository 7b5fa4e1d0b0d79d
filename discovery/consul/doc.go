// Package consul is meshd's Consul discovery source: it follows a Consul
// datacenter's catalog with blocking queries and turns the services fronted
// by Connect sidecars into whole, validated mesh catalogs (see
// docs/consul.md for the keys it reads).
//
// Its Watcher has the same shape as discovery/file's: Current, a
// latest-value Updates channel, Status and Run. Consul being unreachable or
// erroring never shrinks the mesh: the last good view of every service is
// kept, and only an answer from Consul that a registration is gone (or
// unhealthy) removes endpoints.
package consul
