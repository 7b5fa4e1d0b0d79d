package sds

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/meshd/meshd/internal/atomicfile"
	"github.com/meshd/meshd/mesh"
)

// Bootstrap tokens authenticate a proxy on the xDS channel. A token names one
// service (namespace + name) and is signed by meshd's token key, so whoever
// holds it may fetch that service's configuration and secrets and nothing
// else. Tokens expire; revocation is a list of token ids in the data
// directory, re-read whenever the file changes.
//
// Format: "meshd1." + base64url(JSON claims) + "." + base64url(ASN.1 ECDSA
// P-256 signature over SHA-256 of the first two parts). Deliberately not JWT:
// no algorithm field to negotiate, one key type, nothing to misconfigure.

// File names inside DataDir/tokens.
const (
	tokensDirName   = "tokens"
	tokenKeyFile    = "signing-key.pem"
	revokedFileName = "revoked.json"
	tokenPrefix     = "meshd1."
	// maxTokenLen bounds what the verifier parses from untrusted metadata.
	maxTokenLen = 4096
)

// TokenClaims is what a token grants.
type TokenClaims struct {
	TrustDomain string    `json:"td"`
	Namespace   string    `json:"ns"`
	Service     string    `json:"svc"`
	IssuedAt    time.Time `json:"iat"`
	Expires     time.Time `json:"exp"`
	ID          string    `json:"jti"`
}

// Token is a signed bootstrap token. It formats as "[redacted]" everywhere
// (like PrivateKeyPEM): it is a bearer credential.
type Token string

func (Token) String() string               { return redacted }
func (Token) GoString() string             { return redacted }
func (Token) Format(f fmt.State, _ rune)   { _, _ = f.Write([]byte(redacted)) }
func (Token) MarshalJSON() ([]byte, error) { return []byte(`"` + redacted + `"`), nil }
func (Token) MarshalText() ([]byte, error) { return []byte(redacted), nil }
func (Token) LogValue() slog.Value         { return slog.StringValue(redacted) }
func (Token) MarshalYAML() (any, error)    { return redacted, nil }
func (c TokenClaims) ServiceKey() mesh.ServiceKey {
	return mesh.ServiceKey{Namespace: c.Namespace, Name: c.Service}
}
func (c TokenClaims) String() string             { return c.Namespace + "/" + c.Service + " (id " + c.ID + ")" }
func (c TokenClaims) expired(now time.Time) bool { return !now.Before(c.Expires) }
func (c TokenClaims) notYet(now time.Time) bool  { return now.Add(clockSkew).Before(c.IssuedAt) }
func (c TokenClaims) validate() error {
	if c.Namespace == "" || c.Service == "" || c.ID == "" || c.TrustDomain == "" {
		return errors.New("token lacks namespace, service, trust domain or id")
	}
	return nil
}

// Errors Verify returns (wrapped); the xDS server maps them to messages.
var (
	ErrTokenMalformed = errors.New("token is malformed")
	ErrTokenSignature = errors.New("token signature does not verify (tampered, or signed by another meshd)")
	ErrTokenExpired   = errors.New("token has expired")
	ErrTokenRevoked   = errors.New("token has been revoked")
)

// TokenAuthority signs and verifies bootstrap tokens.
type TokenAuthority struct {
	dir   string
	td    string
	key   crypto.Signer
	pub   *ecdsa.PublicKey
	clock func() time.Time

	mu      sync.Mutex
	revoked map[string]bool
	// revokedInfo is the revocation list file as last read (nil: none):
	// a change of inode (atomic replace), size or mtime re-reads it.
	revokedInfo os.FileInfo

	// parsed caches Parse's result for tokens whose signature has been
	// verified, by the SHA-256 of the token (the token itself, a secret, is
	// not kept). Every sidecar of a service presents the same token, so a
	// cold sync or a reconnect storm would otherwise verify the same ECDSA
	// signature once per proxy. Only the signature check and decoding are
	// cached: Verify checks expiry and revocation on every call.
	parsedMu sync.Mutex
	parsed   map[[sha256.Size]byte]TokenClaims
}

