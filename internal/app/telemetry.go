package app

import (
	"log/slog"
	"strings"

	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/snapshot"
	"github.com/meshd/meshd/telemetry"
	"github.com/meshd/meshd/xds"
)

// newTelemetry builds the access-log collector (served on the xDS port)
// and its admin API. Both read the publisher's current view: which service
// a reporting node fronts, whether policy puts it in STRICT mode, and the
// identity of each destination service.
func newTelemetry(c *Config, pub *snapshot.Publisher, log *slog.Logger) (*telemetry.Collector, *telemetry.API) {
	store := telemetry.NewStore(telemetry.Options{MaxEdges: c.TelemetryMaxEdges})
	hub := &telemetry.Hub{}
	col := &telemetry.Collector{Store: store, Hub: hub, LogName: xds.TelemetryLogName, Logger: log,
		Resolve: func(node string) (telemetry.Target, bool) {
			v := pub.View()
			if v.Catalog == nil {
				return telemetry.Target{}, false
			}
			p := v.Catalog.Proxy(node)
			if p == nil {
				return telemetry.Target{}, false
			}
			t := telemetry.Target{Service: p.ServiceKey()}
			if v.Policy != nil {
				t.Strict = v.Policy.MTLSModeFor(v.Catalog.WorkloadOf(p)) == mesh.MTLSStrict
			}
			return t, true
		}}
	api := &telemetry.API{Store: store, Hub: hub, Identity: func(service string) string {
		cat := pub.View().Catalog
		name, ns, _ := strings.Cut(service, ".") // names have no dots
		if cat == nil || cat.Service(mesh.ServiceKey{Namespace: ns, Name: name}) == nil {
			return ""
		}
		return mesh.IdentityOf(c.TrustDomain, cat.Service(mesh.ServiceKey{Namespace: ns, Name: name})).SPIFFEID()
	}}
	return col, api
}
