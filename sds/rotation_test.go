package sds

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// fakeGate stands in for the xDS server's record of ACKed bundles.
type fakeGate struct {
	acked   map[string]bool
	pending []string
}

func (g *fakeGate) BundleAcked(fp string) (bool, []string) {
	if g.acked[fp] {
		return true, nil
	}
	return false, g.pending
}

func bundleRoots(t *testing.T, pemBytes []byte) []string {
	t.Helper()
	var fps []string
	for rest := pemBytes; ; {
		var b *pemBlock
		b, rest = decodePEM(rest)
		if b == nil {
			return fps
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		fps = append(fps, fingerprint(c))
	}
}

func serverRoot(t *testing.T, ca *testCA) string {
	t.Helper()
	cfg, err := ca.ServerTLSConfig(nil)
	if err != nil {
		t.Fatal(err)
	}
	st, err := handshake(t, ca, cfg, "localhost", 0)
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	if len(st.VerifiedChains) == 0 {
		t.Fatal("no verified chain")
	}
	ch := st.VerifiedChains[0]
	return fingerprint(ch[len(ch)-1])
}

func TestRootRotationStepByStep(t *testing.T) {
	ca := newTestCA(t)
	gate := &fakeGate{acked: map[string]bool{}, pending: []string{"web.default"}}
	oldFP := ca.Fingerprint()
	oldGen := ca.signing().id
	oldLeaf, err := ca.Leaf(testID, []string{"cart"})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := ca.ServerTLSConfig(nil)
	if err != nil {
		t.Fatal(err)
	}

	// Step 1: rotate. The new root joins the bundle; nothing else changes.
	ca.clock.Advance(time.Hour)
	if err := ca.RotateRoot(); err != nil {
		t.Fatal(err)
	}
	if err := ca.RotateRoot(); !errors.Is(err, ErrRotationInProgress) {
		t.Errorf("second RotateRoot: %v, want ErrRotationInProgress", err)
	}
	st := ca.Status(gate)
	if st.Phase != PhasePropagating || st.Rotation == nil || st.Rotation.Kind != "root" {
		t.Fatalf("after RotateRoot: %+v", st)
	}
	newFP := st.TrustedRoots[1].SHA256
	if got := bundleRoots(t, ca.RootCertPEM()); !slices.Equal(got, []string{oldFP, newFP}) || newFP == oldFP {
		t.Fatalf("bundle roots %v, want old %s then new %s", got, oldFP, newFP)
	}
	if onDisk := mustRead(t, filepath.Join(ca.opts.DataDir, "ca", rootCertFile)); !bytes.Equal(onDisk, ca.RootCertPEM()) {
		t.Error("bundle file not rewritten with both roots")
	}
	if ca.Fingerprint() != oldFP {
		t.Error("signing switched before proxies trust the new root")
	}
	if l, _ := ca.Leaf(testID, []string{"cart"}); l != oldLeaf {
		t.Error("leaf reissued while the new root is still propagating")
	}
	if !slices.Equal(st.Rotation.PendingProxies, []string{"web.default"}) {
		t.Errorf("pending proxies %v", st.Rotation.PendingProxies)
	}

	// Step 2: proxies have not ACKed: no progress.
	if changed, err := ca.Advance(gate); changed || err != nil {
		t.Fatalf("Advance without ACKs: %v %v", changed, err)
	}

	// A restart mid-rotation resumes it.
	re, err := LoadOrCreate(ca.opts)
	if err != nil {
		t.Fatal(err)
	}
	if rs := re.Status(nil); rs.Phase != PhasePropagating || len(rs.TrustedRoots) != 2 {
		t.Fatalf("after restart: %+v", rs)
	}

	// Step 3: every proxy ACKed the new bundle: signing switches, cached
	// leaves are due at once.
	gate.acked[newFP] = true
	changed, err := ca.Advance(gate)
	if !changed || err != nil {
		t.Fatalf("Advance with ACKs: %v %v", changed, err)
	}
	st = ca.Status(gate)
	if st.Phase != PhaseReissuing || ca.Fingerprint() != newFP {
		t.Fatalf("after ACKs: phase %s, signing root %s", st.Phase, ca.Fingerprint())
	}
	if st.Rotation.StaleLeaves != 1 || !ca.NextRenewal().Equal(ca.clock.Now()) {
		t.Errorf("stale leaves %d, NextRenewal %s; want 1 and now", st.Rotation.StaleLeaves, ca.NextRenewal())
	}
	wantUntil := ca.clock.Now().Add(24 * time.Hour) // later than the old leaf's NotAfter
	if !st.Rotation.OldLeavesValidUntil.Equal(wantUntil) {
		t.Errorf("OldLeavesValidUntil %s, want %s", st.Rotation.OldLeavesValidUntil, wantUntil)
	}
	newLeaf, err := ca.Leaf(testID, []string{"cart"})
	if err != nil {
		t.Fatal(err)
	}
	if newLeaf == oldLeaf || newLeaf.Generation() == oldGen {
		t.Fatal("leaf not reissued under the new generation")
	}
	newOnly := x509.NewCertPool()
	newOnly.AddCert(ca.RootCert())
	if err := verifyLeaf(t, newLeaf.CertPEM, newOnly, ca.clock.Now(), x509.ExtKeyUsageServerAuth); err != nil {
		t.Errorf("new leaf does not chain to the new root: %v", err)
	}
	// Old and new leaves both verify against the bundle during the overlap.
	for _, l := range []*Leaf{oldLeaf, newLeaf} {
		if err := verifyLeaf(t, l.CertPEM, ca.RootPool(), ca.clock.Now(), x509.ExtKeyUsageClientAuth); err != nil {
			t.Errorf("leaf %s does not verify against the bundle: %v", l.Serial.Text(16), err)
		}
	}
	// meshd's own certificate stays under the old root: proxies bootstrapped
	// before the rotation verify meshd with it.
	st2, err := handshake(t, ca, cfg, "localhost", 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := fingerprint(st2.VerifiedChains[0][len(st2.VerifiedChains[0])-1]); got != oldFP {
		t.Errorf("xDS server certificate chains to %s during the rotation, want the old root", got)
	}

	// Step 4: a cached leaf is still from the old generation: wait.
	ca.mu.Lock()
	ca.leaves[testID.SPIFFEID()] = oldLeaf // put the old leaf back: Leaf above replaced it
	ca.mu.Unlock()
	if changed, _ := ca.Advance(gate); changed {
		t.Fatal("rotation finished while a cached leaf is on the old chain")
	}
	if _, err := ca.Leaf(testID, []string{"cart"}); err != nil {
		t.Fatal(err)
	}
	// Step 5: a proxy connected meanwhile that has not ACKed: wait.
	gate.acked[newFP] = false
	if changed, _ := ca.Advance(gate); changed {
		t.Fatal("rotation finished while a proxy has not ACKed the new bundle")
	}
	// Step 6: nothing depends on the old generation for signing: the
	// rotation is over, long before old leaves expire; the old root stays
	// trusted (retiring) and meshd's own certificate stays under it.
	gate.acked[newFP] = true
	if changed, err := ca.Advance(gate); !changed || err != nil {
		t.Fatalf("finishing Advance: %v %v", changed, err)
	}
	st = ca.Status(gate)
	if st.Phase != PhaseRetiring || st.Rotation != nil || len(st.Retiring) != 1 ||
		st.Retiring[0].Generation != oldGen || !st.Retiring[0].Until.Equal(wantUntil) || st.Retiring[0].RootSHA256 != oldFP {
		t.Fatalf("after finishing: %+v", st)
	}
	if got := bundleRoots(t, ca.RootCertPEM()); !slices.Equal(got, []string{oldFP, newFP}) {
		t.Errorf("bundle while retiring %v, want both roots", got)
	}
	if got := serverRoot(t, ca); got != oldFP {
		t.Errorf("xDS server certificate chains to %s while the old root retires, want the old root", got)
	}
	// Step 7: the old root leaves when its leaves have expired.
	ca.clock.Set(wantUntil.Add(-time.Second))
	if changed, _ := ca.Advance(gate); changed {
		t.Fatal("old root removed while a leaf under it may still be valid")
	}
	ca.clock.Set(wantUntil)
	if _, err := ca.Leaf(testID, []string{"cart"}); err != nil { // reissued at half-life: still new gen
		t.Fatal(err)
	}
	if changed, err := ca.Advance(gate); !changed || err != nil {
		t.Fatalf("retiring Advance: %v %v", changed, err)
	}
	st = ca.Status(gate)
	if st.Phase != PhaseIdle || st.Rotation != nil || len(st.Retiring) != 0 {
		t.Fatalf("after retiring: %+v", st)
	}
	if got := bundleRoots(t, ca.RootCertPEM()); !slices.Equal(got, []string{newFP}) {
		t.Errorf("bundle after completion %v, want only the new root", got)
	}
	if onDisk := mustRead(t, filepath.Join(ca.opts.DataDir, "ca", rootCertFile)); !bytes.Equal(onDisk, ca.RootCertPEM()) {
		t.Error("bundle file still holds the old root")
	}
	checkRetired(t, ca, oldGen)
	if err := verifyLeaf(t, oldLeaf.CertPEM, ca.RootPool(), ca.clock.Now().Add(-time.Hour), x509.ExtKeyUsageServerAuth); err == nil {
		t.Error("old leaf still verifies against the bundle")
	}
	if got := serverRoot(t, ca); got != newFP {
		t.Errorf("xDS server certificate chains to %s after the rotation, want the new root", got)
	}
	var state caState
	if err := json.Unmarshal(mustRead(t, filepath.Join(ca.opts.DataDir, "ca", stateFile)), &state); err != nil {
		t.Fatal(err)
	}
	if state.Rotation != nil || len(state.Trusted) != 1 || state.Signing != state.Trusted[0] || len(state.Retiring) != 0 {
		t.Errorf("persisted state after completion: %+v", state)
	}
	// And it reloads.
	if re, err := LoadOrCreate(ca.opts); err != nil || re.Fingerprint() != newFP {
		t.Errorf("reload after rotation: %v", err)
	}
}

func TestIntermediateRotation(t *testing.T) {
	ca := newTestCA(t)
	oldInter := ca.IntermediateCert()
	bundle := ca.RootCertPEM()
	oldLeaf, err := ca.Leaf(testID, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.RotateIntermediate(); err != nil {
		t.Fatal(err)
	}
	st := ca.Status(nil)
	if st.Phase != PhaseReissuing || st.Rotation.Kind != "intermediate" {
		t.Fatalf("intermediate rotation: %+v", st)
	}
	if !bytes.Equal(ca.RootCertPEM(), bundle) {
		t.Error("intermediate rotation changed the bundle")
	}
	if ca.IntermediateCert().Equal(oldInter) {
		t.Fatal("still signing with the old intermediate")
	}
	l, err := ca.Leaf(testID, nil)
	if err != nil {
		t.Fatal(err)
	}
	if l == oldLeaf {
		t.Fatal("leaf not reissued")
	}
	c := parseCert(t, l.CertPEM)
	if err := c.CheckSignatureFrom(ca.IntermediateCert()); err != nil {
		t.Errorf("reissued leaf not signed by the new intermediate: %v", err)
	}
	oldGen := ca.Status(nil).Rotation.From
	// Peers trust the root, and old leaves carry their intermediate: once
	// no cached leaf is from the old intermediate, nothing depends on it.
	ca.mu.Lock()
	ca.leaves[testID.SPIFFEID()] = oldLeaf
	ca.mu.Unlock()
	if changed, _ := ca.Advance(nil); changed {
		t.Fatal("completed while a cached leaf is from the old intermediate")
	}
	if _, err := ca.Leaf(testID, nil); err != nil {
		t.Fatal(err)
	}
	if changed, err := ca.Advance(nil); !changed || err != nil {
		t.Fatalf("completion: %v %v", changed, err)
	}
	if st := ca.Status(nil); st.Phase != PhaseIdle || len(st.Retiring) != 0 {
		t.Errorf("not idle after completion: %+v", st)
	}
	if !bytes.Equal(ca.RootCertPEM(), bundle) {
		t.Error("intermediate rotation changed the bundle")
	}
	checkRetired(t, ca, oldGen)
	// The old leaf still verifies against the bundle: it carries its
	// intermediate, and the root is the same.
	if err := verifyLeaf(t, oldLeaf.CertPEM, ca.RootPool(), ca.clock.Now(), x509.ExtKeyUsageServerAuth); err != nil {
		t.Errorf("old leaf no longer verifies after the intermediate rotation: %v", err)
	}
	// The root key survives in the new generation: the next rotation works.
	if _, err := os.Stat(genPath(ca, genRootKeyFile)); err != nil {
		t.Errorf("root key lost with the retired intermediate: %v", err)
	}
}

func TestIntermediateRenewedAtHalfLife(t *testing.T) {
	ca := newTestCA(t)
	inter := ca.IntermediateCert()
	half := inter.NotBefore.Add(inter.NotAfter.Sub(inter.NotBefore) / 2)
	ca.clock.Set(half.Add(-time.Second))
	if started, err := ca.RenewIntermediateIfDue(); started || err != nil {
		t.Fatalf("before half-life: %v %v", started, err)
	}
	ca.clock.Set(half)
	if started, err := ca.RenewIntermediateIfDue(); !started || err != nil {
		t.Fatalf("at half-life: %v %v", started, err)
	}
	if st := ca.Status(nil); st.Rotation == nil || st.Rotation.Kind != "intermediate" || ca.IntermediateCert().Equal(inter) {
		t.Fatalf("no intermediate rotation: %+v", st.Rotation)
	}
	if started, _ := ca.RenewIntermediateIfDue(); started {
		t.Error("a second rotation started while one runs")
	}
}

// checkRetired: generation id left the data directory except for its
// certificates in retired/.
func checkRetired(t *testing.T, ca *testCA, id string) {
	t.Helper()
	if _, err := os.Stat(filepath.Join(ca.opts.DataDir, "ca", id)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("generation directory %s still exists (%v)", id, err)
	}
	retired := filepath.Join(ca.opts.DataDir, "ca", retiredDir, id)
	entries, err := os.ReadDir(retired)
	if err != nil {
		t.Fatalf("old generation not retired: %v", err)
	}
	for _, e := range entries {
		if n := e.Name(); n != genRootCertFile && n != genInterCertFile {
			t.Errorf("retired generation holds %s; want certificates only", n)
		}
		if holdsPrivateKey(filepath.Join(retired, e.Name())) {
			t.Errorf("retired generation holds a private key in %s", e.Name())
		}
	}
	if len(entries) != 2 {
		t.Errorf("retired generation holds %d files, want the two certificates", len(entries))
	}
}

func TestAbortRootRotationWhilePropagating(t *testing.T) {
	ca := newTestCA(t)
	oldFP, bundle := ca.Fingerprint(), ca.RootCertPEM()
	if err := ca.AbortRotation("root"); !errors.Is(err, ErrNoRotation) {
		t.Fatalf("abort with nothing running: %v", err)
	}
	if err := ca.RotateRoot(); err != nil {
		t.Fatal(err)
	}
	newGen := ca.Status(nil).Rotation.To
	if err := ca.AbortRotation("intermediate"); !errors.Is(err, ErrAbortRefused) || !strings.Contains(err.Error(), "rotate-root --abort") {
		t.Fatalf("abort of the wrong kind: %v", err)
	}
	if err := ca.AbortRotation("root"); err != nil {
		t.Fatal(err)
	}
	st := ca.Status(nil)
	if st.Phase != PhaseIdle || st.Rotation != nil || ca.Fingerprint() != oldFP || !bytes.Equal(ca.RootCertPEM(), bundle) {
		t.Fatalf("after abort: %+v", st)
	}
	if onDisk := mustRead(t, filepath.Join(ca.opts.DataDir, "ca", rootCertFile)); !bytes.Equal(onDisk, bundle) {
		t.Error("bundle file still holds the aborted root")
	}
	// Nothing was signed by it: its directory and keys are gone, not retired.
	for _, d := range []string{filepath.Join(ca.opts.DataDir, "ca", newGen), filepath.Join(ca.opts.DataDir, "ca", retiredDir, newGen)} {
		if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s exists after the abort (%v)", d, err)
		}
	}
	// The next rotation may start at once, and a restart sees no rotation.
	if err := ca.RotateRoot(); err != nil {
		t.Fatalf("rotation after an abort: %v", err)
	}
	re, err := LoadOrCreate(ca.opts)
	if err != nil || re.Status(nil).Phase != PhasePropagating {
		t.Fatalf("reload: %v", err)
	}
}

func TestAbortRootRotationAfterSwitchRollsBack(t *testing.T) {
	ca := newTestCA(t)
	oldFP, oldGen := ca.Fingerprint(), ca.signing().id
	if err := ca.RotateRoot(); err != nil {
		t.Fatal(err)
	}
	if changed, err := ca.Advance(nil); !changed || err != nil {
		t.Fatalf("switch: %v %v", changed, err)
	}
	newFP, newGen := ca.Fingerprint(), ca.signing().id
	newLeaf, err := ca.Leaf(testID, nil) // handed out under the new root
	if err != nil {
		t.Fatal(err)
	}
	ca.clock.Advance(time.Hour)
	if err := ca.AbortRotation("root"); err != nil {
		t.Fatal(err)
	}
	st := ca.Status(nil)
	if ca.Fingerprint() != oldFP || st.Phase != PhaseReissuing || st.Rotation.Aborted.IsZero() || st.Rotation.To != oldGen || st.Rotation.From != newGen {
		t.Fatalf("after abort: signing %s, %+v", ca.Fingerprint(), st.Rotation)
	}
	if err := ca.AbortRotation("root"); !errors.Is(err, ErrAbortRefused) {
		t.Errorf("second abort: %v", err)
	}
	if err := ca.RotateIntermediate(); !errors.Is(err, ErrRotationInProgress) {
		t.Errorf("rotation during a rollback: %v", err)
	}
	// The leaf under the new root stays valid: its root stays trusted.
	if got := bundleRoots(t, ca.RootCertPEM()); !slices.Equal(got, []string{oldFP, newFP}) {
		t.Fatalf("bundle during rollback %v", got)
	}
	if st.Rotation.StaleLeaves != 1 {
		t.Errorf("stale leaves %d, want the new-root leaf", st.Rotation.StaleLeaves)
	}
	back, err := ca.Leaf(testID, nil)
	if err != nil || back.Generation() != oldGen {
		t.Fatalf("leaf not reissued under the old generation: %v", err)
	}
	if changed, err := ca.Advance(nil); !changed || err != nil {
		t.Fatalf("finishing the rollback: %v %v", changed, err)
	}
	st = ca.Status(nil)
	wantUntil := t0.Add(time.Hour).Add(24 * time.Hour)
	if st.Phase != PhaseRetiring || len(st.Retiring) != 1 || st.Retiring[0].Generation != newGen || !st.Retiring[0].Until.Equal(wantUntil) {
		t.Fatalf("after the rollback: %+v (want %s retiring until %s)", st, newGen, wantUntil)
	}
	if err := verifyLeaf(t, newLeaf.CertPEM, ca.RootPool(), ca.clock.Now(), x509.ExtKeyUsageServerAuth); err != nil {
		t.Errorf("a leaf of the aborted root no longer verifies while it is valid: %v", err)
	}
	ca.clock.Set(wantUntil)
	if changed, err := ca.Advance(nil); !changed || err != nil {
		t.Fatalf("retire: %v %v", changed, err)
	}
	if got := bundleRoots(t, ca.RootCertPEM()); !slices.Equal(got, []string{oldFP}) {
		t.Errorf("bundle after the rollback retired %v, want the old root only", got)
	}
	checkRetired(t, ca, newGen)
}

func TestAbortIntermediateRotation(t *testing.T) {
	ca := newTestCA(t)
	oldInter := ca.IntermediateCert()
	if err := ca.RotateIntermediate(); err != nil {
		t.Fatal(err)
	}
	newGen := ca.signing().id
	if err := ca.AbortRotation("root"); !errors.Is(err, ErrAbortRefused) {
		t.Errorf("root abort of an intermediate rotation: %v", err)
	}
	if err := ca.AbortRotation("intermediate"); err != nil {
		t.Fatal(err)
	}
	if !ca.IntermediateCert().Equal(oldInter) {
		t.Fatal("the old intermediate does not sign again")
	}
	if changed, err := ca.Advance(nil); !changed || err != nil {
		t.Fatalf("finish: %v %v", changed, err)
	}
	if st := ca.Status(nil); st.Phase != PhaseIdle {
		t.Fatalf("after the rollback: %+v", st)
	}
	checkRetired(t, ca, newGen)
}

// A finished root rotation does not block the next one while its old root
// waits for its leaves to expire; the bundle is bounded.
func TestNextRotationWhileOldRootRetires(t *testing.T) {
	ca := newTestCA(t)
	roots := []string{ca.Fingerprint()}
	for i := 1; i < maxTrustedRoots; i++ {
		if err := ca.RotateRoot(); err != nil {
			t.Fatalf("rotation %d: %v", i, err)
		}
		if _, err := ca.Advance(nil); err != nil { // switch
			t.Fatal(err)
		}
		if changed, err := ca.Advance(nil); !changed || err != nil { // finish: nothing cached
			t.Fatalf("finish %d: %v %v", i, changed, err)
		}
		roots = append(roots, ca.Fingerprint())
		if st := ca.Status(nil); st.Phase != PhaseRetiring || len(st.Retiring) != i {
			t.Fatalf("after rotation %d: %+v", i, st)
		}
		ca.clock.Advance(time.Minute)
	}
	if got := bundleRoots(t, ca.RootCertPEM()); !slices.Equal(got, roots) {
		t.Fatalf("bundle %v, want %v", got, roots)
	}
	if err := ca.RotateRoot(); !errors.Is(err, ErrTooManyRoots) || !strings.Contains(err.Error(), "already trusted") {
		t.Fatalf("rotation past %d roots: %v", maxTrustedRoots, err)
	}
	// An intermediate rotation adds no root: allowed.
	if err := ca.RotateIntermediate(); err != nil {
		t.Fatal(err)
	}
	// The oldest root retires first; the others follow a minute apart.
	ca.clock.Set(t0.Add(24 * time.Hour))
	if _, err := ca.Advance(nil); err != nil {
		t.Fatal(err)
	}
	if got := bundleRoots(t, ca.RootCertPEM()); !slices.Equal(got, roots[1:]) {
		t.Fatalf("bundle after the first retirement %v, want %v", got, roots[1:])
	}
	ca.clock.Set(t0.Add(25 * time.Hour))
	if _, err := ca.Advance(nil); err != nil {
		t.Fatal(err)
	}
	if got := bundleRoots(t, ca.RootCertPEM()); !slices.Equal(got, roots[len(roots)-1:]) {
		t.Fatalf("bundle after all retirements %v", got)
	}
}
