package sds

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"time"
)

// CA rotation: an explicit state machine over caState, persisted in
// state.json. docs/identity.md has the table; in short:
//
//	idle ──RotateRoot──────────► propagating ──bundle ACKed──► reissuing
//	idle ──RotateIntermediate──────────────────────────────► reissuing
//	propagating ──Abort──► idle (the new generation is deleted)
//	reissuing ──Abort──► reissuing back to the old generation (rollback)
//	reissuing ──no cached leaf of the old generation, bundle ACKed──► idle,
//	    the old generation retired at once when its root stays trusted
//	    through the new one (intermediate rotation), else retiring
//	retiring ──its leaves' latest possible expiry──► retired
//
// A retiring generation no longer signs workload leaves; its root stays in
// the bundle until every leaf it may have signed has expired. It does not
// block the next rotation: the bundle may then hold more than two roots.
//
// Every transition writes what the new state needs first (generation files,
// retired certificates), then state.json, and removes what the old state
// needed only after that (generation directories): a crash at any point
// leaves a data directory whose state.json names only complete generations,
// and startup (cleanup) removes what no state names.

// Rotation phases. A root rotation walks propagating then reissuing; an
// intermediate rotation under the same root starts in reissuing, because
// the bundle does not change.
const (
	// PhasePropagating: the bundle carries the old and the new root; leaves
	// are still signed by the old generation. It ends when every connected
	// proxy has ACKed a bundle containing the new root, so that no peer
	// rejects a leaf from the new chain.
	PhasePropagating = "propagating"
	// PhaseReissuing: the new generation signs; every cached leaf is
	// reissued at once. It ends when no cached leaf is from the old
	// generation and every connected proxy has the new root.
	PhaseReissuing = "reissuing"
	// PhaseRetiring is reported when no rotation runs but an old root is
	// still trusted until the leaves it signed have expired.
	PhaseRetiring = "retiring"
	// PhaseIdle is reported when no rotation is in progress and no old
	// root is waiting to leave the bundle.
	PhaseIdle = "idle"
)

// maxTrustedRoots bounds the bundle: root rotations faster than leaves
// expire would otherwise grow it without limit.
const maxTrustedRoots = 4

// rotation is the persisted state of a rotation in progress.
type rotation struct {
	Kind     string    `json:"kind"` // "root" or "intermediate"
	Phase    string    `json:"phase"`
	From     string    `json:"from"`
	To       string    `json:"to"`
	Started  time.Time `json:"started"`
	Switched time.Time `json:"switched,omitzero"`
	// OldLeavesValidUntil is when the last leaf the old generation signed
	// expires; set when signing switches.
	OldLeavesValidUntil time.Time `json:"oldLeavesValidUntil,omitzero"`
	// Aborted is set when an abort in the reissuing phase turned the
	// rotation around: From is then the generation that was new.
	Aborted time.Time `json:"aborted,omitzero"`
}

// retiringGen is a generation that no longer signs and leaves the bundle at
// Until (the latest expiry of any leaf it signed).
type retiringGen struct {
	Gen   string    `json:"gen"`
	Until time.Time `json:"until"`
}

func (s caState) phaseName() string {
	switch {
	case s.Rotation != nil:
		return s.Rotation.Phase
	case len(s.Retiring) > 0:
		return PhaseRetiring
	}
	return PhaseIdle
}

// clone deep-copies s, so that a transition builds the next state without
// touching the one in force until it is durable.
func (s caState) clone() caState {
	c := s
	c.Trusted = slices.Clone(s.Trusted)
	c.Retiring = slices.Clone(s.Retiring)
	if s.Rotation != nil {
		r := *s.Rotation
		c.Rotation = &r
	}
	return c
}

// BundleGate tells the rotation whether proxies have the new trust bundle.
// The xDS server implements it from the SDS responses proxies ACKed (it
// hashes the roots in the ROOTCA secret it sent), so the CA does not depend
// on the snapshot or the server.
type BundleGate interface {
	// BundleAcked reports whether every connected proxy that receives the
	// trust bundle has ACKed a bundle containing the root with this hex
	// SHA-256 fingerprint; pending names those that have not (sorted).
	// It is called while a rotation step holds the CA's transition lock:
	// it must not call the Authority's rotation methods.
	BundleAcked(rootFingerprint string) (ok bool, pending []string)
}

