//go:build !unix

package sds

import "os"

// flock is a no-op where flock(2) does not exist: meshd runs on Unix; on
// other systems nothing stops two processes from sharing a data directory.
func flock(*os.File) error { return nil }
