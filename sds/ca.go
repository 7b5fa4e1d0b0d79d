package sds

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/meshd/meshd/mesh"
)

// Layout of Options.DataDir/ca:
//
//	root-cert.pem        the trust bundle: every trusted root (what bootstraps
//	                     and `meshctl bootstrap` point proxies at)
//	state.json           which generation signs, which are trusted, rotation
//	gen-<id>/            one root + intermediate (keys 0600; the root key is
//	                     absent when the operator keeps it offline)
//	retired/gen-<id>/    generations that left the state: certificates
//	                     only, kept for audit
//
// and DataDir/meshd.lock, the lock a running meshd holds (lock.go).
const (
	caDirName    = "ca"
	rootCertFile = "root-cert.pem" // the bundle
	stateFile    = "state.json"
	retiredDir   = "retired"
	// legacyRootKeyFile is where meshd before intermediates kept its root key
	// (next to root-cert.pem); LoadOrCreate migrates it into a generation.
	legacyRootKeyFile = "root-key.pem"
)

const (
	defaultOrganization    = "meshd"
	defaultLeafTTL         = 24 * time.Hour
	defaultRenewFraction   = 0.5
	defaultIntermediateTTL = 365 * 24 * time.Hour

	// rootValidityYears is long because rotating the root means every proxy
	// must learn a new bundle; rotation exists for compromise and policy.
	rootValidityYears = 10

	// clockSkew backdates NotBefore so that a peer whose clock is slightly
	// behind ours does not reject a certificate we have just minted.
	clockSkew = time.Minute

	// caExpiryWarning is how early LoadOrCreate starts warning that the
	// signing intermediate (or root) is about to expire and leaves are being
	// shortened to fit it.
	caExpiryWarning = 30 * 24 * time.Hour
)

// Options configures an Authority.
type Options struct {
	DataDir         string           // CA files live in DataDir/ca
	TrustDomain     string           // e.g. "cluster.local"
	Organization    string           // Subject O of every certificate; default "meshd"
	LeafTTL         time.Duration    // default 24h
	IntermediateTTL time.Duration    // lifetime of intermediates meshd mints; default 365 days
	RenewFraction   float64          // reissue when this fraction of life has passed; default 0.5
	Clock           func() time.Time // default time.Now; tests inject
	Logger          *slog.Logger     // default slog.Default()
	// NoCreate makes a missing CA an error instead of creating one, and
	// writes nothing: tools other than meshd (meshctl) must never mint a
	// second, unrelated root or race meshd's state file.
	NoCreate bool
	// DeterministicLeaves makes replicas that share an intermediate issue
	// byte-identical leaves (see deterministic.go).
	DeterministicLeaves bool

	// RootCertFile, IntermediateCertFile and IntermediateKeyFile, all or
	// none, supply the CA from the operator's PKI. The root key stays with
	// the operator (offline); meshd signs with the intermediate only. They
	// are imported into DataDir/ca; supplying a different set later starts
	// a rotation to it.
	RootCertFile, IntermediateCertFile, IntermediateKeyFile string
}

