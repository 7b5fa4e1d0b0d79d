package mesh_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/meshd/meshd/mesh"
)

// baseServices and baseProxies form a valid catalog that each case breaks in
// one way: an Envoy sidecar for web calling api, and a proxyless gRPC server.
func baseServices() []mesh.Service {
	return []mesh.Service{
		{Name: "web", Protocol: mesh.ProtocolHTTP, Endpoints: []mesh.Endpoint{{Address: "10.0.0.1", Port: 15001}}},
		{Name: "api", Protocol: mesh.ProtocolHTTP, Endpoints: []mesh.Endpoint{{Address: "10.0.0.2", Port: 15001}}},
		{Name: "greeter", Protocol: mesh.ProtocolGRPC, Endpoints: []mesh.Endpoint{{Address: "10.0.0.3", Port: 50051}}},
	}
}

func baseProxies() []mesh.Proxy {
	return []mesh.Proxy{
		{Service: "web", Address: "10.0.0.1", PublicPort: 15001, AppPort: 8080,
			Upstreams: []mesh.Upstream{{Service: "api", LocalPort: 9001}}},
		{Service: "greeter", Flavor: mesh.FlavorGRPC, Address: "10.0.0.3", PublicPort: 50051},
	}
}

// wantErr is one expected problem: exact object and field, and a substring
// of the message.
type wantErr struct {
	object, field, msg string
}

const (
	web     = `services[0] "web.default"`
	api     = `services[1] "api.default"`
	svc3    = `services[3]`
	webPx   = `proxies[0] "web.default"`
	grpcPx  = `proxies[1] "greeter.default"`
	proxy2  = `proxies[2]`
	tooLong = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" // 64
)

func TestValidBaseCatalog(t *testing.T) {
	if _, err := mesh.NewCatalog(baseServices(), baseProxies()); err != nil {
		t.Fatalf("base catalog is invalid: %v", err)
	}
}

