package soak

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// Summary is what a soak run did and found.
type Summary struct {
	Pass    bool          `json:"pass"`
	Failure string        `json:"failure,omitempty"`
	Seed    uint64        `json:"seed"`
	Started time.Time     `json:"started"`
	Planned time.Duration `json:"plannedNs"`
	Ran     time.Duration `json:"ranNs"`

	// Streams: real sidecars and simulated proxies by xDS flavour, and
	// how many streams the fleet opened over the run (reconnects
	// included).
	RealSotW       int                   `json:"realSotw"`
	RealDelta      int                   `json:"realDelta"`
	FleetSotW      int                   `json:"fleetSotw"`
	FleetDelta     int                   `json:"fleetDelta"`
	FleetStreams   int64                 `json:"fleetStreamsOpened"`
	FleetNACKs     int64                 `json:"fleetNacks"`
	FleetResponses int64                 `json:"fleetResponses"`
	Steps          int                   `json:"steps"`
	Changes        int                   `json:"changesApplied"`
	Refused        int                   `json:"refused"`
	MaxConverge    time.Duration         `json:"maxConvergeNs"`
	Kinds          map[Kind]*KindFigures `json:"kinds"`
	Loops          []LoopFigures         `json:"loops"`
	Violations     int                   `json:"violations"`
	// Late: calls that met the previous verdict after a change had
	// settled (within the grace); MaxLate the longest delay.
	Late    int           `json:"lateEnforcement"`
	MaxLate time.Duration `json:"maxLateNs"`
	// Rotations: CA rotations seen to end, and the longest.
	Rotations   int           `json:"rotationsEnded"`
	MaxRotation time.Duration `json:"maxRotationNs"`
	Hangs       int           `json:"hangs"`
	RSS         Range         `json:"meshdRssBytes"`
	Heap        Range         `json:"meshdHeapInuseBytes"`
	// LiveHeapStart and LiveHeapEnd are meshd's live heap after a full
	// collection once the set-up settled and when the schedule ended.
	LiveHeapStart   float64       `json:"meshdLiveHeapStartBytes"`
	LiveHeapEnd     float64       `json:"meshdLiveHeapEndBytes"`
	Goroutines      Range         `json:"meshdGoroutines"`
	LoadAverage     Range         `json:"loadAverage1m"`
	Grace           time.Duration `json:"graceNs"`
	WorkDir         string        `json:"workDir"`
	MeshdLog        string        `json:"meshdLog"`
	DumpDir         string        `json:"dumpDir,omitempty"`
	ViolationsShown []string      `json:"violationsShown,omitempty"`
}

// KindFigures are one kind's steps.
type KindFigures struct {
	Applied     int           `json:"applied"`
	Refused     int           `json:"refused"`
	MaxConverge time.Duration `json:"maxConvergeNs"`
	SumConverge time.Duration `json:"sumConvergeNs"`
}

// LoopFigures are one continuous caller's calls.
type LoopFigures struct {
	Caller         string        `json:"caller"`
	Server         string        `json:"server"`
	Protocol       string        `json:"protocol"`
	OK             int           `json:"ok"`
	ExpectedDenied int           `json:"expectedDenied"`
	Failed         int           `json:"failed"`
	InWindow       int           `json:"inWindow"`
	Late           int           `json:"late"`
	MaxLate        time.Duration `json:"maxLateNs"`
}

// Range is a sampled figure's first, largest and last value.
type Range struct {
	First, Max, Last, Mean float64
}

func rangeOf(v []float64) Range {
	if len(v) == 0 {
		return Range{}
	}
	r := Range{First: v[0], Last: v[len(v)-1], Max: slices.Max(v)}
	for _, x := range v {
		r.Mean += x
	}
	r.Mean /= float64(len(v))
	return r
}

// rotated records a CA rotation seen to end.
func (s *Summary) rotated(_ Kind, d time.Duration) {
	s.Rotations++
	s.MaxRotation = max(s.MaxRotation, d)
}

// record adds a settled step.
func (s *Summary) record(rec stepRecord) {
	s.Steps++
	kinds := []Step{rec.Step}
	if rec.Step.Kind == KindBurst {
		kinds = append(kinds, rec.Step.Parts...)
	}
	for i, st := range kinds {
		k := s.Kinds[st.Kind]
		if k == nil {
			k = &KindFigures{}
			s.Kinds[st.Kind] = k
		}
		if rec.Refused != "" {
			k.Refused++
			s.Refused++
			continue
		}
		k.Applied++
		if i == 0 {
			k.MaxConverge = max(k.MaxConverge, rec.Converge)
			k.SumConverge += rec.Converge
		}
		if st.Kind != KindBurst {
			s.Changes++
		}
	}
	s.MaxConverge = max(s.MaxConverge, rec.Converge)
}

