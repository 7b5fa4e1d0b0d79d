// Package policy reads mesh policy written as Istio security resources
// (PeerAuthentication and AuthorizationPolicy, apiVersion
// security.istio.io/v1 or v1beta1) and as Linkerd's policy resources
// (policy.linkerd.io Server, ServerAuthorization, AuthorizationPolicy,
// MeshTLSAuthentication, NetworkAuthentication; Namespace defaults) from YAML
// files in a directory, and turns it into mesh.PolicySet, the normalised form
// translation consumes. See docs/policy.md for the supported subset.
//
// As with the catalog, parsing is deliberately unforgiving: an unknown field,
// an unsupported action, condition key or value is an error naming the file,
// line, policy and field, never a silently different policy. Security policy
// that is quietly narrower than what was written fails open, so nothing is
// ever dropped. A watched directory that turns bad keeps serving the last
// good set (see Watcher).
//
// Analyze checks a policy set against a catalog for mistakes that parse but
// do not do what was meant; meshctl analyze prints its findings.
package policy
