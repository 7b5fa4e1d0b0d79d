package promtext

import "testing"

const exposition = `# HELP meshd_mesh_requests_total Requests.
# TYPE meshd_mesh_requests_total counter
meshd_mesh_requests_total{decision="allow",destination_service="api",source_address=""} 7
meshd_mesh_requests_total{decision="deny",destination_service="api",path="/a\"b"} 2
meshd_up 1
envoy_cluster_upstream_rq_total{envoy_cluster_name="outbound",meshd_service="api"} 3 1700000000000
meshd_mesh_request_duration_seconds_bucket{destination_service="api",le="+Inf"} 9
`

func TestFind(t *testing.T) {
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   string
		ok     bool
	}{
		{"meshd_mesh_requests_total", map[string]string{"destination_service": "api", "decision": "allow"}, "7", true},
		{"meshd_mesh_requests_total", map[string]string{"destination_service": "api", "decision": "allow", "source_address": ""}, "7", true},
		{"meshd_mesh_requests_total", map[string]string{"path": `/a\"b`, "destination_service": "api", "decision": "deny"}, "2", true},
		{"meshd_mesh_requests_total", map[string]string{"destination_service": "api"}, "", false},
		{"meshd_mesh_requests_total", map[string]string{"destination_service": "api", "decision": "allow", "tls": "mtls"}, "", false},
		{"meshd_up", nil, "1", true},
		{"envoy_cluster_upstream_rq_total", map[string]string{"meshd_service": "api", "envoy_cluster_name": "outbound"}, "3", true},
		{"meshd_mesh_request_duration_seconds_bucket", map[string]string{"destination_service": "api", "le": "+Inf"}, "9", true},
		{"meshd_mesh_requests", map[string]string{"destination_service": "api", "decision": "allow"}, "", false},
	} {
		got, ok := Find(exposition, c.name, c.labels)
		if got != c.want || ok != c.ok {
			t.Errorf("Find(%s, %v) = %q, %v; want %q, %v", c.name, c.labels, got, ok, c.want, c.ok)
		}
	}
}

func TestSamplesSkipsComments(t *testing.T) {
	s := Samples(exposition)
	if len(s) != 5 {
		t.Fatalf("%d samples, want 5: %+v", len(s), s)
	}
	if s[0].Name != "meshd_mesh_requests_total" || len(s[0].Labels) != 2 || s[2].Name != "meshd_up" || len(s[2].Labels) != 0 {
		t.Errorf("samples: %+v", s)
	}
}