// finish completes the summary, dumps on failure, and says whether the run
// passed.
func (r *runner) finish() (*Summary, error) {
	s := r.sum
	for _, f := range r.fleets {
		s.FleetNACKs += f.NACKs.Load()
		s.FleetResponses += f.Responses.Load()
		for _, p := range f.Proxies {
			s.FleetStreams += int64(p.View().Streams)
		}
	}
	if r.judge != nil {
		counts := r.judge.Counts()
		for i, l := range r.loops {
			c := counts[i]
			s.Loops = append(s.Loops, LoopFigures{Caller: l.key.Caller, Server: l.key.Server, Protocol: string(l.proto),
				OK: c.OK, ExpectedDenied: c.ExpectedDenied, Failed: c.Failed, InWindow: c.InWindow, Late: c.Late, MaxLate: c.MaxLate})
			s.Late += c.Late
			s.MaxLate = max(s.MaxLate, c.MaxLate)
		}
		vs := r.judge.Violations()
		s.Violations = len(vs)
		for i, v := range vs {
			if i == 10 {
				s.ViolationsShown = append(s.ViolationsShown, fmt.Sprintf("… and %d more", len(vs)-10))
				break
			}
			s.ViolationsShown = append(s.ViolationsShown, v.String()+": "+v.Call.Detail)
		}
	}
	if r.judge != nil {
		var b strings.Builder
		for _, l := range r.judge.Lates() {
			fmt.Fprintln(&b, l.String())
		}
		if err := os.WriteFile(filepath.Join(r.dir, "late.txt"), []byte(b.String()), 0o644); err != nil {
			r.log.Warn("late calls not written", "err", err)
		}
		if err := os.WriteFile(filepath.Join(r.dir, "steps.txt"), []byte(r.stepsText()), 0o644); err != nil {
			r.log.Warn("steps not written", "err", err)
		}
	}
	r.samples.load(time.Now())
	r.samples.mu.Lock()
	s.RSS, s.Heap, s.Goroutines, s.LoadAverage = rangeOf(r.samples.rss), rangeOf(r.samples.heap), rangeOf(r.samples.goroutines), rangeOf(r.samples.loadav)
	r.samples.mu.Unlock()
	err := r.failure()
	if err == nil {
		// A meshd built with -race (as e2e builds it) reports races in
		// its log and goes on.
		if b, rerr := os.ReadFile(r.meshd.LogPath); rerr == nil && bytes.Contains(b, []byte("WARNING: DATA RACE")) {
			err = fmt.Errorf("meshd reported a data race; see %s", r.meshd.LogPath)
		}
	}
	if err == nil && s.Violations > 0 {
		err = fmt.Errorf("%d calls had an outcome the policy in force did not allow", s.Violations)
	}
	if err == nil && s.FleetNACKs > 0 {
		err = fmt.Errorf("the simulated fleet sent %d NACKs", s.FleetNACKs)
	}
	if err != nil {
		s.Failure = err.Error()
		if strings.HasPrefix(err.Error(), "hang") {
			s.Hangs = 1
		}
		s.DumpDir = r.dump(err)
		return s, err
	}
	s.Pass = true
	return s, nil
}

