//go:build race

// Package race tells whether the race detector is on, so that tests bounding
// time or memory can allow for its cost (it makes yaml.v3 parsing about ten
// times slower).
package race

// Enabled is true when built with -race.
const Enabled = true
