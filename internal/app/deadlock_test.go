package app

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// The lock-order inversion of issue 12 (publisher lock → tracker lock while
// planning an mTLS migration; tracker lock → publisher lock while a new
// stream identifies itself) hung the real binary when the mesh-wide
// PeerAuthentication flipped while proxies reconnected. This drives that
// recipe — mesh-wide mode flips, catalog rewrites, callers reconnecting and
// ACKing — against meshd's run, with a watchdog: every fresh stream must get
// its first answer, and /debug/status and /healthz must answer (200), within
// the bound; after the churn, a proxy added to the catalog must get its
// configuration. A fresh stream is answered from the cache and the status
// from the published view even while the publisher's loop is wedged, so
// those two alone would not see a loop that stopped taking changes: the
// liveness check and the last proxy do.
func TestNoDeadlockUnderMigrationChurn(t *testing.T) {
	// The old code hung within about 20 s of this churn (3 runs of 3);
	// MESHD_DEADLOCK_SOAK sets a longer run.
	dur := 30 * time.Second
	if testing.Short() {
		dur = 5 * time.Second
	}
	if s := os.Getenv("MESHD_DEADLOCK_SOAK"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatal(err)
		}
		dur = d
	}
	dir := t.TempDir()
	const callers = 16
	// catalog is generation gen of the churned catalog; final adds the
	// proxy that proves the publisher still takes changes after the churn.
	catalog := func(gen int, final bool) string {
		var b strings.Builder
		fmt.Fprintf(&b, "services:\n  - {name: api, protocol: http, endpoints: [{address: 127.0.0.1, port: 20001, weight: %d}]}\n", 1+gen%3)
		for i := range callers {
			fmt.Fprintf(&b, "  - {name: web%d, protocol: http, endpoints: [{address: 127.0.0.1, port: %d}]}\n", i, 20100+i)
		}
		if gen%2 == 1 {
			b.WriteString("  - {name: extra, protocol: http, endpoints: [{address: 127.0.0.1, port: 20200}]}\n")
		}
		if final {
			b.WriteString("  - {name: final, protocol: http, endpoints: [{address: 127.0.0.1, port: 20300}]}\n")
		}
		b.WriteString("proxies:\n  - {service: api, address: 127.0.0.1, publicPort: 20001, appPort: 8001}\n")
		for i := range callers {
			fmt.Fprintf(&b, "  - {service: web%d, address: 127.0.0.1, publicPort: %d, appPort: %d, upstreams: [{service: api, localPort: %d}]}\n",
				i, 20100+i, 8100+i, 9100+i)
		}
		if final {
			b.WriteString("  - {service: final, address: 127.0.0.1, publicPort: 20300, appPort: 8300, upstreams: [{service: api, localPort: 9300}]}\n")
		}
		return b.String()
	}
	write := func(path, content string) {
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
			t.Error(err)
			return
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Error(err)
		}
	}
	policyDir := filepath.Join(dir, "policies")
	if err := os.Mkdir(policyDir, 0o755); err != nil {
		t.Fatal(err)
	}
	meshWide := func(mode string) string {
		return fmt.Sprintf("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: meshd-system}\nspec:\n  mtls: {mode: %s}\n", mode)
	}
	catPath := filepath.Join(dir, "catalog.yaml")
	write(catPath, catalog(0, false))
	write(filepath.Join(policyDir, "mesh.yaml"), meshWide("STRICT"))

	c := testConfig(dir, catPath)
	c.PolicyDir = policyDir
	c.InsecureXDS = true
	c.Holdoff, c.MaxDelay, c.CatalogHoldoff = 5*time.Millisecond, 20*time.Millisecond, 5*time.Millisecond
	// Well below the watchdog's bound, far above a publish of 17 proxies.
	c.LivenessTimeout = 5 * time.Second
	ctx, cancel := context.WithCancel(context.Background())
	addrs := make(chan [2]string, 1)
	runDone := make(chan error, 1)
	go func() {
		runDone <- Run(ctx, c, slog.New(slog.DiscardHandler), func(x, a string) { addrs <- [2]string{x, a} })
	}()
	var xdsAddr, adminAddr string
	select {
	case a := <-addrs:
		xdsAddr, adminAddr = a[0], a[1]
	case err := <-runDone:
		t.Fatalf("meshd stopped during start: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("meshd did not start within 30s")
	}
	defer func() {
		cancel()
		select {
		case <-runDone:
		case <-time.After(20 * time.Second):
			t.Error("meshd did not stop within 20s of cancel")
		}
	}()

	cc, err := grpc.NewClient(xdsAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var streams, answers, flips, rewrites atomic.Int64
	// waitingSince: per client, when its current stream was opened and has
	// not had its first answer yet (0: answered).
	waitingSince := make([]atomic.Int64, callers+1)
	client := func(i int, node string) {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			// A stream lives until its first answer and a few milliseconds
			// more, then the proxy reconnects.
			sctx, scancel := context.WithCancel(ctx)
			waitingSince[i].Store(time.Now().UnixNano())
			streams.Add(1)
			err := adsSession(sctx, cc, node, rand.IntN(6)+1, func() {
				waitingSince[i].Store(0)
				answers.Add(1)
				time.AfterFunc(time.Duration(5+rand.IntN(40))*time.Millisecond, scancel)
			})
			scancel()
			if err != nil && ctx.Err() == nil {
				select {
				case <-stop:
					return
				case <-time.After(10 * time.Millisecond):
				}
			}
		}
	}
	wg.Add(callers + 1)
	go client(0, "api.default")
	for i := range callers {
		go client(i+1, fmt.Sprintf("web%d.default", i))
	}
	wg.Add(2)
	go func() {
		defer wg.Done()
		modes := []string{"STRICT", "DISABLE", "PERMISSIVE", "DISABLE"}
		for n := 0; ; n++ {
			select {
			case <-stop:
				return
			case <-time.After(time.Duration(5+rand.IntN(30)) * time.Millisecond):
			}
			write(filepath.Join(policyDir, "mesh.yaml"), meshWide(modes[n%len(modes)]))
			flips.Add(1)
		}
	}()
	go func() {
		defer wg.Done()
		for n := 1; ; n++ {
			select {
			case <-stop:
				return
			case <-time.After(time.Duration(10+rand.IntN(40)) * time.Millisecond):
			}
			write(catPath, catalog(n, false))
			rewrites.Add(1)
		}
	}()

	// The watchdog: a stream waiting for its first answer, or a status
	// request, for longer than the bound, or a failing /healthz, means
	// meshd is wedged.
	const bound = 15 * time.Second
	hc := &http.Client{Timeout: bound}
	end := time.Now().Add(dur)
	var wedged string
	for wedged == "" && time.Now().Before(end) {
		// The watchdog's period over the whole run, not a wait: the run
		// lasts dur whatever happens, and each round checks for a wedge.
		time.Sleep(200 * time.Millisecond)
		for i := range waitingSince {
			if since := waitingSince[i].Load(); since != 0 && time.Since(time.Unix(0, since)) > bound {
				wedged = fmt.Sprintf("client %d has waited %s for its first answer", i, time.Since(time.Unix(0, since)).Round(time.Second))
			}
		}
		for _, path := range []string{"/debug/status", "/healthz"} {
			if wedged != "" {
				break
			}
			req, err := http.NewRequest(http.MethodGet, "http://"+adminAddr+path, nil)
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Authorization", "Bearer "+adminToken(t, c))
			resp, err := hc.Do(req)
			if err != nil {
				wedged = path + ": " + err.Error()
				continue
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				wedged = fmt.Sprintf("%s: %d %s", path, resp.StatusCode, strings.TrimSpace(string(body)))
			}
		}
	}
	close(stop)
	if wedged == "" {
		// The publisher still takes changes: a proxy the catalog gains
		// after the churn gets its first configuration within the bound.
		wg.Wait()
		write(catPath, catalog(0, true))
		fctx, fcancel := context.WithTimeout(ctx, bound)
		if err := adsSession(fctx, cc, "final.default", 1, func() {}); err != nil {
			wedged = fmt.Sprintf("a proxy added after the churn got no configuration within %s: %v", bound, err)
		}
		fcancel()
	}
	if wedged != "" {
		var b strings.Builder
		_ = pprof.Lookup("goroutine").WriteTo(&b, 1)
		t.Fatalf("meshd wedged after %d streams, %d answers, %d policy flips, %d catalog rewrites: %s\n%s",
			streams.Load(), answers.Load(), flips.Load(), rewrites.Load(), wedged, b.String())
	}
	wg.Wait()
	t.Logf("%s: %d streams, %d first answers, %d policy flips, %d catalog rewrites", dur, streams.Load(), answers.Load(), flips.Load(), rewrites.Load())
	if answers.Load() < int64(callers) || flips.Load() == 0 || rewrites.Load() == 0 {
		t.Fatalf("the churn did not run: %d answers, %d flips, %d rewrites", answers.Load(), flips.Load(), rewrites.Load())
	}
}

// adsSession opens an ADS stream as node, subscribes to listeners and
// clusters (wildcard) and endpoints, ACKs every response, and ends after
// the given number of responses. first is called on the first response.
func adsSession(ctx context.Context, cc *grpc.ClientConn, node string, responses int, first func()) error {
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
	if err != nil {
		return err
	}
	n := &corev3.Node{Id: node}
	for _, typ := range []string{resourcev3.ClusterType, resourcev3.ListenerType} {
		if err := stream.Send(&discoveryv3.DiscoveryRequest{Node: n, TypeUrl: typ}); err != nil {
			return err
		}
		n = nil
	}
	for i := range responses {
		resp, err := stream.Recv()
		if err != nil {
			return err
		}
		if i == 0 {
			first()
		}
		if err := stream.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resp.GetTypeUrl(), VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()}); err != nil {
			return err
		}
	}
	return nil
}
