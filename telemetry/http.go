package telemetry

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// The admin API's telemetry endpoints (meshctl edges, stat, tap):
//
//	GET /telemetry/edges
//	GET /telemetry/stats?window=1m[&service=name.namespace]
//	GET /telemetry/tap[?destination=&source=&path=&method=&denied=true]
//
// tap answers with newline-delimited JSON, one TapMessage per line, for as
// long as the client stays.

// MaxTaps bounds concurrent taps (each may buffer TapBuffer events).
const MaxTaps = 32

// TapHeartbeat is how often an idle tap stream says it is alive.
const TapHeartbeat = 5 * time.Second

// TapMessage is one line of a tap stream: exactly one field is set.
type TapMessage struct {
	// Tapping opens the stream: the subscription is in place, every
	// matching event from now on follows.
	Tapping *Filter `json:"tapping,omitempty"`
	Event   *Event  `json:"event,omitempty"`
	// Lost says how many matching events were dropped because the client
	// read too slowly.
	Lost uint64 `json:"lost,omitempty"`
	// Heartbeat is sent when nothing else was for TapHeartbeat.
	Heartbeat *time.Time `json:"heartbeat,omitempty"`
}

// API serves the endpoints above.
type API struct {
	Store *Store
	Hub   *Hub
	// Identity, when set, names a service's SPIFFE ID (name.namespace →
	// spiffe://…) for the edges' destination identities.
	Identity func(service string) string
}

// Register adds the endpoints to mux.
func (a *API) Register(mux *http.ServeMux) {
	mux.HandleFunc("GET /telemetry/edges", a.edges)
	mux.HandleFunc("GET /telemetry/stats", a.stats)
	mux.HandleFunc("GET /telemetry/tap", a.tap)
}

func (a *API) edges(w http.ResponseWriter, _ *http.Request) {
	r := a.Store.Edges()
	if a.Identity != nil {
		for i := range r.Edges {
			r.Edges[i].DestinationIdentity = a.Identity(r.Edges[i].Destination)
		}
	}
	writeJSON(w, r)
}

func (a *API) stats(w http.ResponseWriter, r *http.Request) {
	window := time.Minute
	if v := r.URL.Query().Get("window"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 || d > MaxWindow {
			http.Error(w, fmt.Sprintf("window %q: give a duration up to %s, such as 1m", v, MaxWindow), http.StatusBadRequest)
			return
		}
		window = d
	}
	writeJSON(w, a.Store.Stats(window, r.URL.Query().Get("service")))
}

func (a *API) tap(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := Filter{Destination: q.Get("destination"), Source: q.Get("source"), PathPrefix: q.Get("path"), Method: q.Get("method")}
	if v := q.Get("denied"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			http.Error(w, "denied: give true or false", http.StatusBadRequest)
			return
		}
		f.DeniedOnly = b
	}
	flusher, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming is not supported here", http.StatusInternalServerError)
		return
	}
	if a.Hub.Subscribers() >= MaxTaps {
		http.Error(w, fmt.Sprintf("%d taps are open already; close one", MaxTaps), http.StatusTooManyRequests)
		return
	}
	sub := a.Hub.Subscribe(f)
	defer sub.Close()
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	enc := json.NewEncoder(w)
	if enc.Encode(TapMessage{Tapping: &f}) != nil {
		return
	}
	flusher.Flush()
	beat := time.NewTicker(TapHeartbeat)
	defer beat.Stop()
	for {
		var err error
		select {
		case <-r.Context().Done():
			return
		case e := <-sub.Events():
			err = enc.Encode(TapMessage{Event: &e})
			// Write what else is already there before flushing.
			for more := true; more && err == nil; {
				select {
				case e := <-sub.Events():
					err = enc.Encode(TapMessage{Event: &e})
				default:
					more = false
				}
			}
		case now := <-beat.C:
			err = enc.Encode(TapMessage{Heartbeat: &now})
		}
		if n := sub.Lost(); n > 0 && err == nil {
			err = enc.Encode(TapMessage{Lost: n})
		}
		if err != nil {
			return
		}
		flusher.Flush()
	}
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
