package yamlkeys

import (
	"bytes"

	"gopkg.in/yaml.v3"
)

// exact parses data into yaml.v3 nodes, which does not check keys and is
// linear, and counts the keys of every mapping. Aliases are not followed:
// the mapping an alias stands for is counted once, where it is written.
func exact(data []byte, maxKeys int) Report {
	var r Report
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var doc yaml.Node
		if err := dec.Decode(&doc); err != nil {
			// The end, or a syntax error: yaml.v3 decodes nothing after it.
			return r
		}
		r.walk(&doc, maxKeys)
	}
}

// keyID is what yaml.v3 compares keys by.
type keyID struct {
	kind  yaml.Kind
	value string
}

func (r *Report) walk(n *yaml.Node, maxKeys int) {
	if n.Kind == yaml.MappingNode {
		r.mapping(n, maxKeys)
	}
	for _, c := range n.Content {
		r.walk(c, maxKeys)
	}
}

// mapping checks one mapping's keys.
func (r *Report) mapping(n *yaml.Node, maxKeys int) {
	keys := len(n.Content) / 2
	if keys > maxKeys {
		r.LargeCount++
		if len(r.Large) < MaxReported {
			r.Large = append(r.Large, Mapping{Line: n.Line, Column: n.Column, Keys: keys})
		}
	}
	if keys <= 16 {
		// Most mappings: comparing is cheaper than hashing.
		for i := 2; i+1 < len(n.Content); i += 2 {
			k := n.Content[i]
			for j := 0; j < i; j += 2 {
				if p := n.Content[j]; p.Kind == k.Kind && p.Value == k.Value {
					r.duplicate(k, p.Line)
					break
				}
			}
		}
		return
	}
	first := make(map[keyID]int, keys)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k := n.Content[i]
		id := keyID{k.Kind, k.Value}
		if line, seen := first[id]; seen {
			r.duplicate(k, line)
			continue
		}
		first[id] = k.Line
	}
}

func (r *Report) duplicate(k *yaml.Node, firstLine int) {
	r.DuplicateCount++
	if len(r.Duplicates) < MaxReported {
		r.Duplicates = append(r.Duplicates, Duplicate{Key: k.Value, Line: k.Line, FirstLine: firstLine})
	}
}
