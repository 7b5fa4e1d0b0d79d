// Command demoapp is the mesh's demo workload: one binary that runs an
// HTTP, a gRPC or a TCP service behind an Envoy sidecar, or calls one
// through its sidecar. Each service answers with the caller's identity as
// its sidecar reports it, so a user sees mutual TLS at work. It serves
// nothing from disk.
//
// See examples/demoapp/README.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/meshd/meshd/internal/buildinfo"
)

const usage = `demoapp — a demo workload for meshd: services that report who called them.

Usage:
  demoapp http --listen ADDR [--name NAME] [--upstream URL]...
  demoapp grpc --listen ADDR [--name NAME]
  demoapp tcp  --listen ADDR [--name NAME]
  demoapp call (--http URL | --grpc ADDR | --tcp ADDR) [flags]
  demoapp version

Modes:
  http   an HTTP/1.1 and h2c service. Every path but /healthz answers JSON
         naming the service and the caller's SPIFFE ID, read from the
         x-forwarded-client-cert header the sidecar sets; with --upstream
         it first calls each upstream (same method and path) and includes
         their answers, so a chain of services shows every hop's caller.
  grpc   helloworld.Greeter/SayHello (wire-compatible with gRPC's
         helloworld example) answering with the caller's SPIFFE ID, and the
         standard grpc.health.v1.Health service.
  tcp    a line echo service. A TCP sidecar cannot add headers, so it
         answers with the peer address it sees: its sidecar's. The caller's
         identity was checked by the sidecar (mTLS, network RBAC).
  call   a client, for calling a service through the local sidecar. It
         prints one line per call (OK or FAIL) and exits non-zero if any
         call failed; with --count 0 it calls until --duration passes or it
         gets SIGINT/SIGTERM, then prints a summary.

The services trust x-forwarded-client-cert because they listen on loopback
behind their sidecar, which replaces any such header a caller sends.

Run "demoapp <mode> -h" for a mode's flags.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run is main without the process, for tests.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	mode, rest := args[0], args[1:]
	switch mode {
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	case "version", "-version", "--version":
		fmt.Fprintln(stdout, buildinfo.Read().String("demoapp"))
		return 0
	case "http", "grpc", "tcp":
		return runServe(ctx, mode, rest, stdout, stderr)
	case "call":
		return runCall(ctx, rest, stdout, stderr)
	}
	fmt.Fprintf(stderr, "demoapp: unknown mode %q: use http, grpc, tcp, call or version\n", mode)
	return 2
}

// defaultListen is each service mode's default --listen: loopback, because
// only the sidecar next to the app should reach it.
var defaultListen = map[string]string{"http": "127.0.0.1:8080", "grpc": "127.0.0.1:50051", "tcp": "127.0.0.1:9000"}

// upstreamFlag collects repeated --upstream values.
type upstreamFlag []string

func (u *upstreamFlag) String() string     { return strings.Join(*u, ",") }
func (u *upstreamFlag) Set(v string) error { *u = append(*u, v); return nil }

func runServe(ctx context.Context, mode string, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("demoapp "+mode, flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", defaultListen[mode], "`address` to listen on (keep it on loopback: the sidecar next to the app is its only client)")
	name := fs.String("name", mode, "service `name` the answers carry (e.g. the catalog service name)")
	var upstreams upstreamFlag
	if mode == "http" {
		fs.Var(&upstreams, "upstream", "http only: base `URL` of an upstream, usually the sidecar's local port for it (http://127.0.0.1:9102); each request is first sent on to every upstream with the same method and path. Repeatable")
	}
	logFormat := fs.String("log-format", "text", "log `format`: text or json")
	if code, ok := parse(fs, args, stdout); !ok {
		return code
	}
	log, err := newLogger(*logFormat, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "demoapp %s: %v\n", mode, err)
		return 2
	}
	log = log.With("service", *name, "mode", mode)
	var serve func(context.Context, string, string, *slog.Logger, func(addr string)) error
	switch mode {
	case "http":
		for _, u := range upstreams {
			if err := checkUpstreamURL(u); err != nil {
				fmt.Fprintf(stderr, "demoapp http: --upstream %q: %v\n", u, err)
				return 2
			}
		}
		serve = func(ctx context.Context, listen, name string, log *slog.Logger, ready func(string)) error {
			return serveHTTP(ctx, listen, name, upstreams, log, ready)
		}
	case "grpc":
		serve = serveGRPC
	case "tcp":
		serve = serveTCP
	}
	err = serve(ctx, *listen, *name, log, func(addr string) { log.Info("serving", "listen", addr) })
	if err != nil {
		log.Error("stopped", "err", err)
		return 1
	}
	log.Info("stopped")
	return 0
}

// parse parses a mode's flags: -h prints them to stdout; a mistake prints
// the mistake and the flags to stderr.
func parse(fs *flag.FlagSet, args []string, stdout io.Writer) (int, bool) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stdout)
			fs.PrintDefaults()
			return 0, false
		}
		return 2, false
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "%s: unexpected argument %q (flags only; see -h)\n", fs.Name(), fs.Arg(0))
		return 2, false
	}
	return 0, true
}

func newLogger(format string, w io.Writer) (*slog.Logger, error) {
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, nil)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, nil)), nil
	}
	return nil, fmt.Errorf("--log-format %q: use text or json", format)
}