// ErrRotationInProgress is returned when a rotation is asked for while one runs.
var ErrRotationInProgress = errors.New("a CA rotation is already in progress: wait for it to finish (meshctl ca status) or abort it (meshctl ca rotate-root --abort / rotate-intermediate --abort)")

// ErrNoRotation is returned by AbortRotation when there is nothing to abort.
var ErrNoRotation = errors.New("no CA rotation is in progress")

// ErrTooManyRoots is returned by RotateRoot while maxTrustedRoots roots
// are trusted: a refusal to wait out (old roots retire as their leaves
// expire), not a fault.
var ErrTooManyRoots = errors.New("root rotation refused")

// ErrAbortRefused is returned by AbortRotation when the rotation in
// progress cannot be aborted as asked (another kind, or already rolling back).
var ErrAbortRefused = errors.New("abort refused")

// RotateRoot starts a root rotation: a new root and intermediate are created
// and the new root joins the bundle. Advance moves it on.
func (a *Authority) RotateRoot() error {
	if err := a.checkCanRotate(); err != nil {
		return err
	}
	if a.signing().external {
		return errors.New("the CA is supplied by the operator: rotate it by starting meshd with the new --ca-root-cert, --ca-intermediate-cert and --ca-intermediate-key")
	}
	g, err := a.createGeneration(nil, nil)
	if err != nil {
		return fmt.Errorf("root rotation: %w", err)
	}
	return a.beginRotation(g)
}

// RotateIntermediate starts an intermediate rotation under the current root
// (which needs the root key). Leaves are reissued under the new intermediate
// at once; the old intermediate is retired once none of its leaves is cached.
func (a *Authority) RotateIntermediate() error {
	if err := a.checkCanRotate(); err != nil {
		return err
	}
	cur := a.signing()
	g, err := a.createGeneration(cur.root, cur.rootKey)
	if err != nil {
		return fmt.Errorf("intermediate rotation: %w", err)
	}
	return a.beginRotation(g)
}