// withDefaults validates o and fills in defaults.
func (o Options) withDefaults() (Options, error) {
	if o.DataDir == "" {
		return o, errors.New("CA options: DataDir is empty: set the directory where meshd keeps its state")
	}
	if err := mesh.ValidTrustDomain(o.TrustDomain); err != nil {
		return o, fmt.Errorf("CA options: %w", err)
	}
	if o.Organization == "" {
		o.Organization = defaultOrganization
	}
	switch {
	case o.LeafTTL == 0:
		o.LeafTTL = defaultLeafTTL
	case o.LeafTTL < 0:
		return o, fmt.Errorf("CA options: LeafTTL %s is negative: use a positive duration such as 24h", o.LeafTTL)
	}
	switch {
	case o.IntermediateTTL == 0:
		o.IntermediateTTL = defaultIntermediateTTL
	case o.IntermediateTTL < o.LeafTTL:
		return o, fmt.Errorf("CA options: IntermediateTTL %s is shorter than LeafTTL %s: every leaf would be cut short; use at least the leaf lifetime", o.IntermediateTTL, o.LeafTTL)
	}
	switch {
	case o.RenewFraction == 0:
		o.RenewFraction = defaultRenewFraction
	case !(o.RenewFraction > 0 && o.RenewFraction < 1):
		return o, fmt.Errorf("CA options: RenewFraction %v is out of range: use a value between 0 and 1 (exclusive), e.g. 0.5", o.RenewFraction)
	}
	n := 0
	for _, f := range []string{o.RootCertFile, o.IntermediateCertFile, o.IntermediateKeyFile} {
		if f != "" {
			n++
		}
	}
	if n != 0 && n != 3 {
		return o, errors.New("CA options: give the root certificate, the intermediate certificate and the intermediate key together (or none, to let meshd create its own CA)")
	}
	if o.Clock == nil {
		o.Clock = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o, nil
}

// caState is DataDir/ca/state.json: the single source of truth about which
// generation signs and which roots are trusted, written atomically so a crash
// mid-rotation resumes where it stopped.
type caState struct {
	Version int `json:"version"`
	// Signing is the generation that signs workload leaves.
	Signing string `json:"signing"`
	// Trusted are the generations whose roots form the bundle, oldest first.
	// The oldest also signs meshd's own xDS server certificate, because
	// proxies bootstrapped before a rotation trust only that root.
	Trusted  []string  `json:"trusted"`
	Rotation *rotation `json:"rotation,omitempty"`
	// Retiring are trusted generations that no longer sign and leave the
	// bundle once every leaf they signed has expired (rotation.go).
	Retiring []retiringGen `json:"retiring,omitempty"`
}

// Authority is meshd's certificate authority: root → intermediate → leaf
// generations loaded from (or created in) DataDir/ca, the trust bundle, the
// rotation state machine, and a cache of the leaves issued. It is safe for
// concurrent use.
//
// Private keys live only in unexported fields, and Authority's
// String/GoString/LogValue show just the trust domain and fingerprint.
type Authority struct {
	opts Options
	log  *slog.Logger
	lock *dataDirLock // nil when opened NoCreate

	// tx serializes state transitions (rotate, abort, advance) end to end,
	// files included; mu guards the in-memory state and is held only
	// briefly (and across state.json's save, see commitLocked).
	tx sync.Mutex
	// fileMu orders rewrites of the bundle file, so the last one written
	// is the latest bundle.
	fileMu sync.Mutex

	mu    sync.Mutex
	gens  map[string]*generation
	state caState
	// bundlePEM and bundlePool hold the roots of state.Trusted, deduplicated.
	bundlePEM  []byte
	bundlePool *x509.CertPool
	// leafNotAfter is the latest NotAfter of any leaf issued under each
	// generation, so rotation knows when no leaf chains to an old one.
	leafNotAfter map[string]time.Time
	leaves       map[string]*Leaf   // by SPIFFE ID
	inflight     map[string]*flight // issuances in progress, by SPIFFE ID
}

// LoadOrCreate opens the CA in DataDir/ca, creating a root and intermediate
// on first start unless the operator supplies them (Options.RootCertFile and
// friends). Every loaded certificate is checked (key matches, CA bits,
// validity now, trust domain, intermediate signed by root) so that a broken
// or swapped CA fails at startup rather than at the first handshake.
//
// Unless NoCreate is set it takes the data directory's lock (a second meshd
// on the same directory fails here, naming the holder's pid) and removes
// what an interrupted CA change left behind (durable.go). The lock is held
// until Close or the end of the process.
func LoadOrCreate(opts Options) (_ *Authority, err error) {
	opts, err = opts.withDefaults()
	if err != nil {
		return nil, err
	}
	a := &Authority{
		opts:         opts,
		log:          opts.Logger,
		gens:         map[string]*generation{},
		leafNotAfter: map[string]time.Time{},
		leaves:       map[string]*Leaf{},
		inflight:     map[string]*flight{},
	}
	if !opts.NoCreate {
		lock, err := lockDataDir(opts.DataDir)
		if err != nil {
			return nil, err
		}
		a.lock = lock
		defer func() {
			if err != nil {
				lock.release()
			}
		}()
	}
	dir := a.caDir()
	statePath := filepath.Join(dir, stateFile)
	haveState, err := exists(statePath)
	if err != nil {
		return nil, err
	}
	created := false
	switch {
	case haveState:
		if err := a.loadState(statePath); err != nil {
			return nil, err
		}
		if !opts.NoCreate {
			if err := a.cleanup(); err != nil {
				return nil, err
			}
		}
	case opts.NoCreate:
		return nil, fmt.Errorf("no CA in %s: start meshd once with this data directory to create it, or point --data-dir at meshd's", dir)
	default:
		if created, err = a.firstStart(); err != nil {
			return nil, err
		}
	}
	// An operator-supplied CA that differs from the signing one is a
	// rotation the operator asked for by changing the flags.
	if haveState && opts.RootCertFile != "" && !opts.NoCreate {
		g, err := a.importExternal()
		if err != nil {
			return nil, err
		}
		if g.id != a.state.Signing && (a.state.Rotation == nil || a.state.Rotation.To != g.id) {
			if a.state.Rotation != nil {
				return nil, fmt.Errorf("CA: a rotation to %s is in progress; finish it (meshctl ca status) before supplying another CA", a.state.Rotation.To)
			}
			if err := a.beginRotation(g); err != nil {
				return nil, err
			}
		}
	}
	a.mu.Lock()
	a.rebuildBundleLocked()
	a.mu.Unlock()
	if !opts.NoCreate {
		if err := a.writeBundleFile(); err != nil {
			return nil, err
		}
	}

	sg := a.gens[a.state.Signing]
	msg := "loaded CA"
	if created {
		msg = "created CA"
	}
	a.log.Info(msg,
		"dir", dir,
		"trust_domain", opts.TrustDomain,
		"root_sha256", sg.rootFP,
		"intermediate_sha256", sg.interFP,
		"root_key_offline", sg.rootKey == nil,
		"intermediate_not_after", sg.inter.NotAfter.UTC(),
		"trusted_roots", len(a.trustedRootsLocked()),
		"rotation", a.state.phaseName())
	if left := sg.inter.NotAfter.Sub(opts.Clock()); left < caExpiryWarning {
		a.log.Warn("signing intermediate expires soon; leaf certificates are shortened to end with it: rotate it with `meshctl ca rotate-intermediate`",
			"not_after", sg.inter.NotAfter.UTC(), "remaining", left.Round(time.Minute))
	}
	return a, nil
}

// Close releases the data directory's lock (held since LoadOrCreate). The
// Authority must not change the CA afterwards.
func (a *Authority) Close() error {
	a.lock.release()
	a.lock = nil
	return nil
}

// firstStart creates (or imports, or adopts) the first generation: its
// files first, then state.json naming it, then — adoption only — the
// pre-intermediate root key is removed, now that a durable state names the
// generation holding it. It reports whether meshd minted the CA itself.
func (a *Authority) firstStart() (bool, error) {
	if err := mkdirDurable(a.caDir()); err != nil {
		return false, err
	}
	// No state: every generation directory is a leftover of an earlier
	// first start that did not finish.
	if err := a.cleanup(); err != nil {
		return false, err
	}
	var (
		g       *generation
		adopted bool
		err     error
	)
	if a.opts.RootCertFile == "" {
		if g, adopted, err = a.createFirstGeneration(); err != nil {
			return false, err
		}
	} else if g, err = a.importExternal(); err != nil {
		return false, err
	}
	a.mu.Lock()
	err = a.commitLocked(caState{Version: 1, Signing: g.id, Trusted: []string{g.id}}, g)
	a.mu.Unlock()
	if err != nil {
		return false, err
	}
	if adopted {
		legacyKey := filepath.Join(a.caDir(), legacyRootKeyFile)
		if err := durably("remove legacy root key", func() error {
			if err := os.Remove(legacyKey); err != nil {
				return err
			}
			return syncDir(a.caDir())
		}); err != nil {
			return false, fmt.Errorf("CA: remove migrated %s: %w", legacyKey, err)
		}
		a.log.Info("adopted the existing root CA and created an intermediate under it", "root_sha256", g.rootFP)
	}
	return a.opts.RootCertFile == "" && !adopted, nil
}

// createFirstGeneration creates the first root and intermediate, adopting a
// root left by meshd before intermediates existed (ca/root-cert.pem with
// ca/root-key.pem) so upgrading keeps every proxy's trust. The caller
// removes the old key file once the state names the new generation.
func (a *Authority) createFirstGeneration() (g *generation, adopted bool, err error) {
	dir := a.caDir()
	legacyKey := filepath.Join(dir, legacyRootKeyFile)
	ok, err := exists(legacyKey)
	if err != nil {
		return nil, false, err
	}
	if !ok {
		g, err := a.createGeneration(nil, nil)
		return g, false, err
	}
	root, err := readCertFile(filepath.Join(dir, rootCertFile))
	if err != nil {
		return nil, false, err
	}
	key, err := readKeyFile(legacyKey)
	if err != nil {
		return nil, false, err
	}
	if !keyMatches(key, root) {
		return nil, false, fmt.Errorf("CA: key in %s does not match the certificate in %s: restore the matching pair from backup", legacyKey, filepath.Join(dir, rootCertFile))
	}
	if err := checkCA(root, "root", a.opts.TrustDomain, a.opts.Clock()); err != nil {
		return nil, false, fmt.Errorf("CA: %s: %w", filepath.Join(dir, rootCertFile), err)
	}
	if g, err = a.createGeneration(root, key); err != nil {
		return nil, false, err
	}
	return g, true, nil
}

// importExternal loads the operator's CA and stores a copy (without any root
// key) in the data directory, so meshctl and restarts find it.
func (a *Authority) importExternal() (*generation, error) {
	g, err := a.loadExternal()
	if err != nil {
		return nil, err
	}
	if ok, err := exists(a.genDir(g.id)); err != nil {
		return nil, err
	} else if !ok {
		if err := a.saveGeneration(g); err != nil {
			return nil, err
		}
	}
	return g, nil
}

func (a *Authority) loadState(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("CA: read %s: %w", path, err)
	}
	var st caState
	if err := json.Unmarshal(b, &st); err != nil {
		return fmt.Errorf("CA: %s is not valid JSON: %w: restore it from backup", path, err)
	}
	if st.Version != 1 || st.Signing == "" || len(st.Trusted) == 0 {
		return fmt.Errorf("CA: %s: want version 1 with signing and trusted generations: restore it from backup", path)
	}
	ids := append([]string{st.Signing}, st.Trusted...)
	if st.Rotation != nil {
		ids = append(ids, st.Rotation.From, st.Rotation.To)
	}
	for _, rg := range st.Retiring {
		if !slices.Contains(st.Trusted, rg.Gen) || rg.Gen == st.Signing {
			return fmt.Errorf("CA: %s: retiring generation %s must be trusted and not signing: restore it from backup", path, rg.Gen)
		}
	}
	for _, id := range ids {
		if _, ok := a.gens[id]; ok || id == "" {
			continue
		}
		g, err := a.loadGeneration(id)
		if err != nil {
			return err
		}
		a.gens[id] = g
	}
	a.state = st
	return nil
}

