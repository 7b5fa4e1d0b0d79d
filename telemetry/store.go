package telemetry

import (
	"cmp"
	"slices"
	"strings"
	"sync"
	"time"
)

// The store's window: the last nSlots slots of slotWidth each. Queries
// (meshctl stat --window) may ask for up to MaxWindow.
const (
	slotWidth = 10 * time.Second
	nSlots    = 30
	// MaxWindow is the longest window Stats answers for.
	MaxWindow = slotWidth * nSlots
)

// Options bound the store. Zero values take the defaults.
type Options struct {
	// MaxEdges caps the edges kept (default 10,000). Events of an edge
	// beyond it still count for their service; their edge is not kept and
	// they are counted as dropped.
	MaxEdges int
	// MaxServices caps the destination services with windowed statistics
	// (default 4,096; each costs about 3.5 KiB).
	MaxServices int
	// IdleAfter forgets an edge, or a service, that has seen no traffic
	// for this long (default 1h), so a mesh whose callers change does not
	// fill the caps with the past.
	IdleAfter time.Duration
	// Now is the clock (tests); default time.Now.
	Now func() time.Time
}

func (o Options) withDefaults() Options {
	if o.MaxEdges <= 0 {
		o.MaxEdges = 10000
	}
	if o.MaxServices <= 0 {
		o.MaxServices = 4096
	}
	if o.IdleAfter <= 0 {
		o.IdleAfter = time.Hour
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// EdgeKey names an edge: who called which service, how.
type EdgeKey struct {
	// Source is the caller's SPIFFE ID, "" for plaintext callers, which
	// are told apart by SourceAddress instead (set only then).
	Source        string
	SourceAddress string
	Destination   string
	MTLS          bool
}

type edge struct {
	protocol    string
	first, last time.Time
	// requests[denied][class], connections[denied]
	requests    [2][nClasses]uint64
	connections [2]uint64
	lastPolicy  string
}

type slot struct {
	index                                        int64 // which slotWidth period since the epoch
	requests, connections, denied, mtls, success uint32
	hist                                         [nBuckets]uint32
}

type service struct {
	protocol string
	last     time.Time
	slots    [nSlots]slot
	// Cumulative, for Prometheus: latency of allowed requests and
	// plaintext seen where policy says STRICT.
	hist              [nBuckets]uint64
	latencySum        float64
	plaintextInStrict uint64
}

// Store aggregates events. It is safe for concurrent use.
type Store struct {
	opts Options

	mu              sync.Mutex
	start           time.Time
	lastSweep       time.Time
	edges           map[EdgeKey]*edge
	services        map[string]*service
	droppedEdges    uint64 // events whose edge was not kept (MaxEdges)
	droppedServices uint64 // events whose service was not kept (MaxServices)
	events          [2]uint64
}

// NewStore returns an empty store.
func NewStore(o Options) *Store {
	o = o.withDefaults()
	now := o.Now()
	return &Store{opts: o, start: now, lastSweep: now, edges: map[EdgeKey]*edge{}, services: map[string]*service{}}
}

func keyOf(e *Event) EdgeKey {
	k := EdgeKey{Source: e.Source, Destination: e.Destination, MTLS: e.MTLS}
	if !e.MTLS {
		k.SourceAddress = e.SourceAddress
	}
	return k
}

// Record adds a batch of events from one proxy. strict says the policy
// puts their destination in STRICT mode, so a plaintext event is counted
// as plaintext in STRICT.
func (s *Store) Record(evs []Event, strict bool) {
	if len(evs) == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.opts.Now()
	idx := now.UnixNano() / int64(slotWidth)
	if now.Sub(s.lastSweep) >= time.Minute {
		s.sweep(now)
	}
	for i := range evs {
		e := &evs[i]
		tcp := e.Protocol == ProtocolTCP
		if tcp {
			s.events[1]++
		} else {
			s.events[0]++
		}
		denied := 0
		if e.Denied {
			denied = 1
		}
		k := keyOf(e)
		ed := s.edges[k]
		if ed == nil {
			if len(s.edges) >= s.opts.MaxEdges {
				s.droppedEdges++
			} else {
				ed = &edge{protocol: e.Protocol, first: now}
				s.edges[k] = ed
			}
		}
		if ed != nil {
			ed.last = now
			if tcp {
				ed.connections[denied]++
			} else {
				ed.requests[denied][e.classIndex()]++
			}
			if e.Denied {
				ed.lastPolicy = e.Policy
			}
		}

		svc := s.services[e.Destination]
		if svc == nil {
			if len(s.services) >= s.opts.MaxServices {
				s.droppedServices++
				continue
			}
			svc = &service{protocol: e.Protocol}
			s.services[e.Destination] = svc
		}
		svc.last = now
		sl := &svc.slots[idx%nSlots]
		if sl.index != idx {
			*sl = slot{index: idx}
		}
		if tcp {
			sl.connections++
		} else {
			sl.requests++
		}
		if e.MTLS {
			sl.mtls++
		} else if strict {
			svc.plaintextInStrict++
		}
		if e.Denied {
			sl.denied++
			continue
		}
		if e.Success() {
			sl.success++
		}
		if !tcp {
			b := bucketOf(e.Duration())
			sl.hist[b]++
			svc.hist[b]++
			svc.latencySum += e.Duration().Seconds()
		}
	}
}

// sweep forgets edges and services idle for IdleAfter.
func (s *Store) sweep(now time.Time) {
	s.lastSweep = now
	cutoff := now.Add(-s.opts.IdleAfter)
	for k, e := range s.edges {
		if e.last.Before(cutoff) {
			delete(s.edges, k)
		}
	}
	for k, svc := range s.services {
		if svc.last.Before(cutoff) {
			delete(s.services, k)
		}
	}
}

// EdgeStats is one edge's traffic since meshd started (or since the edge
// was last idle for IdleAfter).
type EdgeStats struct {
	// Source is the caller's SPIFFE ID ("" for plaintext callers, named
	// by SourceAddress instead).
	Source        string `json:"source,omitempty"`
	SourceAddress string `json:"sourceAddress,omitempty"`
	// Destination is the called service (name.namespace).
	Destination string `json:"destination"`
	// DestinationIdentity is filled in by the caller of Edges that knows
	// the catalog (the admin API).
	DestinationIdentity string `json:"destinationIdentity,omitempty"`
	MTLS                bool   `json:"mtls"`
	Protocol            string `json:"protocol"`
	// Requests (HTTP) or Connections (tcp), allowed and denied.
	Requests    uint64 `json:"requests"`
	Connections uint64 `json:"connections"`
	Denied      uint64 `json:"denied"`
	// Responses counts allowed and denied requests by response class
	// (2xx, 3xx, 4xx, 5xx, grpc_error, other).
	Responses map[string]uint64 `json:"responses,omitempty"`
	// LastDeniedBy is the rule that denied the edge's latest denied
	// request or connection.
	LastDeniedBy string    `json:"lastDeniedBy,omitempty"`
	FirstSeen    time.Time `json:"firstSeen"`
	LastSeen     time.Time `json:"lastSeen"`
}

// EdgesReport is what Edges returns.
type EdgesReport struct {
	Since time.Time   `json:"since"`
	Edges []EdgeStats `json:"edges"`
	// DroppedEvents counts events whose edge was not kept because the
	// store held MaxEdges edges already (their service still counts them).
	DroppedEvents uint64 `json:"droppedEvents"`
	MaxEdges      int    `json:"maxEdges"`
}

// Edges returns every edge, sorted by destination then source.
func (s *Store) Edges() EdgesReport {
	s.mu.Lock()
	r := EdgesReport{Since: s.start, DroppedEvents: s.droppedEdges, MaxEdges: s.opts.MaxEdges, Edges: make([]EdgeStats, 0, len(s.edges))}
	for k, e := range s.edges {
		st := EdgeStats{Source: k.Source, SourceAddress: k.SourceAddress, Destination: k.Destination, MTLS: k.MTLS,
			Protocol: e.protocol, LastDeniedBy: e.lastPolicy, FirstSeen: e.first, LastSeen: e.last,
			Connections: e.connections[0] + e.connections[1], Denied: e.connections[1]}
		for d := range 2 {
			for c, n := range e.requests[d] {
				if n == 0 {
					continue
				}
				if st.Responses == nil {
					st.Responses = map[string]uint64{}
				}
				st.Responses[classes[c]] += n
				st.Requests += n
				if d == 1 {
					st.Denied += n
				}
			}
		}
		r.Edges = append(r.Edges, st)
	}
	s.mu.Unlock()
	slices.SortFunc(r.Edges, func(a, b EdgeStats) int {
		return cmp.Or(strings.Compare(a.Destination, b.Destination), strings.Compare(a.Source, b.Source),
			strings.Compare(a.SourceAddress, b.SourceAddress), cmpBool(a.MTLS, b.MTLS))
	})
	return r
}

func cmpBool(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}

// ServiceStats is one destination service's traffic over a window.
type ServiceStats struct {
	Service   string `json:"service"`
	Namespace string `json:"namespace"`
	Protocol  string `json:"protocol"`
	// Requests (HTTP, gRPC) and Connections (tcp) in the window, allowed
	// and denied.
	Requests    uint64 `json:"requests"`
	Connections uint64 `json:"connections"`
	Denied      uint64 `json:"denied"`
	// MTLS counts requests or connections that came over mTLS.
	MTLS uint64 `json:"mtls"`
	// Success counts allowed requests without a 5xx or gRPC error;
	// SuccessRate is Success over the allowed requests (absent when there
	// were none). Denied requests are not failures of the service: they
	// are counted in Denied only.
	Success     uint64   `json:"success"`
	SuccessRate *float64 `json:"successRate,omitempty"`
	// RPS is requests (or connections) per second over the window.
	RPS float64 `json:"rps"`
	// MTLSPercent is the share of requests (or connections) over mTLS.
	MTLSPercent float64 `json:"mtlsPercent"`
	// Latency quantiles of the allowed requests, in milliseconds (absent
	// for tcp and when there were none).
	P50Ms *float64 `json:"p50Ms,omitempty"`
	P95Ms *float64 `json:"p95Ms,omitempty"`
	P99Ms *float64 `json:"p99Ms,omitempty"`
}

// StatsReport is what Stats returns.
type StatsReport struct {
	// Window is the window asked for; Covered how much of it the store
	// has seen (less right after meshd started).
	Window   string         `json:"window"`
	Covered  string         `json:"covered"`
	Services []ServiceStats `json:"services"`
	Dropped  uint64         `json:"droppedEvents"`
	covered  time.Duration
}

// Stats returns per-service statistics over the last window (at most
// MaxWindow, rounded up to the store's 10 s slots), for one service
// (name.namespace) or all when service is "".
func (s *Store) Stats(window time.Duration, service string) StatsReport {
	window = min(max(window, slotWidth), MaxWindow)
	n := int64((window + slotWidth - 1) / slotWidth)
	s.mu.Lock()
	now := s.opts.Now()
	idx := now.UnixNano() / int64(slotWidth)
	first := idx - n + 1
	from := time.Unix(0, first*int64(slotWidth))
	if from.Before(s.start) {
		from = s.start
	}
	covered := now.Sub(from)
	r := StatsReport{Window: window.String(), Services: []ServiceStats{}, Dropped: s.droppedServices}
	for name, svc := range s.services {
		if service != "" && name != service {
			continue
		}
		var sum slot
		var hist [nBuckets]uint64
		for i := range svc.slots {
			sl := &svc.slots[i]
			if sl.index < first || sl.index > idx {
				continue
			}
			sum.requests += sl.requests
			sum.connections += sl.connections
			sum.denied += sl.denied
			sum.mtls += sl.mtls
			sum.success += sl.success
			for b, c := range sl.hist {
				hist[b] += uint64(c)
			}
		}
		total := uint64(sum.requests) + uint64(sum.connections)
		if total == 0 && service == "" {
			continue
		}
		svcName, ns, _ := strings.Cut(name, ".")
		st := ServiceStats{Service: svcName, Namespace: ns, Protocol: svc.protocol,
			Requests: uint64(sum.requests), Connections: uint64(sum.connections), Denied: uint64(sum.denied),
			MTLS: uint64(sum.mtls), Success: uint64(sum.success)}
		if covered > 0 {
			st.RPS = float64(total) / covered.Seconds()
		}
		if total > 0 {
			st.MTLSPercent = 100 * float64(sum.mtls) / float64(total)
		}
		if allowed := uint64(sum.requests) - min(uint64(sum.denied), uint64(sum.requests)); svc.protocol == ProtocolHTTP && allowed > 0 {
			// Denied requests are requests here (tcp services count
			// connections, and have no success rate).
			rate := float64(sum.success) / float64(allowed)
			st.SuccessRate = &rate
			st.P50Ms, st.P95Ms, st.P99Ms = ms(quantile(0.5, &hist)), ms(quantile(0.95, &hist)), ms(quantile(0.99, &hist))
		}
		r.Services = append(r.Services, st)
	}
	s.mu.Unlock()
	r.covered = covered
	r.Covered = covered.Round(time.Millisecond).String()
	slices.SortFunc(r.Services, func(a, b ServiceStats) int {
		return cmp.Or(strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Service, b.Service))
	})
	return r
}

func ms(d time.Duration) *float64 {
	v := float64(d) / float64(time.Millisecond)
	return &v
}
