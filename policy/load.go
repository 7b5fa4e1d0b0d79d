package policy

import (
	"cmp"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/meshd/meshd/internal/inputfile"
	"github.com/meshd/meshd/internal/yamlkeys"
	"github.com/meshd/meshd/mesh"
)

// Policies is the policy read from a set of files, before the mesh-level
// settings (root namespace, default mode, Linkerd's defaults) make it a
// mesh.PolicySet.
type Policies struct {
	// Files are the files read, in the order read (sorted by name).
	Files          []string
	Peer           []mesh.PeerAuthentication
	Authorizations []mesh.AuthorizationPolicy
	// linkerd holds the Linkerd resources read; SetWith turns them into
	// the set's Linkerd decisions.
	linkerd linkerdDocs
}

// add appends o's documents to p.
func (p *Policies) add(o *Policies) {
	p.Peer = append(p.Peer, o.Peer...)
	p.Authorizations = append(p.Authorizations, o.Authorizations...)
	p.linkerd.add(&o.linkerd)
}

// Settings are the mesh-level settings a policy set is completed with.
type Settings struct {
	// RootNamespace holds mesh-wide policies; "" means
	// mesh.DefaultRootNamespace.
	RootNamespace string
	// DefaultMode is the mTLS mode no PeerAuthentication sets; "" means
	// PERMISSIVE.
	DefaultMode mesh.MTLSMode
	// TrustDomain is the mesh's, for the identities Linkerd's ServiceAccount
	// and Namespace references name; "" means mesh.DefaultTrustDomain.
	TrustDomain string
	// DefaultInboundPolicy is Linkerd's default inbound policy for ports no
	// Server selects; "" means all-unauthenticated.
	DefaultInboundPolicy mesh.DefaultInboundPolicy
	// ClusterNetworks are the networks of Linkerd's cluster-* policies and
	// of ServerAuthorizations without networks; nil means
	// DefaultClusterNetworks.
	ClusterNetworks []string
}

// Set returns the mesh.PolicySet these policies form with the given root
// namespace and default mode, and every other setting at its default.
func (p *Policies) Set(rootNamespace string, defaultMode mesh.MTLSMode) *mesh.PolicySet {
	return p.SetWith(Settings{RootNamespace: rootNamespace, DefaultMode: defaultMode})
}

