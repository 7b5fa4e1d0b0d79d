package consul

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"
)

// TestBlockingLoopIndexRules drives blockingLoop with a scripted fetch to
// check Consul's blocking-query rules one by one. (The integration test
// TestWatcherKeepsCatalogWhileConsulIsDownAndResyncs shows the same against
// a real agent restarted with lower indexes.)
func TestBlockingLoopIndexRules(t *testing.T) {
	type step struct {
		last uint64
		err  error
	}
	script := []step{
		{last: 10},                   // first read, sent
		{last: 10},                   // wait timed out, nothing new: not sent
		{last: 12},                   // change: sent
		{err: errors.New("refused")}, // error: sent, then back off
		{last: 12},                   // non-blocking read after the error: sent (recovered)
		{last: 5},                    // index went backwards: reset, sent
		{last: 0},                    // 0 is treated as 1; still backwards: reset
		{last: 3},                    // normal change
	}
	w, err := NewWatcher(Options{Address: "127.0.0.1:1", MinBackoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var waited []uint64
	type sent struct {
		err   bool
		reset bool
	}
	var sends []sent
	i := 0
	w.blockingLoop(ctx, func(_ context.Context, index uint64) (uint64, error) {
		waited = append(waited, index)
		if i == len(script) {
			cancel()
			return 0, context.Canceled
		}
		s := script[i]
		i++
		return s.last, s.err
	}, func(err error, reset bool) { sends = append(sends, sent{err != nil, reset}) })

	if want := []uint64{0, 10, 10, 12, 0, 12, 5, 1, 3}; !slices.Equal(waited, want) {
		t.Errorf("wait indexes = %v, want %v (0 first and after an error, never a stale higher index)", waited, want)
	}
	want := []sent{{}, {}, {err: true}, {}, {reset: true}, {reset: true}, {}}
	if !slices.Equal(sends, want) {
		t.Errorf("sends = %+v, want %+v", sends, want)
	}
	if got := w.Status().IndexResets; got != 2 {
		t.Errorf("IndexResets = %d, want 2", got)
	}
}

func TestBackoffGrowsWithJitterAndIsCapped(t *testing.T) {
	minD, maxD := 100*time.Millisecond, time.Second
	for n := 1; n < 20; n++ {
		ceiling := min(minD<<(n-1), maxD)
		for range 50 {
			d := backoff(minD, maxD, n)
			if d < minD/2 || d > ceiling {
				t.Fatalf("backoff(%d) = %s, want within [%s, %s]", n, d, minD/2, ceiling)
			}
		}
	}
}