// checkCanRotate refuses early, before a generation is minted for nothing.
func (a *Authority) checkCanRotate() error {
	if a.opts.NoCreate {
		return errors.New("CA opened read-only (NoCreate): only meshd changes the CA; use the admin API (meshctl ca ...)")
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.state.Rotation != nil {
		return ErrRotationInProgress
	}
	return nil
}

// beginRotation makes g (already durably on disk) trusted and records the
// rotation towards it. If the rotation cannot begin, g's files are removed:
// no state names them.
func (a *Authority) beginRotation(g *generation) error {
	a.tx.Lock()
	defer a.tx.Unlock()
	a.mu.Lock()
	err := a.beginRotationLocked(g)
	a.mu.Unlock()
	if err != nil {
		a.removeGeneration(g.id, "rotation did not begin")
		return err
	}
	return a.writeBundleFile()
}

// beginRotationLocked records a rotation from the signing generation to g.
func (a *Authority) beginRotationLocked(g *generation) error {
	if a.state.Rotation != nil {
		return ErrRotationInProgress
	}
	from := a.gens[a.state.Signing]
	r := &rotation{Kind: "root", Phase: PhasePropagating, From: from.id, To: g.id, Started: a.opts.Clock()}
	if g.rootFP == from.rootFP {
		r.Kind = "intermediate"
	} else if n := len(a.trustedRootsLocked()); n >= maxTrustedRoots {
		return fmt.Errorf("%w: %d roots are already trusted (old ones stay until their leaves expire; see meshctl ca status): wait for one to retire before rotating the root again", ErrTooManyRoots, n)
	}
	next := a.state.clone()
	next.Rotation = r
	if !slices.Contains(next.Trusted, g.id) {
		next.Trusted = append(next.Trusted, g.id)
	}
	if r.Kind == "intermediate" {
		// Peers already trust the root: nothing to propagate.
		a.switchTo(&next, a.opts.Clock())
	}
	if err := a.commitLocked(next, g); err != nil {
		return err
	}
	a.log.Info("CA rotation started", "kind", r.Kind, "phase", r.Phase, "from", r.From, "to", r.To,
		"new_root_sha256", g.rootFP, "new_intermediate_sha256", g.interFP)
	return nil
}

// switchTo makes next's rotation target sign. No leaf from the old
// generation is issued afterwards (callers hold a.mu across the state save,
// and issuance reads its generation and clock under a.mu), so the latest
// NotAfter it ever gave out is known: the larger of what this process
// issued and now+LeafTTL (a bound that also covers leaves issued before a
// restart), capped at the old intermediate's own expiry.
func (a *Authority) switchTo(next *caState, now time.Time) {
	r := next.Rotation
	r.Phase, r.Switched = PhaseReissuing, now
	r.OldLeavesValidUntil = a.leavesValidUntilLocked(r.From, now)
	next.Signing = r.To
}

// leavesValidUntilLocked bounds the expiry of every leaf generation id has
// signed, assuming it signs none after now.
func (a *Authority) leavesValidUntilLocked(id string, now time.Time) time.Time {
	until := now.Add(a.opts.LeafTTL)
	if g := a.gens[id]; g != nil && until.After(g.inter.NotAfter) {
		until = g.inter.NotAfter
	}
	if t := a.leafNotAfter[id]; t.After(until) {
		until = t
	}
	return until
}

// commitLocked makes next durable (state.json) and then the state in force.
// added are generations next names that a.gens does not hold yet; their
// files must already be durable. Callers hold a.mu: the save is short (one
// small file) and transitions are rare, and holding it is what makes
// switchTo's bound exact.
func (a *Authority) commitLocked(next caState, added ...*generation) error {
	if err := a.saveState(next); err != nil {
		return err
	}
	a.state = next
	for _, g := range added {
		a.gens[g.id] = g
	}
	a.rebuildBundleLocked()
	return nil
}

// AbortRotation abandons the rotation in progress; kind ("root" or
// "intermediate") must name it, so that `meshctl ca rotate-root --abort`
// cannot abort an intermediate rotation by mistake.
//
// In the propagating phase nothing was signed by the new generation: it
// leaves the bundle and its files are deleted. In the reissuing phase leaves
// of the new generation are out there, so the rotation is turned around:
// the old generation signs again, every cached leaf is reissued under it,
// and the new generation then retires like any old one (its root stays in
// the bundle until its leaves have expired).
func (a *Authority) AbortRotation(kind string) error {
	if a.opts.NoCreate {
		return errors.New("CA opened read-only (NoCreate): only meshd changes the CA; use the admin API (meshctl ca ...)")
	}
	a.tx.Lock()
	defer a.tx.Unlock()
	a.mu.Lock()
	r := a.state.Rotation
	switch {
	case r == nil:
		a.mu.Unlock()
		return ErrNoRotation
	case r.Kind != kind:
		a.mu.Unlock()
		return fmt.Errorf("%w: the rotation in progress is a %s rotation: use meshctl ca rotate-%s --abort", ErrAbortRefused, r.Kind, r.Kind)
	case !r.Aborted.IsZero():
		a.mu.Unlock()
		return fmt.Errorf("%w: the %s rotation is already being rolled back to %s; it finishes on its own", ErrAbortRefused, r.Kind, r.To)
	}
	now := a.opts.Clock()
	next := a.state.clone()
	var drop string
	if r.Phase == PhasePropagating {
		next.Rotation = nil
		next.Trusted = slices.DeleteFunc(next.Trusted, func(id string) bool { return id == r.To })
		drop = r.To
	} else {
		// Turned around: the old generation is the target and signs again
		// at once (every proxy has its root: it never left the bundle).
		next.Rotation = &rotation{Kind: r.Kind, From: r.To, To: r.From, Started: r.Started, Aborted: now}
		a.switchTo(&next, now)
	}
	if err := a.commitLocked(next); err != nil {
		a.mu.Unlock()
		return err
	}
	if drop != "" {
		delete(a.gens, drop)
		delete(a.leafNotAfter, drop)
	}
	a.mu.Unlock()
	if drop != "" {
		a.log.Info("CA rotation aborted before anything was signed by the new generation; it is deleted", "kind", kind, "deleted", drop, "signing", r.From)
		a.removeGeneration(drop, "aborted rotation")
	} else {
		a.log.Info("CA rotation aborted after the switch: rolling back; the new generation retires once its leaves are replaced",
			"kind", kind, "signing", r.From, "retiring", r.To)
	}
	return a.writeBundleFile()
}

// Advance moves a rotation on as far as the gate and the clock allow, and
// retires old generations whose leaves have all expired. It reports whether
// anything changed (the caller then re-publishes, so the new bundle or
// reissued leaves reach proxies). gate nil means no proxy is connected.
func (a *Authority) Advance(gate BundleGate) (bool, error) {
	if a.opts.NoCreate {
		return false, nil
	}
	a.tx.Lock()
	defer a.tx.Unlock()
	changed, err := a.advanceRotation(gate)
	if err != nil {
		return changed, err
	}
	retired, err := a.retireDue()
	return changed || retired, err
}

func (a *Authority) advanceRotation(gate BundleGate) (bool, error) {
	a.mu.Lock()
	r := a.state.Rotation
	if r == nil {
		a.mu.Unlock()
		return false, nil
	}
	toRoot := a.gens[r.To].rootFP
	a.mu.Unlock()
	// The gate (the xDS server's ACK record) is asked without holding a.mu,
	// which issuance and status take. a.tx stays held, so the state cannot
	// change meanwhile (every transition holds it): the gate must never call
	// back into the Authority's transitions (the tracker never calls the CA).
	acked, pending := true, []string(nil)
	if gate != nil {
		acked, pending = gate.BundleAcked(toRoot)
	}
	a.mu.Lock()
	if r.Phase == PhasePropagating {
		if !acked {
			a.mu.Unlock()
			a.log.Debug("root rotation waits for proxies to ACK the new bundle", "pending", pending)
			return false, nil
		}
		next := a.state.clone()
		a.switchTo(&next, a.opts.Clock())
		err := a.commitLocked(next)
		a.mu.Unlock()
		if err != nil {
			return false, err
		}
		a.log.Info("CA rotation: every connected proxy has the new root; new leaves are signed by the new generation",
			"to", r.To, "old_leaves_valid_until", next.Rotation.OldLeavesValidUntil.UTC())
		return true, nil
	}
	stale := a.staleLeavesLocked()
	if !acked || stale > 0 {
		a.mu.Unlock()
		a.log.Debug("CA rotation waits", "pending_proxies", pending, "stale_leaves", stale)
		return false, nil
	}
	return a.finishLocked()
}

// finishLocked ends a rotation whose new generation signs every cached leaf:
// the old generation retires now if its root stays trusted through another
// generation, else it starts retiring. Called with a.mu held; unlocks it.
func (a *Authority) finishLocked() (bool, error) {
	r := a.state.Rotation
	old := a.gens[r.From]
	next := a.state.clone()
	next.Rotation = nil
	shared := false
	for _, id := range next.Trusted {
		if g := a.gens[id]; id != old.id && g != nil && g.rootFP == old.rootFP {
			shared = true
		}
	}
	if shared {
		a.mu.Unlock()
		// Retire below writes files first; the rotation must not look
		// finished before that, so the state goes through retire's commit.
		if err := a.retire(old.id, func(s *caState) { s.Rotation = nil }); err != nil {
			return false, err
		}
		a.log.Info("CA rotation complete; the old intermediate is retired (its root stays trusted)", "kind", r.Kind, "retired", old.id, "signing", r.To)
		return true, a.writeBundleFile()
	}
	next.Retiring = append(next.Retiring, retiringGen{Gen: old.id, Until: r.OldLeavesValidUntil})
	err := a.commitLocked(next)
	a.mu.Unlock()
	if err != nil {
		return false, err
	}
	a.log.Info("CA rotation complete; the old root stays in the bundle until its leaves have expired", "kind", r.Kind,
		"retiring", old.id, "until", r.OldLeavesValidUntil.UTC(), "signing", r.To)
	return true, nil
}

// retireDue retires every retiring generation whose leaves have all expired.
func (a *Authority) retireDue() (bool, error) {
	changed := false
	for {
		a.mu.Lock()
		now := a.opts.Clock()
		due := ""
		for _, rg := range a.state.Retiring {
			if !now.Before(rg.Until) {
				due = rg.Gen
				break
			}
		}
		a.mu.Unlock()
		if due == "" {
			break
		}
		if err := a.retire(due, nil); err != nil {
			return changed, err
		}
		changed = true
		a.log.Info("CA generation retired: its root left the trust bundle (no leaf it signed is still valid)", "retired", due)
	}
	if changed {
		return true, a.writeBundleFile()
	}
	return false, nil
}

// retire moves generation id out of the state: its certificates are kept
// in retired/ (durably, first), the state without it is saved, and only
// then its directory — keys included — is deleted. mod, if set, changes the
// next state further in the same commit.
func (a *Authority) retire(id string, mod func(*caState)) error {
	a.mu.Lock()
	g := a.gens[id]
	a.mu.Unlock()
	if g == nil {
		return fmt.Errorf("CA: retire %s: unknown generation", id)
	}
	if err := a.saveRetired(g); err != nil {
		return err
	}
	a.mu.Lock()
	next := a.state.clone()
	next.Trusted = slices.DeleteFunc(next.Trusted, func(t string) bool { return t == id })
	next.Retiring = slices.DeleteFunc(next.Retiring, func(rg retiringGen) bool { return rg.Gen == id })
	if mod != nil {
		mod(&next)
	}
	if next.Signing == id || len(next.Trusted) == 0 || (next.Rotation != nil && (next.Rotation.From == id || next.Rotation.To == id)) {
		a.mu.Unlock()
		return fmt.Errorf("CA: internal error: generation %s is still in use and cannot retire", id)
	}
	err := a.commitLocked(next)
	if err == nil {
		delete(a.gens, id)
		delete(a.leafNotAfter, id)
	}
	a.mu.Unlock()
	if err != nil {
		return err
	}
	a.removeGeneration(id, "retired")
	return nil
}

// staleLeavesLocked counts cached leaves not signed by the signing generation.
func (a *Authority) staleLeavesLocked() int {
	n := 0
	for _, l := range a.leaves {
		if l.gen != a.state.Signing {
			n++
		}
	}
	return n
}

// RenewIntermediateIfDue starts an intermediate rotation once the signing
// intermediate has passed RenewFraction of its life (the same policy as
// leaves), when meshd holds the root key and no rotation is running. It
// reports whether it started one.
func (a *Authority) RenewIntermediateIfDue() (bool, error) {
	a.mu.Lock()
	g := a.gens[a.state.Signing]
	busy := a.state.Rotation != nil
	a.mu.Unlock()
	if busy || g.rootKey == nil || g.external || a.opts.NoCreate {
		return false, nil
	}
	life := g.inter.NotAfter.Sub(g.inter.NotBefore)
	due := g.inter.NotBefore.Add(time.Duration(float64(life) * a.opts.RenewFraction))
	if a.opts.Clock().Before(due) {
		return false, nil
	}
	a.log.Info("signing intermediate has passed its renewal point; rotating it", "not_after", g.inter.NotAfter.UTC())
	if err := a.RotateIntermediate(); err != nil {
		return false, err
	}
	return true, nil
}

// RunRotation calls Advance every interval until ctx ends, and onChange after
// every step so the publisher pushes the new bundle or leaves. It also
// renews the intermediate when due.
func (a *Authority) RunRotation(ctx context.Context, gate BundleGate, interval time.Duration, onChange func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			started, err := a.RenewIntermediateIfDue()
			if err != nil {
				a.log.Error("automatic intermediate rotation failed; retrying", "err", err)
			}
			changed, err := a.Advance(gate)
			changed = changed || started
			if err != nil {
				a.log.Error("CA rotation step failed; retrying", "err", err)
			}
			if changed && onChange != nil {
				onChange()
			}
		}
	}
}

