package dockerfile

import (
	"bytes"
	"context"
	"debug/buildinfo"
	"debug/elf"
	"encoding/pem"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/moby/buildkit/client/llb"
	"github.com/moby/buildkit/client/llb/sourceresolver"
	"github.com/moby/buildkit/frontend/dockerfile/dockerfile2llb"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/buildkit/frontend/dockerui"
	"github.com/moby/buildkit/solver/pb"
	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
	digest "github.com/opencontainers/go-digest"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
)

const repoRoot = "../.."

// The image's user: not root, and the same in every image so that they can
// share a state volume.
const imageUser = "65532:65532"

// binaries are the per-binary targets; "all" has every one of them and
// "meshd" is the default target (the last stage).
var binaries = []string{"meshd", "meshctl", "mesh-agent", "demoapp"}

func readFile(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// goImageResolver stands in for the registry: it answers for the Go image
// with a configuration like the official one, and records what was asked.
type goImageResolver struct {
	mu   sync.Mutex
	refs []string
}

// goImageEnv is what the fake Go image sets; the test's own environment
// replaces it when the build's commands run here.
var goImageEnv = []string{"PATH=/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "GOPATH=/go"}

func (r *goImageResolver) ResolveImageConfig(_ context.Context, ref string, _ sourceresolver.Opt) (string, digest.Digest, []byte, error) {
	r.mu.Lock()
	r.refs = append(r.refs, ref)
	r.mu.Unlock()
	cfg := fmt.Sprintf(`{"architecture":%q,"os":"linux","config":{"Env":["%s"],"WorkingDir":"/go"},"rootfs":{"type":"layers","diff_ids":[]}}`,
		runtime.GOARCH, strings.Join(goImageEnv, `","`))
	return ref, digest.FromString(cfg), []byte(cfg), nil
}

// convert runs BuildKit's Dockerfile frontend for one target, as `docker
// build --target` does up to the point where it would start building, and
// returns the result and any lint warnings.
func convert(t *testing.T, dt []byte, target string, buildArgs map[string]string) (*dockerfile2llb.Result, []string, *goImageResolver) {
	t.Helper()
	r := &goImageResolver{}
	var warnings []string
	platform := ocispecs.Platform{OS: "linux", Architecture: runtime.GOARCH}
	res, err := dockerfile2llb.Dockerfile2LLB(context.Background(), dt, dockerfile2llb.ConvertOpt{
		Config:         dockerui.Config{Target: target, BuildArgs: buildArgs, BuildPlatforms: []ocispecs.Platform{platform}},
		TargetPlatform: &platform,
		MetaResolver:   r,
		SourceMap:      llb.NewSourceMap(nil, "Dockerfile", "Dockerfile", dt),
		Warn: func(rule, _, _, msg string, loc []parser.Range) {
			line := 0
			if len(loc) > 0 {
				line = loc[0].Start.Line
			}
			warnings = append(warnings, fmt.Sprintf("Dockerfile:%d: %s: %s", line, rule, msg))
		},
	})
	if err != nil {
		t.Fatalf("target %s: BuildKit's Dockerfile frontend refused the Dockerfile: %v", target, err)
	}
	return res, warnings, r
}

// Every target converts to a build with no lint warning (what `docker
// build --check` reports), and its image configuration is what the docs
// promise.
func TestTargets(t *testing.T) {
	dt := readFile(t, "Dockerfile")
	for _, target := range append([]string{"", "all"}, binaries...) {
		name := target
		if name == "" {
			name = "default"
		}
		t.Run(name, func(t *testing.T) {
			res, warnings, r := convert(t, dt, target, nil)
			for _, w := range warnings {
				t.Errorf("lint: %s", w)
			}
			img := res.Image.Config
			if img.User != imageUser {
				t.Errorf("USER %q, want %q (non-root)", img.User, imageUser)
			}
			if !slices.Contains(img.Env, "XDG_STATE_HOME=/var/lib") {
				t.Errorf("env %v lacks XDG_STATE_HOME=/var/lib (meshd's state in /var/lib/meshd)", img.Env)
			}
			if res.Image.OS != "linux" || res.Image.Architecture != runtime.GOARCH {
				t.Errorf("platform %s/%s", res.Image.OS, res.Image.Architecture)
			}
			// The runtime image is built on nothing: the Go image is only
			// the build stage's, and no registry host is named.
			if res.BaseImage != nil {
				t.Errorf("the image has a base image (%+v), want scratch", res.BaseImage.Config)
			}
			for _, ref := range r.refs {
				if ref != "docker.io/library/golang:"+goVersion(t) {
					t.Errorf("the build resolves image %q, want only the official Go image at go.mod's version", ref)
				}
			}
			switch target {
			case "", "meshd":
				_, vol := img.Volumes["/var/lib/meshd"]
				if !slices.Equal(img.Entrypoint, []string{"/usr/local/bin/meshd"}) || !vol {
					t.Errorf("meshd: entrypoint %q, volumes %v; want /usr/local/bin/meshd and the state volume /var/lib/meshd", img.Entrypoint, img.Volumes)
				}
			case "all":
				if len(img.Entrypoint) != 0 || !slices.Equal(img.Cmd, []string{"meshd", "--help"}) {
					t.Errorf("all: entrypoint %q cmd %q, want none and meshd --help", img.Entrypoint, img.Cmd)
				}
			default:
				if !slices.Equal(img.Entrypoint, []string{"/usr/local/bin/" + target}) {
					t.Errorf("entrypoint %q, want [/usr/local/bin/%s]", img.Entrypoint, target)
				}
			}
		})
	}
}

// goVersion is go.mod's go line.
func goVersion(t *testing.T) string {
	t.Helper()
	m := regexp.MustCompile(`(?m)^go (\S+)$`).FindSubmatch(readFile(t, "go.mod"))
	if m == nil {
		t.Fatal("go.mod has no go line")
	}
	return string(m[1])
}

// The stages, read with BuildKit's instruction parser: the Go version
// follows go.mod, each runtime stage copies its binary from the build
// stage, and the runtime files give the user no login.
func TestStages(t *testing.T) {
	ast, err := parser.Parse(bytes.NewReader(readFile(t, "Dockerfile")))
	if err != nil {
		t.Fatal(err)
	}
	stages, metaArgs, err := instructions.Parse(ast.AST, nil)
	if err != nil {
		t.Fatal(err)
	}
	args := map[string]string{}
	for _, a := range metaArgs {
		for _, kv := range a.Args {
			if kv.Value != nil {
				args[kv.Key] = *kv.Value
			}
		}
	}
	if args["GO_VERSION"] != goVersion(t) {
		t.Errorf("ARG GO_VERSION=%s, but go.mod says go %s", args["GO_VERSION"], goVersion(t))
	}
	var names []string
	byName := map[string]instructions.Stage{}
	for _, s := range stages {
		names = append(names, s.Name)
		byName[s.Name] = s
	}
	if want := []string{"build", "base", "meshctl", "mesh-agent", "demoapp", "all", "meshd"}; !slices.Equal(names, want) {
		t.Fatalf("stages %v, want %v (meshd last: the default target)", names, want)
	}
	if byName["base"].BaseName != "scratch" {
		t.Errorf("base stage FROM %s, want scratch", byName["base"].BaseName)
	}
	for _, b := range binaries {
		copied := false
		for _, c := range byName[b].Commands {
			if cp, ok := c.(*instructions.CopyCommand); ok && cp.From == "build" &&
				slices.Equal(cp.SourcePaths, []string{"${OUT}/" + b}) && cp.DestPath == "/usr/local/bin/"+b {
				copied = true
			}
		}
		if byName[b].BaseName != "base" || !copied {
			t.Errorf("stage %s: FROM %s, copies its binary from build: %v", b, byName[b].BaseName, copied)
		}
	}
	var rootfs string
	for _, c := range byName["build"].Commands {
		if r, ok := c.(*instructions.RunCommand); ok && strings.Contains(strings.Join(r.CmdLine, " "), "/rootfs/etc/passwd") {
			rootfs = strings.Join(r.CmdLine, " ")
		}
	}
	for _, want := range []string{"'meshd:x:65532:65532:meshd:/var/lib/meshd:/sbin/nologin' > /rootfs/etc/passwd", "'meshd:x:65532:' > /rootfs/etc/group",
		"chmod 0700 /rootfs/var/lib/meshd", "/etc/ssl/certs/ca-certificates.crt"} {
		if !strings.Contains(rootfs, want) {
			t.Errorf("the build stage's runtime files lack %q", want)
		}
	}
}

// buildContext copies what .dockerignore lets through to a new directory,
// as the docker client sends it to the builder.
func buildContext(t *testing.T) string {
	t.Helper()
	patterns, err := ignorefile.ReadAll(bytes.NewReader(readFile(t, ".dockerignore")))
	if err != nil {
		t.Fatal(err)
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	err = filepath.WalkDir(repoRoot, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(repoRoot, path)
		if d.IsDir() || rel == "." {
			return nil
		}
		if skip, err := pm.MatchesOrParentMatches(filepath.ToSlash(rel)); err != nil || skip {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if holdsPrivateKey(b) {
			t.Errorf(".dockerignore lets %s through, which holds a private key", rel)
		}
		dst := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		return os.WriteFile(dst, b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, never := range []string{".git", ".venv", ".meshd", "tools", "e2e", "docs"} {
		if _, err := os.Stat(filepath.Join(dir, never)); err == nil {
			t.Errorf(".dockerignore lets %s through", never)
		}
	}
	return dir
}

// holdsPrivateKey reports whether b contains a PEM private key block.
func holdsPrivateKey(b []byte) bool {
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			return false
		}
		if strings.Contains(block.Type, "PRIVATE KEY") {
			return true
		}
	}
}

// The build context holds every package the four binaries import: a new
// top-level package that .dockerignore does not let through breaks the
// image build (it did twice: telemetry/, then redirect/). go list resolves
// the imports without compiling, so this is quick and runs with -short,
// unlike TestBuildCommands.
func TestBuildContextHoldsEveryPackage(t *testing.T) {
	ctxDir := buildContext(t)
	args := []string{"list", "-deps", "-f", "{{if .Error}}{{.ImportPath}}: {{.Error}}{{end}}"}
	for _, b := range binaries {
		pkg := "./cmd/" + b
		if b == "demoapp" {
			pkg = "./examples/demoapp"
		}
		args = append(args, pkg)
	}
	cmd := exec.Command("go", args...)
	cmd.Dir = ctxDir
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=readonly")
	out, err := cmd.CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Fatalf("the build context lacks packages the binaries import (let their directories through in .dockerignore): %v\n%s", err, out)
	}
}

// The go commands the Dockerfile runs, as BuildKit would run them (the
// exec steps of its build graph, with their arguments and build args), run
// here on exactly the build context: they must build four static binaries
// that print the version they were given.
func TestBuildCommands(t *testing.T) {
	if testing.Short() {
		t.Skip("builds every binary")
	}
	ctxDir := buildContext(t)
	out := t.TempDir()
	const version, revision = "v0.0.0-dockerfile-test", "0123456789abcdef0123456789abcdef01234567"
	res, _, _ := convert(t, readFile(t, "Dockerfile"), "all", map[string]string{"VERSION": version, "REVISION": revision, "OUT": out})
	def, err := res.State.Marshal(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ran := 0
	for _, raw := range def.Def {
		var op pb.Op
		if err := op.UnmarshalVT(raw); err != nil {
			t.Fatal(err)
		}
		exec := op.GetExec()
		if exec == nil || !regexp.MustCompile(`(^|\s)go (mod download|build) `).MatchString(strings.Join(exec.Meta.Args, " ")+" ") {
			continue
		}
		ran++
		runExec(t, exec.Meta, ctxDir)
	}
	if ran != 2 {
		t.Fatalf("ran %d go commands from the Dockerfile, want 2 (go mod download, go build)", ran)
	}
	for _, b := range binaries {
		path := filepath.Join(out, b)
		checkStatic(t, path)
		bi, err := buildinfo.ReadFile(path)
		if err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		settings := map[string]string{}
		for _, s := range bi.Settings {
			settings[s.Key] = s.Value
		}
		if settings["CGO_ENABLED"] != "0" || settings["-trimpath"] != "true" || settings["GOOS"] != "linux" || settings["GOARCH"] != runtime.GOARCH {
			t.Errorf("%s built with %v; want CGO_ENABLED=0, -trimpath, linux/%s", b, settings, runtime.GOARCH)
		}
		got, err := exec.Command(path, "--version").CombinedOutput()
		want := fmt.Sprintf("%s %s (commit %s) go", b, version, revision)
		if err != nil || !strings.HasPrefix(string(got), want) {
			t.Errorf("%s --version: %q, %v; want it to start with %q", b, got, err, want)
		}
	}
}

// runExec runs one of the build graph's exec steps here: the same
// arguments and build-arg environment, in the build context instead of
// the image's /src, with this machine's Go instead of the image's.
func runExec(t *testing.T, meta *pb.Meta, ctxDir string) {
	t.Helper()
	if meta.Cwd != "/src" {
		t.Fatalf("the build runs in %s, want /src (the copied context)", meta.Cwd)
	}
	cmd := exec.Command(meta.Args[0], meta.Args[1:]...)
	cmd.Dir = ctxDir
	cmd.Env = os.Environ()
	for _, kv := range meta.Env {
		if !slices.Contains(goImageEnv, kv) {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%q: %v\n%s", meta.Args, err, out)
	}
}

// checkStatic fails unless path is an ELF executable with no dynamic
// loader and no shared libraries: it runs on an empty base image.
func checkStatic(t *testing.T, path string) {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("%s is dynamically linked (%v)", path, p.Type)
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("%s needs shared libraries %v", path, libs)
	}
}

func TestHoldsPrivateKey(t *testing.T) {
	// Built here so that no file of the project holds a key-shaped block.
	key := pem.EncodeToMemory(&pem.Block{Type: "EC " + "PRIVATE KEY", Bytes: []byte("not a key")})
	if !holdsPrivateKey(append([]byte("x := 1\n"), key...)) {
		t.Error("missed a PEM private key")
	}
	if holdsPrivateKey([]byte(`const keyType = "EC PRIVATE KEY" // a PEM type name, not a key`)) {
		t.Error("a PEM type name in source code counted as a key")
	}
}