// trustedRootsLocked lists the distinct roots of the trusted generations.
func (a *Authority) trustedRootsLocked() []*generation {
	var out []*generation
	seen := map[string]bool{}
	for _, id := range a.state.Trusted {
		g := a.gens[id]
		if g == nil || seen[g.rootFP] {
			continue
		}
		seen[g.rootFP] = true
		out = append(out, g)
	}
	return out
}

func (a *Authority) rebuildBundleLocked() {
	var buf bytes.Buffer
	pool := x509.NewCertPool()
	for _, g := range a.trustedRootsLocked() {
		buf.Write(g.rootPEM)
		pool.AddCert(g.root)
	}
	a.bundlePEM, a.bundlePool = buf.Bytes(), pool
}

// writeBundleFile keeps DataDir/ca/root-cert.pem equal to the bundle, so
// bootstraps generated now trust every root in use.
func (a *Authority) writeBundleFile() error {
	a.fileMu.Lock()
	defer a.fileMu.Unlock()
	a.mu.Lock()
	b := bytes.Clone(a.bundlePEM)
	a.mu.Unlock()
	path := filepath.Join(a.caDir(), rootCertFile)
	if cur, err := os.ReadFile(path); err == nil && bytes.Equal(cur, b) {
		return nil
	}
	return writeDurable(path, b, 0o644)
}

