package xds

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"slices"
	"sync"

	"github.com/meshd/meshd/mesh"
)

// fingerprinter hashes model objects field by field. It is much cheaper than
// hashing a JSON encoding (no reflection, no allocation per field), which
// matters because every proxy is fingerprinted on every catalog change.
// Every variable-length field is length-prefixed so distinct inputs cannot
// collide by shifting bytes between fields. Fields are appended to one
// buffer hashed at the end (the same digest as writing them one by one to
// the hash, without converting each string to a fresh byte slice).
type fingerprinter struct {
	buf []byte
}

func newFingerprinter() *fingerprinter { return &fingerprinter{buf: make([]byte, 0, 1024)} }

// fingerprinters are reused: every proxy is fingerprinted at every publish,
// and a buffer each would be a steady stream of garbage.
var fingerprinters = sync.Pool{New: func() any { return newFingerprinter() }}

func (f *fingerprinter) str(s string) {
	f.buf = binary.LittleEndian.AppendUint64(f.buf, uint64(len(s)))
	f.buf = append(f.buf, s...)
}

func (f *fingerprinter) u32(v uint32) {
	f.buf = binary.LittleEndian.AppendUint32(f.buf, v)
}

func (f *fingerprinter) sum() string {
	s := sha256.Sum256(f.buf)
	f.buf = f.buf[:0]
	return hex.EncodeToString(s[:12])
}

func (f *fingerprinter) service(s *mesh.Service, withEndpoints bool) string {
	f.str(s.Name)
	f.str(s.Namespace)
	f.str(string(s.Protocol))
	f.str(s.ServiceAccount)
	f.str(s.Address)
	f.u32(s.Port)
	if withEndpoints {
		f.u32(uint32(len(s.Endpoints)))
		for i := range s.Endpoints {
			e := &s.Endpoints[i]
			f.str(e.Address)
			f.u32(e.Port)
			f.str(string(e.Health))
			f.str(e.Locality.Region)
			f.str(e.Locality.Zone)
			f.str(e.Locality.SubZone)
			f.u32(e.Weight)
			keys := make([]string, 0, len(e.Labels))
			for k := range e.Labels {
				keys = append(keys, k)
			}
			slices.Sort(keys)
			f.u32(uint32(len(keys)))
			for _, k := range keys {
				f.str(k)
				f.str(e.Labels[k])
			}
		}
	}
	return f.sum()
}

func (f *fingerprinter) proxy(p *mesh.Proxy, trustDomain string, deps []string) string {
	f.str(trustDomain)
	f.str(p.ID)
	f.str(string(p.Flavor))
	f.str(p.Service)
	f.str(p.Namespace)
	f.str(p.Address)
	f.u32(p.PublicPort)
	f.u32(p.AppPort)
	f.str(string(p.SDS))
	f.u32(uint32(len(p.Upstreams)))
	for _, u := range p.Upstreams {
		f.str(u.Service)
		f.str(u.Namespace)
		f.u32(u.LocalPort)
	}
	f.str(string(p.Mode))
	f.u32(p.CapturePort)
	f.str(string(p.Passthrough))
	f.u32(uint32(len(p.UpstreamNamespaces)))
	for _, ns := range p.UpstreamNamespaces {
		f.str(ns)
	}
	f.u32(uint32(len(p.Listeners)))
	for i := range p.Listeners {
		l := &p.Listeners[i]
		f.u32(l.Port)
		f.str(l.TLS.CertificateFile)
		f.str(l.TLS.KeyFile)
		f.str(l.TLS.SDSSecret)
		f.str(l.TLS.SDSSocket)
		f.u32(uint32(len(l.Routes)))
		for _, r := range l.Routes {
			f.str(r.Host)
			f.str(r.PathPrefix)
			f.str(r.Service)
			f.str(r.Namespace)
		}
	}
	for _, d := range deps {
		f.str(d)
	}
	return f.sum()
}
