package sds

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/meshd/meshd/internal/atomicfile"
)

// Crash safety of the CA's files.
//
// state.json is the single source of truth: a generation is in use only if
// it names it. Every CA transition therefore
//
//  1. writes the files the next state needs (a new generation, a retired
//     generation's certificates), each fsynced and its directory fsynced;
//  2. saves the next state.json (atomically, fsynced);
//  3. only then removes what the previous state needed and the next does
//     not (a generation directory with its keys), and rewrites the bundle
//     file.
//
// A crash between any two steps leaves either the previous state with some
// unused new files, or the next state with some old files nothing names.
// LoadOrCreate, holding the data-directory lock so that no other meshd is
// writing, removes both kinds (cleanup): temporary files of interrupted
// atomic writes, generation directories state.json does not name, private
// keys under retired/, and a pre-intermediate root key whose adoption
// completed. It logs every path it removes, never a file's content.

// testStep is nil outside tests. The crash test sets it to SIGKILL the
// process at one named point; the points are the boundaries of the durable
// steps above ("before save state", "after save state", ...).
var testStep func(name string)

func step(name string) {
	if testStep != nil {
		testStep(name)
	}
}

// durably runs one durable step between the points "before NAME" and
// "after NAME".
func durably(name string, f func() error) error {
	step("before " + name)
	if err := f(); err != nil {
		return err
	}
	step("after " + name)
	return nil
}

// syncDir makes the entries created, renamed or removed in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("CA: open %s to sync it: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("CA: sync directory %s: %w", dir, err)
	}
	return nil
}

// mkdirDurable creates dir (0700, whatever the umask) and makes its entry
// in the parent durable.
func mkdirDurable(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("CA: create %s: %w (check that the data directory is writable)", dir, err)
	}
	// MkdirAll is subject to the umask and leaves existing directories
	// alone; CA directories hold keys, so make them private.
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("CA: chmod 700 %s: %w", dir, err)
	}
	return syncDir(filepath.Dir(dir))
}

// writeDurable writes one file atomically (atomicfile fsyncs the file and
// its directory) as a named step.
func writeDurable(path string, data []byte, perm os.FileMode) error {
	return durably("write "+filepath.Base(path), func() error {
		if err := atomicfile.Write(path, data, perm); err != nil {
			return fmt.Errorf("CA: %w", err)
		}
		return nil
	})
}

// saveState writes next as state.json.
func (a *Authority) saveState(next caState) error {
	if a.opts.NoCreate {
		return errors.New("CA opened read-only (NoCreate): only meshd changes the CA; use the admin API (meshctl ca ...)")
	}
	b, err := json.MarshalIndent(next, "", "  ")
	if err != nil {
		return fmt.Errorf("CA: encode state: %w", err)
	}
	return durably("save state", func() error {
		if err := atomicfile.Write(filepath.Join(a.caDir(), stateFile), append(b, '\n'), 0o600); err != nil {
			return fmt.Errorf("CA: %w", err)
		}
		return nil
	})
}

