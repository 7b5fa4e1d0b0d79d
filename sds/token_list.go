package sds

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/meshd/meshd/internal/atomicfile"
)

// The token register: tokens are bearer credentials that meshd never keeps,
// so to list them (meshctl token list) whoever signs one records its claims
// — never the token — as one JSON line appended to tokens/issued.jsonl.
// Appends of one short line are atomic, so concurrent meshctl runs do not
// interleave; the file is rewritten without expired entries when it grows
// past issuedCompactSize.
const issuedFileName = "issued.jsonl"

var issuedCompactSize int64 = 256 << 10 // a var for the test

// TokenRecord is what is known of a token: its claims, and its revocation.
type TokenRecord struct {
	ID        string     `json:"id"`
	Namespace string     `json:"namespace"`
	Service   string     `json:"service"`
	IssuedAt  time.Time  `json:"issuedAt,omitzero"`
	Expires   time.Time  `json:"expires,omitzero"`
	RevokedAt *time.Time `json:"revokedAt,omitempty"`
	// Recorded is false for a revoked token whose signing was not recorded
	// (signed before the register existed, or where the data directory was
	// read-only): only the revocation list knows it.
	Recorded bool `json:"recorded"`
}

// State is valid, expired or revoked at now.
func (r TokenRecord) State(now time.Time) string {
	switch {
	case r.RevokedAt != nil:
		return "revoked"
	case !r.Expires.IsZero() && !now.Before(r.Expires):
		return "expired"
	}
	return "valid"
}

func (t *TokenAuthority) issuedPath() string { return filepath.Join(t.dir, issuedFileName) }

// Record adds a signed token's claims to the register. Signing does not
// depend on it (a bootstrap container may see meshd's data directory
// read-only): callers report a failure as a warning.
func (t *TokenAuthority) Record(c TokenClaims) error {
	line, err := json.Marshal(TokenRecord{ID: c.ID, Namespace: c.Namespace, Service: c.Service, IssuedAt: c.IssuedAt, Expires: c.Expires})
	if err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	f, err := os.OpenFile(t.issuedPath(), os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("recording token %s: %w", c.ID, err)
	}
	line = append(line, '\n')
	// After a torn write (a full disk, a killed meshctl) start a new line,
	// so only the torn entry is lost.
	if info, err := f.Stat(); err == nil && info.Size() > 0 {
		last := make([]byte, 1)
		if _, err := f.ReadAt(last, info.Size()-1); err == nil && last[0] != '\n' {
			line = append([]byte{'\n'}, line...)
		}
	}
	_, werr := f.Write(line)
	info, serr := f.Stat()
	if err := errors.Join(werr, f.Close()); err != nil {
		return fmt.Errorf("recording token %s in %s: %w", c.ID, t.issuedPath(), err)
	}
	if serr == nil && info.Size() > issuedCompactSize {
		return t.compactIssued()
	}
	return nil
}

// compactIssued rewrites the register without expired tokens. Called with
// t.mu held.
func (t *TokenAuthority) compactIssued() error {
	recs, err := t.readIssued()
	if err != nil {
		return err
	}
	now := t.clock()
	var b bytes.Buffer
	for _, r := range recs {
		if r.State(now) == "expired" {
			continue
		}
		line, _ := json.Marshal(r)
		b.Write(append(line, '\n'))
	}
	return atomicfile.Write(t.issuedPath(), b.Bytes(), 0o600)
}

// readIssued reads the register; lines that do not parse (a torn write) are
// skipped.
func (t *TokenAuthority) readIssued() ([]TokenRecord, error) {
	f, err := os.Open(t.issuedPath())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []TokenRecord
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r TokenRecord
		if json.Unmarshal(sc.Bytes(), &r) == nil && r.ID != "" {
			r.Recorded = true
			out = append(out, r)
		}
	}
	return out, sc.Err()
}

// List returns every recorded or revoked token, newest first.
func (t *TokenAuthority) List() ([]TokenRecord, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	recs, err := t.readIssued()
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", t.issuedPath(), err)
	}
	revoked, err := t.readRevoked()
	if err != nil {
		return nil, err
	}
	byID := map[string]int{}
	for i, r := range recs {
		byID[r.ID] = i
	}
	for _, e := range revoked.Revoked {
		at := e.RevokedAt
		if i, ok := byID[e.ID]; ok {
			recs[i].RevokedAt = &at
			continue
		}
		recs = append(recs, TokenRecord{ID: e.ID, Namespace: e.Namespace, Service: e.Service, Expires: e.Expires, RevokedAt: &at})
	}
	slices.SortStableFunc(recs, func(a, b TokenRecord) int {
		if c := b.IssuedAt.Compare(a.IssuedAt); c != 0 {
			return c
		}
		return b.Expires.Compare(a.Expires)
	})
	return recs, nil
}
