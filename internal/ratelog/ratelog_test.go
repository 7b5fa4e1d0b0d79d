package ratelog

import (
	"log/slog"
	"strings"
	"testing"
	"time"
)

// TestOncePerPeriodWithCount: a message repeated within the period is
// written once; the next one written after the period says how many were
// left out; another message has its own period.
func TestOncePerPeriodWithCount(t *testing.T) {
	var b strings.Builder
	now := time.Unix(1000, 0)
	h := slog.NewTextHandler(&b, &slog.HandlerOptions{ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
		if a.Key == slog.TimeKey {
			return slog.Attr{}
		}
		return a
	}})
	log := New(h, 10*time.Second).With("c", 1)
	emit := func(at time.Duration, msg string) {
		r := slog.NewRecord(now.Add(at), slog.LevelWarn, msg, 0)
		if err := log.Handler().Handle(t.Context(), r); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 5 {
		emit(time.Duration(i)*time.Second, "refused")
	}
	emit(2*time.Second, "other")
	emit(11*time.Second, "refused")
	want := "level=WARN msg=refused c=1\n" +
		"level=WARN msg=other c=1\n" +
		"level=WARN msg=refused c=1 suppressed=4 suppressed_over=10s\n"
	if b.String() != want {
		t.Errorf("got\n%s\nwant\n%s", b.String(), want)
	}
}