// CertInfo describes one CA or leaf certificate for operators.
type CertInfo struct {
	Subject      string    `json:"subject,omitempty"`
	SPIFFEID     string    `json:"spiffeId,omitempty"`
	Serial       string    `json:"serial"`
	SHA256       string    `json:"sha256,omitempty"`
	NotBefore    time.Time `json:"notBefore"`
	NotAfter     time.Time `json:"notAfter"`
	Generation   string    `json:"generation,omitempty"`
	RootKeyAvail *bool     `json:"rootKeyAvailable,omitempty"`
}

// RotationStatus is a rotation in progress.
type RotationStatus struct {
	Kind                string    `json:"kind"`
	Phase               string    `json:"phase"`
	From                string    `json:"from"`
	To                  string    `json:"to"`
	Started             time.Time `json:"started"`
	Switched            time.Time `json:"switched,omitzero"`
	OldLeavesValidUntil time.Time `json:"oldLeavesValidUntil,omitzero"`
	// Aborted: the rotation was aborted after the switch and is rolling
	// back to To.
	Aborted        time.Time `json:"aborted,omitzero"`
	PendingProxies []string  `json:"pendingProxies,omitempty"`
	StaleLeaves    int       `json:"staleLeaves"`
}

// RetiringStatus is an old root still trusted until its leaves expire.
type RetiringStatus struct {
	Generation string    `json:"generation"`
	RootSHA256 string    `json:"rootSha256"`
	Until      time.Time `json:"until"`
}