// maxParsedTokens bounds the verified-token cache; when full it is emptied
// (a mesh has one token per service or so, far fewer).
const maxParsedTokens = 4096

// LoadOrCreateTokens opens the token key in dataDir/tokens, creating it
// unless noCreate (meshctl must not mint a key meshd does not know).
func LoadOrCreateTokens(dataDir, trustDomain string, noCreate bool, clock func() time.Time) (*TokenAuthority, error) {
	if clock == nil {
		clock = time.Now
	}
	dir := filepath.Join(dataDir, tokensDirName)
	path := filepath.Join(dir, tokenKeyFile)
	ok, err := exists(path)
	if err != nil {
		return nil, err
	}
	var key crypto.Signer
	switch {
	case ok:
		if key, err = readKeyFile(path); err != nil {
			return nil, fmt.Errorf("token key: %w", err)
		}
	case noCreate:
		return nil, fmt.Errorf("no token key in %s: start meshd once with this data directory to create it, or point --data-dir at meshd's", dir)
	default:
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("token key: create %s: %w (check that the data directory is writable)", dir, err)
		}
		if err := os.Chmod(dir, 0o700); err != nil {
			return nil, fmt.Errorf("token key: chmod 700 %s: %w", dir, err)
		}
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("token key: generate: %w", err)
		}
		b, err := keyPEM(k)
		if err != nil {
			return nil, fmt.Errorf("token key: encode: %w", err)
		}
		if err := atomicfile.Write(path, b, 0o600); err != nil {
			return nil, fmt.Errorf("token key: %w", err)
		}
		key = k
	}
	pub, ok2 := key.Public().(*ecdsa.PublicKey)
	if !ok2 || pub.Curve != elliptic.P256() {
		return nil, fmt.Errorf("token key %s is not an ECDSA P-256 key: move it away and restart meshd to create one", path)
	}
	return &TokenAuthority{dir: dir, td: trustDomain, key: key, pub: pub, clock: clock, revoked: map[string]bool{}}, nil
}

// Create signs a token for service ns/svc valid for ttl.
func (t *TokenAuthority) Create(namespace, service string, ttl time.Duration) (Token, TokenClaims, error) {
	for _, v := range []struct{ what, s string }{{"namespace", namespace}, {"service", service}} {
		if err := mesh.ValidName(v.s); err != nil {
			return "", TokenClaims{}, fmt.Errorf("token %s: %w", v.what, err)
		}
	}
	if ttl <= 0 {
		return "", TokenClaims{}, fmt.Errorf("token lifetime %s must be positive (e.g. 720h)", ttl)
	}
	id := make([]byte, 12)
	if _, err := rand.Read(id); err != nil {
		return "", TokenClaims{}, fmt.Errorf("token id: %w", err)
	}
	now := t.clock().UTC().Truncate(time.Second)
	c := TokenClaims{TrustDomain: t.td, Namespace: namespace, Service: service, IssuedAt: now, Expires: now.Add(ttl), ID: hex.EncodeToString(id)}
	payload, err := json.Marshal(c)
	if err != nil {
		return "", TokenClaims{}, fmt.Errorf("encode token: %w", err)
	}
	signed := tokenPrefix + base64.RawURLEncoding.EncodeToString(payload)
	sum := sha256.Sum256([]byte(signed))
	sig, err := t.key.Sign(rand.Reader, sum[:], crypto.SHA256)
	if err != nil {
		return "", TokenClaims{}, fmt.Errorf("sign token: %w", err)
	}
	return Token(signed + "." + base64.RawURLEncoding.EncodeToString(sig)), c, nil
}

