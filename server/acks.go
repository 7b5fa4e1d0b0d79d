package server

// Acked implements snapshot.AckSource: the version of typeURL the node last
// acknowledged, and whether it has an open stream.
func (t *Tracker) Acked(node, typeURL string) (string, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := t.nodes[node]
	if n == nil {
		return "", false
	}
	ts := n.status(typeURL)
	if ts == nil {
		return "", n.streams > 0
	}
	return ts.Acked, n.streams > 0
}

// SetAckHook registers a function called after every ACK (outside the
// tracker's lock); the publisher uses it to advance mTLS migrations.
func (t *Tracker) SetAckHook(f func()) { t.ackHook = f }

func (t *Tracker) acked(isNack bool, nonce string) {
	if !isNack && nonce != "" && t.ackHook != nil {
		t.ackHook()
	}
}
