package sds

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"time"
)

// Rotation phases. A root rotation walks all three; an intermediate rotation
// under the same root skips propagating, because the bundle does not change.
const (
	// PhasePropagating: the bundle carries the old and the new root; leaves
	// are still signed by the old generation. It ends when every connected
	// proxy has ACKed a bundle containing the new root, so that no peer
	// rejects a leaf from the new chain.
	PhasePropagating = "propagating"
	// PhaseReissuing: the new generation signs; every cached leaf is
	// reissued at once. It ends when no leaf from the old generation can
	// still be valid (its latest NotAfter has passed) and every connected
	// proxy still has the new root.
	PhaseReissuing = "reissuing"
	// PhaseIdle is reported when no rotation is in progress.
	PhaseIdle = "idle"
)

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
}

func (r *rotation) phaseName() string {
	if r == nil {
		return PhaseIdle
	}
	return r.Phase
}

// BundleGate tells the rotation whether proxies have the new trust bundle.
// The xDS server implements it from the SDS responses proxies ACKed (it
// hashes the roots in the ROOTCA secret it sent), so the CA does not depend
// on the snapshot or the server.
type BundleGate interface {
	// BundleAcked reports whether every connected proxy that receives the
	// trust bundle has ACKed a bundle containing the root with this hex
	// SHA-256 fingerprint; pending names those that have not (sorted).
	BundleAcked(rootFingerprint string) (ok bool, pending []string)
}

// ErrRotationInProgress is returned when a rotation is asked for while one runs.
var ErrRotationInProgress = errors.New("a CA rotation is already in progress: wait for it to finish (meshctl ca status)")