// Parse checks the signature and returns the claims without checking expiry
// or revocation (revoke uses it to find a token's id).
func (t *TokenAuthority) Parse(tok string) (TokenClaims, error) {
	tok = strings.TrimSpace(tok)
	key := sha256.Sum256([]byte(tok))
	t.parsedMu.Lock()
	c, ok := t.parsed[key]
	t.parsedMu.Unlock()
	if ok {
		return c, nil
	}
	c, err := t.parse(tok)
	if err != nil {
		return c, err
	}
	t.parsedMu.Lock()
	if t.parsed == nil || len(t.parsed) >= maxParsedTokens {
		t.parsed = make(map[[sha256.Size]byte]TokenClaims)
	}
	t.parsed[key] = c
	t.parsedMu.Unlock()
	return c, nil
}

// parse is Parse without the cache.
func (t *TokenAuthority) parse(tok string) (TokenClaims, error) {
	if len(tok) > maxTokenLen || !strings.HasPrefix(tok, tokenPrefix) {
		return TokenClaims{}, fmt.Errorf("%w: want %s<claims>.<signature> as printed by meshctl token create", ErrTokenMalformed, tokenPrefix)
	}
	i := strings.LastIndexByte(tok, '.')
	if i <= len(tokenPrefix) {
		return TokenClaims{}, fmt.Errorf("%w: no signature", ErrTokenMalformed)
	}
	signed, sigB64 := tok[:i], tok[i+1:]
	sig, err := base64.RawURLEncoding.DecodeString(sigB64)
	if err != nil {
		return TokenClaims{}, fmt.Errorf("%w: signature is not base64url", ErrTokenMalformed)
	}
	sum := sha256.Sum256([]byte(signed))
	if !ecdsa.VerifyASN1(t.pub, sum[:], sig) {
		return TokenClaims{}, ErrTokenSignature
	}
	payload, err := base64.RawURLEncoding.DecodeString(signed[len(tokenPrefix):])
	if err != nil {
		return TokenClaims{}, fmt.Errorf("%w: claims are not base64url", ErrTokenMalformed)
	}
	var c TokenClaims
	dec := json.NewDecoder(strings.NewReader(string(payload)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return TokenClaims{}, fmt.Errorf("%w: claims: %v", ErrTokenMalformed, err)
	}
	if err := c.validate(); err != nil {
		return TokenClaims{}, fmt.Errorf("%w: %v", ErrTokenMalformed, err)
	}
	return c, nil
}

// Verify checks signature, trust domain, validity period and revocation.
func (t *TokenAuthority) Verify(tok string) (TokenClaims, error) {
	c, err := t.Parse(tok)
	if err != nil {
		return c, err
	}
	now := t.clock()
	if c.TrustDomain != t.td {
		return c, fmt.Errorf("%w: token is for trust domain %q, this meshd serves %q", ErrTokenMalformed, c.TrustDomain, t.td)
	}
	if c.expired(now) {
		return c, fmt.Errorf("%w (at %s): create a new one with meshctl token create", ErrTokenExpired, c.Expires.Format(time.RFC3339))
	}
	if c.notYet(now) {
		return c, fmt.Errorf("%w: issued in the future (%s); check the clocks", ErrTokenMalformed, c.IssuedAt.Format(time.RFC3339))
	}
	revoked, err := t.isRevoked(c.ID)
	if err != nil {
		// Fail closed: an unreadable revocation list must not let a
		// revoked token in.
		return c, fmt.Errorf("token revocation list: %w", err)
	}
	if revoked {
		return c, fmt.Errorf("%w (id %s)", ErrTokenRevoked, c.ID)
	}
	return c, nil
}

type revocationList struct {
	Revoked []revokedEntry `json:"revoked"`
}

type revokedEntry struct {
	ID        string    `json:"id"`
	Namespace string    `json:"namespace,omitempty"`
	Service   string    `json:"service,omitempty"`
	Expires   time.Time `json:"expires,omitzero"`
	RevokedAt time.Time `json:"revokedAt"`
}

func (t *TokenAuthority) revokedPath() string { return filepath.Join(t.dir, revokedFileName) }

// isRevoked re-reads the list when it changed, so `meshctl token revoke`
// takes effect on the next stream without a restart.
func (t *TokenAuthority) isRevoked(id string) (bool, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, err := t.refreshLocked(); err != nil {
		return false, err
	}
	return t.revoked[id], nil
}

// IsRevoked reports whether token id is on the revocation list, re-reading
// the list if the file changed (one stat otherwise). An unreadable list is
// an error: callers fail closed.
func (t *TokenAuthority) IsRevoked(id string) (bool, error) { return t.isRevoked(id) }

// Refresh re-reads the revocation list if the file changed since the last
// read and reports whether it did; RevokedCached then answers from it
// without touching the file. meshd's revocation watcher calls it when the
// tokens directory changes and every second.
func (t *TokenAuthority) Refresh() (bool, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.refreshLocked()
}

// RevokedCached answers from the list as last read (Refresh, IsRevoked,
// Verify): a map lookup, for checking many credentials at once.
func (t *TokenAuthority) RevokedCached(id string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.revoked[id]
}

// Dir is the directory holding the token key and the revocation list.
func (t *TokenAuthority) Dir() string { return t.dir }

// RevocationListPath is the revocation list's file.
func (t *TokenAuthority) RevocationListPath() string { return t.revokedPath() }

func (t *TokenAuthority) refreshLocked() (bool, error) {
	info, err := os.Stat(t.revokedPath())
	switch {
	case errors.Is(err, os.ErrNotExist):
		changed := t.revokedInfo != nil
		t.revoked, t.revokedInfo = map[string]bool{}, nil
		return changed, nil
	case err != nil:
		return false, err
	}
	if old := t.revokedInfo; old != nil && os.SameFile(old, info) && info.ModTime().Equal(old.ModTime()) && info.Size() == old.Size() {
		return false, nil
	}
	l, err := t.readRevoked()
	if err != nil {
		return false, err
	}
	m := map[string]bool{}
	for _, e := range l.Revoked {
		m[e.ID] = true
	}
	t.revoked, t.revokedInfo = m, info
	return true, nil
}

func (t *TokenAuthority) readRevoked() (revocationList, error) {
	var l revocationList
	b, err := os.ReadFile(t.revokedPath())
	if errors.Is(err, os.ErrNotExist) {
		return l, nil
	}
	if err != nil {
		return l, fmt.Errorf("read %s: %w", t.revokedPath(), err)
	}
	if err := json.Unmarshal(b, &l); err != nil {
		return l, fmt.Errorf("%s is not valid JSON: %w: fix or remove it", t.revokedPath(), err)
	}
	return l, nil
}

// revokedRetention is how long a revoked token's id stays listed after the
// token expired: certificates issued through it (CertOrigin) outlive it,
// and cannot be renewed once it is revoked, so every one has expired after
// the longest leaf lifetime — at most an intermediate's, a year.
const revokedRetention = 366 * 24 * time.Hour

// Revoke adds a token id to the revocation list (written atomically).
// Entries whose token expired more than revokedRetention ago are dropped to
// keep the list short.
func (t *TokenAuthority) Revoke(c TokenClaims) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	l, err := t.readRevoked()
	if err != nil {
		return err
	}
	now := t.clock()
	l.Revoked = slices.DeleteFunc(l.Revoked, func(e revokedEntry) bool {
		return !e.Expires.IsZero() && !now.Before(e.Expires.Add(revokedRetention))
	})
	if !slices.ContainsFunc(l.Revoked, func(e revokedEntry) bool { return e.ID == c.ID }) {
		l.Revoked = append(l.Revoked, revokedEntry{ID: c.ID, Namespace: c.Namespace, Service: c.Service, Expires: c.Expires, RevokedAt: now.UTC()})
	}
	b, err := json.MarshalIndent(l, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.Write(t.revokedPath(), append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("revoke token: %w", err)
	}
	return nil
}
