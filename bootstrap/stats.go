package bootstrap

import (
	"strings"

	metricsv3 "github.com/envoyproxy/go-control-plane/envoy/config/metrics/v3"

	"github.com/meshd/meshd/xds"
)

// Stat tags meshd's bootstraps add to Envoy's, so that Prometheus users can
// aggregate by service: meshd's stat prefixes and cluster stat names are
// <kind>.<service>.<namespace> (xds.InboundStatPrefix, xds.ClusterStatName,
// xds.NetworkRBACStatPrefix), and Envoy's own extractors stop at the first
// dot, leaving service and namespace in the metric's name
// (envoy_http_api_default_downstream_rq_completed). These take them out
// into labels:
//
//	http.inbound_mtls.api.default.downstream_rq_xx
//	  → envoy_http_downstream_rq_xx{envoy_http_conn_manager_prefix="inbound_mtls",meshd_service="api",meshd_namespace="default",envoy_response_code_class="2"}
//	cluster.outbound.api.default.upstream_rq_total
//	  → envoy_cluster_upstream_rq_total{envoy_cluster_name="outbound",meshd_service="api",meshd_namespace="default"}
//	http.inbound_mtls.api.default.rbac.deny.policy.default/no-web/rule-0.denied
//	  → envoy_http_rbac_deny_policy_denied{…,meshd_rbac_rule="default/no-web/rule-0"}
//
// Envoy matches every extractor against the whole name and removes what
// each one's first group captured; the second group is the tag's value.
// Envoy's default extractors keep running (they take the kind: the
// connection manager prefix, the tcp prefix, the cluster name).
const (
	TagService   = "meshd_service"
	TagNamespace = "meshd_namespace"
	TagRBACRule  = "meshd_rbac_rule"
)

// statPrefixRE matches, at the start of a stat name, one of meshd's
// prefixes up to the service: under a listener's per-address stats or not,
// after http., tcp. or cluster. (network RBAC names start with the prefix).
func statPrefixRE() string {
	return `^(?:listener\..*?\.)?(?:(?:http|tcp|cluster)\.)?(?:` + strings.Join(xds.StatKinds, "|") + `)\.`
}

// StatsTags are the extractors above, in the bootstrap's stats_config.
func StatsTags() []*metricsv3.TagSpecifier {
	p := statPrefixRE()
	return []*metricsv3.TagSpecifier{
		{TagName: TagService, TagValue: &metricsv3.TagSpecifier_Regex{Regex: p + `(([^.]+)\.)[^.]+\.`}},
		{TagName: TagNamespace, TagValue: &metricsv3.TagSpecifier_Regex{Regex: p + `[^.]+\.(([^.]+)\.)`}},
		// A rule is <ns>/<policy>/rule-<n>, without dots (mesh.ValidName);
		// HTTP: …rbac.<deny|allow|audit>.policy.<rule>.<stat>, tcp:
		// <prefix>.<deny|audit>.policy.<rule>.rbac.<stat>.
		{TagName: TagRBACRule, TagValue: &metricsv3.TagSpecifier_Regex{Regex: p + `[^.]+\.[^.]+\.(?:rbac\.)?[a-z]+\.policy\.(([^.]+)\.)`}},
	}
}
