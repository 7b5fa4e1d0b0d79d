// Package e2e holds meshd's end-to-end tests: the real meshd and meshctl
// binaries, real Envoy sidecars and real gRPC-Go proxyless clients and
// servers, all on loopback. Nothing here decodes xDS with meshd's own code:
// the clients are the independent implementations users run.
package e2e
