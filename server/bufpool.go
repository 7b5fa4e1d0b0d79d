package server

import "sync"

// boundedPool is the buffer pool of meshd's gRPC server (messages read and
// encoded): gRPC's default pools are sync.Pools, which keep every buffer
// returned to them until two garbage collections have passed. After a
// burst — every proxy syncing at once, a certificate rotation pushed to
// all — that is every buffer the burst had in flight at the same time:
// 6.8 MiB at 1,000 proxies, held until the runtime's periodic collections
// drop it minutes later. Here each size class keeps at most a fixed number
// of buffers, so what stays after a burst is bounded (1 MiB in all) and the
// rest is ordinary garbage, freed by the next collection.
//
// Steady state (a push now and then, ACKs) is served from the free lists
// as before; a burst allocates what it needs beyond them.
type boundedPool struct {
	classes []sizeClass // ascending sizes
}

type sizeClass struct {
	size int
	max  int // buffers kept at most

	mu   sync.Mutex
	free []*[]byte
}

// newBoundedPool returns a pool with the given classes: buffer size and how
// many buffers of that size it keeps at most. Sizes must ascend.
func newBoundedPool(classes ...[2]int) *boundedPool {
	p := &boundedPool{}
	for _, c := range classes {
		p.classes = append(p.classes, sizeClass{size: c[0], max: c[1]})
	}
	return p
}

// defaultBufferPool: gRPC's default sizes up to 32 KiB (256 B; 4 KiB, a
// page; 16 KiB, the largest HTTP/2 frame gRPC writes; 32 KiB), each class
// bounded to 256 KiB. Larger messages (a proxy that sees hundreds of
// services) get buffers of their own size, not a 1 MiB class's.
func defaultBufferPool() *boundedPool {
	return newBoundedPool([2]int{256, 1024}, [2]int{4 << 10, 64}, [2]int{16 << 10, 16}, [2]int{32 << 10, 8})
}

// class returns the smallest class whose buffers hold length bytes, or nil.
func (p *boundedPool) class(length int) *sizeClass {
	for i := range p.classes {
		if length <= p.classes[i].size {
			return &p.classes[i]
		}
	}
	return nil
}

// Get implements mem.BufferPool: a buffer of the given length.
func (p *boundedPool) Get(length int) *[]byte {
	c := p.class(length)
	if c == nil {
		b := make([]byte, length)
		return &b
	}
	c.mu.Lock()
	if n := len(c.free); n > 0 {
		b := c.free[n-1]
		c.free[n-1] = nil
		c.free = c.free[:n-1]
		c.mu.Unlock()
		*b = (*b)[:length]
		return b
	}
	c.mu.Unlock()
	b := make([]byte, length, c.size)
	return &b
}

// Put implements mem.BufferPool: the buffer is kept if its class has room,
// otherwise left to the garbage collector.
func (p *boundedPool) Put(b *[]byte) {
	// Only buffers of exactly a class's size came from a class (others
	// were allocated for larger lengths and are not reused).
	size := cap(*b)
	c := p.class(size)
	if c == nil || c.size != size {
		return
	}
	c.mu.Lock()
	if len(c.free) < c.max {
		c.free = append(c.free, b)
	}
	c.mu.Unlock()
}

// kept returns how many buffers each class holds (tests).
func (p *boundedPool) kept() []int {
	out := make([]int, len(p.classes))
	for i := range p.classes {
		c := &p.classes[i]
		c.mu.Lock()
		out[i] = len(c.free)
		c.mu.Unlock()
	}
	return out
}