// parseKeyPEM accepts PKCS#8 (what meshd writes) and SEC 1 EC keys (what
// `openssl ecparam -genkey` writes), so an operator can bring a CA. Errors
// never include the key bytes.
func parseKeyPEM(data []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM data found")
	}
	var (
		key any
		err error
	)
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("PEM block is %q, want PRIVATE KEY (PKCS#8) or EC PRIVATE KEY", block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("parse private key: %w", err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("private key of type %T cannot sign", key)
	}
	return signer, nil
}

// serialLimit is 2^128: serials are 128 random bits, well above the 64 bits
// CAs are required to use and within the 20 octets RFC 5280 allows.
var serialLimit = new(big.Int).Lsh(big.NewInt(1), 128)

func randomSerial() (*big.Int, error) {
	for {
		s, err := rand.Int(rand.Reader, serialLimit)
		if err != nil {
			return nil, fmt.Errorf("generate serial number: %w", err)
		}
		if s.Sign() > 0 { // RFC 5280 requires a positive serial
			return s, nil
		}
	}
}

// signing returns the generation that signs workload leaves.
func (a *Authority) signing() *generation {
	g, _ := a.signingNow()
	return g
}

// signingNow returns the signing generation and the time, read together
// under a.mu: a leaf is issued with this pair, so a switch (which holds
// a.mu) knows that no leaf of the old generation starts later than it.
func (a *Authority) signingNow() (*generation, time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.gens[a.state.Signing], a.opts.Clock()
}

