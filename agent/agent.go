// Package agent is mesh-agent's node agent: it keeps one workload's mesh
// identity with the key generated locally (it never leaves the machine),
// gets it signed by meshd's CA with a CSR (authenticated by a bootstrap
// token the first time, by the current certificate afterwards), renews it at
// half its life, serves it to the local Envoy over SDS on a Unix socket and
// writes cert.pem, key.pem and ca.pem for proxyless gRPC apps.
//
// Of the server side it imports only server/caclient, the CA service's
// client: the agent runs on workload machines and must not carry meshd.
// cmd/mesh-agent parses flags into a Config and calls Run.
package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/sds"
	"github.com/meshd/meshd/server/caclient"
	"github.com/meshd/meshd/xds"
)

// agent keeps one workload identity: it generates the key locally, has meshd
// sign a CSR for it, and hands certificate, key and bundle to the local
// Envoy (SDS over a Unix socket) and to proxyless gRPC apps (files).
type agent struct {
	cfg   Config
	log   *slog.Logger
	id    mesh.Identity
	token string
	roots *x509.CertPool // verify meshd with these

	cache cachev3.SnapshotCache

	mu     sync.Mutex
	cert   *tls.Certificate // current identity, for renewal over mTLS
	chain  []byte
	key    sds.PrivateKeyPEM
	bundle []byte
	renew  time.Time
	serial string
}

// oneNode maps every Envoy on the socket to one cache entry: the socket is
// local and serves exactly one workload's identity.
type oneNode struct{}

func (oneNode) ID(*corev3.Node) string { return "agent" }

func newAgent(cfg Config, log *slog.Logger) (*agent, error) {
	id := mesh.Identity{TrustDomain: cfg.TrustDomain, Namespace: cfg.Namespace, ServiceAccount: cfg.ServiceAccount}
	if _, err := mesh.ParseSPIFFEID(id.SPIFFEID()); err != nil {
		return nil, err
	}
	a := &agent{cfg: cfg, log: log, id: id, cache: cachev3.NewSnapshotCache(false, oneNode{}, nil)}
	if cfg.TokenFile != "" {
		b, err := os.ReadFile(cfg.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("--token-file: %w", err)
		}
		a.token = string(trimSpace(b))
	}
	ca, err := os.ReadFile(cfg.CAFile)
	if err != nil {
		return nil, fmt.Errorf("--ca-file: %w (point it at meshd's trust bundle, <data-dir>/ca/root-cert.pem)", err)
	}
	a.roots = x509.NewCertPool()
	if !a.roots.AppendCertsFromPEM(ca) {
		return nil, fmt.Errorf("--ca-file %s holds no PEM certificate", cfg.CAFile)
	}
	return a, nil
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r' || b[len(b)-1] == ' ') {
		b = b[:len(b)-1]
	}
	return b
}

