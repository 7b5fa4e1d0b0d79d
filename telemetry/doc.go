// Package telemetry is meshd's view of the traffic between workloads.
// Envoy sidecars stream the access log of their inbound listeners to meshd
// over Envoy's gRPC access log service (ALS, envoy.service.accesslog.v3) on
// meshd's xDS port, authenticated like their xDS stream; the Collector turns
// each entry into an Event (who called whom, over mTLS or plaintext, allowed
// or denied by which policy, with what outcome and latency), the Store
// aggregates events per edge (source identity → destination service) and
// per service over a sliding window, with bounded memory, and the Hub hands
// live events to tap subscribers. Prometheus series, the admin API's
// /telemetry/ endpoints and meshctl stat, edges and tap read from here.
//
// The package owns its state: the store and the hub each guard theirs with
// one mutex, held only for their own bookkeeping (never while calling out),
// and every query returns copies.
package telemetry
