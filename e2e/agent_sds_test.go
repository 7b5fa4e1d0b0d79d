package e2e

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshd/meshd/internal/envoytest"
)

// A sidecar rendered by meshd whose certificates come from mesh-agent
// (catalog sds: agent, meshctl bootstrap --agent-socket): its key is
// generated and kept by the agent, meshd serves it no secrets, and mesh
// traffic through it works like any other sidecar's.
func TestAgentFedSidecar(t *testing.T) {
	envoytest.Binary(t)
	api, web := ports(t), ports(t)
	webToAPI := envoytest.FreePort(t)
	catalog := fmt.Sprintf(`services:
  - {name: api, protocol: http, endpoints: [{address: 127.0.0.1, port: %d}]}
  - {name: web, protocol: http}
proxies:
  - {service: api, address: 127.0.0.1, publicPort: %d, appPort: %d, sds: agent}
  - {service: web, upstreams: [{service: api, localPort: %d}]}
`, api.public, api.public, api.app, webToAPI)
	m := startMeshd(t, catalog)
	startHTTPApp(t, "api", api.app)

	tokFile, _ := m.token(t, "api", "1h")
	socket := filepath.Join(m.dir, "api-sds.sock")
	certDir := filepath.Join(m.dir, "api-agent-certs")
	agentLog := &logWatcher{}
	agent := exec.Command(filepath.Join(binDir, "mesh-agent"), "--service", "api", "--token-file", tokFile,
		"--xds-address", m.xdsAddr, "--ca-file", m.rootCAFile(), "--sds-socket", socket, "--cert-dir", certDir)
	agent.Stdout, agent.Stderr = agentLog, agentLog
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		agent.Process.Signal(syscall.SIGTERM)
		agent.Wait()
		if t.Failed() {
			t.Logf("mesh-agent log:\n%s", agentLog)
		}
	})
	eventually(t, 15*time.Second, func() error { _, err := os.Stat(socket); return err })

	apiEnvoy := startSidecar(t, m, "api", "", api.admin, "--agent-socket", socket)
	startSidecar(t, m, "web", "", web.admin)

	var body map[string]string
	eventually(t, 20*time.Second, func() error {
		code, b, err := httpGet(fmt.Sprintf("http://127.0.0.1:%d/hello", webToAPI))
		if err != nil || code != 200 {
			return fmt.Errorf("%d %v %v", code, b, err)
		}
		body = b
		return nil
	})
	if !strings.Contains(body["xfcc"], "URI=spiffe://cluster.local/ns/default/sa/web") {
		t.Fatalf("api's sidecar did not verify web: xfcc %q", body["xfcc"])
	}

	// The certificate api's Envoy presents is the agent's, not one of meshd's.
	b, err := os.ReadFile(filepath.Join(certDir, "cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	leaf, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	ec, err := envoyCertFor(t, apiEnvoy, "spiffe://cluster.local/ns/default/sa/api")
	if err != nil {
		t.Fatal(err)
	}
	if ec.serial != normSerial(leaf.SerialNumber.Text(16)) {
		t.Fatalf("api's Envoy presents serial %s, the agent's certificate is %s", ec.serial, normSerial(leaf.SerialNumber.Text(16)))
	}
	// meshd serves api no secrets at all.
	_, dump := m.adminGET("/debug/config_dump?proxy=api.default")
	if strings.Contains(dump, "dynamicActiveSecrets") || strings.Contains(dump, "[redacted]") {
		t.Fatalf("meshd served secrets to an agent-fed proxy:\n%s", excerpt(dump, "Secret"))
	}
	m.assertAllACKed("api.default", "web.default")
}
