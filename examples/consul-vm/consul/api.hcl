# "api" and its meshd sidecar, registered with the local Consul agent of each
# VM that runs an instance (vm1 and vm2): copy to /etc/consul.d/api.hcl, then
# `consul validate /etc/consul.d && consul reload`. The same file serves every
# VM: the instance's address is the VM's, and meshd names its Envoy
# "<consul node>/api-sidecar-proxy".
service {
  id   = "api"
  name = "api"
  port = 8081
  meta = {
    meshd-protocol = "http"
    # No meshd-service-account: the identity is the service name,
    # spiffe://<td>/ns/default/sa/api, which is what mesh-agent@api asks
    # for (with another service account, add --service-account to it).
  }
  check {
    id       = "api-http"
    name     = "api answers on /healthz"
    http     = "http://127.0.0.1:8081/healthz"
    interval = "5s"
    timeout  = "2s"
  }

  connect {
    sidecar_service {
      port = 15002
      meta = {
        meshd-sds = "agent"
      }
      proxy {
        local_service_port = 8081
        # Consul's own key for the protocol is read too; it must not
        # contradict meta meshd-protocol.
        config = {
          protocol = "http"
        }
      }
      checks = [
        {
          name     = "envoy is ready"
          http     = "http://127.0.0.1:19002/ready"
          interval = "5s"
          timeout  = "2s"
        },
        {
          name          = "api is healthy"
          alias_service = "api"
        },
      ]
    }
  }
}
