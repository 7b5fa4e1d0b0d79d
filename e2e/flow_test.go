package e2e

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// flow runs one request every interval in the background until stopped,
// counting successes and failures: the proof that a change (a rotation, a
// mode switch, a policy edit) fails none of the requests that should work.
type flow struct {
	ok, failed atomic.Int64
	lastErr    atomic.Value
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
				f.lastErr.Store(err.Error())
			} else {
				f.ok.Add(1)
			}
			time.Sleep(interval)
		}
	}()
	return f
}

// stop ends the flow and fails the test unless every request succeeded and
// at least min ran.
func (f *flow) stop(t *testing.T, min int64) {
	t.Helper()
	close(f.stopc)
	f.wg.Wait()
	if f.failed.Load() != 0 || f.ok.Load() < min {
		t.Fatalf("%d requests succeeded, %d failed (last error: %v); want none failed and at least %d", f.ok.Load(), f.failed.Load(), f.lastErr.Load(), min)
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
