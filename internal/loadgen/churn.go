package loadgen

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"

	"github.com/meshd/meshd/internal/atomicfile"
	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/xds"
)

// ErrUnsupported marks a churn kind meshd cannot express yet.
var ErrUnsupported = errors.New("not supported yet")

// Change is one edit of the catalog: which proxies it must reach and how a
// proxy shows it has the new configuration.
type Change struct {
	Kind string
	// Affected lists the node ids whose resources the change alters.
	Affected []string
	// Delivered holds on an affected proxy once it has received and ACKed
	// the new configuration (called with the proxy's lock held).
	Delivered func(*Proxy) bool
	// Apply, when set, makes the change instead of a catalog rewrite (for
	// changes made through meshd's admin API).
	Apply func(context.Context) error
	// Before, when set, is called on every affected proxy (lock held) just
	// before the change; Delivered can compare with it through Baseline.
	Before   func(*Proxy) string
	baseline map[string]string
}

// Baseline is what Before returned for p (empty if Before is nil).
func (c *Change) Baseline(p *Proxy) string { return c.baseline[p.ID] }

// ChurnKinds are the changes the tool can make, in the order one round
// makes them. Each "back" kind undoes the one before it, so rounds repeat on
// the same catalog; leaf-rotation (through meshd's admin API) is made in the
// first round only.
var ChurnKinds = []string{"endpoint-add", "endpoint-remove", "health-flap", "service-add", "service-remove", "policy", "noop", "leaf-rotation"}

// OnceChurnKinds can be made once per meshd run: meshd refuses a new CA
// rotation while one is in progress, and an intermediate rotation stays in
// progress until the old intermediate's leaves have expired.
var OnceChurnKinds = map[string]bool{"leaf-rotation": true}

// FutureChurnKinds are changes the tool knows of but cannot make yet, with
// the reason; none at the moment.
var FutureChurnKinds = map[string]string{}

// churner applies rounds of changes to a catalog.
type churner struct {
	cat   *Catalog
	admin *Admin // for changes made through meshd's admin API
	// policyDir is the directory meshd reads policies from (--policy-dir);
	// empty when the tool does not know it.
	policyDir string
	round     int
	// state carried from a change to its undo
	epSvc, flapSvc mesh.ServiceKey
	epAddr         string
	newSvc         mesh.ServiceKey
	newUsers       []string
}

// steps returns the edits one change kind makes to ch.cat, each giving the
// change to measure; health-flap is two (down, then up).
func (ch *churner) steps(kind string) ([]func() (*Change, error), error) {
	switch kind {
	case "endpoint-add":
		return []func() (*Change, error){ch.endpointAdd}, nil
	case "endpoint-remove":
		return []func() (*Change, error){ch.endpointRemove}, nil
	case "health-flap":
		return []func() (*Change, error){func() (*Change, error) { return ch.flap(mesh.HealthUnhealthy) }, func() (*Change, error) { return ch.flap(mesh.HealthHealthy) }}, nil
	case "service-add":
		return []func() (*Change, error){ch.serviceAdd}, nil
	case "service-remove":
		return []func() (*Change, error){ch.serviceRemove}, nil
	case "noop":
		return []func() (*Change, error){ch.noop}, nil
	case "policy":
		if ch.policyDir == "" {
			return nil, fmt.Errorf("churn policy: %w: give the directory meshd reads policies from (--policy-dir)", ErrUnsupported)
		}
		return []func() (*Change, error){func() (*Change, error) { return ch.policy(true) }, func() (*Change, error) { return ch.policy(false) }}, nil
	case "leaf-rotation":
		return []func() (*Change, error){ch.leafRotation}, nil
	}
	if why, ok := FutureChurnKinds[kind]; ok {
		return nil, fmt.Errorf("churn %s: %w: %s", kind, ErrUnsupported, why)
	}
	return nil, fmt.Errorf("unknown churn kind %q: use one of %v", kind, ChurnKinds)
}

