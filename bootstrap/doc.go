// Package bootstrap renders the static start-up configuration a proxy needs
// to find meshd: an Envoy bootstrap (node identity, admin, ADS over TLS to
// meshd) and a proxyless gRPC xDS bootstrap (xDS server, node, certificate
// provider instances).
//
// Everything here is pure: options in, bytes out, no file or network I/O, so
// the same options always give byte-identical output and golden tests can
// pin it. Every Envoy message is validated against Envoy's proto constraints
// (including the messages inside Any fields) before it is returned.
package bootstrap