// serverGen returns the generation that signs meshd's own xDS certificate:
// the oldest trusted one, since proxies bootstrapped before a root rotation
// verify meshd against the root they were started with; and the time.
func (a *Authority) serverGen() (*generation, time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.gens[a.state.Trusted[0]], a.opts.Clock()
}

// RootCertPEM returns the trust bundle: every trusted root as concatenated
// PEM (one root except during a root rotation). The caller gets its own copy.
func (a *Authority) RootCertPEM() []byte {
	a.mu.Lock()
	defer a.mu.Unlock()
	return bytes.Clone(a.bundlePEM)
}

// Bundle is RootCertPEM under the name the publisher uses.
func (a *Authority) Bundle() []byte { return a.RootCertPEM() }

// RootPool returns a pool of every trusted root. It is a fresh clone so that
// a caller adding certificates cannot widen what the CA itself trusts.
func (a *Authority) RootPool() *x509.CertPool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.bundlePool.Clone()
}

// RootCert returns the signing generation's root. Callers must not modify it.
func (a *Authority) RootCert() *x509.Certificate { return a.signing().root }

// IntermediateCert returns the signing intermediate. Callers must not modify it.
func (a *Authority) IntermediateCert() *x509.Certificate { return a.signing().inter }

// Fingerprint is the hex SHA-256 of the signing root's DER, as logged at
// startup, so operators can compare roots across machines.
func (a *Authority) Fingerprint() string { return a.signing().rootFP }

// TrustDomain is the trust domain this CA issues for.
func (a *Authority) TrustDomain() string { return a.opts.TrustDomain }

// String identifies the CA without any key material.
func (a *Authority) String() string {
	return "sds.Authority{trust_domain=" + a.opts.TrustDomain + " root_sha256=" + a.Fingerprint() + "}"
}

// GoString keeps %#v from dumping the struct.
func (a *Authority) GoString() string { return a.String() }

// LogValue implements slog.LogValuer.
func (a *Authority) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("trust_domain", a.opts.TrustDomain),
		slog.String("root_sha256", a.Fingerprint()),
	)
}

// checkTrustDomain reports whether id may be issued by this CA.
func (a *Authority) checkTrustDomain(id mesh.Identity) error {
	if id.TrustDomain != a.opts.TrustDomain {
		return fmt.Errorf("identity %s is in trust domain %q but this CA issues for %q: fix the identity's trust domain (or run a CA for that domain)", id.SPIFFEID(), id.TrustDomain, a.opts.TrustDomain)
	}
	// Round-tripping rejects empty parts and '/' inside names, which would
	// otherwise produce a SPIFFE ID that parses as a different identity.
	back, err := mesh.ParseSPIFFEID(id.SPIFFEID())
	if err != nil || back != id {
		return fmt.Errorf("identity %q is malformed: namespace and service account must be non-empty and contain no '/'", id.SPIFFEID())
	}
	return nil
}
