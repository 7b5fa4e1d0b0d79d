//go:build unix

package fdlimit

import (
	"fmt"
	"syscall"
)

func raise() (uint64, uint64, error) {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		return 0, 0, fmt.Errorf("getrlimit(RLIMIT_NOFILE): %w", err)
	}
	if r.Cur < r.Max {
		want := r
		want.Cur = r.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
			return uint64(r.Cur), uint64(r.Max), fmt.Errorf("setrlimit(RLIMIT_NOFILE, %d): %w", r.Max, err)
		}
		r = want
	}
	return uint64(r.Cur), uint64(r.Max), nil
}