// SetWith returns the mesh.PolicySet these policies form with s. The
// policies are ordered by namespace and name, so the same files always give
// the same set; Linkerd's resources become one decision policy per Server
// and one per default inbound policy (linkerd_set.go).
func (p *Policies) SetWith(s Settings) *mesh.PolicySet {
	if s.RootNamespace == "" {
		s.RootNamespace = mesh.DefaultRootNamespace
	}
	if s.DefaultMode == "" || s.DefaultMode == mesh.MTLSUnset {
		s.DefaultMode = mesh.MTLSPermissive
	}
	if s.TrustDomain == "" {
		s.TrustDomain = mesh.DefaultTrustDomain
	}
	if s.ClusterNetworks == nil {
		s.ClusterNetworks = DefaultClusterNetworks
	}
	ps := &mesh.PolicySet{
		RootNamespace:  s.RootNamespace,
		DefaultMode:    s.DefaultMode,
		Peer:           slices.Clone(p.Peer),
		Authorizations: slices.Clone(p.Authorizations),
	}
	ps.Linkerd = p.linkerd.set(s)
	slices.SortStableFunc(ps.Peer, func(a, b mesh.PeerAuthentication) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	slices.SortStableFunc(ps.Authorizations, func(a, b mesh.AuthorizationPolicy) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	return ps
}

// ParseMode reads a mesh default mode as given on a command line: STRICT,
// PERMISSIVE or DISABLE, in any case. UNSET is refused: the default is what
// UNSET falls back to.
func ParseMode(s string) (mesh.MTLSMode, error) {
	m := mesh.MTLSMode(strings.ToUpper(s))
	switch m {
	case mesh.MTLSStrict, mesh.MTLSPermissive, mesh.MTLSDisable:
		return m, nil
	}
	return "", fmt.Errorf("%q is not a default mTLS mode: use STRICT, PERMISSIVE or DISABLE", s)
}

// IsPolicyFile reports whether a directory entry name is read by LoadDir:
// *.yaml and *.yml, except hidden files (editors' swap and lock files,
// Kubernetes' ..data) which are never policy.
func IsPolicyFile(name string) bool {
	if strings.HasPrefix(name, ".") {
		return false
	}
	ext := filepath.Ext(name)
	return ext == ".yaml" || ext == ".yml"
}

// file is one file's name and content.
type file struct {
	path string
	data []byte
}

// readDir reads every policy file of dir (not its subdirectories), sorted by
// name, holding at most maxSize bytes together (see readFiles).
func readDir(dir string, maxSize int64) ([]file, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, fmt.Errorf("%s: cannot read policy directory: %w", dir, err)
	}
	var paths []string
	for _, e := range entries {
		if !IsPolicyFile(e.Name()) {
			continue
		}
		p := filepath.Join(dir, e.Name())
		// Symlinks are followed (a Kubernetes ConfigMap volume is made of
		// them); directories named *.yaml are not files. Anything else
		// that is not a regular file (a named pipe, a device) is refused
		// by readFiles, which rejects the whole set.
		if info, err := os.Stat(p); err == nil && info.IsDir() {
			continue
		}
		paths = append(paths, p)
	}
	slices.Sort(paths)
	return readFiles(paths, maxSize)
}

// readFiles reads the files at paths, which must be regular files (or
// symlinks to them) holding at most maxSize bytes together: they are one
// policy set, held in memory and parsed together, so the limit bounds the
// set (internal/inputfile).
func readFiles(paths []string, maxSize int64) ([]file, error) {
	var out []file
	var errs []error
	left := maxSize
	for _, p := range paths {
		data, err := inputfile.Read(p, left)
		if err != nil {
			var pe *fs.PathError
			if errors.As(err, &pe) {
				err = pe.Err
			}
			var se *inputfile.SizeError
			if errors.As(err, &se) {
				switch {
				case se.Size > maxSize:
					// Too large alone: say so, with the whole limit.
					err = &inputfile.SizeError{Size: se.Size, Limit: maxSize}
				case left < maxSize:
					err = fmt.Errorf("%w: with the files before it, the policy files hold more than %s, the limit for all of them together (--max-file-size)",
						inputfile.ErrTooLarge, inputfile.FormatSize(maxSize))
				}
				// The files after it would only be over the limit too.
				return nil, errors.Join(append(errs, fmt.Errorf("%s: cannot read policy file: %w", p, err))...)
			}
			errs = append(errs, fmt.Errorf("%s: cannot read policy file: %w", p, err))
			continue
		}
		left -= int64(len(data))
		out = append(out, file{p, data})
	}
	return out, errors.Join(errs...)
}

// digest identifies the content of a set of files, names included, so the
// watcher can tell "nothing changed" from a change.
func digest(files []file) [sha256.Size]byte {
	h := sha256.New()
	for _, f := range files {
		fmt.Fprintf(h, "%d:%s\n%d:", len(f.path), f.path, len(f.data))
		h.Write(f.data)
	}
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return sum
}

// parseFiles parses every file and checks the set as a whole; any problem
// rejects everything, with every problem of every file reported.
func parseFiles(files []file) (*Policies, error) {
	p := &Policies{}
	var problems []Problem
	var causes []error
	for _, f := range files {
		p.Files = append(p.Files, f.path)
		if kp := keyProblems(f.path, f.data); kp != nil {
			problems = append(problems, kp...)
			continue
		}
		fp, err := Parse(f.path, f.data)
		if err != nil {
			var pe *Error
			if !errors.As(err, &pe) {
				return nil, err
			}
			problems = append(problems, pe.Problems...)
			causes = append(causes, pe.Err)
			continue
		}
		p.add(fp)
	}
	if err := errorOf(problems, causes...); err != nil {
		return nil, err
	}
	// Parse checked duplicates within each file; this finds them across
	// files, naming both.
	if err := checkDuplicates(p); err != nil {
		return nil, err
	}
	// References between Linkerd resources may cross files.
	if err := errorOf(p.linkerd.resolve()); err != nil {
		return nil, err
	}
	return p, nil
}

// keyProblems refuses, before a file is parsed, a YAML mapping with more
// than yamlkeys.MaxKeys keys or more repeated keys than are worth listing
// (internal/yamlkeys): the policy parser is linear, but it reports each
// unknown or repeated key, and a 64,000-key mapping made it spend 15 s and
// write a 12 MB error. A few repeated keys are left to Parse, which names
// the policy and field.
func keyProblems(path string, data []byte) []Problem {
	r := yamlkeys.Check(data, yamlkeys.MaxKeys)
	if !r.Costly() {
		return nil
	}
	var out []Problem
	for _, m := range r.Large {
		out = append(out, Problem{File: path, Line: m.Line, Policy: fmt.Sprintf("document %d", m.Document), Field: m.Place.String(),
			Message: fmt.Sprintf("too many keys: %d, more than the %d a mapping may have; %s", m.Keys, yamlkeys.MaxKeys, docsHint)})
	}
	for _, d := range r.Duplicates {
		out = append(out, Problem{File: path, Line: d.Line, Policy: fmt.Sprintf("document %d", d.Document), Field: d.Place.String(),
			Message: fmt.Sprintf("key %q appears twice (first at line %d): keep one", d.Key, d.FirstLine)})
	}
	slices.SortStableFunc(out, func(a, b Problem) int { return cmp.Compare(a.Line, b.Line) })
	if more := r.LargeCount + r.DuplicateCount - len(out); more > 0 {
		out = append(out, Problem{File: path, Message: fmt.Sprintf("and %d more problems not shown: fix these first", more)})
	}
	return out
}

// LoadDir reads every *.yaml and *.yml file in dir (not its
// subdirectories; hidden files are skipped) in name order. Any problem in
// any file rejects the whole directory: a policy set with one file missing
// could allow what that file denied. An empty directory is valid (no
// policy). The files must be regular files (or symlinks to them) holding at
// most maxSize bytes together (inputfile.DefaultMaxSize is the usual
// limit). Errors list every problem, each starting with its file.
func LoadDir(dir string, maxSize int64) (*Policies, error) {
	files, err := readDir(dir, maxSize)
	if err != nil {
		return nil, err
	}
	return parseFiles(files)
}

// LoadFiles reads the given files, as LoadDir does a directory's.
func LoadFiles(paths []string, maxSize int64) (*Policies, error) {
	files, err := readFiles(paths, maxSize)
	if err != nil {
		return nil, err
	}
	return parseFiles(files)
}
