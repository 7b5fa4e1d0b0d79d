package soak

import (
	"slices"
	"testing"
	"time"
)

// judgeClock builds calls at fixed offsets from t0, so the judge's rules can
// be checked against hand-made timelines (the judge compares times; it
// never reads the clock for calls).
type judgeClock struct{ t0 time.Time }

func (c judgeClock) at(ms int) time.Time { return c.t0.Add(time.Duration(ms) * time.Millisecond) }

func (c judgeClock) call(startMS, endMS int, o Outcome) Call {
	return Call{Loop: 0, Start: c.at(startMS), End: c.at(endMS), Outcome: o}
}

// denyWeb is a step that adds a DENY for web on api.
func denyWeb(n int, before State) Step {
	after := before.clone()
	after.Authz = append(after.Authz, Authz{Name: "soak-1", Deny: true, Target: "api", Callers: []string{"web"}})
	return Step{N: n, Kind: KindAuthzAdd, Before: before, After: after}
}

// newTestJudge has one loop, web → api, and a DENY for web applied at
// 1000 ms and settled at 1200 ms.
func newTestJudge(t *testing.T) (*Judge, judgeClock) {
	t.Helper()
	c := judgeClock{t0: time.Now().Add(-time.Hour)}
	j := NewJudge([]LoopKey{{Caller: "web", Server: "api"}}, InitialState(), c.at(0))
	st := denyWeb(1, InitialState())
	i := j.Begin(&st)
	j.epochs[i].applied = c.at(1000)
	j.Settle(i, c.at(1200))
	return j, c
}

func TestJudgeWindowAroundAChange(t *testing.T) {
	cases := []struct {
		name       string
		calls      []Call // recorded in order; the last one is judged
		wantReason string
	}{
		{"allowed before the change", []Call{{Start: t0ms(900), End: t0ms(910), Outcome: OK}}, ""},
		{"denied before the change", []Call{{Start: t0ms(900), End: t0ms(910), Outcome: Denied}}, "allowed caller denied"},
		{"failed before the change", []Call{{Start: t0ms(900), End: t0ms(910), Outcome: Failed}}, "allowed caller failed"},
		{"allowed while applying", []Call{{Start: t0ms(1100), End: t0ms(1110), Outcome: OK}}, ""},
		{"denied while applying", []Call{{Start: t0ms(1100), End: t0ms(1110), Outcome: Denied}}, ""},
		{"failed while applying", []Call{{Start: t0ms(1100), End: t0ms(1110), Outcome: Failed}}, "call failed while a change was applied"},
		{"1st call after settling may still pass", []Call{{Start: t0ms(1250), End: t0ms(1260), Outcome: OK}}, ""},
		{"2nd call after settling must be denied", []Call{
			{Start: t0ms(1250), End: t0ms(1260), Outcome: OK},
			{Start: t0ms(1350), End: t0ms(1360), Outcome: OK}}, "denied caller succeeded"},
		{"2nd call after settling, denied", []Call{
			{Start: t0ms(1250), End: t0ms(1260), Outcome: Denied},
			{Start: t0ms(1350), End: t0ms(1360), Outcome: Denied}}, ""},
		{"a call spanning the write may meet either", []Call{{Start: t0ms(990), End: t0ms(1300), Outcome: Denied}}, ""},
		{"2nd call after settling fails otherwise", []Call{
			{Start: t0ms(1250), End: t0ms(1260), Outcome: Denied},
			{Start: t0ms(1350), End: t0ms(1360), Outcome: Failed}}, "denied caller failed otherwise than by a denial"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			j, c := newTestJudge(t)
			var v *Violation
			for _, call := range tc.calls {
				call.Start, call.End = c.t0.Add(call.Start.Sub(time.Time{})), c.t0.Add(call.End.Sub(time.Time{}))
				v = j.Record(call)
			}
			switch {
			case tc.wantReason == "" && v != nil:
				t.Errorf("unexpected violation: %s", v)
			case tc.wantReason != "" && v == nil:
				t.Errorf("no violation, want %q", tc.wantReason)
			case v != nil && v.Reason != tc.wantReason:
				t.Errorf("violation %q, want %q", v.Reason, tc.wantReason)
			}
		})
	}
}

// t0ms is an offset from the zero time, turned into a time after the test
// judge's t0 by the test.
func t0ms(ms int) time.Time { return time.Time{}.Add(time.Duration(ms) * time.Millisecond) }

