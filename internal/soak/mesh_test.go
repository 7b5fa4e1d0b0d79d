package soak

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshd/meshd/discovery/file"
	"github.com/meshd/meshd/internal/loadgen"
	"github.com/meshd/meshd/mesh"
)

func testLayout(callers int) *layout {
	l := &layout{Replicas: map[string][]replicaPorts{}}
	port := uint32(21000)
	next := func() uint32 { port++; return port }
	for _, sv := range Servers {
		for range sv.Replicas {
			l.Replicas[sv.Name] = append(l.Replicas[sv.Name], replicaPorts{Public: next(), App: next(), Admin: next()})
		}
	}
	for range callers {
		cp := callerPorts{Admin: next(), Local: map[string]uint32{}}
		for _, sv := range Servers {
			cp.Local[sv.Name] = next()
		}
		l.Callers = append(l.Callers, cp)
	}
	return l
}

// TestCatalogIsWhatMeshdReads builds the soak's catalog, with the toggled
// replica in and out, and reads it with meshd's own parser: it must be
// valid, and meshd must see the replica's workload labels exactly while
// its endpoint is in (the model's labeled).
func TestCatalogIsWhatMeshdReads(t *testing.T) {
	fleet, err := loadgen.Generate(loadgen.Scenario{Name: "t", Proxies: 8, Services: 4, Endpoints: 2, Upstreams: 2})
	if err != nil {
		t.Fatal(err)
	}
	l := testLayout(3)
	for _, in := range []bool{true, false} {
		b, err := buildCatalog(l, in, fleet).Marshal()
		if err != nil {
			t.Fatal(err)
		}
		cat, err := file.Parse("catalog.yaml", b)
		if err != nil {
			t.Fatalf("replica in %v: meshd refuses the catalog: %v", in, err)
		}
		s := InitialState()
		s.ReplicaIn = in
		for _, sv := range Servers {
			for r := range sv.Replicas {
				p := cat.Proxy(ProxyID(sv.Name, r))
				if p == nil {
					t.Fatalf("no proxy %s", ProxyID(sv.Name, r))
				}
				got := cat.WorkloadOf(p).Labels["app"] == sv.Name
				if got != s.labeled(sv.Name, r) {
					t.Errorf("replica in %v: %s labeled %v, the model says %v", in, p.ID, got, s.labeled(sv.Name, r))
				}
			}
		}
		if n := len(cat.Proxies()); n != 8+4+3 {
			t.Errorf("%d proxies, want 15", n)
		}
	}
}

func TestApplyFleetChange(t *testing.T) {
	fleet, err := loadgen.Generate(loadgen.Scenario{Name: "t", Proxies: 4, Services: 2, Endpoints: 2, Upstreams: 1})
	if err != nil {
		t.Fatal(err)
	}
	s, addr, err := applyFleetChange(fleet, FleetChange{Service: 1, Op: "add"})
	if err != nil || len(s.Endpoints) != 3 || s.Endpoints[2].Address != addr {
		t.Fatalf("add: %v %+v", err, s)
	}
	if s, _, _ = applyFleetChange(fleet, FleetChange{Service: 1, Op: "unhealthy"}); s.Endpoints[0].Health != mesh.HealthUnhealthy {
		t.Errorf("unhealthy: %+v", s.Endpoints[0])
	}
	if s, _, _ = applyFleetChange(fleet, FleetChange{Service: 1, Op: "healthy"}); s.Endpoints[0].Health != "" {
		t.Errorf("healthy: %+v", s.Endpoints[0])
	}
	if s, _, _ = applyFleetChange(fleet, FleetChange{Service: 1, Op: "remove"}); len(s.Endpoints) != 2 {
		t.Errorf("remove: %+v", s.Endpoints)
	}
	if _, _, err := applyFleetChange(fleet, FleetChange{Service: 5, Op: "add"}); err == nil {
		t.Error("a service out of range was changed")
	}
	b, _ := buildCatalog(testLayout(2), true, fleet).Marshal()
	if _, err := file.Parse("c.yaml", b); err != nil {
		t.Errorf("after churn: %v", err)
	}
}