// Status is what `meshctl ca status` and `meshctl certs` show.
type Status struct {
	TrustDomain  string           `json:"trustDomain"`
	Phase        string           `json:"phase"`
	Signing      CertInfo         `json:"signingIntermediate"`
	SigningRoot  CertInfo         `json:"signingRoot"`
	TrustedRoots []CertInfo       `json:"trustedRoots"`
	Rotation     *RotationStatus  `json:"rotation,omitempty"`
	Retiring     []RetiringStatus `json:"retiring,omitempty"`
	Leaves       []CertInfo       `json:"leaves"`
}

func caInfo(g *generation, root bool) CertInfo {
	c, fp := g.inter, g.interFP
	if root {
		c, fp = g.root, g.rootFP
	}
	ci := CertInfo{Subject: c.Subject.CommonName, Serial: c.SerialNumber.Text(16), SHA256: fp,
		NotBefore: c.NotBefore.UTC(), NotAfter: c.NotAfter.UTC(), Generation: g.id}
	if root {
		avail := g.rootKey != nil
		ci.RootKeyAvail = &avail
	}
	return ci
}

// Status reports the CA's generations, rotation progress and cached leaves;
// gate, if not nil, fills in the proxies a rotation waits for.
func (a *Authority) Status(gate BundleGate) Status {
	st, toRoot := a.status()
	if gate != nil && st.Rotation != nil {
		// Outside a.mu: the gate belongs to the xDS server.
		_, st.Rotation.PendingProxies = gate.BundleAcked(toRoot)
	}
	return st
}

