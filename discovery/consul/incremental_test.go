package consul

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/hashicorp/consul/api"
)

// TestIncrementalMapperMatchesMap applies random changes of every kind to a
// catalog and checks after each that the watcher's incremental mapper gives
// exactly what a fresh Map gives (same catalog hash, or the same error).
func TestIncrementalMapperMatchesMap(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	in := scaleEntries(20, 3)
	im := newIncrementalMapper(MapOptions{IncludeWarning: true})
	statuses := []string{api.HealthPassing, api.HealthWarning, api.HealthCritical}
	for step := range 400 {
		svc := rng.IntN(22) // 20 and 21 do not exist at first
		name := fmt.Sprintf("svc-%d", svc)
		var what string
		switch rng.IntN(7) {
		case 0: // health of an application instance
			what = "app health"
			in[name] = mutate(in[name], rng, func(e *api.ServiceEntry) {
				e.Checks = api.HealthChecks{{Status: statuses[rng.IntN(3)]}}
			})
		case 1: // health of a sidecar
			what = "sidecar health"
			in[name+"-sidecar-proxy"] = mutate(in[name+"-sidecar-proxy"], rng, func(e *api.ServiceEntry) {
				e.Checks = api.HealthChecks{{Status: statuses[rng.IntN(3)]}}
			})
		case 2: // namespace change: upstreams of other services must follow
			what = "namespace"
			ns := []string{"", "a", "b"}[rng.IntN(3)]
			in[name] = mutateAll(in[name], func(e *api.ServiceEntry) {
				e.Service.Meta = map[string]string{MetaProtocol: "http", MetaNamespace: ns}
			})
		case 3: // an instance leaves
			what = "deregister one"
			if es := in[name+"-sidecar-proxy"]; len(es) > 0 {
				k := rng.IntN(len(es))
				in[name+"-sidecar-proxy"] = append(append([]*api.ServiceEntry{}, es[:k]...), es[k+1:]...)
			}
		case 4: // the whole service leaves (sidecars and apps)
			what = "deregister service"
			delete(in, name)
			delete(in, name+"-sidecar-proxy")
		case 5: // the service (re)appears with its instances
			what = "register service"
			full := scaleEntries(22, 3)
			in[name], in[name+"-sidecar-proxy"] = full[name], full[name+"-sidecar-proxy"]
		case 6: // a bad protocol, then fixed by a later step 2 or 5
			what = "bad protocol"
			in[name] = mutateAll(in[name], func(e *api.ServiceEntry) { e.Service.Meta = map[string]string{MetaProtocol: "htpp"} })
		}
		want, wantErr := Map(in, MapOptions{IncludeWarning: true})
		got, gotErr := im.Map(in)
		switch {
		case (wantErr == nil) != (gotErr == nil):
			t.Fatalf("step %d (%s %s): Map error %v, incremental error %v", step, what, name, wantErr, gotErr)
		case wantErr != nil:
			if wantErr.Error() != gotErr.Error() {
				t.Fatalf("step %d (%s %s): errors differ:\nMap:         %v\nincremental: %v", step, what, name, wantErr, gotErr)
			}
		default:
			hw, _ := hashCatalog(want)
			hg, _ := hashCatalog(got)
			if hw != hg {
				t.Fatalf("step %d (%s %s): incremental catalog differs from Map's", step, what, name)
			}
		}
	}
}

// mutate returns a new answer (new entries, as Consul's are) with one
// random entry changed by f.
func mutate(es []*api.ServiceEntry, rng *rand.Rand, f func(*api.ServiceEntry)) []*api.ServiceEntry {
	if len(es) == 0 {
		return es
	}
	k := rng.IntN(len(es))
	out := make([]*api.ServiceEntry, len(es))
	for j, e := range es {
		c := *e
		svc := *e.Service
		c.Service = &svc
		if j == k {
			f(&c)
		}
		out[j] = &c
	}
	return out
}

func mutateAll(es []*api.ServiceEntry, f func(*api.ServiceEntry)) []*api.ServiceEntry {
	out := make([]*api.ServiceEntry, len(es))
	for j, e := range es {
		c := *e
		svc := *e.Service
		c.Service = &svc
		f(&c)
		out[j] = &c
	}
	return out
}
