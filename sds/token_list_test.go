package sds

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestTokenRegister(t *testing.T) {
	clock := newFakeClock(time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC))
	ta := newTokens(t, t.TempDir(), clock)
	create := func(svc string, ttl time.Duration) TokenClaims {
		t.Helper()
		_, c, err := ta.Create("default", svc, ttl)
		if err != nil {
			t.Fatal(err)
		}
		if err := ta.Record(c); err != nil {
			t.Fatal(err)
		}
		return c
	}
	short := create("web", time.Hour)
	clock.Advance(time.Minute)
	long := create("api", 48*time.Hour)
	if err := ta.Revoke(long); err != nil {
		t.Fatal(err)
	}
	// A torn line is skipped, not fatal.
	f, err := os.OpenFile(ta.issuedPath(), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`{"id":"trunc`)
	f.Close()

	recs, err := ta.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 || recs[0].ID != long.ID || recs[1].ID != short.ID {
		t.Fatalf("List = %+v, want api then web (newest first)", recs)
	}
	if recs[0].State(clock.Now()) != "revoked" || recs[1].State(clock.Now()) != "valid" {
		t.Errorf("states %q %q", recs[0].State(clock.Now()), recs[1].State(clock.Now()))
	}
	clock.Advance(2 * time.Hour)
	if recs[1].State(clock.Now()) != "expired" {
		t.Errorf("web after 2h: %q", recs[1].State(clock.Now()))
	}

	// Past the size bound the register is rewritten without expired tokens.
	old := issuedCompactSize
	issuedCompactSize = 1
	t.Cleanup(func() { issuedCompactSize = old })
	third := create("db", time.Hour)
	recs, err = ta.List()
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, r := range recs {
		ids = append(ids, r.ID)
	}
	if len(recs) != 2 || recs[0].ID != third.ID || recs[1].ID != long.ID {
		t.Errorf("after compaction %v, want db and api (web expired)", ids)
	}
	if fi, err := os.Stat(filepath.Join(ta.dir, issuedFileName)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("register mode: %v %v", fi, err)
	}
}
