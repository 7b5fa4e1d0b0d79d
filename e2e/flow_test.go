package e2e

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshd/meshd/internal/testwait"
)

// flow runs one request every interval in the background until stopped,
// counting successes and failures: the proof that a change (a rotation, a
// mode switch, a policy edit) fails none of the requests that should work.
type flow struct {
	ok, failed atomic.Int64
	firstErr   atomic.Value
	stopc      chan struct{}
	wg         sync.WaitGroup
}

func startFlow(interval time.Duration, request func() error) *flow {
	f := &flow{stopc: make(chan struct{})}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		for {
			select {
			case <-f.stopc:
				return
			default:
			}
			if err := request(); err != nil {
				f.failed.Add(1)
				f.firstErr.CompareAndSwap(nil, err.Error())
			} else {
				f.ok.Add(1)
			}
			time.Sleep(interval) // pacing the flow's load, not a wait
		}
	}()
	return f
}

// waitMore waits until n more requests have succeeded, so that a phase of
// a test is known to have carried traffic.
func (f *flow) waitMore(t *testing.T, n int64) {
	t.Helper()
	want := f.ok.Load() + n
	testwait.Until(t, testwait.Timeout, func() error {
		if ok := f.ok.Load(); ok < want {
			return fmt.Errorf("%d of %d more requests succeeded so far, %d failed (first error: %v)", ok+n-want, n, f.failed.Load(), f.firstErr.Load())
		}
		return nil
	})
}

// stop ends the flow and fails the test unless every request succeeded and
// at least min ran.
func (f *flow) stop(t *testing.T, min int64) {
	t.Helper()
	close(f.stopc)
	f.wg.Wait()
	t.Logf("flow: %d requests succeeded, %d failed", f.ok.Load(), f.failed.Load())
	if f.failed.Load() != 0 || f.ok.Load() < min {
		t.Fatalf("%d requests succeeded, %d failed (first error: %v); want none failed and at least %d", f.ok.Load(), f.failed.Load(), f.firstErr.Load(), min)
	}
}

// httpOK is a flow request expecting 200.
func httpOK(url string) func() error {
	return func() error {
		code, err := do("GET", url, nil)
		if err != nil {
			return err
		}
		if code != 200 {
			return fmt.Errorf("status %d", code)
		}
		return nil
	}
}
