package sds

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func newTokens(t *testing.T, dir string, clock *fakeClock) *TokenAuthority {
	t.Helper()
	ta, err := LoadOrCreateTokens(dir, "cluster.local", false, clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	return ta
}

func TestTokenRoundTripAndRefusals(t *testing.T) {
	dir := t.TempDir()
	clock := newFakeClock(t0)
	ta := newTokens(t, dir, clock)
	if m := fileMode(t, filepath.Join(dir, tokensDirName, tokenKeyFile)); m != 0o600 {
		t.Errorf("token key mode %04o, want 0600", m)
	}
	tok, claims, err := ta.Create("shop", "cart", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ta.Verify(string(tok))
	if err != nil {
		t.Fatalf("fresh token refused: %v", err)
	}
	if got != claims || got.Namespace != "shop" || got.Service != "cart" || !got.Expires.Equal(t0.Add(time.Hour)) || len(got.ID) != 24 {
		t.Errorf("claims %+v, want shop/cart expiring t0+1h", got)
	}

	// Another process opening the same data dir verifies it (meshd after
	// meshctl created the token).
	ro, err := LoadOrCreateTokens(dir, "cluster.local", true, clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ro.Verify(string(tok)); err != nil {
		t.Errorf("same key, other instance: %v", err)
	}

	s := string(tok)
	parts := strings.Split(s, ".")
	// Tamper with the claims: claim another service with the old signature.
	forged, _ := json.Marshal(TokenClaims{TrustDomain: "cluster.local", Namespace: "shop", Service: "payments", IssuedAt: t0, Expires: t0.Add(time.Hour), ID: claims.ID})
	tampered := parts[0] + "." + base64.RawURLEncoding.EncodeToString(forged) + "." + parts[2]
	repl := byte('A')
	if s[len(s)-2] == 'A' {
		repl = 'B'
	}
	flipped := s[:len(s)-2] + string(repl) + s[len(s)-1:]
	other := newTokens(t, t.TempDir(), clock)
	otherTok, _, _ := other.Create("shop", "cart", time.Hour)
	for name, bad := range map[string]string{
		"tampered claims":  tampered,
		"flipped sig":      flipped,
		"other meshd":      string(otherTok),
		"garbage":          "hello",
		"no signature":     parts[0] + "." + parts[1],
		"empty":            "",
		"huge":             tokenPrefix + strings.Repeat("A", 5000) + ".AA",
		"unknown field":    parts[0] + "." + base64.RawURLEncoding.EncodeToString([]byte(`{"admin":true}`)) + "." + parts[2],
		"base64 garbage":   parts[0] + ".!!!." + parts[2],
		"sig not base64":   parts[0] + "." + parts[1] + ".!!!",
		"wrong version":    "meshd2." + parts[1] + "." + parts[2],
		"claims truncated": parts[0] + "." + parts[1][:10] + "." + parts[2],
	} {
		if _, err := ta.Verify(bad); err == nil {
			t.Errorf("%s: token accepted", name)
		} else if name == "tampered claims" && !errors.Is(err, ErrTokenSignature) {
			t.Errorf("%s: %v, want a signature error", name, err)
		}
	}

	// Expiry.
	clock.Set(t0.Add(time.Hour))
	if _, err := ta.Verify(s); !errors.Is(err, ErrTokenExpired) {
		t.Errorf("expired token: %v", err)
	}
	clock.Set(t0)

	// Revocation, seen by the other instance without a restart.
	if _, err := ro.Verify(s); err != nil {
		t.Fatal(err)
	}
	if err := ta.Revoke(claims); err != nil {
		t.Fatal(err)
	}
	if _, err := ro.Verify(s); !errors.Is(err, ErrTokenRevoked) {
		t.Errorf("revoked token: %v", err)
	}
	tok2, _, _ := ta.Create("shop", "cart", time.Hour)
	if _, err := ro.Verify(string(tok2)); err != nil {
		t.Errorf("revoking one token refused another: %v", err)
	}
	// A corrupt revocation list fails closed.
	if err := os.WriteFile(filepath.Join(dir, tokensDirName, revokedFileName), []byte("{"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ro.Verify(string(tok2)); err == nil {
		t.Error("token accepted with an unreadable revocation list")
	}
}

func TestTokenOtherTrustDomainAndInput(t *testing.T) {
	dir := t.TempDir()
	clock := newFakeClock(t0)
	a := newTokens(t, dir, clock)
	tok, _, _ := a.Create("shop", "cart", time.Hour)
	b, err := LoadOrCreateTokens(dir, "other.local", true, clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Verify(string(tok)); err == nil || !strings.Contains(err.Error(), "trust domain") {
		t.Errorf("token for another trust domain: %v", err)
	}
	for _, c := range [][2]string{{"", "cart"}, {"shop", "a/b"}} {
		if _, _, err := a.Create(c[0], c[1], time.Hour); err == nil {
			t.Errorf("Create(%q, %q) accepted", c[0], c[1])
		}
	}
	if _, _, err := a.Create("shop", "cart", 0); err == nil {
		t.Error("zero ttl accepted")
	}
	if _, err := LoadOrCreateTokens(t.TempDir(), "cluster.local", true, nil); err == nil || !strings.Contains(err.Error(), "start meshd once") {
		t.Errorf("NoCreate without a key: %v", err)
	}
}

func TestTokenRedacted(t *testing.T) {
	ta := newTokens(t, t.TempDir(), newFakeClock(t0))
	tok, _, _ := ta.Create("shop", "cart", time.Hour)
	sig := strings.Split(string(tok), ".")[2]
	var buf bytes.Buffer
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("x", "token", tok)
	js, _ := json.Marshal(struct{ T Token }{tok})
	outs := []string{buf.String(), string(js)}
	for _, v := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x"} {
		outs = append(outs, fmt.Sprintf(v, tok), fmt.Sprintf(v, struct{ T Token }{tok}))
	}
	for _, o := range outs {
		if strings.Contains(o, sig) || !strings.Contains(o, redacted) {
			t.Errorf("token not redacted: %s", o)
		}
	}
}

// TestTokenVerifyCache: a verified token's signature is not checked again
// (the cache answers), but expiry and revocation still are on every Verify,
// and a token that differs in one character is verified afresh.
func TestTokenVerifyCache(t *testing.T) {
	clock := newFakeClock(t0)
	ta := newTokens(t, t.TempDir(), clock)
	tok, claims, err := ta.Create("shop", "cart", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ta.Verify(string(tok)); err != nil {
		t.Fatal(err)
	}
	// Swap the verification key: only a cached token can still pass.
	other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	realPub := ta.pub
	ta.pub = &other.PublicKey
	if _, err := ta.Verify(string(tok)); err != nil {
		t.Fatalf("a verified token was checked again instead of answered from the cache: %v", err)
	}
	fresh, _, err := ta.Create("shop", "cart", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ta.Verify(string(fresh)); !errors.Is(err, ErrTokenSignature) {
		t.Fatalf("an unseen token was not verified: %v", err)
	}
	ta.pub = realPub
	s := string(tok)
	// A character in the middle of the signature: the last base64 character
	// may only carry padding bits that decoding ignores.
	i := strings.LastIndexByte(s, '.') + 10
	c := byte('A')
	if s[i] == 'A' {
		c = 'B'
	}
	tampered := s[:i] + string(c) + s[i+1:]
	if _, err := ta.Verify(tampered); err == nil {
		t.Fatal("a token differing in one signature character was accepted")
	}
	if err := ta.Revoke(claims); err != nil {
		t.Fatal(err)
	}
	if _, err := ta.Verify(string(tok)); !errors.Is(err, ErrTokenRevoked) {
		t.Fatalf("cached token after revocation: %v", err)
	}
	ok2, _, err := ta.Create("shop", "web", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ta.Verify(string(ok2)); err != nil {
		t.Fatal(err)
	}
	clock.Advance(2 * time.Minute)
	if _, err := ta.Verify(string(ok2)); !errors.Is(err, ErrTokenExpired) {
		t.Fatalf("cached token after expiry: %v", err)
	}
}

// TestRevocationListRefresh: Refresh reports a change of the list made by
// another process (meshctl token revoke) once, RevokedCached answers from
// it; a revoked id stays listed while certificates issued through it may
// still be valid (revokedRetention after its expiry), then is dropped.
func TestRevocationListRefresh(t *testing.T) {
	dir := t.TempDir()
	clock := newFakeClock(t0)
	meshd, meshctl := newTokens(t, dir, clock), newTokens(t, dir, clock)
	_, short, _ := meshctl.Create("shop", "cart", time.Hour)
	_, long, _ := meshctl.Create("shop", "cart", 1000*time.Hour)
	if changed, err := meshd.Refresh(); changed || err != nil {
		t.Fatalf("Refresh without a list: %v %v", changed, err)
	}
	if err := meshctl.Revoke(short); err != nil {
		t.Fatal(err)
	}
	if meshd.RevokedCached(short.ID) {
		t.Error("the cached list changed without a Refresh")
	}
	if changed, err := meshd.Refresh(); !changed || err != nil || !meshd.RevokedCached(short.ID) || meshd.RevokedCached(long.ID) {
		t.Fatalf("Refresh after a revocation: changed=%v err=%v", changed, err)
	}
	if changed, _ := meshd.Refresh(); changed {
		t.Error("a second Refresh reports a change")
	}
	// A month after the short token expired its id is still listed: a
	// node agent's certificate issued through it may still be valid.
	clock.Advance(30 * 24 * time.Hour)
	if err := meshctl.Revoke(long); err != nil {
		t.Fatal(err)
	}
	if r, err := meshd.IsRevoked(short.ID); !r || err != nil {
		t.Errorf("expired revoked token dropped after a month: %v %v", r, err)
	}
	clock.Advance(revokedRetention)
	if err := meshctl.Revoke(long); err != nil { // rewrites the list, pruning it
		t.Fatal(err)
	}
	if r, _ := meshd.IsRevoked(short.ID); r {
		t.Error("a token expired for longer than the retention is still listed")
	}
	if r, _ := meshd.IsRevoked(long.ID); !r {
		t.Error("the long token's revocation was lost")
	}
}
