// Package caclient is the client side of meshd's CA service: node agents
// (package agent, run by mesh-agent) have their CSRs signed and fetch the trust bundle on
// meshd's xDS port. It is all a node agent imports of meshd's server side.
//
// The service is a hand-written gRPC service with a JSON codec
// (content-subtype "json"): two small messages do not justify a protoc
// toolchain, and gRPC selects the codec per call, so the proto-based xDS
// services on the same server are unaffected.
package caclient

import (
	"context"
	"encoding/json"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/metadata"
)

// TokenMetadataKey is the gRPC metadata key carrying a bootstrap token as
// "Bearer <token>", on xDS streams (Envoy sends it through the xDS
// cluster's initial_metadata) and CA calls alike.
const TokenMetadataKey = "authorization"

// The service's names, shared with the server (server/caservice).
const (
	ServiceName  = "meshd.ca.v1.CertificateAuthority"
	SignMethod   = "/" + ServiceName + "/Sign"
	BundleMethod = "/" + ServiceName + "/Bundle"
	// CodecName is the content-subtype of the service's JSON codec.
	CodecName = "json"
)

type jsonCodec struct{}

func (jsonCodec) Marshal(v any) ([]byte, error)      { return json.Marshal(v) }
func (jsonCodec) Unmarshal(data []byte, v any) error { return json.Unmarshal(data, v) }
func (jsonCodec) Name() string                       { return CodecName }

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

func withToken(ctx context.Context, token string) context.Context {
	if token == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, TokenMetadataKey, "Bearer "+token)
}

// Bundle fetches the current trust bundle from the CA service.
func Bundle(ctx context.Context, cc grpc.ClientConnInterface, token, nodeID string) (string, error) {
	resp := &SignResponse{}
	if err := cc.Invoke(withToken(ctx, token), BundleMethod, &SignRequest{NodeID: nodeID}, resp, grpc.CallContentSubtype(CodecName)); err != nil {
		return "", err
	}
	return resp.Bundle, nil
}

// Sign calls the CA service on cc; token may be empty when the connection
// presents a mesh client certificate.
func Sign(ctx context.Context, cc grpc.ClientConnInterface, token string, req *SignRequest) (*SignResponse, error) {
	resp := &SignResponse{}
	if err := cc.Invoke(withToken(ctx, token), SignMethod, req, resp, grpc.CallContentSubtype(CodecName)); err != nil {
		return nil, err
	}
	return resp, nil
}
