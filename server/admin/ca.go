package admin

import (
	"encoding/json"
	"errors"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshd/meshd/sds"
)

// CAAdmin is what the admin API needs from the mesh CA (sds.Authority).
type CAAdmin interface {
	Status(gate sds.BundleGate) sds.Status
	RotateRoot() error
	RotateIntermediate() error
	AbortRotation(kind string) error
}

// registerCA adds the CA endpoints: GET /ca/status, POST /ca/rotate-root,
// POST /ca/rotate-intermediate and their /abort variants (what `meshctl ca
// ...` calls). Rotations only start or abort here; the CA's rotation loop
// moves them on as proxies ACK.
func (a *Admin) registerCA(mux *http.ServeMux) {
	if a.CA == nil {
		return
	}
	mux.HandleFunc("GET /ca/status", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, a.CA.Status(a.caGate()))
	})
	rotate := func(kind string, f func() error) http.HandlerFunc {
		return func(w http.ResponseWriter, _ *http.Request) {
			if err := f(); err != nil {
				code := rotationErrorStatus(err)
				a.Logger.Error("CA rotation request failed", "kind", kind, "err", err)
				http.Error(w, err.Error(), code)
				return
			}
			a.Logger.Info("CA rotation requested through the admin API", "kind", kind)
			if a.OnCAChange != nil {
				a.OnCAChange()
			}
			writeJSON(w, http.StatusAccepted, a.CA.Status(a.caGate()))
		}
	}
	mux.HandleFunc("POST /ca/rotate-root", rotate("root", a.CA.RotateRoot))
	mux.HandleFunc("POST /ca/rotate-intermediate", rotate("intermediate", a.CA.RotateIntermediate))
	for _, kind := range []string{"root", "intermediate"} {
		mux.HandleFunc("POST /ca/rotate-"+kind+"/abort", rotate(kind+" abort", func() error { return a.CA.AbortRotation(kind) }))
	}
}

func (a *Admin) caGate() sds.BundleGate {
	if a.Tracker == nil {
		return nil
	}
	return a.Tracker
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// caCollector exports every cached identity's and the CA's expiry, so
// operators can alert on certificates that stop renewing.
type caCollector struct {
	ca       CAAdmin
	leaf     *prometheus.Desc
	issuer   *prometheus.Desc
	rotation *prometheus.Desc
}

// NewCACollector returns the CA's Prometheus collector:
// meshd_identity_cert_not_after_seconds{spiffe_id,generation},
// meshd_ca_cert_not_after_seconds{kind,generation} and
// meshd_ca_rotation_in_progress{phase}.
func NewCACollector(ca CAAdmin) prometheus.Collector {
	return &caCollector{
		ca: ca,
		leaf: prometheus.NewDesc("meshd_identity_cert_not_after_seconds",
			"Expiry (Unix seconds) of the current certificate of each identity meshd serves.", []string{"spiffe_id", "generation"}, nil),
		issuer: prometheus.NewDesc("meshd_ca_cert_not_after_seconds",
			"Expiry (Unix seconds) of the signing root and intermediate, and of every trusted root.", []string{"kind", "generation"}, nil),
		rotation: prometheus.NewDesc("meshd_ca_rotation_in_progress",
			"1 while a CA rotation is in progress, labelled with its phase.", []string{"phase"}, nil),
	}
}

func (c *caCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.leaf
	ch <- c.issuer
	ch <- c.rotation
}

func (c *caCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.ca.Status(nil)
	for _, l := range st.Leaves {
		ch <- prometheus.MustNewConstMetric(c.leaf, prometheus.GaugeValue, float64(l.NotAfter.Unix()), l.SPIFFEID, l.Generation)
	}
	ch <- prometheus.MustNewConstMetric(c.issuer, prometheus.GaugeValue, float64(st.Signing.NotAfter.Unix()), "intermediate", st.Signing.Generation)
	for _, r := range st.TrustedRoots {
		ch <- prometheus.MustNewConstMetric(c.issuer, prometheus.GaugeValue, float64(r.NotAfter.Unix()), "root", r.Generation)
	}
	v := 0.0
	if st.Rotation != nil {
		v = 1
	}
	ch <- prometheus.MustNewConstMetric(c.rotation, prometheus.GaugeValue, v, st.Phase)
}

// rotationErrorStatus is the HTTP status of a refused rotation or abort:
// 409 when the CA's state refuses it (one running, none to abort, four
// roots trusted), which waiting resolves; 500 for a fault.
func rotationErrorStatus(err error) int {
	for _, refusal := range []error{sds.ErrRotationInProgress, sds.ErrNoRotation, sds.ErrAbortRefused, sds.ErrTooManyRoots} {
		if errors.Is(err, refusal) {
			return http.StatusConflict
		}
	}
	return http.StatusInternalServerError
}
