package connlimit

import (
	"errors"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// serve accepts on l until it is closed, handing each server-side
// connection to conns (which the test keeps open, as gRPC would).
func serve(l *Listener) chan net.Conn {
	conns := make(chan net.Conn, 64)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				close(conns)
				return
			}
			conns <- c
		}
	}()
	return conns
}

// closedByServer reports whether the server closed c (a read ends with
// EOF or a reset rather than timing out).
func closedByServer(t *testing.T, c net.Conn, within time.Duration) bool {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(within))
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false
	}
	return err != nil
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestLimits: pending connections beyond MaxPending evict the oldest
// pending one; authenticated ones are never evicted, and once every slot is
// authenticated a newcomer is refused; a pending connection is closed after
// PendingTimeout, an authenticated one is not; closing frees the slot.
func TestLimits(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := New(inner, Options{Max: 4, MaxPending: 3, PendingTimeout: 300 * time.Millisecond, What: "test", Logger: slog.New(slog.DiscardHandler)})
	defer l.Close()
	server := serve(l)
	addr := inner.Addr().String()
	accept := func() net.Conn {
		t.Helper()
		select {
		case c := <-server:
			return c
		case <-time.After(5 * time.Second):
			t.Fatal("no connection accepted")
			return nil
		}
	}
	want := func(open, pending int) {
		t.Helper()
		if o, p := l.Counts(); o != open || p != pending {
			t.Fatalf("open %d, pending %d; want %d, %d", o, p, open, pending)
		}
	}

	// Three pending: the limit. A fourth evicts the oldest.
	var clients []net.Conn
	var servers []net.Conn
	for range 3 {
		clients = append(clients, dial(t, addr))
		servers = append(servers, accept())
	}
	want(3, 3)
	clients = append(clients, dial(t, addr))
	servers = append(servers, accept())
	if !closedByServer(t, clients[0], 2*time.Second) {
		t.Fatal("the oldest pending connection was not evicted")
	}
	want(3, 3)

	// Two authenticate; the fourth slot takes a newcomer, then Max is
	// reached with one pending, which the next newcomer evicts.
	l.Authenticated(servers[1].RemoteAddr())
	l.Authenticated(servers[2].RemoteAddr())
	want(3, 1)
	clients = append(clients, dial(t, addr))
	servers = append(servers, accept())
	want(4, 2)
	clients = append(clients, dial(t, addr))
	servers = append(servers, accept())
	if !closedByServer(t, clients[3], 2*time.Second) {
		t.Fatal("at Max, the oldest pending connection was not evicted")
	}
	l.Authenticated(servers[4].RemoteAddr())
	l.Authenticated(servers[5].RemoteAddr())
	want(4, 0)

	// Every slot authenticated: a newcomer is refused, nobody evicted.
	refused := dial(t, addr)
	if !closedByServer(t, refused, 2*time.Second) {
		t.Fatal("a connection beyond Max with nothing to evict was not refused")
	}
	for _, i := range []int{1, 2, 4, 5} {
		if closedByServer(t, clients[i], 100*time.Millisecond) {
			t.Fatalf("authenticated connection %d was closed", i)
		}
	}

	// Closing one frees its slot; a pending newcomer times out, the
	// authenticated ones stay past the timeout.
	servers[5].Close()
	want(3, 0)
	late := dial(t, addr)
	accept()
	want(4, 1)
	if !closedByServer(t, late, 3*time.Second) {
		t.Fatal("a pending connection outlived the pending timeout")
	}
	want(3, 0)
	if closedByServer(t, clients[1], 100*time.Millisecond) {
		t.Fatal("an authenticated connection timed out")
	}
	for reason, n := range map[string]float64{"evicted": 2, "limit": 1, "auth_timeout": 1} {
		if got := testutil.ToFloat64(l.refused.WithLabelValues(reason)); got != n {
			t.Errorf("closed[%s] = %v, want %v", reason, got, n)
		}
	}
	if got := testutil.ToFloat64(l.conns.WithLabelValues("authenticated")); got != 3 {
		t.Errorf("authenticated gauge %v, want 3", got)
	}
}
