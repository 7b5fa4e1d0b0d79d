package admin

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/meshd/meshd/mesh"
	"github.com/meshd/meshd/sds"
)

var webID = mesh.Identity{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "web"}

func TestCACollector(t *testing.T) {
	ca, err := sds.LoadOrCreate(sds.Options{DataDir: t.TempDir(), TrustDomain: "cluster.local", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ca.Leaf(webID, nil); err != nil {
		t.Fatal(err)
	}
	f := struct{ ca *sds.Authority }{ca}
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewCACollector(f.ca))
	want := fmt.Sprintf(`# HELP meshd_identity_cert_not_after_seconds Expiry (Unix seconds) of the current certificate of each identity meshd serves.
# TYPE meshd_identity_cert_not_after_seconds gauge
meshd_identity_cert_not_after_seconds{generation=%q,spiffe_id=%q} %g
`, f.ca.Status(nil).Signing.Generation, webID.SPIFFEID(), float64(f.ca.Status(nil).Leaves[0].NotAfter.Unix()))
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "meshd_identity_cert_not_after_seconds"); err != nil {
		t.Error(err)
	}
	if n, err := testutil.GatherAndCount(reg, "meshd_ca_cert_not_after_seconds", "meshd_ca_rotation_in_progress"); err != nil || n != 3 {
		t.Errorf("CA series: %d %v, want intermediate, root and rotation", n, err)
	}
}

// TestRotationErrorStatus: refusals the CA's state explains (and waiting
// resolves) are 409, wrapped or not; anything else is a fault, 500.
func TestRotationErrorStatus(t *testing.T) {
	for _, c := range []struct {
		err  error
		want int
	}{
		{sds.ErrRotationInProgress, http.StatusConflict},
		{sds.ErrNoRotation, http.StatusConflict},
		{fmt.Errorf("%w: the rotation in progress is a root rotation", sds.ErrAbortRefused), http.StatusConflict},
		{fmt.Errorf("%w: 4 roots are already trusted", sds.ErrTooManyRoots), http.StatusConflict},
		{errors.New("write bundle: disk full"), http.StatusInternalServerError},
	} {
		if got := rotationErrorStatus(c.err); got != c.want {
			t.Errorf("%v: %d, want %d", c.err, got, c.want)
		}
	}
}
