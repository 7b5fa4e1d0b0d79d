package xds

import (
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
)

// BuildIdentitySecret renders an identity's certificate chain and private key
// as the SDS secret named by its SPIFFE ID. The key bytes live only inside
// this message; dumps redact them (see Redact).
func BuildIdentitySecret(name string, certChainPEM, keyPEM []byte) (*Resource, error) {
	s := &tlsv3.Secret{
		Name: name,
		Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
			CertificateChain: inlineBytes(certChainPEM),
			PrivateKey:       inlineBytes(keyPEM),
		}},
	}
	return newResource(name, s)
}

// BuildTrustBundleSecret renders the mesh's trusted roots under the fixed
// bundle name.
func BuildTrustBundleSecret(rootsPEM []byte) (*Resource, error) {
	s := &tlsv3.Secret{
		Name: TrustBundleSecretName,
		Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			TrustedCa: inlineBytes(rootsPEM),
		}},
	}
	return newResource(TrustBundleSecretName, s)
}

func inlineBytes(b []byte) *corev3.DataSource {
	return &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: b}}
}

// BuildGatewayFileSecret renders a gateway listener's certificate as an
// SDS secret that names the PEM files on the gateway's host. It carries
// paths only: Envoy reads the files itself, so the key never reaches
// meshd, and an SDS-delivered certificate with file sources is watched
// (its directory), so replacing the files (a rename into place, as
// certbot or a mounted secret does) reloads it without a restart.
func BuildGatewayFileSecret(port uint32, certFile, keyFile string) (*Resource, error) {
	name := GatewayTLSSecretName(port)
	s := &tlsv3.Secret{
		Name: name,
		Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
			CertificateChain: &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: certFile}},
			PrivateKey:       &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: keyFile}},
		}},
	}
	return newResource(name, s)
}