func hasEndpoint(p *Proxy, svc mesh.ServiceKey, addr string, health corev3.HealthStatus, want bool) bool {
	if !p.Synced() {
		return false
	}
	cla, _ := p.Resource(resourcev3.EndpointType, xds.OutboundClusterName(svc)).(*endpointv3.ClusterLoadAssignment)
	if cla == nil {
		return false
	}
	for _, l := range cla.GetEndpoints() {
		for _, e := range l.GetLbEndpoints() {
			if e.GetEndpoint().GetAddress().GetSocketAddress().GetAddress() == addr {
				return want && e.GetHealthStatus() == health
			}
		}
	}
	return !want
}

func (ch *churner) endpointAdd() (*Change, error) {
	s := ch.cat.MostConsumed()
	if s == nil {
		return nil, errors.New("endpoint-add: no service has consumers")
	}
	ch.epSvc = s.Key()
	ch.epAddr = fmt.Sprintf("10.250.%d.%d", ch.round/250%250, ch.round%250+1)
	s.Endpoints = append(s.Endpoints, mesh.Endpoint{Address: ch.epAddr, Port: publicPort, Locality: mesh.Locality{Region: "r1", Zone: "z0"}})
	key, addr := ch.epSvc, ch.epAddr
	return &Change{Kind: "endpoint-add", Affected: ch.cat.Consumers(key), Delivered: func(p *Proxy) bool {
		return hasEndpoint(p, key, addr, corev3.HealthStatus_HEALTHY, true)
	}}, nil
}

func (ch *churner) endpointRemove() (*Change, error) {
	s := ch.cat.Service(ch.epSvc)
	if s == nil || ch.epAddr == "" {
		return nil, errors.New("endpoint-remove needs an endpoint-add before it")
	}
	s.Endpoints = slices.DeleteFunc(s.Endpoints, func(e mesh.Endpoint) bool { return e.Address == ch.epAddr })
	key, addr := ch.epSvc, ch.epAddr
	ch.epAddr = ""
	return &Change{Kind: "endpoint-remove", Affected: ch.cat.Consumers(key), Delivered: func(p *Proxy) bool {
		return hasEndpoint(p, key, addr, 0, false)
	}}, nil
}

func (ch *churner) flap(h mesh.Health) (*Change, error) {
	if h == mesh.HealthUnhealthy {
		s := ch.cat.MostConsumed(ch.epSvc)
		if s == nil || len(s.Endpoints) == 0 {
			return nil, errors.New("health-flap: no consumed service with endpoints")
		}
		ch.flapSvc = s.Key()
	}
	s := ch.cat.Service(ch.flapSvc)
	if s == nil || len(s.Endpoints) == 0 {
		return nil, errors.New("health-flap: service vanished")
	}
	s.Endpoints[0].Health = h
	if h == mesh.HealthHealthy {
		s.Endpoints[0].Health = "" // back to the default, as the file had it
	}
	key, addr := ch.flapSvc, s.Endpoints[0].Address
	want := corev3.HealthStatus_UNHEALTHY
	if h == mesh.HealthHealthy {
		want = corev3.HealthStatus_HEALTHY
	}
	return &Change{Kind: "health-flap", Affected: ch.cat.Consumers(key), Delivered: func(p *Proxy) bool {
		return hasEndpoint(p, key, addr, want, true)
	}}, nil
}

