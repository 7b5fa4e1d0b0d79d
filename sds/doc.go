// Package sds is meshd's minimal built-in certificate authority. It keeps one
// self-signed root on disk, mints short-lived SPIFFE X.509 leaves for mesh
// identities (served to proxies over SDS, or written to files for proxyless
// gRPC's file_watcher), and serves meshd's own xDS endpoint over TLS.
//
// Private key material is carried as PrivateKeyPEM, which redacts itself in
// every formatting, logging and serialization path, so that a stray log line
// or debug dump cannot leak a key.
//
// The package imports only the standard library and package mesh.
package sds
