package envoytest

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// validateTimeout bounds one `envoy --mode validate`; it normally takes well
// under a second, but two shared cores under `go test` load can be slow.
const validateTimeout = 2 * time.Minute

// Validate runs `envoy --mode validate -c configPath` and fails the test
// with Envoy's output unless Envoy accepts the configuration. Validate mode
// builds the whole server (clusters, listeners, TLS contexts, so files named
// by the config are read) without binding ports or contacting anything.
func Validate(t testing.TB, configPath string) {
	t.Helper()
	if err := validate(Binary(t), "", configPath); err != nil {
		t.Fatal(err)
	}
}

// ValidateInDir is Validate with Envoy running in workDir, so that relative
// paths in the configuration (a trusted_ca filename, say) resolve as they do
// for an Envoy started there. Use it to validate a checked-in file byte for
// byte instead of a copy with its paths rewritten.
func ValidateInDir(t testing.TB, workDir, configPath string) {
	t.Helper()
	if err := validate(Binary(t), workDir, configPath); err != nil {
		t.Fatal(err)
	}
}

func validate(bin, workDir, configPath string) error {
	ctx, cancel := context.WithTimeout(context.Background(), validateTimeout)
	defer cancel()
	// --log-level warn keeps the output to what explains a rejection.
	cmd := exec.CommandContext(ctx, bin, "--mode", "validate", "-c", configPath, "--log-level", "warn")
	cmd.Dir = workDir
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	if ctx.Err() != nil {
		return fmt.Errorf("envoy --mode validate -c %s did not finish within %v:\n%s", configPath, validateTimeout, out.String())
	}
	if err != nil {
		return fmt.Errorf("envoy rejects %s (%v):\n%s", configPath, err, strings.TrimSpace(out.String()))
	}
	// Validate mode prints "configuration '<path>' OK" on success; require it
	// so that a wrapper that exits 0 without running Envoy cannot pass.
	if !strings.Contains(out.String(), "OK") {
		return fmt.Errorf("envoy --mode validate -c %s exited 0 without saying OK:\n%s", configPath, out.String())
	}
	return nil
}