func TestServingPort(t *testing.T) {
	p := filepath.Join(t.TempDir(), "app.log")
	os.WriteFile(p, []byte("time=x level=INFO msg=starting\ntime=x level=INFO msg=serving service=api mode=http listen=127.0.0.1:43121\n"), 0o644)
	if port, ok := servingPort(p); !ok || port != 43121 {
		t.Errorf("port %d %v", port, ok)
	}
	os.WriteFile(p, []byte("time=x level=INFO msg=starting\n"), 0o644)
	if _, ok := servingPort(p); ok {
		t.Error("a port without a serving line")
	}
}

// TestCallerOutcomes checks how each caller tells a denial from a failure,
// against servers that answer the way Envoy does.
func TestCallerOutcomes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	t.Run("http", func(t *testing.T) {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			switch {
			case strings.HasSuffix(r.URL.Path, "/web"):
				fmt.Fprintln(w, `{"service":"api"}`)
			case strings.HasSuffix(r.URL.Path, "/ops"):
				http.Error(w, "RBAC: access denied", http.StatusForbidden)
			case strings.HasSuffix(r.URL.Path, "/batch"):
				http.Error(w, "forbidden by the app", http.StatusForbidden)
			default:
				http.Error(w, "upstream connect error", http.StatusServiceUnavailable)
			}
		}))
		defer srv.Close()
		port := srv.Listener.Addr().(*net.TCPAddr).Port
		for who, want := range map[string]Outcome{"web": OK, "ops": Denied, "batch": Failed, "cron": Failed} {
			c, _ := newCaller(mesh.ProtocolHTTP, "api", who, uint32(port))
			if o, d := c.call(ctx); o != want {
				t.Errorf("%s: %s (%s), want %s", who, o, d, want)
			}
			c.close()
		}
	})
	t.Run("grpc", func(t *testing.T) {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		gs := grpc.NewServer(grpc.UnknownServiceHandler(func(_ any, st grpc.ServerStream) error {
			in := new(wrapperspb.StringValue)
			if err := st.RecvMsg(in); err != nil {
				return err
			}
			switch in.GetValue() {
			case "web":
				return st.SendMsg(wrapperspb.String("hello"))
			case "ops":
				return status.Error(codes.PermissionDenied, "RBAC: access denied")
			}
			return status.Error(codes.Unavailable, "no healthy upstream")
		}))
		go gs.Serve(lis)
		defer gs.Stop()
		port := lis.Addr().(*net.TCPAddr).Port
		for who, want := range map[string]Outcome{"web": OK, "ops": Denied, "batch": Failed} {
			c, _ := newCaller(mesh.ProtocolGRPC, "greeter", who, uint32(port))
			if o, d := c.call(ctx); o != want {
				t.Errorf("%s: %s (%s), want %s", who, o, d, want)
			}
			c.close()
		}
	})
	t.Run("tcp", func(t *testing.T) {
		for name, tc := range map[string]struct {
			serve func(net.Conn)
			want  Outcome
		}{
			"echo": {func(c net.Conn) {
				buf := make([]byte, 100)
				n, _ := c.Read(buf)
				fmt.Fprintf(c, "db echo %q\n", buf[:n])
			}, OK},
			"closed": {func(c net.Conn) {}, Denied},
			"other":  {func(c net.Conn) { fmt.Fprintln(c, "something else") }, Failed},
			"half":   {func(c net.Conn) { fmt.Fprint(c, "db ec") }, Failed},
		} {
			lis, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			go func() {
				for {
					c, err := lis.Accept()
					if err != nil {
						return
					}
					tc.serve(c)
					c.Close()
				}
			}()
			c, _ := newCaller(mesh.ProtocolTCP, "db", "web", uint32(lis.Addr().(*net.TCPAddr).Port))
			if o, d := c.call(ctx); o != tc.want {
				t.Errorf("%s: %s (%s), want %s", name, o, d, tc.want)
			}
			lis.Close()
		}
		// Nothing listening: a failure, not a denial.
		lis, _ := net.Listen("tcp", "127.0.0.1:0")
		port := lis.Addr().(*net.TCPAddr).Port
		lis.Close()
		c, _ := newCaller(mesh.ProtocolTCP, "db", "web", uint32(port))
		if o, d := c.call(ctx); o != Failed {
			t.Errorf("refused dial: %s (%s), want failed", o, d)
		}
	})
}