// serviceAdd adds a service and makes every tenth proxy call it, the usual
// shape of a deployment: a new backend and the clients updated to use it.
func (ch *churner) serviceAdd() (*Change, error) {
	ch.cat.extra++
	svc := mesh.Service{Name: fmt.Sprintf("churn-%05d", ch.cat.extra), Namespace: "churn", Protocol: mesh.ProtocolHTTP}
	for e := range 2 {
		svc.Endpoints = append(svc.Endpoints, mesh.Endpoint{Address: fmt.Sprintf("10.251.%d.%d", ch.cat.extra%250, e+1), Port: publicPort})
	}
	if len(ch.cat.Services) > 0 && ch.cat.Services[0].VirtualAddress() {
		// Services have virtual addresses (--all-services): so does this
		// one, and the transparent sidecars that see every service capture
		// it too.
		svc.Address, svc.Port = fmt.Sprintf("10.95.%d.%d", ch.cat.extra/250%250, ch.cat.extra%250+1), servicePort
	}
	ch.cat.Services = append(ch.cat.Services, svc)
	ch.newSvc = svc.Key()
	ch.newUsers = nil
	ports := map[string]uint32{}
	for i := range ch.cat.Proxies {
		if i%10 != 0 {
			continue
		}
		p := &ch.cat.Proxies[i]
		if p.Flavor != "" && p.Flavor != mesh.FlavorEnvoy {
			continue
		}
		port := uint32(firstUpstream)
		for _, u := range p.Upstreams {
			port = max(port, u.LocalPort+1)
		}
		for port == p.PublicPort || port == p.AppPort {
			port++
		}
		if port > 65535 {
			continue
		}
		p.Upstreams = append(p.Upstreams, mesh.Upstream{Service: svc.Name, Namespace: svc.Namespace, LocalPort: port})
		ch.newUsers = append(ch.newUsers, p.ID)
		ports[p.ID] = port
	}
	key := svc.Key()
	cluster := xds.OutboundClusterName(key)
	// Every tenth proxy names it with a local port; proxies that see whole
	// namespaces see it too.
	return &Change{Kind: "service-add", Affected: ch.cat.Consumers(key), Delivered: func(p *Proxy) bool {
		if !p.Synced() || p.Resource(resourcev3.ClusterType, cluster) == nil {
			return false
		}
		cla, _ := p.Resource(resourcev3.EndpointType, cluster).(*endpointv3.ClusterLoadAssignment)
		if port, named := ports[p.ID]; named {
			u := mesh.Upstream{Service: key.Name, Namespace: key.Namespace, LocalPort: port}
			if p.Resource(resourcev3.ListenerType, xds.OutboundListenerName(&u)) == nil {
				return false
			}
		}
		return len(cla.GetEndpoints()) > 0
	}}, nil
}

func (ch *churner) serviceRemove() (*Change, error) {
	if ch.newSvc == (mesh.ServiceKey{}) {
		return nil, errors.New("service-remove needs a service-add before it")
	}
	key := ch.newSvc
	users := ch.cat.Consumers(key)
	for _, id := range ch.newUsers {
		p := ch.cat.Proxy(id)
		p.Upstreams = slices.DeleteFunc(p.Upstreams, func(u mesh.Upstream) bool { return u.Key() == key })
	}
	ch.cat.Services = slices.DeleteFunc(ch.cat.Services, func(s mesh.Service) bool { return s.Key() == key })
	ch.newSvc, ch.newUsers = mesh.ServiceKey{}, nil
	cluster := xds.OutboundClusterName(key)
	return &Change{Kind: "service-remove", Affected: users, Delivered: func(p *Proxy) bool {
		return p.Synced() && p.Resource(resourcev3.ClusterType, cluster) == nil
	}}, nil
}

// noop rewrites the file with its services and proxies in reverse order:
// meshd sorts them, so no proxy's configuration may change and nothing may
// be pushed.
func (ch *churner) noop() (*Change, error) {
	slices.Reverse(ch.cat.Services)
	slices.Reverse(ch.cat.Proxies)
	return &Change{Kind: "noop"}, nil
}

// policyFile is the file the policy churn writes in meshd's policy
// directory.
const policyFile = "xds-load-churn.yaml"

