// Package snapshot turns catalogs into per-proxy xDS snapshots and publishes
// them to go-control-plane's cache: content-hash versions per type, only
// proxies whose inputs changed are re-rendered, only changed types are
// pushed, every snapshot is validated and reference-checked before it is
// set, and the last good snapshot keeps serving when a new one fails.
package snapshot
