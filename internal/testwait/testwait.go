// Package testwait is the one way meshd's tests wait: for a value on a
// channel (an event), or, where the code under test offers no event, for a
// condition that is re-checked until it holds. Never a fixed sleep: a sleep
// is too short on a loaded 2-core CI machine under -race and wastes time
// everywhere else.
//
// Every wait has a bound, and a test that runs out of it fails with what it
// was waiting for and the last answer it got. Bounds are generous (CI shares
// two cores between test processes, Envoys, Consul and the race detector);
// a wait that is met returns at once, so a generous bound costs nothing.
//
// The package imports "testing": only tests and test helpers
// (internal/*test) may import it, never code that ships in a binary.
//
// Inside a testing/synctest bubble the waits use the bubble's fake clock:
// time.Sleep and the deadline advance only when every goroutine in the
// bubble is blocked, so a wait there costs no real time.
package testwait

import (
	"fmt"
	"testing"
	"time"
)

// Timeout is the bound for waits on a local event (a file watcher noticing
// a write, a stream receiving a push, a process answering on loopback):
// far above the milliseconds they take, so that only a real hang fails.
const Timeout = 15 * time.Second

// Poll intervals: the first re-check is almost immediate (most conditions
// hold within a millisecond or two), later ones back off so that a slow
// condition over HTTP (Envoy's admin, meshd's /debug/status) is not
// hammered.
const (
	firstPoll = time.Millisecond
	maxPoll   = 50 * time.Millisecond
)

// Until calls check until it returns nil, and fails the test with check's
// last error if that has not happened within timeout.
func Until(t testing.TB, timeout time.Duration, check func() error) {
	t.Helper()
	if err := Wait(timeout, check); err != nil {
		t.Fatal(err)
	}
}

// For calls cond until it returns true, and fails the test, naming what it
// was waiting for, if that has not happened within timeout.
func For(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	err := Wait(timeout, func() error {
		if cond() {
			return nil
		}
		return fmt.Errorf("waiting for %s", what)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// Wait is Until without the test: it returns check's last error, wrapped
// with how long it waited, for helpers that must clean up or add context
// before failing.
func Wait(timeout time.Duration, check func() error) error {
	start := time.Now()
	deadline := start.Add(timeout)
	poll := firstPoll
	for {
		err := check()
		if err == nil {
			return nil
		}
		if !time.Now().Before(deadline) {
			return fmt.Errorf("not done after %v: %w", time.Since(start).Round(time.Millisecond), err)
		}
		time.Sleep(min(poll, time.Until(deadline)))
		poll = min(2*poll, maxPoll)
	}
}

// Recv waits for a value on ch and returns it, failing the test (naming
// what it waited for) if none arrives within timeout. A closed channel
// yields its zero value at once, as a receive does.
func Recv[T any](t testing.TB, ch <-chan T, timeout time.Duration, what string) T {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case v := <-ch:
		return v
	case <-timer.C:
		t.Fatalf("no %s within %v", what, timeout)
		var zero T
		return zero
	}
}

// RecvUntil receives from ch until ok accepts a value, and returns that
// value. It fails the test if no accepted value arrives within timeout;
// last, if not nil, describes the state at that moment for the message.
func RecvUntil[T any](t testing.TB, ch <-chan T, timeout time.Duration, what string, ok func(T) bool, last func() string) T {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		select {
		case v := <-ch:
			if ok(v) {
				return v
			}
		case <-timer.C:
			msg := fmt.Sprintf("no %s within %v", what, timeout)
			if last != nil {
				msg += "; " + last()
			}
			t.Fatal(msg)
			var zero T
			return zero
		}
	}
}

// Quiet fails the test if ch delivers a value now (without waiting). Use
// it after waiting for an event that proves the code under test has
// finished the work that could have sent (a watcher's check completed, a
// stream's ACK processed), never after a sleep.
func Quiet[T any](t testing.TB, ch <-chan T, what string) {
	t.Helper()
	select {
	case v := <-ch:
		t.Fatalf("unexpected %s: %v", what, v)
	default:
	}
}