// policy adds (then, with add false, removes) a namespace-wide Istio
// AuthorizationPolicy in the namespace of the first proxy: a DENY rule for
// a principal no workload has, which changes the RBAC of every sidecar in
// that namespace (in its inbound route for HTTP services, in its inbound
// listener for tcp ones) and nothing else. The principal names the round,
// so every round is a new policy.
func (ch *churner) policy(add bool) (*Change, error) {
	if len(ch.cat.Proxies) == 0 {
		return nil, errors.New("churn policy: the catalog has no proxies")
	}
	ns := ch.cat.Proxies[0].Namespace
	var ids []string
	for i := range ch.cat.Proxies {
		p := &ch.cat.Proxies[i]
		if p.Namespace == ns && p.Inbound() && (p.Flavor == "" || p.Flavor == mesh.FlavorEnvoy) {
			ids = append(ids, p.ID)
		}
	}
	principal := fmt.Sprintf("cluster.local/ns/xds-load/sa/churn-round-%d-nobody", ch.round)
	path := filepath.Join(ch.policyDir, policyFile)
	c := &Change{Kind: "policy", Affected: ids}
	c.Delivered = func(p *Proxy) bool {
		return p.Synced() && inboundMentions(p, principal) == add
	}
	c.Apply = func(context.Context) error {
		if !add {
			if err := os.Remove(path); err != nil {
				return fmt.Errorf("churn policy: %w", err)
			}
			return nil
		}
		doc := fmt.Sprintf(`# Written by xds-load's policy churn; removed again by it.
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: xds-load-churn
  namespace: %s
spec:
  action: DENY
  rules:
  - from:
    - source:
        principals: [%q]
`, ns, principal)
		// A hidden temporary file renamed into place: meshd skips hidden
		// files and reads a renamed one at once.
		return atomicfile.Write(path, []byte(doc), 0o644)
	}
	return c, nil
}

// inboundMentions reports whether a proxy's inbound listener or route
// (where its RBAC is) names s.
func inboundMentions(p *Proxy, s string) bool {
	for _, typ := range []string{resourcev3.ListenerType, resourcev3.RouteType} {
		for name, e := range p.state[typ] {
			if !strings.HasPrefix(name, "inbound|") || e.msg == nil {
				continue
			}
			b, err := proto.Marshal(e.msg)
			if err == nil && bytes.Contains(b, []byte(s)) {
				return true
			}
		}
	}
	return false
}

// secretFingerprint summarises the identity (non-bundle) secrets a proxy
// holds: their names and certificate bytes.
func secretFingerprint(p *Proxy) string {
	var b strings.Builder
	names := make([]string, 0, len(p.state[resourcev3.SecretType]))
	for n := range p.state[resourcev3.SecretType] {
		if n != xds.TrustBundleSecretName {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	for _, n := range names {
		s, _ := p.Resource(resourcev3.SecretType, n).(*tlsv3.Secret)
		b.WriteString(n)
		b.WriteByte(0)
		b.Write(s.GetTlsCertificate().GetCertificateChain().GetInlineBytes())
		b.WriteByte(0)
	}
	return b.String()
}

// leafRotation starts an intermediate CA rotation through meshd's admin API
// (what "meshctl ca rotate-intermediate" does): meshd switches to the new
// intermediate at once and reissues every leaf, so every proxy must receive
// a new identity certificate — a leaf-rotation storm.
func (ch *churner) leafRotation() (*Change, error) {
	if ch.admin == nil {
		return nil, fmt.Errorf("churn leaf-rotation: %w: needs meshd's admin address", ErrUnsupported)
	}
	var ids []string
	for i := range ch.cat.Proxies {
		if f := ch.cat.Proxies[i].Flavor; f == "" || f == mesh.FlavorEnvoy {
			ids = append(ids, ch.cat.Proxies[i].ID)
		}
	}
	c := &Change{Kind: "leaf-rotation", Affected: ids, Before: secretFingerprint}
	c.Delivered = func(p *Proxy) bool {
		return p.Synced() && secretFingerprint(p) != c.Baseline(p)
	}
	c.Apply = func(ctx context.Context) error {
		code, body, err := ch.admin.post(ctx, "/ca/rotate-intermediate")
		if err != nil {
			return err
		}
		if code == http.StatusConflict {
			return fmt.Errorf("leaf-rotation: %w: meshd has a CA rotation in progress (%s)", ErrUnsupported, strings.TrimSpace(body))
		}
		if code != http.StatusAccepted && code != http.StatusOK {
			return fmt.Errorf("leaf-rotation: POST /ca/rotate-intermediate: HTTP %d: %s", code, strings.TrimSpace(body))
		}
		return nil
	}
	return c, nil
}