func (a *Authority) status() (st Status, toRoot string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	sg := a.gens[a.state.Signing]
	st = Status{
		TrustDomain: a.opts.TrustDomain,
		Phase:       a.state.phaseName(),
		Signing:     caInfo(sg, false),
		SigningRoot: caInfo(sg, true),
	}
	for _, g := range a.trustedRootsLocked() {
		st.TrustedRoots = append(st.TrustedRoots, caInfo(g, true))
	}
	if r := a.state.Rotation; r != nil {
		rs := &RotationStatus{Kind: r.Kind, Phase: r.Phase, From: r.From, To: r.To, Started: r.Started.UTC(),
			Switched: r.Switched, OldLeavesValidUntil: r.OldLeavesValidUntil, Aborted: r.Aborted, StaleLeaves: a.staleLeavesLocked()}
		toRoot = a.gens[r.To].rootFP
		st.Rotation = rs
	}
	for _, rg := range a.state.Retiring {
		rs := RetiringStatus{Generation: rg.Gen, Until: rg.Until.UTC()}
		if g := a.gens[rg.Gen]; g != nil {
			rs.RootSHA256 = g.rootFP
		}
		st.Retiring = append(st.Retiring, rs)
	}
	for id, l := range a.leaves {
		st.Leaves = append(st.Leaves, CertInfo{SPIFFEID: id, Serial: l.Serial.Text(16),
			NotBefore: l.NotBefore.UTC(), NotAfter: l.NotAfter.UTC(), Generation: l.gen})
	}
	sort.Slice(st.Leaves, func(i, j int) bool { return st.Leaves[i].SPIFFEID < st.Leaves[j].SPIFFEID })
	return st, toRoot
}
