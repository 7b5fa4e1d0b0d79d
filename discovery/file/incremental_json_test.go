package file

import (
	"bytes"
	"testing"

	"github.com/meshd/meshd/mesh"
)

// editOneEndpointJSON is editOneEndpoint for the JSON rendering of a
// catalog (mCatalogs, scenarioCatalogs).
func editOneEndpointJSON(t testing.TB, data []byte) []byte {
	t.Helper()
	old := []byte(`"address":"10.0.0.1",`)
	if bytes.Count(data, old) != 1 {
		t.Fatalf("the JSON catalog has %d %s, want 1", bytes.Count(data, old), old)
	}
	return bytes.Replace(data, old, []byte(`"address":"10.0.0.99",`), 1)
}

// A JSON catalog is re-read incrementally as a YAML one is: after a
// one-endpoint edit only that service's item is decoded and the catalog is
// built from the last one (Catalog.WithEndpoints); every result is the
// full parse's, errors included; a rejected edit keeps the cache.
func TestIncrementalJSON(t *testing.T) {
	_, j := mCatalogs(t)
	edited := editOneEndpointJSON(t, j)

	var p incremental
	firstThenOneEndpoint(t, &p, j, edited)
	cat, err := p.parse("catalog.json", edited)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, e := range cat.Service(mesh.ServiceKey{Namespace: "ns-0", Name: "svc-00000"}).Endpoints {
		found = found || e.Address == "10.0.0.99"
	}
	if !found {
		t.Fatal("the edited endpoint is missing")
	}
	// A proxy edited: one item decoded, the whole catalog built.
	proxyEdit := bytes.Replace(edited, []byte(`"appPort":8080`), []byte(`"appPort":8081`), 1)
	if bytes.Equal(proxyEdit, edited) {
		t.Fatal("no upstream port to edit in the JSON catalog")
	}
	sameAsFull(t, &p, proxyEdit)
	if p.decoded != 1 {
		t.Fatalf("parse after a one-proxy edit decoded %d items, want 1", p.decoded)
	}
	sameAsFull(t, &p, edited) // the proxy back: one item again
	// What the JSON path refuses or cannot decode goes to the full parse,
	// whose answer (or error) it is; the cache stays for the next edit.
	for _, tc := range []struct {
		name string
		bad  []byte
		// items decoded when the good file comes back: 0 when the bad
		// file was refused before its items were decoded, 1 when it
		// decoded and failed validation (its items replaced the cache,
		// as a fix usually follows a bad edit).
		again int
	}{
		{"unknown field", bytes.Replace(edited, []byte(`"port":15001`), []byte(`"prot":15001`), 1), 0},
		{"repeated key", bytes.Replace(edited, []byte(`"port":15001`), []byte(`"port":15001,"port":15002`), 1), 0},
		{"YAML-only form", bytes.Replace(edited, []byte(`"port":15001`), []byte(`"port":15001.0`), 1), 0},
		{"truncated", edited[:len(edited)/2], 0},
		{"invalid address", bytes.Replace(edited, []byte(`"address":"10.0.0.99",`), []byte(`"address":"10.0.0.999",`), 1), 1},
	} {
		sameAsFull(t, &p, tc.bad)
		sameAsFull(t, &p, edited)
		if p.decoded != tc.again {
			t.Fatalf("after %s: the good file again decoded %d items, want %d", tc.name, p.decoded, tc.again)
		}
	}
	// A YAML file after JSON ones, and back: different texts, same catalog.
	y, _ := mCatalogs(t)
	sameAsFull(t, &p, y)
	sameAsFull(t, &p, j)
}

// The JSON inputs of parse_json_test.go, through a cold and a warm
// incremental parser: always the full parse's answer.
func TestIncrementalJSONMatchesFullParse(t *testing.T) {
	for _, set := range []map[string]string{agreements, disagreements} {
		for name, in := range set {
			t.Run(name, func(t *testing.T) {
				sameAsFull(t, &incremental{}, []byte(in))
				var warm incremental
				_, j := mCatalogs(t)
				sameAsFull(t, &warm, j)
				sameAsFull(t, &warm, []byte(in))
				sameAsFull(t, &warm, j)
			})
		}
	}
}

// BenchmarkParseMIncrementalJSON is BenchmarkParseMIncremental for the JSON
// rendering of the M catalog (1,000 proxies).
func BenchmarkParseMIncrementalJSON(b *testing.B) {
	_, j := mCatalogs(b)
	benchIncrementalVersions(b, j, editOneEndpointJSON(b, j))
}

// BenchmarkParseLIncrementalJSON is the same on the L catalog (10,000
// proxies, 1,000 services × 10 endpoints, 5 upstreams each).
func BenchmarkParseLIncrementalJSON(b *testing.B) {
	_, j := scenarioCatalogs(b, scenarioDocument(10000, 1000, 10, 5))
	benchIncrementalVersions(b, j, editOneEndpointJSON(b, j))
}

// BenchmarkParseLJSON is the full parse of the L catalog's JSON, what a
// re-read cost before (and what the first read costs).
func BenchmarkParseLJSON(b *testing.B) {
	_, j := scenarioCatalogs(b, scenarioDocument(10000, 1000, 10, 5))
	b.SetBytes(int64(len(j)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse("catalog.json", j); err != nil {
			b.Fatal(err)
		}
	}
}
