package sds

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
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

	// Step 4: old leaves may still be valid: wait.
	ca.clock.Set(wantUntil.Add(-time.Second))
	if changed, _ := ca.Advance(gate); changed {
		t.Fatal("old root removed while a leaf under it may still be valid")
	}
	// Step 5: a proxy connected meanwhile that has not ACKed: wait.
	ca.clock.Set(wantUntil)
	if _, err := ca.Leaf(testID, []string{"cart"}); err != nil { // reissued at half-life: still new gen
		t.Fatal(err)
	}
	gate.acked[newFP] = false
	if changed, _ := ca.Advance(gate); changed {
		t.Fatal("old root removed while a proxy has not ACKed the new bundle")
	}
	// Step 6: done.
	gate.acked[newFP] = true
	if changed, err := ca.Advance(gate); !changed || err != nil {
		t.Fatalf("final Advance: %v %v", changed, err)
	}
	st = ca.Status(gate)
	if st.Phase != PhaseIdle || st.Rotation != nil {
		t.Fatalf("after completion: %+v", st)
	}
	if got := bundleRoots(t, ca.RootCertPEM()); !slices.Equal(got, []string{newFP}) {
		t.Errorf("bundle after completion %v, want only the new root", got)
	}
	if onDisk := mustRead(t, filepath.Join(ca.opts.DataDir, "ca", rootCertFile)); !bytes.Equal(onDisk, ca.RootCertPEM()) {
		t.Error("bundle file still holds the old root")
	}
	retired := filepath.Join(ca.opts.DataDir, "ca", retiredDir, oldGen)
	if _, err := os.Stat(filepath.Join(retired, genRootCertFile)); err != nil {
		t.Errorf("old generation not retired: %v", err)
	}
	for _, k := range []string{genRootKeyFile, genInterKeyFile} {
		if _, err := os.Stat(filepath.Join(retired, k)); err == nil {
			t.Errorf("retired generation kept %s", k)
		}
	}
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
	if state.Rotation != nil || len(state.Trusted) != 1 || state.Signing != state.Trusted[0] {
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
	if changed, _ := ca.Advance(nil); changed {
		t.Fatal("completed while old leaves are valid")
	}
	ca.clock.Set(oldLeaf.NotAfter)
	if changed, err := ca.Advance(nil); !changed || err != nil {
		t.Fatalf("completion: %v %v", changed, err)
	}
	if ca.Status(nil).Phase != PhaseIdle {
		t.Error("not idle after completion")
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
