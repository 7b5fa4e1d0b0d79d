# Consul registration of "api" on vm2 (10.0.0.11), with its meshd sidecar.
# A second instance on another VM uses the same file with its own address in
# the TCP check and its own meshd-proxy-id.
service {
  id   = "api"
  name = "api"
  port = 8080
  meta = {
    meshd-protocol        = "http"
    meshd-service-account = "api-server"
  }
  check {
    id       = "api-http"
    name     = "api answers on /healthz"
    http     = "http://127.0.0.1:8080/healthz"
    interval = "5s"
    timeout  = "2s"
  }

  connect {
    sidecar_service {
      port = 15001
      meta = {
        meshd-proxy-id = "api-vm2"
      }
      proxy {
        local_service_port = 8080
        # Consul's own key for the protocol is read too; it must not
        # contradict meta meshd-protocol.
        config = {
          protocol = "http"
        }
      }
      checks = [
        {
          name     = "envoy public port"
          tcp      = "10.0.0.11:15001"
          interval = "10s"
        },
        {
          name          = "api is healthy"
          alias_service = "api"
        },
      ]
    }
  }
}
