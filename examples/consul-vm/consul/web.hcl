# "web" and its meshd sidecar, registered with the local Consul agent of the
# VM that runs it (vm1): copy to /etc/consul.d/web.hcl, then
# `consul validate /etc/consul.d && consul reload`. Keys meshd reads are
# explained in docs/consul.md.
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
      # Envoy's public (mTLS) port on the VM's address: web's endpoint in
      # the mesh.
      port = 15001
      meta = {
        # Envoy takes its certificate from the mesh-agent on this VM
        # (meshctl bootstrap --agent-socket): the key never leaves the VM.
        meshd-sds = "agent"
      }
      # meshd's node id for this Envoy is "<consul node>/web-sidecar-proxy".
      proxy {
        local_service_port = 8080 # where Envoy finds the app on 127.0.0.1
        upstreams = [
          {
            destination_name = "api"
            local_bind_port  = 9001 # the web app calls http://127.0.0.1:9001
          },
        ]
      }
      # Replaces Consul's default checks (a TCP check of port 15001 on the
      # node address, and an alias of "web"): the sidecar is healthy when
      # Envoy is ready (it has its configuration and certificate; its admin
      # API is 127.0.0.1:19001, from provision.sh) and the app is healthy.
      checks = [
        {
          name     = "envoy is ready"
          http     = "http://127.0.0.1:19001/ready"
          interval = "5s"
          timeout  = "2s"
        },
        {
          name          = "web is healthy"
          alias_service = "web"
        },
      ]
    }
  }
}
