package testwait

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// recorder is a testing.TB whose Fatal records the message and ends the
// calling goroutine, as testing's does.
type recorder struct {
	testing.TB
	mu     sync.Mutex
	failed string
}

func (r *recorder) Helper() {}

func (r *recorder) Fatal(args ...any) { r.fail(fmt.Sprint(args...)) }

func (r *recorder) Fatalf(format string, args ...any) { r.fail(fmt.Sprintf(format, args...)) }

func (r *recorder) fail(msg string) {
	r.mu.Lock()
	r.failed = msg
	r.mu.Unlock()
	runtime.Goexit()
}

// run calls f with a recorder in its own goroutine and returns the failure
// message ("" if f returned).
func run(t *testing.T, f func(tb testing.TB)) string {
	r := &recorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		f(r)
	}()
	<-done
	return r.failed
}

func TestUntilReturnsWhenTrue(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		calls := 0
		msg := run(t, func(tb testing.TB) {
			Until(tb, time.Minute, func() error {
				calls++
				if time.Since(start) < 3*time.Second {
					return errors.New("not yet")
				}
				return nil
			})
		})
		if msg != "" {
			t.Fatalf("failed: %s", msg)
		}
		// Returned at the first check after 3 s (the poll is at most
		// maxPoll), not at the timeout.
		if d := time.Since(start); d < 3*time.Second || d > 3*time.Second+maxPoll {
			t.Errorf("returned after %v, want 3s to 3s+%v", d, maxPoll)
		}
		if calls < 3*int(time.Second/maxPoll) {
			t.Errorf("%d checks in 3s: polling backs off too far", calls)
		}
	})
}

func TestUntilFailsWithLastError(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		n := 0
		msg := run(t, func(tb testing.TB) {
			Until(tb, 10*time.Second, func() error { n++; return fmt.Errorf("answer %d", n) })
		})
		if !strings.Contains(msg, "not done after 10s") || !strings.Contains(msg, fmt.Sprintf("answer %d", n)) {
			t.Errorf("message %q lacks the bound or the last error (answer %d)", msg, n)
		}
		if d := time.Since(start); d != 10*time.Second {
			t.Errorf("gave up after %v, want exactly the 10s timeout", d)
		}
	})
}

func TestForNamesWhat(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		msg := run(t, func(tb testing.TB) { For(tb, time.Second, "the moon", func() bool { return false }) })
		if !strings.Contains(msg, "waiting for the moon") {
			t.Errorf("message %q does not say what it waited for", msg)
		}
		var flag atomic.Bool
		time.AfterFunc(200*time.Millisecond, func() { flag.Store(true) })
		if msg := run(t, func(tb testing.TB) { For(tb, time.Second, "flag", flag.Load) }); msg != "" {
			t.Errorf("For failed although the condition became true: %s", msg)
		}
	})
}

func TestRecv(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ch := make(chan int)
		go func() { time.Sleep(time.Second); ch <- 7 }()
		var got int
		if msg := run(t, func(tb testing.TB) { got = Recv(tb, ch, 2*time.Second, "seven") }); msg != "" || got != 7 {
			t.Errorf("Recv = %d, %q; want 7 and no failure", got, msg)
		}
		start := time.Now()
		msg := run(t, func(tb testing.TB) { Recv(tb, ch, 2*time.Second, "second value") })
		if !strings.Contains(msg, "no second value within 2s") || time.Since(start) != 2*time.Second {
			t.Errorf("Recv on a silent channel: %q after %v", msg, time.Since(start))
		}
	})
}

func TestRecvUntil(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ch := make(chan int, 10)
		for i := range 5 {
			ch <- i
		}
		var got int
		if msg := run(t, func(tb testing.TB) {
			got = RecvUntil(tb, ch, time.Second, "three", func(v int) bool { return v == 3 }, nil)
		}); msg != "" || got != 3 {
			t.Errorf("RecvUntil = %d, %q; want 3", got, msg)
		}
		msg := run(t, func(tb testing.TB) {
			RecvUntil(tb, ch, time.Second, "nine", func(v int) bool { return v == 9 }, func() string { return "state X" })
		})
		if !strings.Contains(msg, "no nine within 1s; state X") {
			t.Errorf("message %q lacks what and the state", msg)
		}
		if len(ch) != 0 {
			t.Errorf("%d values left: RecvUntil must consume those it rejects", len(ch))
		}
	})
}

func TestQuiet(t *testing.T) {
	ch := make(chan string, 1)
	if msg := run(t, func(tb testing.TB) { Quiet(tb, ch, "update") }); msg != "" {
		t.Errorf("Quiet on an empty channel failed: %s", msg)
	}
	ch <- "x"
	if msg := run(t, func(tb testing.TB) { Quiet(tb, ch, "update") }); !strings.Contains(msg, "unexpected update: x") {
		t.Errorf("Quiet with a value waiting: %q", msg)
	}
}
