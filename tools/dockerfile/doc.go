// Package dockerfile checks the repository's Dockerfile and .dockerignore
// with BuildKit's own Dockerfile frontend, which `docker build` runs: the
// file converts to a build graph with no lint warning for every target, the
// images are what docs/containers.md promises (an empty base, a non-root
// user, one entrypoint per binary), and the go commands it runs build
// static binaries from exactly what .dockerignore lets through.
//
// It is its own module so that BuildKit stays out of meshd's go.mod;
// scripts/test.sh runs it. No container engine is needed.
package dockerfile