// TestJudgeUnsettledChangeStaysOpen: until the change has settled (and the
// loop made two calls after it), either outcome is accepted; a later
// settle makes the following calls strict.
func TestJudgeUnsettledChangeStaysOpen(t *testing.T) {
	c := judgeClock{t0: time.Now().Add(-time.Hour)}
	j := NewJudge([]LoopKey{{Caller: "web", Server: "api"}}, InitialState(), c.at(0))
	st := denyWeb(1, InitialState())
	i := j.Begin(&st)
	j.epochs[i].applied = c.at(1000)
	for k := range 10 {
		if v := j.Record(c.call(1100+100*k, 1110+100*k, OK)); v != nil {
			t.Fatalf("call %d before the settle: %s", k, v)
		}
	}
	j.Settle(i, c.at(2500))
	if v := j.Record(c.call(2600, 2610, OK)); v != nil {
		t.Fatalf("1st call after the settle: %s", v)
	}
	if v := j.Record(c.call(2700, 2710, OK)); v == nil || v.Reason != "denied caller succeeded" {
		t.Fatalf("2nd call after the settle: %v", v)
	}
	if got := j.Counts()[0]; got.OK != 11 || got.Failed != 1 || got.InWindow != 11 {
		t.Errorf("counts %+v", got)
	}
}

// TestJudgeWindowCarriesIntoTheNextEpoch: a step that settles with fewer
// than two calls before the next step keeps its window open into the next
// epoch, whose own states then add to it.
func TestJudgeWindowCarriesIntoTheNextEpoch(t *testing.T) {
	c := judgeClock{t0: time.Now().Add(-time.Hour)}
	j := NewJudge([]LoopKey{{Caller: "web", Server: "api"}}, InitialState(), c.at(0))
	st1 := denyWeb(1, InitialState())
	i := j.Begin(&st1)
	j.epochs[i].applied = c.at(1000)
	j.Settle(i, c.at(1100))
	// Step 2 changes nothing for web → api (a rotation).
	st2 := Step{N: 2, Kind: KindRotateRoot, Before: st1.After, After: st1.After}
	i2 := j.Begin(&st2)
	j.epochs[i2].applied = c.at(1150)
	// The 1st call after step 1 settled may still pass: it starts after
	// step 2 was applied, whose own verdict is "denied".
	if v := j.Record(c.call(1200, 1210, OK)); v != nil {
		t.Fatalf("first call after step 1 settled: %s", v)
	}
	if v := j.Record(c.call(1300, 1310, OK)); v == nil {
		t.Fatal("second call after step 1 settled passed")
	} else if len(v.Steps) != 1 || v.Steps[0] != 2 {
		t.Errorf("violation names steps %v, want [2]", v.Steps)
	}
}

// TestJudgeNotLateWhileTheNextChangeIsInFlight: a call that meets the
// previous verdict after its change settled is not late when the next
// change, still in flight when the call started, explains it (the DENY is
// being removed: "denied" is one of its verdicts).
func TestJudgeNotLateWhileTheNextChangeIsInFlight(t *testing.T) {
	j, c := newTestJudge(t) // DENY applied at 1000 ms, settled at 1200 ms
	j.Grace = time.Second
	st2 := Step{N: 2, Kind: KindAuthzRemove, Before: denyWeb(1, InitialState()).After, After: InitialState()}
	i := j.Begin(&st2)
	j.epochs[i].applied = c.at(1500)
	// Allowed (under the grace) while step 1 settled and nothing is in
	// flight: late.
	if v := j.Record(c.call(1300, 1310, OK)); v != nil {
		t.Fatalf("call within the grace: %s", v)
	}
	// Denied after step 2 was applied: step 1's verdict, and step 2's
	// before it settles. Not late.
	if v := j.Record(c.call(1550, 1560, Denied)); v != nil {
		t.Fatalf("denied while the DENY is being removed: %s", v)
	}
	if got := j.Counts()[0]; got.Late != 1 || got.MaxLate != 100*time.Millisecond {
		t.Errorf("late %d (longest %s), want only the allowed call, 100ms", got.Late, got.MaxLate)
	}
}

// TestJudgeGrace: with a grace, calls up to the grace after the settle may
// still meet the old verdict; they are counted as late, with the delay.
func TestJudgeGrace(t *testing.T) {
	j, c := newTestJudge(t) // DENY applied at 1000 ms, settled at 1200 ms
	j.Grace = 500 * time.Millisecond
	for _, ms := range []int{1250, 1350, 1650} {
		if v := j.Record(c.call(ms, ms+10, OK)); v != nil {
			t.Fatalf("call at %d ms, within the grace: %s", ms, v)
		}
	}
	if v := j.Record(c.call(1750, 1760, OK)); v == nil {
		t.Fatal("call at 1750 ms, after the grace, passed")
	}
	got := j.Counts()[0]
	if got.Late != 3 || got.MaxLate != 450*time.Millisecond {
		t.Errorf("late %d, max %s; want 3 and 450ms", got.Late, got.MaxLate)
	}
	// late.txt lists each late call with its delay and the step it followed.
	lates := j.Lates()
	if len(lates) != 3 {
		t.Fatalf("%d late calls kept, want 3", len(lates))
	}
	if l := lates[2]; l.After != 450*time.Millisecond || !slices.Equal(l.Steps, []int{1}) {
		t.Errorf("last late call: %s after steps %v, want 450ms after [1]", l.After, l.Steps)
	}
}