func TestValidationErrors(t *testing.T) {
	type (
		S = []mesh.Service
		P = []mesh.Proxy
	)
	tests := []struct {
		name   string
		mutate func(s *S, p *P)
		want   []wantErr
	}{
		{"unknown protocol", func(s *S, p *P) { (*s)[0].Protocol = "udp" },
			[]wantErr{{web, "protocol", `unknown protocol "udp": use http, http2, grpc or tcp`}}},
		{"name with upper case", func(s *S, p *P) { *s = append(*s, mesh.Service{Name: "Billing", ServiceAccount: "billing"}) },
			[]wantErr{{svc3 + ` "Billing.default"`, "name", `"Billing" is not a valid name`}}},
		{"name with underscore", func(s *S, p *P) { *s = append(*s, mesh.Service{Name: "bill_ing", ServiceAccount: "billing"}) },
			[]wantErr{{svc3 + ` "bill_ing.default"`, "name", `"bill_ing" is not a valid name`}}},
		{"name too long", func(s *S, p *P) { *s = append(*s, mesh.Service{Name: tooLong, ServiceAccount: "billing"}) },
			[]wantErr{{svc3 + ` "` + tooLong + `.default"`, "name", "is longer than 63 characters"}}},
		{"name with leading dash", func(s *S, p *P) { *s = append(*s, mesh.Service{Name: "-billing", ServiceAccount: "billing"}) },
			[]wantErr{{svc3 + ` "-billing.default"`, "name", `"-billing" is not a valid name`}}},
		{"name with trailing dash", func(s *S, p *P) { *s = append(*s, mesh.Service{Name: "billing-", ServiceAccount: "billing"}) },
			[]wantErr{{svc3 + ` "billing-.default"`, "name", `"billing-" is not a valid name`}}},
		{"invalid namespace", func(s *S, p *P) { *s = append(*s, mesh.Service{Name: "billing", Namespace: "Prod"}) },
			[]wantErr{{svc3 + ` "billing.Prod"`, "namespace", `"Prod" is not a valid name`}}},
		{"invalid service account", func(s *S, p *P) { (*s)[0].ServiceAccount = "web_sa" },
			[]wantErr{{web, "serviceAccount", `"web_sa" is not a valid name`}}},
		{"duplicate service", func(s *S, p *P) { *s = append(*s, mesh.Service{Name: "api", Protocol: mesh.ProtocolTCP}) },
			[]wantErr{{svc3 + ` "api.default"`, "name", "duplicate service api.default"}}},
		{"duplicate endpoint", func(s *S, p *P) {
			(*s)[1].Endpoints = append((*s)[1].Endpoints, mesh.Endpoint{Address: "10.0.0.9", Port: 15001}, mesh.Endpoint{Address: "10.0.0.2", Port: 15001})
		}, []wantErr{{api, "endpoints[2]", "duplicate endpoint 10.0.0.2:15001 (also endpoints[0])"}}},
		{"endpoint with a hostname", func(s *S, p *P) { (*s)[1].Endpoints[0].Address = "api.internal" },
			[]wantErr{{api, "endpoints[0].address", `"api.internal" is not a usable IP address (hostnames are not resolved`}}},
		{"endpoint with the unspecified address", func(s *S, p *P) { (*s)[1].Endpoints[0].Address = "0.0.0.0" },
			[]wantErr{{api, "endpoints[0].address", `"0.0.0.0" is not a usable IP address`}}},
		{"endpoint without an address", func(s *S, p *P) { (*s)[1].Endpoints[0].Address = "" },
			[]wantErr{{api, "endpoints[0].address", `"" is not a usable IP address`}}},
		{"endpoint port 0", func(s *S, p *P) { (*s)[1].Endpoints[0].Port = 0 },
			[]wantErr{{api, "endpoints[0].port", "0 is not a port: use 1-65535"}}},
		{"endpoint port 70000", func(s *S, p *P) { (*s)[1].Endpoints[0].Port = 70000 },
			[]wantErr{{api, "endpoints[0].port", "70000 is not a port: use 1-65535"}}},
		{"unknown health", func(s *S, p *P) { (*s)[1].Endpoints[0].Health = "sick" },
			[]wantErr{{api, "endpoints[0].health", `unknown health "sick": use healthy, unhealthy, draining or unknown`}}},
		{"proxy for a missing service", func(s *S, p *P) { *p = append(*p, mesh.Proxy{Service: "ghost", Flavor: mesh.FlavorGRPC}) },
			[]wantErr{{proxy2 + ` "ghost.default"`, "service", "no service ghost.default in the catalog"}}},
		{"proxy for a service in another namespace", func(s *S, p *P) {
			*p = append(*p, mesh.Proxy{Service: "api", Namespace: "prod", Flavor: mesh.FlavorGRPC})
		}, []wantErr{{proxy2 + ` "api.prod"`, "service", "no service api.prod in the catalog"}}},
		{"duplicate proxy id", func(s *S, p *P) { *p = append(*p, mesh.Proxy{ID: "web.default", Service: "api"}) },
			[]wantErr{{proxy2 + ` "web.default"`, "id", `duplicate proxy id "web.default" (also proxies[0])`}}},
		{"envoy with publicPort but no appPort", func(s *S, p *P) { (*p)[0].AppPort = 0 },
			[]wantErr{{webPx, "appPort", "an Envoy sidecar with a publicPort needs the application's port"}}},
		{"envoy appPort above 65535", func(s *S, p *P) { (*p)[0].AppPort = 65536 },
			[]wantErr{{webPx, "appPort", "an Envoy sidecar with a publicPort needs the application's port (1-65535)"}}},
		{"appPort equals publicPort", func(s *S, p *P) { (*p)[0].AppPort = 15001 },
			[]wantErr{{webPx, "appPort", "equals publicPort 15001"}}},
		{"appPort without publicPort", func(s *S, p *P) { (*p)[0].PublicPort = 0 },
			[]wantErr{{webPx, "appPort", "set without publicPort"}}},
		{"publicPort above 65535", func(s *S, p *P) { (*p)[0].PublicPort = 70000 },
			[]wantErr{{webPx, "publicPort", "70000 is not a port: use 1-65535"}}},
		{"proxy address that is not an IP", func(s *S, p *P) { (*p)[0].Address = "localhost" },
			[]wantErr{{webPx, "address", `"localhost" is not an IP address`}}},
		{"two proxies on one address and publicPort", func(s *S, p *P) {
			*p = append(*p, mesh.Proxy{ID: "api-1", Service: "api", Address: "10.0.0.1", PublicPort: 15001, AppPort: 8081})
		}, []wantErr{{proxy2 + ` "api-1"`, "publicPort", `port 15001 on 10.0.0.1 is already used by proxies[0] "web.default" publicPort`}}},
		{"two proxies' upstream localPorts clash on 127.0.0.1", func(s *S, p *P) {
			// Proxies on loopback addresses run on this one machine and share its 127.0.0.1.
			*p = append(*p,
				mesh.Proxy{ID: "local-a", Service: "api", Address: "127.0.0.1", PublicPort: 16001, AppPort: 8081,
					Upstreams: []mesh.Upstream{{Service: "web", LocalPort: 9100}}},
				mesh.Proxy{ID: "local-b", Service: "api", Address: "127.0.0.2", PublicPort: 16002, AppPort: 8082,
					Upstreams: []mesh.Upstream{{Service: "web", LocalPort: 9100}}})
		}, []wantErr{{`proxies[3] "local-b"`, "upstreams[0].localPort", `port 9100 on 127.0.0.1 is already used by proxies[2] "local-a" upstreams[0].localPort`}}},
		{"upstream localPort on 127.0.0.1 taken by a loopback proxy's publicPort", func(s *S, p *P) {
			*p = append(*p,
				mesh.Proxy{ID: "local-a", Service: "api", Address: "127.0.0.1", PublicPort: 16001, AppPort: 8081},
				mesh.Proxy{ID: "local-b", Service: "web", Address: "127.0.0.1",
					Upstreams: []mesh.Upstream{{Service: "api", LocalPort: 16001}}})
		}, []wantErr{{`proxies[3] "local-b"`, "upstreams[0].localPort", `port 16001 on 127.0.0.1 is already used by proxies[2] "local-a" publicPort`}}},
		{"two proxies on one host clash on its loopback", func(s *S, p *P) {
			*p = append(*p, mesh.Proxy{ID: "web-2", Service: "web", Address: "10.0.0.1",
				Upstreams: []mesh.Upstream{{Service: "api", LocalPort: 9001}}})
		}, []wantErr{{proxy2 + ` "web-2"`, "upstreams[0].localPort", `port 9001 on loopback of 10.0.0.1 is already used by proxies[0] "web.default" upstreams[0].localPort`}}},
		{"one proxy's upstream localPorts clash", func(s *S, p *P) {
			(*p)[0].Upstreams = append((*p)[0].Upstreams, mesh.Upstream{Service: "greeter", LocalPort: 9001})
		}, []wantErr{{webPx, "upstreams[1].localPort", `port 9001 on loopback of 10.0.0.1 is already used by proxies[0] "web.default" upstreams[0].localPort`}}},
		{"unknown sds source", func(s *S, p *P) { (*p)[0].SDS = "vault" },
			[]wantErr{{webPx, "sds", `unknown SDS source "vault": use meshd or agent`}}},
		{"sds on a proxyless gRPC app", func(s *S, p *P) { (*p)[1].SDS = mesh.SDSAgent },
			[]wantErr{{grpcPx, "sds", "reads its certificates from files"}}},
		{"upstream localPort equals publicPort bound on every address", func(s *S, p *P) {
			(*p)[0].Address = ""
			(*p)[0].Upstreams[0].LocalPort = 15001
		}, []wantErr{{webPx, "upstreams[0].localPort", "equals publicPort 15001, which the sidecar binds on 0.0.0.0"}}},
		{"upstream localPort equals appPort", func(s *S, p *P) { (*p)[0].Upstreams[0].LocalPort = 8080 },
			[]wantErr{{webPx, "upstreams[0].localPort", "equals appPort 8080"}}},
		{"envoy upstream without localPort", func(s *S, p *P) { (*p)[0].Upstreams[0].LocalPort = 0 },
			[]wantErr{{webPx, "upstreams[0].localPort", "an Envoy sidecar needs a loopback port (1-65535) for each upstream"}}},
		{"missing upstream", func(s *S, p *P) {
			(*p)[0].Upstreams = append((*p)[0].Upstreams, mesh.Upstream{Service: "ghost", LocalPort: 9002})
		}, []wantErr{{webPx, "upstreams[1].service", "upstream ghost.default does not exist in the catalog"}}},
		{"upstream in a namespace without it", func(s *S, p *P) {
			(*p)[0].Upstreams = append((*p)[0].Upstreams, mesh.Upstream{Service: "api", Namespace: "prod", LocalPort: 9002})
		}, []wantErr{{webPx, "upstreams[1].service", "upstream api.prod does not exist in the catalog"}}},
		{"upstream listed twice", func(s *S, p *P) {
			(*p)[0].Upstreams = append((*p)[0].Upstreams, mesh.Upstream{Service: "api", LocalPort: 9002})
		}, []wantErr{{webPx, "upstreams[1].service", "upstream api.default is listed twice (also upstreams[0])"}}},
		{"grpc proxy with localPort", func(s *S, p *P) {
			*p = append(*p, mesh.Proxy{ID: "client", Service: "greeter", Flavor: mesh.FlavorGRPC,
				Upstreams: []mesh.Upstream{{Service: "greeter", LocalPort: 9100}}})
		}, []wantErr{{proxy2 + ` "client"`, "upstreams[0].localPort", "dials xds:///greeter.default directly; remove localPort"}}},
		{"grpc proxy calling a non-grpc service", func(s *S, p *P) {
			*p = append(*p, mesh.Proxy{ID: "client", Service: "greeter", Flavor: mesh.FlavorGRPC,
				Upstreams: []mesh.Upstream{{Service: "api"}}})
		}, []wantErr{{proxy2 + ` "client"`, "upstreams[0].service", "upstream api.default has protocol http; proxyless gRPC can only call grpc services"}}},
		{"grpc server without an address", func(s *S, p *P) { (*p)[1].Address = "" },
			[]wantErr{{grpcPx, "address", "a gRPC server needs the concrete IP it listens on"}}},
		{"grpc server on the unspecified address", func(s *S, p *P) { (*p)[1].Address = "0.0.0.0" },
			[]wantErr{{grpcPx, "address", "a gRPC server needs the concrete IP it listens on"}}},
		{"grpc server for a non-grpc service", func(s *S, p *P) { (*p)[1].Service = "api" },
			[]wantErr{{`proxies[1] "api.default"`, "service", "service api.default has protocol http; a proxyless gRPC server must front a grpc service"}}},
		{"grpc proxy with appPort", func(s *S, p *P) { (*p)[1].AppPort = 8080 },
			[]wantErr{{grpcPx, "appPort", "a proxyless gRPC application has no separate app port"}}},
		{"unknown flavor", func(s *S, p *P) { (*p)[0].Flavor = "linkerd" },
			[]wantErr{{webPx, "flavor", `unknown flavor "linkerd": use envoy, grpc or gateway`}}},

		// Virtual addresses (transparent interception).
		{"service address without port", func(s *S, p *P) { (*s)[1].Address = "10.96.0.2" },
			[]wantErr{{api, "port", "0 is not a port: a service with an address needs the port applications call"}}},
		{"service port without address", func(s *S, p *P) { (*s)[1].Port = 80 },
			[]wantErr{{api, "port", "port 80 without an address"}}},
		{"service address not an IP", func(s *S, p *P) { (*s)[1].Address, (*s)[1].Port = "api.internal", 80 },
			[]wantErr{{api, "address", `"api.internal" is not an IP address`}}},
		{"service address on loopback", func(s *S, p *P) { (*s)[1].Address, (*s)[1].Port = "127.0.0.5", 80 },
			[]wantErr{{api, "address", "127.0.0.5 cannot be a service address"}}},
		{"service address IPv6", func(s *S, p *P) { (*s)[1].Address, (*s)[1].Port = "fd00::96", 80 },
			[]wantErr{{api, "address", "captures IPv4 only"}}},
		{"two services at one address and port", func(s *S, p *P) {
			(*s)[0].Address, (*s)[0].Port = "10.96.0.2", 80
			(*s)[1].Address, (*s)[1].Port = "10.96.0.2", 80
		}, []wantErr{{api, "address", "10.96.0.2:80 is also the address and port of web.default"}}},

		// Transparent sidecars.
		{"unknown mode", func(s *S, p *P) { (*p)[0].Mode = "magic" },
			[]wantErr{{webPx, "mode", `unknown mode "magic": use explicit or transparent`}}},
		{"capturePort on an explicit sidecar", func(s *S, p *P) { (*p)[0].CapturePort = 15001 },
			[]wantErr{{webPx, "capturePort", "only a transparent sidecar has a capture listener"}}},
		{"passthrough on an explicit sidecar", func(s *S, p *P) { (*p)[0].Passthrough = mesh.PassthroughBlock },
			[]wantErr{{webPx, "passthrough", "only a transparent sidecar captures"}}},
		{"upstreamNamespaces on an explicit sidecar", func(s *S, p *P) { (*p)[0].UpstreamNamespaces = []string{"*"} },
			[]wantErr{{webPx, "upstreamNamespaces", "an explicit sidecar needs a localPort for each upstream"}}},
		{"transparent upstream without address or localPort", func(s *S, p *P) {
			(*p)[0].Mode, (*p)[0].CapturePort, (*p)[0].Upstreams[0].LocalPort = mesh.ModeTransparent, 15006, 0
		}, []wantErr{{webPx, "upstreams[0].service", "upstream api.default has no address"}}},
		{"unknown passthrough", func(s *S, p *P) {
			(*p)[0].Mode, (*p)[0].CapturePort, (*p)[0].Passthrough = mesh.ModeTransparent, 15006, "maybe"
		},
			[]wantErr{{webPx, "passthrough", `unknown passthrough "maybe": use allow or block`}}},
		{"capture port is the public port (the default 15001)", func(s *S, p *P) { (*p)[0].Mode = mesh.ModeTransparent },
			[]wantErr{{webPx, "capturePort", "equals publicPort 15001"}}},
		{"capture port is the app port", func(s *S, p *P) { (*p)[0].Mode, (*p)[0].CapturePort = mesh.ModeTransparent, 8080 },
			[]wantErr{{webPx, "capturePort", "equals appPort 8080"}}},
		{"capture port is an upstream's local port", func(s *S, p *P) { (*p)[0].Mode, (*p)[0].CapturePort = mesh.ModeTransparent, 9001 },
			[]wantErr{{webPx, "upstreams[0].localPort", "equals capturePort 9001"}}},
		{"capture ports of two transparent sidecars on one host", func(s *S, p *P) {
			(*p)[0].Mode, (*p)[0].CapturePort = mesh.ModeTransparent, 15006
			*p = append(*p, mesh.Proxy{ID: "job", Service: "api", Address: "10.0.0.1", Mode: mesh.ModeTransparent, CapturePort: 15006})
		}, []wantErr{{proxy2 + ` "job"`, "capturePort", "port 15006 on 10.0.0.1 is already used by " + webPx + " capturePort"}}},
		{"bad upstream namespace", func(s *S, p *P) {
			(*p)[0].Mode, (*p)[0].CapturePort = mesh.ModeTransparent, 15006
			(*p)[0].UpstreamNamespaces = []string{"Prod", "*", "*"}
		}, []wantErr{
			{webPx, "upstreamNamespaces[0]", `"Prod" is not a valid name`},
			{webPx, "upstreamNamespaces[2]", `namespace "*" is listed twice (also upstreamNamespaces[1])`},
		}},
		{"grpc proxy with mode", func(s *S, p *P) { (*p)[1].Mode = mesh.ModeTransparent },
			[]wantErr{{grpcPx, "mode", "a proxyless gRPC application dials its upstreams itself"}}},

		// Gateways.
		{"gateway without listeners", func(s *S, p *P) {
			*p = append(*p, mesh.Proxy{ID: "gw", Service: "web", Flavor: mesh.FlavorGateway})
		}, []wantErr{{proxy2 + ` "gw"`, "listeners", "a gateway needs at least one listener"}}},
		{"gateway with a mesh side and upstreams", func(s *S, p *P) {
			*p = append(*p, mesh.Proxy{ID: "gw", Service: "web", Flavor: mesh.FlavorGateway, PublicPort: 15009, AppPort: 8081,
				Upstreams: []mesh.Upstream{{Service: "api", LocalPort: 9009}}, Mode: mesh.ModeTransparent, UpstreamNamespaces: []string{"*"},
				Listeners: []mesh.GatewayListener{{Port: 8443, Routes: []mesh.GatewayRoute{{Service: "api"}}}}})
		}, []wantErr{
			{proxy2 + ` "gw"`, "publicPort", "a gateway accepts clients from outside the mesh"},
			{proxy2 + ` "gw"`, "appPort", "a gateway fronts no application"},
			{proxy2 + ` "gw"`, "mode", "a gateway is not a sidecar"},
			{proxy2 + ` "gw"`, "upstreamNamespaces", "a gateway calls the services its listeners' routes name"},
			{proxy2 + ` "gw"`, "upstreams[0]", "a gateway calls the services its listeners' routes name; remove upstreams"},
		}},
		{"gateway listener mistakes", func(s *S, p *P) {
			*p = append(*p, mesh.Proxy{ID: "gw", Service: "web", Flavor: mesh.FlavorGateway, Listeners: []mesh.GatewayListener{
				{Port: 8443, TLS: mesh.GatewayTLS{CertificateFile: "tls.crt", SDSSocket: "/run/sds.sock"}, Routes: []mesh.GatewayRoute{
					{Host: "Shop.example.com", Service: "api"},
					{Host: "*.example.com", PathPrefix: "api", Service: "db", Namespace: "data"},
					{Service: "greeter", PathPrefix: "/g"},
					{Service: "greeter", PathPrefix: "/g"},
				}},
				{Port: 8443},
				{Port: 8444, TLS: mesh.GatewayTLS{CertificateFile: "/etc/gw/tls.crt", KeyFile: "tls.key"}, Routes: []mesh.GatewayRoute{{Service: "api"}}},
				{Port: 8445, TLS: mesh.GatewayTLS{SDSSocket: "/run/sds.sock"}, Routes: []mesh.GatewayRoute{{Service: "api"}}},
			}})
			*s = append(*s, mesh.Service{Name: "db", Namespace: "data"})
		}, []wantErr{
			{proxy2 + ` "gw"`, "listeners[0].tls", "either as files (certificateFile, keyFile) or from SDS"},
			{proxy2 + ` "gw"`, "listeners[0].routes[0].host", `"Shop.example.com" is not a host name`},
			{proxy2 + ` "gw"`, "listeners[0].routes[1].pathPrefix", `"api" must start with /`},
			{proxy2 + ` "gw"`, "listeners[0].routes[1].service", "service db.data has protocol tcp; a gateway routes HTTP requests"},
			{proxy2 + ` "gw"`, "listeners[0].routes[3]", `host "*" and pathPrefix "/g" are also routes[2]'s`},
			{proxy2 + ` "gw"`, "listeners[1].port", "port 8443 is also listeners[0]'s"},
			{proxy2 + ` "gw"`, "listeners[1].routes", "a listener needs at least one route"},
			{proxy2 + ` "gw"`, "listeners[2].tls.keyFile", `"tls.key": give the absolute path`},
			{proxy2 + ` "gw"`, "listeners[3].tls.sdsSecret", "the name of the secret to ask the SDS server for is required"},
		}},
		{"gateway listener port taken on its host", func(s *S, p *P) {
			*p = append(*p, mesh.Proxy{ID: "gw", Service: "web", Flavor: mesh.FlavorGateway, Address: "10.0.0.1",
				Listeners: []mesh.GatewayListener{{Port: 15001, Routes: []mesh.GatewayRoute{{Service: "api"}}}}})
		}, []wantErr{{proxy2 + ` "gw"`, "listeners[0].port", "port 15001 on 10.0.0.1 is already used by " + webPx + " publicPort"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, p := baseServices(), baseProxies()
			tt.mutate(&s, &p)
			c, err := mesh.NewCatalog(s, p)
			if err == nil {
				t.Fatalf("NewCatalog succeeded with %d services, want errors %+v", len(c.Services()), tt.want)
			}
			if c != nil {
				t.Error("NewCatalog returned a catalog along with an error")
			}
			assertErrors(t, err, tt.want)
		})
	}
}

// assertErrors checks that err is a ValidationErrors holding exactly want, in order.
func assertErrors(t *testing.T, err error, want []wantErr) {
	t.Helper()
	var verrs mesh.ValidationErrors
	if !errors.As(err, &verrs) {
		t.Fatalf("error %T (%v) is not mesh.ValidationErrors", err, err)
	}
	if len(verrs) != len(want) {
		t.Fatalf("got %d errors, want %d:\n%v", len(verrs), len(want), err)
	}
	for i, w := range want {
		got := verrs[i]
		if got.Object != w.object || got.Field != w.field {
			t.Errorf("error %d is on %s field %q, want %s field %q (%s)", i, got.Object, got.Field, w.object, w.field, got.Message)
		}
		if !strings.Contains(got.Message, w.msg) {
			t.Errorf("error %d message %q does not contain %q", i, got.Message, w.msg)
		}
	}
}

func TestValidVariations(t *testing.T) {
	type (
		S = []mesh.Service
		P = []mesh.Proxy
	)
	tests := []struct {
		name   string
		mutate func(s *S, p *P)
	}{
		{"same name in another namespace", func(s *S, p *P) { *s = append(*s, mesh.Service{Name: "api", Namespace: "prod"}) }},
		{"name of 63 characters", func(s *S, p *P) { *s = append(*s, mesh.Service{Name: tooLong[:63]}) }},
		{"name with inner dashes and digits", func(s *S, p *P) { *s = append(*s, mesh.Service{Name: "a-1-b2"}) }},
		{"same publicPort on another address", func(s *S, p *P) {
			*p = append(*p, mesh.Proxy{ID: "api-1", Service: "api", Address: "10.0.0.2", PublicPort: 15001, AppPort: 8080})
		}},
		{"sidecars on two hosts reuse a localPort", func(s *S, p *P) {
			*p = append(*p, mesh.Proxy{ID: "api-1", Service: "api", Address: "10.0.0.2", PublicPort: 15001, AppPort: 8080,
				Upstreams: []mesh.Upstream{{Service: "web", LocalPort: 9001}}})
		}},
		{"same endpoint port on another address", func(s *S, p *P) {
			(*s)[1].Endpoints = append((*s)[1].Endpoints, mesh.Endpoint{Address: "10.0.0.4", Port: 15001})
		}},
		{"IPv6 endpoint", func(s *S, p *P) { (*s)[1].Endpoints[0].Address = "fd00::2" }},
		{"client-only envoy sidecar", func(s *S, p *P) {
			*p = append(*p, mesh.Proxy{ID: "job", Service: "api", Upstreams: []mesh.Upstream{{Service: "web", LocalPort: 9100}}})
		}},
		{"proxyless grpc client", func(s *S, p *P) {
			*p = append(*p, mesh.Proxy{ID: "client", Service: "greeter", Flavor: mesh.FlavorGRPC, Upstreams: []mesh.Upstream{{Service: "greeter"}}})
		}},
		{"envoy calling a grpc service", func(s *S, p *P) {
			(*p)[0].Upstreams = append((*p)[0].Upstreams, mesh.Upstream{Service: "greeter", LocalPort: 9002})
		}},
		{"every health", func(s *S, p *P) {
			for i, h := range []mesh.Health{mesh.HealthHealthy, mesh.HealthUnhealthy, mesh.HealthDraining, mesh.HealthUnknown} {
				(*s)[1].Endpoints = append((*s)[1].Endpoints, mesh.Endpoint{Address: "10.0.1.1", Port: uint32(1000 + i), Health: h})
			}
		}},
		{"transparent sidecar seeing every namespace", func(s *S, p *P) {
			(*s)[1].Address, (*s)[1].Port = "10.96.0.2", 80
			(*p)[0].Mode, (*p)[0].CapturePort = mesh.ModeTransparent, 15006
			(*p)[0].Upstreams[0].LocalPort = 0 // reached at 10.96.0.2:80
			(*p)[0].UpstreamNamespaces = []string{"*"}
		}},
		{"transparent sidecar with an explicit upstream too", func(s *S, p *P) {
			(*p)[0].Mode, (*p)[0].CapturePort, (*p)[0].Passthrough = mesh.ModeTransparent, 15006, mesh.PassthroughBlock
			(*p)[0].UpstreamNamespaces = []string{"default", "data"}
		}},
		{"proxyless grpc client seeing a namespace", func(s *S, p *P) {
			*p = append(*p, mesh.Proxy{ID: "client", Service: "greeter", Flavor: mesh.FlavorGRPC, UpstreamNamespaces: []string{"default"}})
		}},
		{"gateway", func(s *S, p *P) {
			*s = append(*s, mesh.Service{Name: "ingress"})
			*p = append(*p, mesh.Proxy{ID: "gw", Service: "ingress", Flavor: mesh.FlavorGateway, Listeners: []mesh.GatewayListener{
				{Port: 8443, TLS: mesh.GatewayTLS{CertificateFile: "/etc/gw/tls.crt", KeyFile: "/etc/gw/tls.key"}, Routes: []mesh.GatewayRoute{
					{Host: "shop.example.com", PathPrefix: "/api", Service: "api"},
					{Host: "*.example.com", Service: "web"},
					{Service: "greeter", PathPrefix: "/helloworld.Greeter/"},
				}},
				{Port: 8080, Routes: []mesh.GatewayRoute{{Service: "web"}}},
				{Port: 9443, TLS: mesh.GatewayTLS{SDSSecret: "shop-cert", SDSSocket: "/run/sds/sds.sock"}, Routes: []mesh.GatewayRoute{{Service: "web"}}},
			}})
		}},
		{"every protocol", func(s *S, p *P) {
			for _, pr := range []mesh.Protocol{mesh.ProtocolHTTP, mesh.ProtocolHTTP2, mesh.ProtocolGRPC, mesh.ProtocolTCP} {
				*s = append(*s, mesh.Service{Name: "svc-" + string(pr), Protocol: pr})
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, p := baseServices(), baseProxies()
			tt.mutate(&s, &p)
			if _, err := mesh.NewCatalog(s, p); err != nil {
				t.Errorf("NewCatalog: %v", err)
			}
		})
	}
}

func TestValidName(t *testing.T) {
	for _, ok := range []string{"a", "web", "web-1", "1web", tooLong[:63]} {
		if err := mesh.ValidName(ok); err != nil {
			t.Errorf("ValidName(%q) = %v, want nil", ok, err)
		}
	}
	for _, bad := range []string{"", "Web", "web_1", "-web", "web-", "web.default", "wéb", tooLong} {
		if err := mesh.ValidName(bad); err == nil {
			t.Errorf("ValidName(%q) = nil, want an error", bad)
		}
	}
}
