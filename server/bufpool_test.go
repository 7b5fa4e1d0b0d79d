package server

import (
	"slices"
	"testing"

	"google.golang.org/grpc/mem"
)

var _ mem.BufferPool = (*boundedPool)(nil)

// Buffers have the length asked for and their class's capacity, are reused,
// and each class keeps at most its bound: a burst's extra buffers are left
// to the garbage collector.
func TestBoundedPool(t *testing.T) {
	p := newBoundedPool([2]int{256, 2}, [2]int{4096, 1})
	for _, n := range []int{0, 1, 256, 257, 4096, 5000} {
		b := p.Get(n)
		if len(*b) != n {
			t.Errorf("Get(%d): len %d", n, len(*b))
		}
		want := n
		switch {
		case n <= 256:
			want = 256
		case n <= 4096:
			want = 4096
		}
		if cap(*b) != want {
			t.Errorf("Get(%d): cap %d, want %d", n, cap(*b), want)
		}
	}
	// A burst of five small buffers returned: two kept.
	var burst []*[]byte
	for range 5 {
		burst = append(burst, p.Get(100))
	}
	for _, b := range burst {
		p.Put(b)
	}
	if got := p.kept(); !slices.Equal(got, []int{2, 0}) {
		t.Fatalf("kept after a burst of 5 small buffers: %v, want [2 0]", got)
	}
	// Reused: the next Get returns a kept buffer, at the length asked for.
	b := p.Get(10)
	if b != burst[1] && b != burst[0] {
		t.Errorf("Get after Put did not reuse a kept buffer")
	}
	if len(*b) != 10 || p.kept()[0] != 1 {
		t.Errorf("reused buffer len %d, kept %v", len(*b), p.kept())
	}
	// A prefix of a pooled buffer goes back to its class; a buffer of
	// another capacity (too large for any class, or foreign) is dropped.
	big := p.Get(4000)
	*big = (*big)[:12]
	p.Put(big)
	huge := p.Get(10000)
	p.Put(huge)
	odd := make([]byte, 300)
	p.Put(&odd)
	if got := p.kept(); !slices.Equal(got, []int{1, 1}) {
		t.Fatalf("kept: %v, want [1 1]", got)
	}
}
