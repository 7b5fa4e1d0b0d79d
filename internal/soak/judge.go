package soak

import (
	"fmt"
	"sort"
	"sync"
	"time"
)

// Outcome is how a call ended, as the caller saw it.
type Outcome uint8

const (
	// OK: the service answered.
	OK Outcome = iota
	// Denied: refused the way an authorization policy refuses (HTTP 403
	// "RBAC: access denied", gRPC PERMISSION_DENIED, a tcp connection
	// closed before any answer).
	Denied
	// Failed: anything else (a 503, a reset, a timeout, a refused dial).
	Failed
)

func (o Outcome) String() string {
	return [...]string{"ok", "denied", "failed"}[o]
}

// LoopKey names one continuous caller: an identity calling one server.
type LoopKey struct {
	Caller, Server string
}

func (k LoopKey) String() string { return k.Caller + "→" + k.Server }

// Call is one finished call of a loop.
type Call struct {
	Loop       int
	Start, End time.Time
	Outcome    Outcome
	Detail     string
}

// Violation is a call whose outcome the policy in force did not allow.
type Violation struct {
	Loop       LoopKey
	Call       Call
	Acceptable Verdicts
	// Steps are the schedule steps whose changes the call overlapped (0:
	// the initial state).
	Steps  []int
	Reason string
}

func (v Violation) String() string {
	return fmt.Sprintf("%s: %s call %s–%s (%s) %s; the policy in force allowed it to be %s (steps %v)",
		v.Reason, v.Loop, v.Call.Start.Format("15:04:05.000"), v.Call.End.Format("15:04:05.000"),
		v.Call.End.Sub(v.Call.Start).Round(time.Millisecond), v.Call.Outcome, v.Acceptable, v.Steps)
}

// LoopCounts are a loop's calls by how they were judged.
type LoopCounts struct {
	OK, ExpectedDenied, Failed int
	// InWindow counts calls made while a change could go either way
	// (judged against every state the change passed through).
	InWindow int
	// Late counts calls that started after a change had settled yet met
	// the verdict from before it (accepted within the grace); MaxLate is
	// the longest such delay after the settle.
	Late    int
	MaxLate time.Duration
}

// Judge decides, for every call, whether its outcome is one the policy in
// force allows. The schedule is a sequence of epochs, one per step: epoch
// j's change was applied (its file written, its API call made) at A_j, and
// it settled at T_j — meshd had rendered it, no mTLS migration was pending
// and every connected proxy had ACKed what meshd serves. A call is judged
// against
//
//   - the settled state of every epoch whose time [A_j, A_j+1) it overlaps,
//   - and, for every epoch whose window [A_j, G_j) it overlaps, every state
//     the change passed through (VerdictsOver), where G_j is the start of
//     the loop's second call that started after T_j, or T_j + Grace if
//     that is later.
//
// So a call made before a change must meet the old policy, the loop's
// second call after the change settled must meet the new one (issue 11's
// bound: enforced by the 2nd request after the sidecar's ACK), and calls
// in between may meet either — but never a failure other than a denial, and
// an allowed caller never fails at all.
type Judge struct {
	// Grace extends each window to at least this long after the settle:
	// Envoy ACKs a change once its main thread has it, and its worker
	// threads apply it asynchronously, which on a loaded machine takes
	// a while (measured: Late, MaxLate).
	Grace  time.Duration
	mu     sync.Mutex
	loops  []LoopKey
	starts [][]time.Time // per loop, every call's start, in order
	counts []LoopCounts
	epochs []epoch
	bad    []Violation
	late   []Late
}

// Late is a call that met the verdict from before a change although it
// started after the change had settled (accepted within the grace).
type Late struct {
	Loop  LoopKey
	Call  Call
	After time.Duration // from the settle to the call's start
	Steps []int
}

func (l Late) String() string {
	return fmt.Sprintf("%s call at %s was %s %s after step(s) %v settled", l.Loop, l.Call.Start.Format("15:04:05.000"),
		l.Call.Outcome, l.After.Round(time.Millisecond), l.Steps)
}

// maxLateKept bounds the late calls kept for the record.
const maxLateKept = 200

type epoch struct {
	step             int
	applied, settled time.Time
	strict, window   []Verdicts // per loop
}

// NewJudge starts with epoch 0: the initial state, in force and settled
// from start.
func NewJudge(loops []LoopKey, initial State, start time.Time) *Judge {
	j := &Judge{loops: loops, starts: make([][]time.Time, len(loops)), counts: make([]LoopCounts, len(loops))}
	e := epoch{step: 0, applied: start, settled: start}
	e.strict, e.window = j.verdicts([]State{initial}), j.verdicts([]State{initial})
	j.epochs = append(j.epochs, e)
	return j
}

func (j *Judge) verdicts(states []State) []Verdicts {
	out := make([]Verdicts, len(j.loops))
	for i, k := range j.loops {
		out[i] = VerdictsOver(states, k.Caller, k.Server)
	}
	return out
}

