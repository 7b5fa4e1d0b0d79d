//go:build !unix

package costtest

import "time"

// processCPU is not measured outside Unix; CPU bounds then always hold.
func processCPU() time.Duration { return 0 }