// Table renders the summary for people.
func (s *Summary) Table() string {
	var b strings.Builder
	verdict := "PASS"
	if !s.Pass {
		verdict = "FAIL: " + s.Failure
	}
	fmt.Fprintf(&b, "meshd-soak %s\n\n", verdict)
	w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintf(w, "seed\t%d\n", s.Seed)
	fmt.Fprintf(w, "duration\t%s of %s planned (started %s)\n", s.Ran.Round(time.Second), s.Planned, s.Started.UTC().Format(time.RFC3339))
	fmt.Fprintf(w, "streams\t%d real Envoy sidecars (%d SotW, %d delta), %d simulated proxies (%d SotW, %d delta); %d fleet streams opened\n",
		s.RealSotW+s.RealDelta, s.RealSotW, s.RealDelta, s.FleetSotW+s.FleetDelta, s.FleetSotW, s.FleetDelta, s.FleetStreams)
	fmt.Fprintf(w, "steps\t%d settled, %d changes applied, %d rotations refused by meshd or not asked for (one running, or four roots trusted)\n", s.Steps, s.Changes, s.Refused)
	fmt.Fprintf(w, "max convergence\t%s\n", s.MaxConverge.Round(time.Millisecond))
	fmt.Fprintf(w, "hangs\t%d\n", s.Hangs)
	fmt.Fprintf(w, "NACKs\t%d (fleet; meshd's counter and status are checked too)\n", s.FleetNACKs)
	fmt.Fprintf(w, "violations\t%d\n", s.Violations)
	fmt.Fprintf(w, "late enforcement\t%d calls met the previous verdict after their change settled (longest %s after; grace %s)\n", s.Late, s.MaxLate.Round(time.Millisecond), s.Grace)
	fmt.Fprintf(w, "CA rotations\t%d ended, longest %s\n", s.Rotations, s.MaxRotation.Round(time.Millisecond))
	fmt.Fprintf(w, "meshd RSS\t%.0f MiB first, %.0f MiB max, %.0f MiB last\n", s.RSS.First/(1<<20), s.RSS.Max/(1<<20), s.RSS.Last/(1<<20))
	fmt.Fprintf(w, "meshd heap in use\t%.0f MiB first, %.0f MiB max, %.0f MiB last\n", s.Heap.First/(1<<20), s.Heap.Max/(1<<20), s.Heap.Last/(1<<20))
	fmt.Fprintf(w, "meshd live heap after GC\t%s after set-up, %s at the end\n", mib(s.LiveHeapStart), mib(s.LiveHeapEnd))
	fmt.Fprintf(w, "meshd goroutines\t%.0f first, %.0f max, %.0f last\n", s.Goroutines.First, s.Goroutines.Max, s.Goroutines.Last)
	fmt.Fprintf(w, "load average (1 min)\t%.1f first, %.1f mean, %.1f max, %.1f last\n", s.LoadAverage.First, s.LoadAverage.Mean, s.LoadAverage.Max, s.LoadAverage.Last)
	w.Flush()

	b.WriteString("\nchanges by kind:\n")
	w = tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "kind\tapplied\trefused\tmax converge\tmean converge\t")
	for _, k := range AllKinds {
		f := s.Kinds[k]
		if f == nil {
			continue
		}
		mean := time.Duration(0)
		if f.Applied > 0 {
			mean = f.SumConverge / time.Duration(f.Applied)
		}
		conv, meanText := f.MaxConverge.Round(time.Millisecond).String(), mean.Round(time.Millisecond).String()
		if f.SumConverge == 0 {
			conv, meanText = "(in bursts)", ""
		}
		fmt.Fprintf(w, "%s\t%d\t%d\t%s\t%s\t\n", k, f.Applied, f.Refused, conv, meanText)
	}
	w.Flush()

	b.WriteString("\ncalls by caller:\n")
	w = tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "caller\tserver\tprotocol\tok\texpected-denied\tfailed\tduring changes\tlate (longest)\t")
	var tot LoopFigures
	for _, l := range s.Loops {
		fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d (%s)\t\n", l.Caller, l.Server, l.Protocol, l.OK, l.ExpectedDenied, l.Failed, l.InWindow, l.Late, l.MaxLate.Round(time.Millisecond))
		tot.OK += l.OK
		tot.ExpectedDenied += l.ExpectedDenied
		tot.Failed += l.Failed
		tot.InWindow += l.InWindow
	}
	fmt.Fprintf(w, "all\t\t\t%d\t%d\t%d\t%d\t%d\t\n", tot.OK, tot.ExpectedDenied, tot.Failed, tot.InWindow, s.Late)
	w.Flush()
	for _, v := range s.ViolationsShown {
		fmt.Fprintf(&b, "violation: %s\n", v)
	}
	fmt.Fprintf(&b, "\nwork dir: %s\n", s.WorkDir)
	if s.DumpDir != "" {
		fmt.Fprintf(&b, "failure dump: %s\n", s.DumpDir)
	}
	return b.String()
}

// mib shows a live heap reading; 0 is one not taken (meshd did not answer,
// or the run failed before the end).
func mib(b float64) string {
	if b == 0 {
		return "not read"
	}
	return fmt.Sprintf("%.1f MiB", b/(1<<20))
}
