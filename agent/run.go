package agent

import (
	"context"
	"log/slog"
	"time"
)

// Config is what the agent keeps and where it hands the identity out.
// cmd/mesh-agent fills it from its flags (the errors here name those flags)
// and applies the defaults: ServiceAccount is the service's name and NodeID
// SERVICE.NAMESPACE unless given.
type Config struct {
	XDSAddress     string // HOST:PORT of meshd's xDS server, where its CA service listens (TLS)
	CAFile         string // the mesh trust bundle to verify meshd with until meshd sends one
	TokenFile      string // a bootstrap token for the first certificate (and when the current one is refused)
	Service        string
	Namespace      string
	ServiceAccount string
	NodeID         string // the workload proxy's xDS node id in the catalog
	TrustDomain    string
	SDSSocket      string        // serve SDS to the local Envoy here, if set
	CertDir        string        // write cert.pem, key.pem and ca.pem here, if set
	BundleRefresh  time.Duration // how often to fetch the trust bundle between renewals
}

// Run gets the first certificate, then serves and renews it until ctx ends
// (nil) or serving fails. It returns only once what it started has stopped:
// the SDS socket is removed before the process exits.
func Run(ctx context.Context, c Config, log *slog.Logger) error {
	a, err := newAgent(c, log)
	if err != nil {
		return err
	}
	// The first certificate before serving anything: Envoy waits for SDS
	// rather than getting an empty answer.
	for attempt := 1; ; attempt++ {
		err := a.refresh(ctx)
		if err == nil {
			break
		}
		if attempt == 5 || ctx.Err() != nil {
			return err
		}
		log.Warn("first certificate failed; retrying", "err", err, "attempt", attempt)
		select {
		case <-ctx.Done():
			return err
		case <-time.After(time.Duration(attempt) * time.Second):
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 2)
	started := 1
	if c.SDSSocket != "" {
		started++
		go func() { errc <- a.serveSDS(ctx, c.SDSSocket) }()
	}
	go func() { errc <- a.run(ctx) }()
	// The first to return decides (nil if ctx ended); the others are
	// stopped and waited for.
	first := <-errc
	cancel()
	for range started - 1 {
		<-errc
	}
	return first
}