// saveRetired keeps g's certificates — never its keys — in retired/<id>,
// for audit, before the state stops naming g.
func (a *Authority) saveRetired(g *generation) error {
	dir := filepath.Join(a.caDir(), retiredDir, g.id)
	if err := mkdirDurable(filepath.Dir(dir)); err != nil {
		return err
	}
	if err := mkdirDurable(dir); err != nil {
		return err
	}
	files := []struct {
		name string
		data []byte
	}{{genRootCertFile, g.rootPEM}, {genInterCertFile, g.interPEM}}
	if g.external {
		files = append(files, struct {
			name string
			data []byte
		}{genExternalFile, []byte(externalMarker)})
	}
	for _, f := range files {
		if err := writeDurable(filepath.Join(dir, f.name), f.data, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// removeGeneration deletes gen-<id> (keys included) once no state names it.
// A failure is logged, not returned: the state is already durable, and the
// next start's cleanup removes what is left.
func (a *Authority) removeGeneration(id, why string) {
	dir := a.genDir(id)
	err := durably("remove generation", func() error {
		if err := os.RemoveAll(dir); err != nil {
			return err
		}
		return syncDir(a.caDir())
	})
	if err != nil {
		a.log.Warn("could not remove an unused CA generation; it is removed at the next start", "dir", dir, "reason", why, "err", err)
		return
	}
	a.log.Info("removed CA generation directory and its keys", "dir", dir, "reason", why)
}

// liveGenerationsLocked are the generations the state in force names.
func (a *Authority) liveGenerationsLocked() map[string]bool {
	live := map[string]bool{}
	if a.state.Signing != "" {
		live[a.state.Signing] = true
	}
	for _, id := range a.state.Trusted {
		live[id] = true
	}
	if r := a.state.Rotation; r != nil {
		live[r.From], live[r.To] = true, true
	}
	return live
}

// isTempFile reports whether name is an atomicfile temporary
// (".<name>.tmp-<random>").
func isTempFile(name string) bool {
	return strings.HasPrefix(name, ".") && strings.Contains(name, ".tmp-")
}

// cleaner removes leftovers, logging each path (never a file's content).
type cleaner struct {
	log     *slog.Logger
	removed int
}

const reasonTemp = "temporary file of an interrupted write"

func (c *cleaner) remove(path, why string, all bool) error {
	var err error
	if all {
		err = os.RemoveAll(path)
	} else {
		err = os.Remove(path)
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("CA cleanup: remove %s: %w", path, err)
	}
	c.removed++
	c.log.Warn("removed leftover of an interrupted CA change", "path", path, "reason", why)
	return nil
}

// cleanup removes what interrupted transitions left behind and the state in
// force proves unused (see the top of this file). The caller holds the
// data-directory lock and has loaded the state (or found none: then every
// generation directory is unused).
func (a *Authority) cleanup() error {
	dir := a.caDir()
	a.mu.Lock()
	live := a.liveGenerationsLocked()
	a.mu.Unlock()
	c := &cleaner{log: a.log}
	tempsOnly := func(e fs.DirEntry, _ string) string {
		if isTempFile(e.Name()) {
			return reasonTemp
		}
		return ""
	}
	// Retired generations keep certificates only (meshd before issue 13
	// kept the root key there after an intermediate rotation).
	certsOnly := func(e fs.DirEntry, path string) string {
		if why := tempsOnly(e, path); why != "" {
			return why
		}
		if e.Type().IsRegular() && holdsPrivateKey(path) {
			return "private key of a retired CA generation (retired generations keep certificates only)"
		}
		return ""
	}
	err := c.each(dir, func(e fs.DirEntry, path string) (string, bool, error) {
		switch {
		case e.IsDir() && strings.HasPrefix(e.Name(), "gen-") && !live[e.Name()]:
			return "CA generation that state.json does not name (interrupted creation, or retired before its directory was removed)", true, nil
		case e.IsDir() && live[e.Name()]:
			return "", false, c.each(path, plain(tempsOnly))
		case e.IsDir() && e.Name() == retiredDir:
			return "", false, c.each(path, func(e fs.DirEntry, path string) (string, bool, error) {
				if e.IsDir() {
					return "", false, c.each(path, plain(certsOnly))
				}
				return tempsOnly(e, path), false, nil
			})
		}
		return tempsOnly(e, path), false, nil
	})
	if err != nil {
		return err
	}
	// The pre-intermediate root key, once a live generation holds it (at
	// first start there is none yet: adoption is about to happen).
	if len(live) > 0 {
		if err := a.cleanupLegacyKey(c); err != nil {
			return err
		}
	}
	// meshd's own token key is written only by meshd (meshctl never
	// creates it), under this lock.
	tdir := filepath.Join(a.opts.DataDir, tokensDirName)
	err = c.each(tdir, plain(func(e fs.DirEntry, _ string) string {
		if strings.HasPrefix(e.Name(), "."+tokenKeyFile+".tmp-") {
			return reasonTemp
		}
		return ""
	}))
	if err != nil || c.removed == 0 {
		return err
	}
	for _, d := range []string{dir, filepath.Join(dir, retiredDir), tdir} {
		if _, err := os.Stat(d); err == nil {
			if err := syncDir(d); err != nil {
				return err
			}
		}
	}
	return nil
}

// each calls decide for every entry of d (a missing d has none) and
// removes the entries it gives a reason for (recursively if all).
func (c *cleaner) each(d string, decide func(e fs.DirEntry, path string) (why string, all bool, err error)) error {
	entries, err := os.ReadDir(d)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("CA cleanup: read %s: %w", d, err)
	}
	for _, e := range entries {
		p := filepath.Join(d, e.Name())
		why, all, err := decide(e, p)
		if err != nil {
			return err
		}
		if why != "" {
			if err := c.remove(p, why, all); err != nil {
				return err
			}
		}
	}
	return nil
}

// plain adapts a file-only decision to each.
func plain(f func(fs.DirEntry, string) string) func(fs.DirEntry, string) (string, bool, error) {
	return func(e fs.DirEntry, p string) (string, bool, error) { return f(e, p), false, nil }
}

// cleanupLegacyKey removes ca/root-key.pem (meshd before intermediates) when
// a live generation holds the same root with its key: adoption completed
// but the process stopped before removing it.
func (a *Authority) cleanupLegacyKey(c *cleaner) error {
	path := filepath.Join(a.caDir(), legacyRootKeyFile)
	if ok, err := exists(path); err != nil || !ok {
		return err
	}
	key, err := readKeyFile(path)
	if err != nil {
		return err
	}
	a.mu.Lock()
	held := false
	for id := range a.liveGenerationsLocked() {
		if g := a.gens[id]; g != nil && g.rootKey != nil && keyMatches(key, g.root) {
			held = true
		}
	}
	a.mu.Unlock()
	if !held {
		a.log.Warn("a pre-intermediate root key is next to the CA but no generation in use holds that root; leaving it in place", "path", path)
		return nil
	}
	return c.remove(path, "pre-intermediate root key already adopted into a CA generation", false)
}

// holdsPrivateKey reports whether the file at path holds a PEM private key.
func holdsPrivateKey(path string) bool {
	b, err := os.ReadFile(path)
	return err == nil && bytes.Contains(b, []byte("PRIVATE KEY-----"))
}
