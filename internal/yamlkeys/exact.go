package yamlkeys

import (
	"bytes"

	"gopkg.in/yaml.v3"
)

// exact parses data into yaml.v3 nodes, which does not check keys and is
// linear, and counts the keys of every mapping. Aliases are not followed:
// the mapping an alias stands for is counted once, where it is written.
func exact(data []byte, maxKeys int) Report {
	w := walker{max: maxKeys}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for doc := 1; ; doc++ {
		var root yaml.Node
		if err := dec.Decode(&root); err != nil {
			// The end, or a syntax error: yaml.v3 decodes nothing after it.
			return w.r
		}
		w.doc = doc
		w.walk(&root)
	}
}

// keyID is what yaml.v3 compares keys by.
type keyID struct {
	kind  yaml.Kind
	value string
}

// walker walks one document's nodes, keeping the path to the node it is
// at, so that what it reports can be named.
type walker struct {
	r    Report
	max  int
	doc  int
	path []Step
}

func (w *walker) walk(n *yaml.Node) {
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			w.walk(c)
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			w.path = append(w.path, Step{Index: i})
			w.walk(c)
			w.path = w.path[:len(w.path)-1]
		}
	case yaml.MappingNode:
		w.mapping(n)
		for i := 0; i+1 < len(n.Content); i += 2 {
			w.path = append(w.path, Step{Key: n.Content[i].Value, Index: -1})
			w.walk(n.Content[i+1])
			w.path = w.path[:len(w.path)-1]
		}
	}
}

// where is the place of the mapping being checked, copied: w.path changes.
func (w *walker) where() Place {
	return Place{Document: w.doc, Path: append([]Step(nil), w.path...)}
}

// mapping checks one mapping's keys.
func (w *walker) mapping(n *yaml.Node) {
	r := &w.r
	keys := len(n.Content) / 2
	if keys > w.max {
		r.LargeCount++
		if len(r.Large) < MaxReported {
			r.Large = append(r.Large, Mapping{Line: n.Line, Column: n.Column, Keys: keys, Place: w.where()})
		}
	}
	if keys <= 16 {
		// Most mappings: comparing is cheaper than hashing.
		for i := 2; i+1 < len(n.Content); i += 2 {
			k := n.Content[i]
			for j := 0; j < i; j += 2 {
				if p := n.Content[j]; p.Kind == k.Kind && p.Value == k.Value {
					w.duplicate(k, p.Line)
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
			w.duplicate(k, line)
			continue
		}
		first[id] = k.Line
	}
}

func (w *walker) duplicate(k *yaml.Node, firstLine int) {
	w.r.DuplicateCount++
	if len(w.r.Duplicates) < MaxReported {
		w.r.Duplicates = append(w.r.Duplicates, Duplicate{Key: k.Value, Line: k.Line, FirstLine: firstLine, Place: w.where()})
	}
}
