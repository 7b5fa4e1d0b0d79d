// Package file is meshd's file discovery source: the whole mesh described in
// one YAML catalog file (see docs/catalog.md), parsed strictly and watched for
// changes. A catalog written as JSON, which is also YAML, means the same and
// is parsed several times faster (json.go). The Watcher re-decodes only the
// services and proxies whose text changed since its last read
// (incremental.go).
//
// The file is the operator's only interface to the mesh, so the package is
// deliberately unforgiving about what it accepts and deliberately forgiving
// about when: an unknown field, a type mismatch, a second YAML document or an
// empty file is an error naming the file and line, never a silently smaller
// mesh; but a bad edit to a file that is already being served only produces a
// warning and keeps the last good catalog in place until the file is fixed.
package file
