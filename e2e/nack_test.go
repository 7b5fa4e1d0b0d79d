package e2e

import (
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/internal/envoytest"
)

// A real Envoy rejects a listener (its port is taken): meshd records the
// NACK with Envoy's reason, does not resend the rejected version, and does
// not fall into a request/response loop for the routes and secrets the
// rejected listener would have used (both happened with go-control-plane's
// defaults: thousands of responses a second).
func TestRejectedListenerIsRecordedNotResent(t *testing.T) {
	envoytest.Binary(t)
	public, app, admin := envoytest.FreePort(t), envoytest.FreePort(t), envoytest.FreePort(t)
	catalog := fmt.Sprintf("services:\n  - {name: api, protocol: http, endpoints: [{address: 127.0.0.1, port: %d}]}\nproxies:\n  - {service: api, address: 127.0.0.1, publicPort: %d, appPort: %d}\n", public, public, app)
	m := startMeshd(t, catalog)
	taken, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", public))
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	startSidecar(t, m, "api", "", admin)

	eventually(t, 15*time.Second, func() error {
		for _, p := range m.status().Proxies {
			if p.ID == "api.default" && p.XDS != nil {
				if l := p.XDS.Types["Listener"]; l.Nacked != "" && strings.Contains(l.NackError, "Address already in use") {
					return nil
				}
			}
		}
		return fmt.Errorf("NACK not recorded yet")
	})
	before := pushes(t, m)
	// Not a wait: the test is that nothing is resent in this window, and
	// an absence has no event to wait for.
	time.Sleep(2 * time.Second)
	after := pushes(t, m)
	if after-before > 2 {
		t.Fatalf("meshd sent %d responses in 2 s to a proxy whose config did not change", after-before)
	}
	code, metrics := m.adminGET("/metrics")
	if code != 200 || !strings.Contains(metrics, `meshd_xds_nacks_total{type="Listener"} 1`) {
		t.Fatalf("NACK metric missing:\n%s", grep(metrics, "nacks"))
	}
}

var pushLine = regexp.MustCompile(`(?m)^meshd_xds_pushes_total\{type="[^"]+"\} (\d+)$`)

func pushes(t *testing.T, m *meshd) int {
	t.Helper()
	_, body := m.adminGET("/metrics")
	n := 0
	for _, g := range pushLine.FindAllStringSubmatch(body, -1) {
		v, _ := strconv.Atoi(g[1])
		n += v
	}
	return n
}

func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