// dial connects to meshd over TLS, pinning meshd's SPIFFE ID (any workload
// certificate chains to the same roots) and presenting the current identity
// when there is one, so renewal needs no token.
func (a *agent) dial() (*grpc.ClientConn, error) {
	a.mu.Lock()
	roots, cur := a.roots, a.cert
	a.mu.Unlock()
	want := mesh.ControlPlaneIdentity(a.cfg.TrustDomain).SPIFFEID()
	host, _, err := net.SplitHostPort(a.cfg.XDSAddress)
	if err != nil {
		return nil, fmt.Errorf("--xds-address %q: %w", a.cfg.XDSAddress, err)
	}
	tc := &tls.Config{
		RootCAs:    roots,
		ServerName: host,
		MinVersion: tls.VersionTLS12,
		VerifyPeerCertificate: func(_ [][]byte, chains [][]*x509.Certificate) error {
			for _, ch := range chains {
				for _, u := range ch[0].URIs {
					if u.String() == want {
						return nil
					}
				}
			}
			return fmt.Errorf("server is not meshd (%s)", want)
		},
	}
	if cur != nil {
		tc.Certificates = []tls.Certificate{*cur}
	}
	return grpc.NewClient(a.cfg.XDSAddress, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
}

// refresh generates a new key, gets it signed and publishes the result.
func (a *agent) refresh(ctx context.Context) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generate key: %w", err)
	}
	u, _ := url.Parse(a.id.SPIFFEID())
	dns := xds.DNSNames(mesh.ServiceKey{Namespace: a.cfg.Namespace, Name: a.cfg.Service}, a.cfg.TrustDomain)
	csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}, DNSNames: dns}, key)
	if err != nil {
		return fmt.Errorf("create CSR: %w", err)
	}
	req := &caclient.SignRequest{NodeID: a.cfg.NodeID, CSR: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER}))}
	cc, err := a.dial()
	if err != nil {
		return err
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	a.mu.Lock()
	haveCert := a.cert != nil
	a.mu.Unlock()
	// Renew with the current certificate; the token is the fallback (and
	// the only way in the first time).
	token := a.token
	if haveCert {
		token = ""
	}
	resp, err := caclient.Sign(ctx, cc, token, req)
	if err != nil && haveCert && a.token != "" {
		a.log.Warn("renewal with the current certificate failed; retrying with the bootstrap token", "err", err)
		resp, err = caclient.Sign(ctx, cc, a.token, req)
	}
	if err != nil {
		return fmt.Errorf("meshd refused the CSR: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	keyPEM := sds.PrivateKeyPEM(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
	tc, err := tls.X509KeyPair([]byte(resp.CertChain), keyPEM)
	if err != nil {
		return fmt.Errorf("meshd's certificate does not match our key: %w", err)
	}
	leaf, err := x509.ParseCertificate(tc.Certificate[0])
	if err != nil {
		return err
	}
	a.mu.Lock()
	a.cert, a.chain, a.key, a.renew, a.serial = &tc, []byte(resp.CertChain), keyPEM, resp.RenewAt, leaf.SerialNumber.Text(16)
	a.mu.Unlock()
	a.log.Info("identity certificate issued", "spiffe_id", resp.SPIFFEID, "serial", leaf.SerialNumber.Text(16),
		"not_after", resp.NotAfter.UTC(), "renew_at", resp.RenewAt.UTC())
	return a.publish([]byte(resp.Bundle))
}

// refreshBundle picks up a new trust bundle between renewals (root rotation).
func (a *agent) refreshBundle(ctx context.Context) error {
	cc, err := a.dial()
	if err != nil {
		return err
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	b, err := caclient.Bundle(ctx, cc, "", a.cfg.NodeID)
	if err != nil {
		return err
	}
	a.mu.Lock()
	same := string(a.bundle) == b
	a.mu.Unlock()
	if same {
		return nil
	}
	a.log.Info("trust bundle changed")
	return a.publish([]byte(b))
}

// publish hands the current identity and bundle to Envoy and the files. The
// bundle also becomes what the agent verifies meshd with.
func (a *agent) publish(bundle []byte) error {
	a.mu.Lock()
	chain, key := a.chain, a.key
	a.bundle = bundle
	pool := x509.NewCertPool()
	if pool.AppendCertsFromPEM(bundle) {
		a.roots = pool
	}
	a.mu.Unlock()
	if a.cfg.CertDir != "" {
		if err := sds.WriteFiles(a.cfg.CertDir, &sds.Leaf{Identity: a.id, CertPEM: chain, KeyPEM: key}, bundle); err != nil {
			return err
		}
	}
	idSecret, err := xds.BuildIdentitySecret(xds.IdentitySecretName, chain, key)
	if err != nil {
		return err
	}
	bundleSecret, err := xds.BuildTrustBundleSecret(bundle)
	if err != nil {
		return err
	}
	version := idSecret.Hash + "." + bundleSecret.Hash
	snap, err := cachev3.NewSnapshot(version, map[resourcev3.Type][]types.Resource{
		resourcev3.SecretType: {idSecret.Message, bundleSecret.Message},
	})
	if err != nil {
		return err
	}
	return a.cache.SetSnapshot(context.Background(), "agent", snap)
}

// serveSDS serves the secrets to the local Envoy on a Unix socket until ctx
// ends (nil) or serving fails, and returns only once the socket is removed.
//
// The socket is reachable (renamed into place) before Serve runs, so ctx
// may end, and the server be stopped, before Serve starts: Serve then
// returns grpc.ErrServerStopped, which is the clean stop it looks like.
// Serve runs in its own goroutine and this one stops it and waits for it,
// so neither the result nor the socket's removal depends on which of the
// two got there first.
func (a *agent) serveSDS(ctx context.Context, path string) error {
	lis, err := listenPrivate(path)
	if err != nil {
		return fmt.Errorf("--sds-socket %s: %w", path, err)
	}
	// listenPrivate's listener does not unlink on close (the name it was
	// bound to is gone): the socket is removed here, whatever happens.
	defer os.Remove(path)
	gs := grpc.NewServer()
	secretservice.RegisterSecretDiscoveryServiceServer(gs, serverv3.NewServer(ctx, a.cache, nil))
	served := make(chan error, 1)
	go func() { served <- gs.Serve(lis) }()
	a.log.Info("serving SDS to the local Envoy", "socket", path)
	select {
	case <-ctx.Done():
		gs.Stop()
		<-served // nil, or ErrServerStopped if Stop came first: both a clean stop
		return nil
	case err := <-served:
		gs.Stop()
		return fmt.Errorf("serving SDS on %s: %w", path, err)
	}
}

// listenPrivate binds a Unix socket at path that only this user (Envoy
// runs as the workload's user) can connect to from the moment anyone can
// reach it: the socket hands out the private key. A new socket has the
// umask's mode, and a client that connects before a chmod stays connected,
// so the socket is bound in a fresh directory next to path that only this
// user may enter (os.MkdirTemp: 0700), made 0600 there, then renamed into
// place; the directory is removed. An e2e test once saw the socket at 0755
// when it was bound at path and chmodded after, and binding under a
// temporary name beside path only moved that window to the other name.
func listenPrivate(path string) (*net.UnixListener, error) {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket: %w", err)
	}
	dir, err := os.MkdirTemp(filepath.Dir(path), ".sds")
	if err != nil {
		return nil, fmt.Errorf("private directory to create the socket in: %w", err)
	}
	defer os.Remove(dir)
	tmp := filepath.Join(dir, "s")
	// Linux keeps a socket's path in 108 bytes, the final NUL included.
	if len(tmp) > 107 {
		return nil, fmt.Errorf("path too long for a Unix socket once in its temporary directory (%s, %d bytes; at most 107): use a shorter path", tmp, len(tmp))
	}
	lis, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, err
	}
	// The listener would unlink tmp on close, a name gone after the rename.
	lis.SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, 0o600); err != nil {
		lis.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("chmod: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		lis.Close()
		os.Remove(tmp)
		return nil, err
	}
	return lis, nil
}

// run keeps the identity fresh until ctx ends.
func (a *agent) run(ctx context.Context) error {
	backoff := time.Second
	for {
		a.mu.Lock()
		due := a.renew
		a.mu.Unlock()
		wait := time.Until(due)
		bundleTick := time.NewTimer(min(max(wait, 0), a.cfg.BundleRefresh))
		select {
		case <-ctx.Done():
			bundleTick.Stop()
			return nil
		case <-bundleTick.C:
		}
		if time.Now().Before(due) {
			if err := a.refreshBundle(ctx); err != nil {
				a.log.Warn("trust bundle refresh failed; keeping the current one", "err", err)
			}
			continue
		}
		if err := a.refresh(ctx); err != nil {
			a.log.Error("certificate renewal failed; retrying", "err", err, "retry_in", backoff)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 30*time.Second)
			continue
		}
		backoff = time.Second
	}
}
