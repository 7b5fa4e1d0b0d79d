// Package caservice serves meshd's CA service: node agents' CSRs are signed
// on the xDS port, behind the same credentials as xDS itself (the client
// and the wire format are in server/caclient).
package caservice

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/sds"
	"github.com/meshd/meshd/server/auth"
	"github.com/meshd/meshd/server/caclient"
)

// CertSigner is what the CA service needs from sds.Authority.
type CertSigner interface {
	SignCSR(csrPEM []byte, id mesh.Identity, allowedDNS []string, origin sds.CertOrigin) (*sds.Leaf, error)
	RootCertPEM() []byte
}

// BundleObserver learns which trust bundle each node agent fetched, for the
// root rotation's gate (the stream tracker implements it).
type BundleObserver interface {
	AgentFetchedBundle(node string, bundlePEM []byte)
}

type caService interface {
	sign(ctx context.Context, req *caclient.SignRequest) (*caclient.SignResponse, error)
	bundle(ctx context.Context, req *caclient.SignRequest) (*caclient.SignResponse, error)
}

type caServer struct {
	auth    *auth.Authenticator
	ca      CertSigner
	dns     func(mesh.ServiceKey) []string
	bundles BundleObserver
}

// Register adds the CA service to gs. dns gives the DNS SANs a service may
// have (xds.DNSNames); bundles, if not nil, learns which bundle each agent
// has, for the root rotation gate.
func Register(gs *grpc.Server, a *auth.Authenticator, ca CertSigner, dns func(mesh.ServiceKey) []string, bundles BundleObserver) {
	gs.RegisterService(&grpc.ServiceDesc{
		ServiceName: caclient.ServiceName,
		HandlerType: (*caService)(nil),
		Methods: []grpc.MethodDesc{{
			MethodName: "Sign",
			Handler: func(srv any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
				req := &caclient.SignRequest{}
				if err := dec(req); err != nil {
					return nil, status.Errorf(codes.InvalidArgument, "CA: %v", err)
				}
				return srv.(caService).sign(ctx, req)
			},
		}, {
			// Bundle returns the current trust bundle only (CSR ignored),
			// so an agent follows a root rotation between renewals.
			MethodName: "Bundle",
			Handler: func(srv any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
				req := &caclient.SignRequest{}
				if err := dec(req); err != nil {
					return nil, status.Errorf(codes.InvalidArgument, "CA: %v", err)
				}
				return srv.(caService).bundle(ctx, req)
			},
		}},
	}, &caServer{auth: a, ca: ca, dns: dns, bundles: bundles})
}

// sign authenticates the caller (bootstrap token, or the current mesh
// certificate when renewing), checks the node's catalog identity against it,
// then lets the CA check the CSR. A credential is required even under
// --insecure-xds: a signing oracle for any identity is never acceptable.
// The certificate records the token the caller's chain started from
// (sds.CertOrigin), so revoking that token ends the chain: its
// certificates are refused here and on xDS from then on.
func (s *caServer) sign(ctx context.Context, req *caclient.SignRequest) (*caclient.SignResponse, error) {
	caller, err := s.auth.AuthorizeCall(ctx, req.NodeID)
	if err != nil {
		return nil, err
	}
	leaf, err := s.ca.SignCSR([]byte(req.CSR), caller.Identity, s.dns(caller.Service), caller.Origin)
	if err != nil {
		s.auth.CountRefusal("bad_csr")
		s.auth.LogRefusal("CSR refused", "node", req.NodeID, "credential", caller.Credential, "err", err)
		return nil, status.Errorf(codes.PermissionDenied, "CA: %v", err)
	}
	bundle := s.ca.RootCertPEM()
	if s.bundles != nil {
		s.bundles.AgentFetchedBundle(req.NodeID, bundle)
	}
	return &caclient.SignResponse{
		SPIFFEID: caller.Identity.SPIFFEID(), CertChain: string(leaf.CertPEM), Bundle: string(bundle),
		NotAfter: leaf.NotAfter, RenewAt: leaf.RenewAt,
	}, nil
}

func (s *caServer) bundle(ctx context.Context, req *caclient.SignRequest) (*caclient.SignResponse, error) {
	caller, err := s.auth.AuthorizeCall(ctx, req.NodeID)
	if err != nil {
		return nil, err
	}
	bundle := s.ca.RootCertPEM()
	if s.bundles != nil {
		s.bundles.AgentFetchedBundle(req.NodeID, bundle)
	}
	return &caclient.SignResponse{SPIFFEID: caller.Identity.SPIFFEID(), Bundle: string(bundle)}, nil
}