// RotateRoot starts a root rotation: a new root and intermediate are created
// and the new root joins the bundle. Advance moves it on.
func (a *Authority) RotateRoot() error {
	a.mu.Lock()
	busy := a.state.Rotation != nil
	a.mu.Unlock()
	if busy {
		return ErrRotationInProgress
	}
	if a.signing().external {
		return errors.New("the CA is supplied by the operator: rotate it by starting meshd with the new --ca-root-cert, --ca-intermediate-cert and --ca-intermediate-key")
	}
	g, err := a.createGeneration(nil, nil)
	if err != nil {
		return fmt.Errorf("root rotation: %w", err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.beginRotationLocked(g)
}

// RotateIntermediate starts an intermediate rotation under the current root
// (which needs the root key). Leaves are reissued under the new intermediate
// at once; the old intermediate is retired when its leaves have expired.
func (a *Authority) RotateIntermediate() error {
	a.mu.Lock()
	busy := a.state.Rotation != nil
	a.mu.Unlock()
	if busy {
		return ErrRotationInProgress
	}
	cur := a.signing()
	g, err := a.createGeneration(cur.root, cur.rootKey)
	if err != nil {
		return fmt.Errorf("intermediate rotation: %w", err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.beginRotationLocked(g)
}

// beginRotationLocked makes g trusted and records the rotation towards it.
func (a *Authority) beginRotationLocked(g *generation) error {
	if a.state.Rotation != nil {
		return ErrRotationInProgress
	}
	from := a.gens[a.state.Signing]
	a.gens[g.id] = g
	r := &rotation{Kind: "root", Phase: PhasePropagating, From: from.id, To: g.id, Started: a.opts.Clock()}
	if g.rootFP == from.rootFP {
		r.Kind = "intermediate"
	}
	a.state.Rotation = r
	if !slices.Contains(a.state.Trusted, g.id) {
		a.state.Trusted = append(a.state.Trusted, g.id)
	}
	if r.Kind == "intermediate" {
		// Peers already trust the root: nothing to propagate.
		a.switchLocked()
	}
	a.rebuildBundleLocked()
	if err := a.saveStateLocked(); err != nil {
		return err
	}
	a.log.Info("CA rotation started", "kind", r.Kind, "phase", r.Phase, "from", r.From, "to", r.To,
		"new_root_sha256", g.rootFP, "new_intermediate_sha256", g.interFP)
	if !a.opts.NoCreate {
		a.mu.Unlock()
		err := a.writeBundleFile()
		a.mu.Lock()
		return err
	}
	return nil
}

// switchLocked makes the new generation sign. No leaf from the old one is
// issued afterwards, so the latest NotAfter it ever gave out is known: the
// larger of what this process issued and now+LeafTTL (a conservative bound
// that also covers leaves issued before a restart, capped at the old
// intermediate's own expiry).
func (a *Authority) switchLocked() {
	r := a.state.Rotation
	now := a.opts.Clock()
	old := a.gens[r.From]
	until := now.Add(a.opts.LeafTTL)
	if until.After(old.inter.NotAfter) {
		until = old.inter.NotAfter
	}
	if t := a.leafNotAfter[r.From]; t.After(until) {
		until = t
	}
	r.Phase, r.Switched, r.OldLeavesValidUntil = PhaseReissuing, now, until
	a.state.Signing = r.To
}

// Advance moves a rotation on as far as the gate and the clock allow and
// reports whether anything changed (the caller then re-publishes, so the
// new bundle or reissued leaves reach proxies). gate nil means no proxy is
// connected.
func (a *Authority) Advance(gate BundleGate) (bool, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	r := a.state.Rotation
	if r == nil {
		return false, nil
	}
	to := a.gens[r.To]
	acked := func() (bool, []string) {
		if gate == nil {
			return true, nil
		}
		return gate.BundleAcked(to.rootFP)
	}
	changed := false
	if r.Phase == PhasePropagating {
		ok, pending := acked()
		if !ok {
			a.log.Debug("root rotation waits for proxies to ACK the new bundle", "pending", pending)
			return false, nil
		}
		a.switchLocked()
		changed = true
		a.log.Info("CA rotation: every connected proxy has the new root; new leaves are signed by the new generation",
			"to", r.To, "old_leaves_valid_until", r.OldLeavesValidUntil.UTC())
	}
	if r.Phase == PhaseReissuing {
		now := a.opts.Clock()
		ok, pending := acked()
		stale := a.staleLeavesLocked()
		if now.Before(r.OldLeavesValidUntil) || !ok || stale > 0 {
			if changed {
				return true, a.saveStateLocked()
			}
			a.log.Debug("CA rotation waits", "old_leaves_valid_until", r.OldLeavesValidUntil.UTC(), "pending_proxies", pending, "stale_leaves", stale)
			return false, nil
		}
		a.completeLocked()
		changed = true
	}
	if err := a.saveStateLocked(); err != nil {
		return changed, err
	}
	if !a.opts.NoCreate {
		a.mu.Unlock()
		err := a.writeBundleFile()
		a.mu.Lock()
		return changed, err
	}
	return changed, nil
}

// completeLocked drops the old generation from the bundle and retires its
// files.
func (a *Authority) completeLocked() {
	r := a.state.Rotation
	a.state.Trusted = slices.DeleteFunc(a.state.Trusted, func(id string) bool { return id == r.From })
	a.state.Rotation = nil
	a.rebuildBundleLocked()
	delete(a.leafNotAfter, r.From)
	// Keep the retired generation's certificates for audit, but not its keys:
	// nothing may sign with them again.
	src := a.genDir(r.From)
	dst := filepath.Join(a.caDir(), retiredDir, r.From)
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err == nil {
		_ = os.Remove(filepath.Join(src, genInterKeyFile))
		if a.gens[r.To].rootFP != a.gens[r.From].rootFP {
			_ = os.Remove(filepath.Join(src, genRootKeyFile))
		}
		if err := os.Rename(src, dst); err != nil {
			a.log.Warn("could not move the retired CA generation aside", "from", src, "to", dst, "err", err)
		}
	}
	delete(a.gens, r.From)
	a.log.Info("CA rotation complete: the old generation left the trust bundle", "kind", r.Kind, "retired", r.From, "signing", r.To)
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
	PendingProxies      []string  `json:"pendingProxies,omitempty"`
	StaleLeaves         int       `json:"staleLeaves"`
}

// Status is what `meshctl ca status` and `meshctl certs` show.
type Status struct {
	TrustDomain  string          `json:"trustDomain"`
	Phase        string          `json:"phase"`
	Signing      CertInfo        `json:"signingIntermediate"`
	SigningRoot  CertInfo        `json:"signingRoot"`
	TrustedRoots []CertInfo      `json:"trustedRoots"`
	Rotation     *RotationStatus `json:"rotation,omitempty"`
	Leaves       []CertInfo      `json:"leaves"`
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

// Status reports the CA's generations, rotation progress and cached leaves.
func (a *Authority) Status(gate BundleGate) Status {
	a.mu.Lock()
	defer a.mu.Unlock()
	sg := a.gens[a.state.Signing]
	st := Status{
		TrustDomain: a.opts.TrustDomain,
		Phase:       a.state.Rotation.phaseName(),
		Signing:     caInfo(sg, false),
		SigningRoot: caInfo(sg, true),
	}
	for _, g := range a.trustedRootsLocked() {
		st.TrustedRoots = append(st.TrustedRoots, caInfo(g, true))
	}
	if r := a.state.Rotation; r != nil {
		rs := &RotationStatus{Kind: r.Kind, Phase: r.Phase, From: r.From, To: r.To, Started: r.Started.UTC(),
			Switched: r.Switched, OldLeavesValidUntil: r.OldLeavesValidUntil, StaleLeaves: a.staleLeavesLocked()}
		if gate != nil {
			_, rs.PendingProxies = gate.BundleAcked(a.gens[r.To].rootFP)
		}
		st.Rotation = rs
	}
	for id, l := range a.leaves {
		st.Leaves = append(st.Leaves, CertInfo{SPIFFEID: id, Serial: l.Serial.Text(16),
			NotBefore: l.NotBefore.UTC(), NotAfter: l.NotAfter.UTC(), Generation: l.gen})
	}
	sort.Slice(st.Leaves, func(i, j int) bool { return st.Leaves[i].SPIFFEID < st.Leaves[j].SPIFFEID })
	return st
}
