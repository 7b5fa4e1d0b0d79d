package policy

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/meshd/meshd/internal/inputfile"
	"github.com/meshd/meshd/mesh"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/out and delete stale ones")

// TestGolden reads each testdata/in/<case>.yaml as meshd reads a policy
// file and writes the policy set it becomes (testdata/out/<case>.yaml), or,
// for a file that is refused, every problem reported
// (testdata/out/<case>.err). A first line "# meshd: <flags>" gives the
// settings meshd would run with (--trust-domain, --default-inbound-policy,
// --cluster-networks, --root-namespace, --mtls-mode).
func TestGolden(t *testing.T) {
	files, err := filepath.Glob("testdata/in/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no test cases: %v", err)
	}
	written := map[string]bool{}
	for _, in := range files {
		name := strings.TrimSuffix(filepath.Base(in), ".yaml")
		t.Run(name, func(t *testing.T) {
			settings := goldenSettings(t, in)
			p, err := LoadFiles([]string{in}, inputfile.DefaultMaxSize)
			var out string
			var got []byte
			if err != nil {
				var pe *Error
				if !errors.As(err, &pe) {
					t.Fatalf("not a policy error: %v", err)
				}
				out, got = filepath.Join("testdata", "out", name+".err"), []byte(err.Error()+"\n")
				if !strings.HasPrefix(name, "err-") {
					t.Errorf("%s is refused: %v", in, err)
				}
			} else {
				if strings.HasPrefix(name, "err-") {
					t.Errorf("%s loads, but err- cases must be refused", in)
				}
				b, err := yaml.Marshal(p.SetWith(settings))
				if err != nil {
					t.Fatal(err)
				}
				out, got = filepath.Join("testdata", "out", name+".yaml"), b
			}
			written[out] = true
			if *update {
				if err := os.WriteFile(out, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(out)
			if err != nil {
				t.Fatalf("%v (run go test ./policy -run TestGolden -update to create it)", err)
			}
			if !bytes.Equal(want, got) {
				t.Errorf("%s differs (run go test ./policy -run TestGolden -update and review the diff); got:\n%s", out, got)
			}
		})
	}
	if *update {
		stale, _ := filepath.Glob("testdata/out/*")
		for _, f := range stale {
			if !written[f] {
				os.Remove(f)
			}
		}
	}
}

// goldenSettings reads the "# meshd: <flags>" line of a case.
func goldenSettings(t *testing.T, path string) Settings {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	var s Settings
	if !sc.Scan() {
		return s
	}
	args, ok := strings.CutPrefix(sc.Text(), "# meshd:")
	if !ok {
		return s
	}
	fs := flag.NewFlagSet(path, flag.ContinueOnError)
	td := fs.String("trust-domain", "", "")
	dip := fs.String("default-inbound-policy", "", "")
	nets := fs.String("cluster-networks", "", "")
	root := fs.String("root-namespace", "", "")
	mode := fs.String("mtls-mode", "", "")
	if err := fs.Parse(strings.Fields(args)); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	s = Settings{RootNamespace: *root, DefaultMode: mesh.MTLSMode(*mode), TrustDomain: *td, DefaultInboundPolicy: mesh.DefaultInboundPolicy(*dip)}
	if *nets != "" {
		s.ClusterNetworks = strings.Split(*nets, ",")
	}
	return s
}
