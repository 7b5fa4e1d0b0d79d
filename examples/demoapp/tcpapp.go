package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"
)

// Bounds of the TCP service: a line is at most maxLine bytes, and a
// connection idle for tcpIdle is closed.
const (
	maxLine = 64 << 10
	tcpIdle = 5 * time.Minute
)

// tcpReply is the TCP service's answer to one line. A TCP sidecar forwards
// bytes and cannot add a header, so the service can only report the peer
// address it sees, which is its sidecar's; the caller's identity was
// checked by the sidecar (mTLS, and network RBAC when a policy applies).
func tcpReply(name, line string, peer net.Addr) string {
	return fmt.Sprintf("%s echo %q peer=%s\n", name, line, peer)
}

func serveTCP(ctx context.Context, listen, name string, log *slog.Logger, ready func(string)) error {
	lis, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	ready(lis.Addr().String())
	var (
		mu    sync.Mutex
		conns = map[net.Conn]bool{}
		wg    sync.WaitGroup
	)
	stop := context.AfterFunc(ctx, func() {
		lis.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	defer stop()
	for {
		c, err := lis.Accept()
		if err != nil {
			wg.Wait()
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		mu.Lock()
		if ctx.Err() != nil { // closed between Accept and here
			mu.Unlock()
			c.Close()
			continue
		}
		conns[c] = true
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			serveTCPConn(c, name, log)
			mu.Lock()
			delete(conns, c)
			mu.Unlock()
		}()
	}
}

func serveTCPConn(c net.Conn, name string, log *slog.Logger) {
	defer c.Close()
	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, 4096), maxLine)
	for {
		c.SetReadDeadline(time.Now().Add(tcpIdle))
		if !sc.Scan() {
			if err := sc.Err(); err != nil && !errors.Is(err, net.ErrClosed) {
				log.Info("connection closed", "peer", c.RemoteAddr().String(), "err", err)
			}
			return
		}
		log.Info("line", "peer", c.RemoteAddr().String())
		if _, err := c.Write([]byte(tcpReply(name, sc.Text(), c.RemoteAddr()))); err != nil {
			return
		}
	}
}
