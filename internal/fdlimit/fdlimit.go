// Package fdlimit raises the process's open-file limit to what it may have
// and says what that is, so that meshd can size its connection limits
// below it (issue 13: idle connections exhausted the descriptors and
// proxies and /readyz failed with "accept4: too many open files").
package fdlimit

// Raise sets the soft limit on open files to the hard limit and returns
// both. Go's runtime already does this at start on Unix (since Go 1.19);
// doing it here too makes the figures meshd logs and sizes by the ones in
// force, whatever started it.
func Raise() (soft, hard uint64, err error) { return raise() }
