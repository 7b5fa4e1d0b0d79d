//go:build unix

package fdlimit

import (
	"syscall"
	"testing"
)

// TestRaise: after Raise the soft limit is the hard one, as reported.
func TestRaise(t *testing.T) {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		t.Fatal(err)
	}
	lowered := r
	if r.Max > 64 {
		lowered.Cur = 64
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lowered); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &r) })
	}
	soft, hard, err := Raise()
	if err != nil {
		t.Fatal(err)
	}
	var now syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &now); err != nil {
		t.Fatal(err)
	}
	if soft != hard || uint64(now.Cur) != soft || uint64(now.Max) != hard || hard != uint64(r.Max) {
		t.Errorf("Raise = %d, %d; limits now %d/%d, hard before %d", soft, hard, now.Cur, now.Max, r.Max)
	}
}
