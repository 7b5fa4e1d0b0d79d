//go:build race

package e2e

// raceEnabled: this test binary runs under the race detector, so the
// binaries it builds do too.
const raceEnabled = true
