// Package watchloop is the event loop shared by meshd's file-based sources
// (the catalog file, the policy directory): watch directories with
// fsnotify, let a burst of events settle for a holdoff before re-reading,
// poll as a safety net for lost events, and fall back to polling alone when
// file-system events are unavailable. What a change means is the source's
// business; this package only decides when to look.
package watchloop

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Source is what a loop watches.
type Source interface {
	// Dirs returns the directories to watch now. It is asked again after
	// every event and every poll, so a source can follow symlinks and
	// recreated directories. It must not change the source's state: a
	// change noticed here would be lost to Relevant.
	Dirs() []string
	// Relevant reports whether an event may have changed the source.
	Relevant(ev fsnotify.Event) bool
	// Check re-reads the source; trigger is "start", "change" or "poll".
	Check(trigger string)
}

// Options configure a loop.
type Options struct {
	// Holdoff is how long events must stop before the source is re-read.
	Holdoff time.Duration
	// Poll re-reads the source this often; 0 turns polling off unless
	// events are unavailable, when FallbackPoll is used.
	Poll, FallbackPoll time.Duration
	// Notify false disables file-system events (tests of the fallback).
	Notify bool
	Logger *slog.Logger
	// What names the source in log messages, e.g. "catalog", with Attrs
	// such as "path", p.
	What  string
	Attrs []any
}

// Run watches src until ctx is done, then returns nil.
func Run(ctx context.Context, src Source, o Options) error {
	l := &loop{src: src, o: o}
	var (
		events <-chan fsnotify.Event
		errs   <-chan error
	)
	poll := o.Poll
	if o.Notify {
		fsw, err := fsnotify.NewWatcher()
		if err == nil {
			l.fsw = fsw
			defer fsw.Close()
			events, errs = fsw.Events, fsw.Errors
			l.sync()
		} else {
			// Typically the inotify instance limit. Polling still works.
			if poll <= 0 {
				poll = o.FallbackPoll
			}
			o.Logger.Warn("cannot watch the "+o.What+" for changes; polling instead",
				append(o.Attrs, "interval", poll, "error", err)...)
		}
	} else if poll <= 0 {
		poll = o.FallbackPoll
	}
	return l.run(ctx, events, errs, poll)
}

// run is the loop proper, fed by the file-system events and errors (nil
// channels without them) and polling every poll (never if 0). It is
// separate from Run so that its timing is tested with testing/synctest and
// events the test sends.
func (l *loop) run(ctx context.Context, events <-chan fsnotify.Event, errs <-chan error, poll time.Duration) error {
	src, o := l.src, l.o
	var tick <-chan time.Time
	if poll > 0 {
		t := time.NewTicker(poll)
		defer t.Stop()
		tick = t.C
	}

	// settle fires once the source has been quiet for the holdoff.
	settle := time.NewTimer(time.Hour)
	settle.Stop()
	defer settle.Stop()
	pending := false

	// The source may have changed since it was first read.
	src.Check("start")
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			if src.Relevant(ev) {
				hold := o.Holdoff
				if renamedOnto(ev) {
					// rename(2) is atomic: what the name now holds was
					// written completely before the rename, so there is
					// no partial write to wait out. Deployment tools,
					// Kubernetes' ConfigMap swap and xds-load replace
					// files this way; a change reaches proxies a holdoff
					// sooner.
					hold = 0
				}
				settle.Reset(hold)
				pending = true
			}
			l.sync()
		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			o.Logger.Warn(o.What+" watch error; re-reading it", append(o.Attrs, "error", err)...)
			// Events may have been lost (fsnotify.ErrEventOverflow): look.
			settle.Reset(o.Holdoff)
			pending = true
		case <-settle.C:
			pending = false
			src.Check("change")
		case <-tick:
			if !pending {
				src.Check("poll")
			}
			// A watched directory may have been deleted and recreated,
			// which ends its watch; re-add what the source wants now.
			l.sync()
		}
	}
}

// renamedOnto reports whether ev is an entry renamed onto its name from
// another name in a watched directory (inotify's IN_MOVED_FROM/IN_MOVED_TO
// pair). fsnotify keeps the old name unexported and shows it only in
// String, as `CREATE "new" ← "old"`; TestWatcherRenameSkipsHoldoff in
// discovery/file fails if that ever changes. A file moved in from an
// unwatched directory has no old name and keeps the holdoff.
func renamedOnto(ev fsnotify.Event) bool {
	return ev.Has(fsnotify.Create) && strings.Contains(ev.String(), "\" ← \"")
}

type loop struct {
	src      Source
	o        Options
	fsw      *fsnotify.Watcher
	watchErr string // the watch failure last logged, so it is logged once
}

// sync makes the watched directories exactly the source's Dirs.
func (l *loop) sync() {
	if l.fsw == nil {
		return
	}
	want := l.src.Dirs()
	have := l.fsw.WatchList()
	for _, d := range have {
		if !slices.Contains(want, d) {
			_ = l.fsw.Remove(d) // already gone if the directory was deleted
		}
	}
	var errs []error
	for _, d := range want {
		if !slices.Contains(have, d) {
			if err := l.fsw.Add(d); err != nil {
				errs = append(errs, fmt.Errorf("watching %s: %w", d, err))
			}
		}
	}
	msg := ""
	if err := errors.Join(errs...); err != nil {
		msg = err.Error()
	}
	if msg != l.watchErr {
		l.watchErr = msg
		if msg != "" {
			l.o.Logger.Warn("cannot watch the "+l.o.What+"'s directory; relying on polling until it can",
				append(l.o.Attrs, "error", msg)...)
		}
	}
}
