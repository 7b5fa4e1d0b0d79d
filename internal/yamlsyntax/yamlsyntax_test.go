package yamlsyntax

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

func firstError(data []byte) error {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var n yaml.Node
		if err := dec.Decode(&n); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}

func TestExplainFindsTheLine(t *testing.T) {
	long := "services:\n"
	for i := range 6 {
		long += "  - name: s" + string(rune('0'+i)) + "\n    protocol: http\n    endpoints: [{address: 10.0.0.1, port: 15001}]\n"
	}
	long += "proxies:\n  - service: s0\n    address: 10.0.0.1\n    publicPort: 15001\n    appPort: 8080\n upstreams: []\n"
	for _, c := range []struct {
		name, doc string
		line      int
		words     string
	}{
		// issue 15: yaml.v3 said line 2.
		{"a tab on line 3", "services:\n  - name: web\n\tprotocol: http\n", 3, "tabs"},
		// issue 15: yaml.v3 said line 24 (the mapping above).
		{"a key indented wrongly on line 25", long, 25, "did not find expected key"},
		{"an unclosed flow list", "services: [\n  {name: web},\n", 0, "did not find expected"},
		{"a second document's error", "a: 1\n---\nb:\n  c: 1\n\td: 2\n", 5, "tabs"},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := firstError([]byte(c.doc))
			if err == nil {
				t.Fatal("no error")
			}
			line, text := Explain([]byte(c.doc), err)
			if c.line != 0 && line != c.line {
				t.Errorf("line %d (yaml.v3: %v), want %d", line, err, c.line)
			}
			if !strings.Contains(text, c.words) || !strings.HasPrefix(text, "YAML syntax error: ") {
				t.Errorf("message %q", text)
			}
		})
	}
}
