package bootstrap

import (
	"bytes"
	"encoding/json"
	"fmt"
	"path/filepath"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/sds"
	"github.com/meshd/meshd/xds"
)

// GRPCOptions describes one proxyless gRPC application's bootstrap.
type GRPCOptions struct {
	// NodeID, Service and Namespace as in EnvoyOptions.
	NodeID, Service, Namespace string
	// XDSAddress is HOST:PORT of meshd's (TLS) xDS server; default
	// DefaultXDSAddress.
	XDSAddress string
	// CAFile is the mesh root PEM the application uses to verify meshd.
	CAFile string
	// CertDir holds the application's own identity and the trust bundle,
	// under the names sds.WriteFiles (and later the node agent) writes. gRPC consumes
	// certificates only through certificate provider plugins, never SDS,
	// so these files are how mesh identities reach it.
	CertDir string
	// RefreshInterval is how often gRPC re-reads CertDir, as a Go duration
	// ("60s", "5m"); default DefaultRefreshInterval.
	RefreshInterval string
}

// The gRPC bootstrap's shape (gRFC A27 and grpc-go's bootstrap parser).
// Structs rather than maps keep the output's field order fixed and readable.
type grpcBootstrap struct {
	XDSServers           []grpcXDSServer                 `json:"xds_servers"`
	Node                 grpcNode                        `json:"node"`
	CertificateProviders map[string]grpcCertProviderSpec `json:"certificate_providers"`
	ServerListenerTmpl   string                          `json:"server_listener_resource_name_template"`
}

type grpcXDSServer struct {
	ServerURI      string            `json:"server_uri"`
	ChannelCreds   []grpcChannelCred `json:"channel_creds"`
	ServerFeatures []string          `json:"server_features"`
}

type grpcChannelCred struct {
	Type   string         `json:"type"`
	Config grpcTLSCredCfg `json:"config"`
}

type grpcTLSCredCfg struct {
	CACertificateFile string `json:"ca_certificate_file"`
	// The app's own mesh certificate authenticates it to meshd (gRPC A65
	// mTLS channel credentials): meshd serves a proxyless app only the
	// configuration of the identity in this certificate.
	CertificateFile string `json:"certificate_file,omitempty"`
	PrivateKeyFile  string `json:"private_key_file,omitempty"`
	RefreshInterval string `json:"refresh_interval,omitempty"`
}

type grpcNode struct {
	ID       string            `json:"id"`
	Cluster  string            `json:"cluster"`
	Metadata map[string]string `json:"metadata"`
	Locality struct{}          `json:"locality"`
}

type grpcCertProviderSpec struct {
	PluginName string             `json:"plugin_name"`
	Config     grpcFileWatcherCfg `json:"config"`
}

type grpcFileWatcherCfg struct {
	CertificateFile   string `json:"certificate_file"`
	PrivateKeyFile    string `json:"private_key_file"`
	CACertificateFile string `json:"ca_certificate_file"`
	RefreshInterval   string `json:"refresh_interval"`
}

// GRPC renders a proxyless gRPC application's xDS bootstrap as indented JSON.
// The same certificate provider instance (xds.CertProviderInstance) serves
// both the identity and the trust bundle, which is what meshd's gRPC TLS
// contexts refer to.
func GRPC(o GRPCOptions) ([]byte, error) {
	id, err := resolveIdentity(o.NodeID, o.Service, o.Namespace)
	if err != nil {
		return nil, err
	}
	srv, err := parseXDSAddress(o.XDSAddress)
	if err != nil {
		return nil, err
	}
	if o.CAFile == "" {
		return nil, fmt.Errorf("CA file is required: gRPC verifies meshd with the mesh root PEM at that path")
	}
	if o.CertDir == "" {
		return nil, fmt.Errorf("certificate directory is required: it must hold %s, %s and %s of the application's identity", sds.CertFileName, sds.KeyFileName, sds.BundleFileName)
	}
	refresh, err := protoDuration(o.RefreshInterval)
	if err != nil {
		return nil, err
	}
	b := grpcBootstrap{
		XDSServers: []grpcXDSServer{{
			ServerURI: srv.String(),
			ChannelCreds: []grpcChannelCred{{Type: "tls", Config: grpcTLSCredCfg{
				CACertificateFile: o.CAFile,
				CertificateFile:   filepath.Join(o.CertDir, sds.CertFileName),
				PrivateKeyFile:    filepath.Join(o.CertDir, sds.KeyFileName),
				RefreshInterval:   refresh,
			}}},
			// xds_v3 is implied by current gRPC releases but harmless, and
			// older ones need it to speak v3.
			ServerFeatures: []string{"xds_v3"},
		}},
		Node: grpcNode{
			ID:      id.nodeID,
			Cluster: id.service,
			Metadata: map[string]string{
				xds.NodeMetaNamespace: id.namespace,
				xds.NodeMetaService:   id.service,
				xds.NodeMetaFlavor:    string(mesh.FlavorGRPC),
			},
		},
		CertificateProviders: map[string]grpcCertProviderSpec{
			xds.CertProviderInstance: {
				PluginName: "file_watcher",
				Config: grpcFileWatcherCfg{
					CertificateFile:   filepath.Join(o.CertDir, sds.CertFileName),
					PrivateKeyFile:    filepath.Join(o.CertDir, sds.KeyFileName),
					CACertificateFile: filepath.Join(o.CertDir, sds.BundleFileName),
					RefreshInterval:   refresh,
				},
			},
		},
		ServerListenerTmpl: xds.GRPCServerListenerTemplate,
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	// The listener template contains '?' and '='; keep the JSON readable
	// rather than \u-escaped (HTML escaping is pointless in a config file).
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(b); err != nil {
		return nil, fmt.Errorf("encoding gRPC bootstrap: %w", err)
	}
	return buf.Bytes(), nil
}

// protoDuration turns a Go duration into the protobuf JSON form ("60s")
// that gRPC's file_watcher plugin parses; it rejects "1m" and the like.
func protoDuration(s string) (string, error) {
	if s == "" {
		s = DefaultRefreshInterval
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return "", fmt.Errorf("refresh interval %q: %w (use a duration such as 60s or 5m)", s, err)
	}
	if d <= 0 {
		return "", fmt.Errorf("refresh interval %q must be positive (e.g. 60s)", s)
	}
	js, err := protojson.Marshal(durationpb.New(d))
	if err != nil {
		return "", fmt.Errorf("refresh interval %q: %w", s, err)
	}
	var out string
	if err := json.Unmarshal(js, &out); err != nil {
		return "", fmt.Errorf("refresh interval %q: %w", s, err)
	}
	return out, nil
}