// Begin opens the epoch of a step about to be applied, and returns its
// index for Settle. Call it before the change is made.
func (j *Judge) Begin(st *Step) int {
	strict := j.verdicts([]State{st.After})
	window := j.verdicts(st.States())
	j.mu.Lock()
	defer j.mu.Unlock()
	j.epochs = append(j.epochs, epoch{step: st.N, applied: time.Now(), strict: strict, window: window})
	return len(j.epochs) - 1
}

// Settle records when epoch i's change was seen settled.
func (j *Judge) Settle(i int, at time.Time) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.epochs[i].settled = at
}

// Record judges a finished call (calls of one loop must be recorded in
// the order they were made) and returns the violation, if any.
func (j *Judge) Record(c Call) *Violation {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.starts[c.Loop] = append(j.starts[c.Loop], c.Start)
	acc, strict, inFlight, lag, steps, window := j.acceptable(c)
	cnt := &j.counts[c.Loop]
	if window {
		cnt.InWindow++
	}
	// Late: neither the settled verdict nor a change still in flight when
	// the call started explains the outcome, only a change that had
	// settled before it (within the grace).
	if explained := strict | inFlight; lag > 0 && (c.Outcome == OK && explained&MayAllow == 0 || c.Outcome == Denied && explained&MayDeny == 0) {
		cnt.Late++
		cnt.MaxLate = max(cnt.MaxLate, lag)
		if len(j.late) < maxLateKept {
			j.late = append(j.late, Late{Loop: j.loops[c.Loop], Call: c, After: lag, Steps: steps})
		}
	}
	var reason string
	switch {
	case c.Outcome == OK && acc&MayAllow != 0:
		cnt.OK++
	case c.Outcome == Denied && acc&MayDeny != 0:
		cnt.ExpectedDenied++
	case c.Outcome == OK:
		reason = "denied caller succeeded"
	case c.Outcome == Denied:
		reason = "allowed caller denied"
	case acc == MayAllow:
		reason = "allowed caller failed"
	case acc == MayDeny:
		reason = "denied caller failed otherwise than by a denial"
	default:
		reason = "call failed while a change was applied"
	}
	if reason == "" {
		return nil
	}
	cnt.Failed++
	v := Violation{Loop: j.loops[c.Loop], Call: c, Acceptable: acc, Steps: steps, Reason: reason}
	j.bad = append(j.bad, v)
	return &v
}

// acceptable is the union of verdicts c may meet (see Judge), the part of
// it from settled states alone, the part from the windows of changes not
// yet settled when c started, how long after the latest settle of an open
// window c started (0 if none had settled before it), the steps involved,
// and whether a change window was among them.
func (j *Judge) acceptable(c Call) (acc, strict, inFlight Verdicts, lag time.Duration, steps []int, inWindow bool) {
	hi := sort.Search(len(j.epochs), func(i int) bool { return j.epochs[i].applied.After(c.End) }) - 1
	hi = max(hi, 0)
	for i := hi; i >= 0; i-- {
		e := &j.epochs[i]
		active := i == hi || j.epochs[i+1].applied.After(c.Start)
		g := j.graceEnd(c.Loop, e.settled)
		open := g.IsZero() || g.After(c.Start)
		if active {
			acc |= e.strict[c.Loop]
			strict |= e.strict[c.Loop]
		}
		if open && i > 0 {
			acc |= e.window[c.Loop]
			inWindow = true
			if !e.settled.IsZero() && c.Start.After(e.settled) {
				lag = max(lag, c.Start.Sub(e.settled))
			} else {
				inFlight |= e.window[c.Loop]
			}
		}
		if active || (open && i > 0) {
			steps = append(steps, e.step)
		}
		if !active && !open {
			// Earlier epochs ended earlier and settled earlier: none of
			// them can reach this call either.
			break
		}
	}
	sort.Ints(steps)
	return acc, strict, inFlight, lag, steps, inWindow
}

// graceEnd is G for a loop and a settle time: the start of the loop's
// second call that started at or after settled, or zero while there is no
// such call yet (or the epoch has not settled).
func (j *Judge) graceEnd(loop int, settled time.Time) time.Time {
	if settled.IsZero() {
		return time.Time{}
	}
	s := j.starts[loop]
	i := sort.Search(len(s), func(i int) bool { return !s[i].Before(settled) })
	if i+1 < len(s) {
		if g := settled.Add(j.Grace); g.After(s[i+1]) {
			return g
		}
		return s[i+1]
	}
	return time.Time{}
}

// Counts returns each loop's counts.
func (j *Judge) Counts() []LoopCounts {
	j.mu.Lock()
	defer j.mu.Unlock()
	return append([]LoopCounts(nil), j.counts...)
}

// Lates returns the late calls kept (the first maxLateKept).
func (j *Judge) Lates() []Late {
	j.mu.Lock()
	defer j.mu.Unlock()
	return append([]Late(nil), j.late...)
}

// Violations returns every violation so far.
func (j *Judge) Violations() []Violation {
	j.mu.Lock()
	defer j.mu.Unlock()
	return append([]Violation(nil), j.bad...)
}
