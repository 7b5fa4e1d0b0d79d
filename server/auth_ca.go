package server

import (
	"context"
	"encoding/json"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/sds"
)

// The CA service signs node agents' CSRs on meshd's xDS port. It is a
// hand-written gRPC service with a JSON codec (content-subtype "json"): two
// small messages do not justify a protoc toolchain, and gRPC selects the
// codec per call, so the proto-based xDS services on the same server are
// unaffected.
const (
	CAServiceName  = "meshd.ca.v1.CertificateAuthority"
	caSignMethod   = "/" + CAServiceName + "/Sign"
	caBundleMethod = "/" + CAServiceName + "/Bundle"
	jsonCodecName  = "json"
)

type jsonCodec struct{}

func (jsonCodec) Marshal(v any) ([]byte, error)      { return json.Marshal(v) }
func (jsonCodec) Unmarshal(data []byte, v any) error { return json.Unmarshal(data, v) }
func (jsonCodec) Name() string                       { return jsonCodecName }

func init() { encoding.RegisterCodec(jsonCodec{}) }

// SignRequest asks for a certificate for the node's identity.
type SignRequest struct {
	NodeID string `json:"nodeId"`
	CSR    string `json:"csr"` // PEM CERTIFICATE REQUEST
}

// SignResponse is the signed chain and the current trust bundle.
type SignResponse struct {
	SPIFFEID  string    `json:"spiffeId"`
	CertChain string    `json:"certChain"` // leaf + intermediate, PEM
	Bundle    string    `json:"bundle"`    // trusted roots, PEM
	NotAfter  time.Time `json:"notAfter"`
	RenewAt   time.Time `json:"renewAt"`
}

// CertSigner is what the CA service needs from sds.Authority.
type CertSigner interface {
	SignCSR(csrPEM []byte, id mesh.Identity, allowedDNS []string) (*sds.Leaf, error)
	RootCertPEM() []byte
}

type caService interface {
	sign(ctx context.Context, req *SignRequest) (*SignResponse, error)
	bundle(ctx context.Context, req *SignRequest) (*SignResponse, error)
}

type caServer struct {
	auth    *Authenticator
	ca      CertSigner
	dns     func(mesh.ServiceKey) []string
	tracker *Tracker
}

// RegisterCAService adds the CA service to gs. dns gives the DNS SANs a
// service may have (xds.DNSNames); tracker, if not nil, learns which bundle
// each agent has, for the root rotation gate.
func RegisterCAService(gs *grpc.Server, auth *Authenticator, ca CertSigner, dns func(mesh.ServiceKey) []string, tracker *Tracker) {
	auth.init()
	gs.RegisterService(&grpc.ServiceDesc{
		ServiceName: CAServiceName,
		HandlerType: (*caService)(nil),
		Methods: []grpc.MethodDesc{{
			MethodName: "Sign",
			Handler: func(srv any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
				req := &SignRequest{}
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
				req := &SignRequest{}
				if err := dec(req); err != nil {
					return nil, status.Errorf(codes.InvalidArgument, "CA: %v", err)
				}
				return srv.(caService).bundle(ctx, req)
			},
		}},
	}, &caServer{auth: auth, ca: ca, dns: dns, tracker: tracker})
}

// sign authenticates the caller (bootstrap token, or the current mesh
// certificate when renewing), checks the node's catalog identity against it,
// then lets the CA check the CSR. A credential is required even under
// --insecure-xds: a signing oracle for any identity is never acceptable.
func (s *caServer) sign(ctx context.Context, req *SignRequest) (*SignResponse, error) {
	cred, err := s.auth.authenticate(ctx)
	if err != nil {
		return nil, err
	}
	id, err := s.auth.authorize(cred, req.NodeID)
	if err != nil {
		return nil, err
	}
	svc, _, _ := s.auth.Lookup(req.NodeID)
	leaf, err := s.ca.SignCSR([]byte(req.CSR), id, s.dns(svc))
	if err != nil {
		s.auth.refused.WithLabelValues("bad_csr").Inc()
		s.auth.Logger.Warn("CSR refused", "node", req.NodeID, "credential", cred.String(), "err", err)
		return nil, status.Errorf(codes.PermissionDenied, "CA: %v", err)
	}
	bundle := s.ca.RootCertPEM()
	if s.tracker != nil {
		s.tracker.AgentFetchedBundle(req.NodeID, bundle)
	}
	return &SignResponse{
		SPIFFEID: id.SPIFFEID(), CertChain: string(leaf.CertPEM), Bundle: string(bundle),
		NotAfter: leaf.NotAfter, RenewAt: leaf.RenewAt,
	}, nil
}

func (s *caServer) bundle(ctx context.Context, req *SignRequest) (*SignResponse, error) {
	cred, err := s.auth.authenticate(ctx)
	if err != nil {
		return nil, err
	}
	id, err := s.auth.authorize(cred, req.NodeID)
	if err != nil {
		return nil, err
	}
	bundle := s.ca.RootCertPEM()
	if s.tracker != nil {
		s.tracker.AgentFetchedBundle(req.NodeID, bundle)
	}
	return &SignResponse{SPIFFEID: id.SPIFFEID(), Bundle: string(bundle)}, nil
}

// Bundle fetches the current trust bundle from the CA service.
func Bundle(ctx context.Context, cc grpc.ClientConnInterface, token, nodeID string) (string, error) {
	if token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, TokenMetadataKey, "Bearer "+token)
	}
	resp := &SignResponse{}
	if err := cc.Invoke(ctx, caBundleMethod, &SignRequest{NodeID: nodeID}, resp, grpc.CallContentSubtype(jsonCodecName)); err != nil {
		return "", err
	}
	return resp.Bundle, nil
}

// Sign calls the CA service on cc; token may be empty when the connection
// presents a mesh client certificate.
func Sign(ctx context.Context, cc grpc.ClientConnInterface, token string, req *SignRequest) (*SignResponse, error) {
	if token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, TokenMetadataKey, "Bearer "+token)
	}
	resp := &SignResponse{}
	if err := cc.Invoke(ctx, caSignMethod, req, resp, grpc.CallContentSubtype(jsonCodecName)); err != nil {
		return nil, err
	}
	return resp, nil
}
