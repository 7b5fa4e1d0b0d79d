package watchloop

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/fsnotify/fsnotify"
)

// The loop's timing (holdoff, renames, polls, errors) runs on synctest's
// fake clock: every duration below is exact, and the tests take no real
// time. The file-system side (fsnotify, directories) is covered by
// discovery/file's and policy's watcher tests on real files.

// check is one call of Source.Check: when (since the bubble started) and why.
type check struct {
	at      time.Duration
	trigger string
}

func (c check) String() string { return fmt.Sprintf("%s@%v", c.trigger, c.at) }

// fakeSource records its checks; events named "ignored" are not relevant.
type fakeSource struct {
	start  time.Time
	mu     sync.Mutex
	checks []check
}

func (f *fakeSource) Dirs() []string { return nil }

func (f *fakeSource) Relevant(ev fsnotify.Event) bool { return filepath.Base(ev.Name) != "ignored" }

func (f *fakeSource) Check(trigger string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.checks = append(f.checks, check{time.Since(f.start), trigger})
}

func (f *fakeSource) got() []check {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.checks)
}

// bubble runs the loop with holdoff and poll inside a synctest bubble and
// hands body the channels that feed it. When body returns, the loop is
// stopped and must return nil at once; the checks it made are returned.
func bubble(t *testing.T, holdoff, poll time.Duration, body func(events chan<- fsnotify.Event, errs chan<- error)) []check {
	t.Helper()
	var got []check
	synctest.Test(t, func(t *testing.T) {
		src := &fakeSource{start: time.Now()}
		l := &loop{src: src, o: Options{Holdoff: holdoff, Logger: slog.New(slog.DiscardHandler), What: "test source"}}
		events, errs := make(chan fsnotify.Event), make(chan error)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- l.run(ctx, events, errs, poll) }()
		synctest.Wait() // the start-up check
		body(events, errs)
		synctest.Wait()
		cancel()
		stopped := time.Now()
		if err := <-done; err != nil {
			t.Errorf("run returned %v after cancel, want nil", err)
		}
		if d := time.Since(stopped); d != 0 {
			t.Errorf("run took %v to return after cancel", d)
		}
		got = src.got()
	})
	return got
}

func write(name string) fsnotify.Event { return fsnotify.Event{Name: name, Op: fsnotify.Write} }

func wantChecks(t *testing.T, got []check, want ...check) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Errorf("checks = %v, want %v", got, want)
	}
}

// A burst of writes, each sooner than the holdoff after the one before but
// lasting many holdoffs, is read once: a holdoff after the last write.
func TestHoldoffSettlesABurst(t *testing.T) {
	const holdoff = 100 * time.Millisecond
	got := bubble(t, holdoff, 0, func(events chan<- fsnotify.Event, _ chan<- error) {
		for range 20 { // 20 × 90 ms: 18 holdoffs
			events <- write("catalog.yaml")
			time.Sleep(90 * time.Millisecond)
		}
		events <- write("catalog.yaml") // the last write, at 1.8 s
		time.Sleep(time.Second)
	})
	wantChecks(t, got, check{0, "start"}, check{1800*time.Millisecond + holdoff, "change"})
}

// A file renamed onto the watched name is complete: it is read at once,
// while an in-place write still waits out the holdoff.
func TestRenameSkipsTheHoldoff(t *testing.T) {
	renamed := realRenameEvent(t)
	if !renamedOnto(renamed) {
		t.Fatalf("fsnotify's rename event %v is not recognised as a rename onto the name", renamed)
	}
	const holdoff = time.Second
	got := bubble(t, holdoff, 0, func(events chan<- fsnotify.Event, _ chan<- error) {
		time.Sleep(time.Second)
		events <- renamed // at 1 s: read now
		time.Sleep(time.Second)
		events <- write("catalog.yaml") // at 2 s: read at 3 s
		time.Sleep(2 * time.Second)
	})
	wantChecks(t, got, check{0, "start"}, check{time.Second, "change"}, check{3 * time.Second, "change"})
}

// realRenameEvent renames a file onto a watched name and returns the event
// fsnotify reports for it (which only fsnotify can construct).
func realRenameEvent(t *testing.T) fsnotify.Event {
	t.Helper()
	dir := t.TempDir()
	w, err := fsnotify.NewWatcher()
	if err != nil {
		t.Skipf("no file-system events here: %v", err)
	}
	defer w.Close()
	if err := w.Add(dir); err != nil {
		t.Fatal(err)
	}
	tmp, name := filepath.Join(dir, ".catalog.yaml.tmp"), filepath.Join(dir, "catalog.yaml")
	if err := os.WriteFile(tmp, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, name); err != nil {
		t.Fatal(err)
	}
	timeout := time.After(15 * time.Second)
	for {
		select {
		case ev := <-w.Events:
			if ev.Name == name && ev.Has(fsnotify.Create) {
				return ev
			}
		case err := <-w.Errors:
			t.Fatalf("fsnotify: %v", err)
		case <-timeout:
			t.Fatal("no event for the rename within 15s")
		}
	}
}

// Irrelevant events change nothing.
func TestIrrelevantEventsAreIgnored(t *testing.T) {
	got := bubble(t, 100*time.Millisecond, 0, func(events chan<- fsnotify.Event, _ chan<- error) {
		for range 5 {
			events <- write("ignored")
			time.Sleep(time.Second)
		}
	})
	wantChecks(t, got, check{0, "start"})
}

// Polls come every interval, but not while a change is settling (the
// pending read will look anyway).
func TestPollPausesWhileAChangeSettles(t *testing.T) {
	const holdoff, poll = 500 * time.Millisecond, time.Second
	got := bubble(t, holdoff, poll, func(events chan<- fsnotify.Event, _ chan<- error) {
		time.Sleep(2900 * time.Millisecond)
		events <- write("catalog.yaml") // at 2.9 s: pending over the 3 s tick
		time.Sleep(2 * time.Second)     // until 4.9 s
	})
	wantChecks(t, got,
		check{0, "start"},
		check{time.Second, "poll"},
		check{2 * time.Second, "poll"},
		check{2900*time.Millisecond + holdoff, "change"},
		check{4 * time.Second, "poll"})
}

// A watch error (events may have been lost) makes the loop look again
// after the holdoff.
func TestWatchErrorRereads(t *testing.T) {
	const holdoff = 300 * time.Millisecond
	got := bubble(t, holdoff, 0, func(_ chan<- fsnotify.Event, errs chan<- error) {
		time.Sleep(time.Second)
		errs <- fsnotify.ErrEventOverflow
		time.Sleep(time.Second)
	})
	wantChecks(t, got, check{0, "start"}, check{time.Second + holdoff, "change"})
}

// Closed event and error channels (fsnotify closed) do not spin the loop
// or stop it: polling goes on.
func TestClosedChannelsKeepPolling(t *testing.T) {
	got := bubble(t, 100*time.Millisecond, time.Second, func(events chan<- fsnotify.Event, errs chan<- error) {
		close(events)
		close(errs)
		time.Sleep(2500 * time.Millisecond)
	})
	wantChecks(t, got, check{0, "start"}, check{time.Second, "poll"}, check{2 * time.Second, "poll"})
}
