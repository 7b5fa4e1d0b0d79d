# Consul registration of "web" on vm1 (10.0.0.10), with its meshd sidecar.
# Put it in the Consul agent's config dir (e.g. /etc/consul.d/) and run
# `consul reload`. Keys meshd reads are explained in docs/consul.md.
service {
  id   = "web"
  name = "web"
  port = 8080 # the application, on 127.0.0.1 only
  meta = {
    meshd-protocol        = "http"    # http, http2, grpc or tcp
    meshd-namespace       = "default" # mesh namespace (Consul CE has none)
    meshd-service-account = "web"     # identity: spiffe://<td>/ns/default/sa/web
    version               = "v1"      # other meta becomes endpoint labels
  }
  check {
    id       = "web-http"
    name     = "web answers on /healthz"
    http     = "http://127.0.0.1:8080/healthz"
    interval = "5s"
    timeout  = "2s"
  }

  connect {
    sidecar_service {
      # Envoy's public (mTLS) port: this is web's endpoint in the mesh.
      port = 15001
      # meshd's node id for this Envoy (default "<consul node>/web-sidecar-proxy").
      meta = {
        meshd-proxy-id = "web-vm1"
      }
      proxy {
        local_service_port = 8080 # where Envoy finds the app on 127.0.0.1
        upstreams = [
          {
            destination_name = "api"
            local_bind_port  = 9001 # the web app calls http://127.0.0.1:9001
          },
        ]
      }
      # Replaces Consul's default checks (a TCP check of port 15001 and an
      # alias of "web"): the sidecar is healthy when Envoy's public port
      # accepts connections and the app is healthy.
      checks = [
        {
          name     = "envoy public port"
          tcp      = "10.0.0.10:15001"
          interval = "10s"
        },
        {
          name          = "web is healthy"
          alias_service = "web"
        },
      ]
    }
  }
}
