package tracker

import (
	"fmt"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/meshd/meshd/bootstrap"
	"github.com/meshd/meshd/xds"
)

// MaxDrainTime is the longest drain time meshd accepts without a warning:
// a tenth of Envoy's default 600 s. Above it, a plaintext connection after
// STRICT, or a tcp connection after a policy change, is served that long.
const MaxDrainTime = time.Minute

// DrainWarning says why an Envoy may run without the drain settings meshd
// relies on (issue 11: bootstrap.EnvoyDrainArgs), or "" when its bootstrap
// records them within bounds. Envoy does not report its command line over
// xDS, so this reads what the bootstrap asked for (node metadata written by
// meshctl bootstrap): a bootstrap without it was made by an older meshctl,
// or by hand, and its Envoy was most likely started without the flags.
func DrainWarning(node *corev3.Node) string {
	fields := node.GetMetadata().GetFields()
	v, ok := fields[xds.NodeMetaDrainTimeS]
	if !ok {
		return fmt.Sprintf("its bootstrap does not record %s (made by an older meshctl, or by hand): regenerate it with meshctl bootstrap and start Envoy with %s",
			xds.NodeMetaDrainTimeS, bootstrap.EnvoyCommand("FILE", 0))
	}
	secs, isNum := v.GetKind().(*structpb.Value_NumberValue)
	if !isNum || secs.NumberValue < 1 {
		return fmt.Sprintf("its bootstrap's %s is %s, not a number of seconds: regenerate it with meshctl bootstrap", xds.NodeMetaDrainTimeS, v.String())
	}
	if d := time.Duration(secs.NumberValue * float64(time.Second)); d > MaxDrainTime {
		return fmt.Sprintf("its bootstrap asks for a drain time of %s, above meshd's bound of %s: regenerate it with meshctl bootstrap --drain-time %s or less and start Envoy with %s",
			d, MaxDrainTime, MaxDrainTime, bootstrap.EnvoyCommand("FILE", 0))
	}
	if s := fields[xds.NodeMetaDrainStrategy].GetStringValue(); s != bootstrap.DrainStrategy {
		return fmt.Sprintf("its bootstrap's %s is %q, not %q: regenerate it with meshctl bootstrap and start Envoy with %s",
			xds.NodeMetaDrainStrategy, s, bootstrap.DrainStrategy, bootstrap.EnvoyCommand("FILE", 0))
	}
	return ""
}
