//go:build tools

// Package tools pins the Consul agent as a dependency of this tool module so
// that `go build github.com/hashicorp/consul` resolves the versions in go.mod.
// It is never compiled: the build tag keeps it out of every build.
package tools

import _ "github.com/hashicorp/consul"
