package yamlkeys

import (
	"bytes"
	"unicode/utf8"
)

// The quick pass.
//
// In block style, every key of a mapping starts a line (after the
// indentation, or after the "- " of a sequence item) at the mapping's
// column, and the mapping ends at the first line that starts further left,
// or whose "- " is further left. quick keeps a stack of the mappings open at
// each column, counts their keys and compares them, and returns true only
// if it is sure that yaml.v3 reads the same mappings and none has more than
// maxKeys keys or a repeated key. It may return false for a file without
// any problem (then the exact pass decides), never true for a file with one.
//
// Being sure means knowing which lines are structure. A line inside a
// multi-line quoted scalar can start at any column (yaml.v3 does not check
// its indentation), so it could end a mapping early in this pass's view and
// hide keys; a multi-line plain scalar's lines are more indented than the
// mapping holding it, so they end nothing that is open. quick therefore
// gives up on:
//
//   - anything outside the plain block style: flow collections ('{', '[',
//     hence JSON), anchors, aliases and tags ('&', '*', '!'), explicit keys
//     ('?' and ':' at the start of a node), block scalars ('|', '>'),
//     directives, text after a document marker;
//   - a quoted scalar that does not end on its line, and a quoted key with
//     an escape (its value is not its text);
//   - a line that is neither a key, a sequence item nor a comment (the
//     continuation of a multi-line scalar, or a document that is a scalar);
//   - tabs, control characters, line breaks other than LF and CRLF (YAML
//     also breaks lines at CR, NEL, U+2028 and U+2029) and invalid UTF-8;
//   - whatever it finds: a mapping over maxKeys, or one key twice in what
//     it takes for one mapping.
//
// FuzzQuick checks the promise against the exact pass.

// quick reports whether data is sure to have no problem (see above).
func quick(data []byte, maxKeys int) bool {
	if !plainText(data) {
		return false
	}
	s := scanner{max: maxKeys}
	for line := range bytes.Lines(data) {
		// plainText let through CR only before LF.
		line = bytes.TrimSuffix(bytes.TrimSuffix(line, []byte{'\n'}), []byte{'\r'})
		if !s.line(line) {
			return false
		}
	}
	return true
}

// plainASCII marks the ASCII bytes plainText lets through: printable, not an
// indicator of a flow collection, anchor, alias or tag, plus LF and CR
// (checked for a following LF).
var plainASCII = func() (t [utf8.RuneSelf]bool) {
	for b := byte(0x20); b < 0x7f; b++ {
		t[b] = bytes.IndexByte([]byte("{}[]&*!"), b) < 0
	}
	t['\n'], t['\r'] = true, true
	return t
}()

// plainText reports whether data holds only characters quick can read
// lines of.
func plainText(data []byte) bool {
	for i := 0; i < len(data); {
		b := data[i]
		if b < utf8.RuneSelf {
			if !plainASCII[b] || b == '\r' && (i+1 == len(data) || data[i+1] != '\n') {
				return false
			}
			i++
			continue
		}
		r, size := utf8.DecodeRune(data[i:])
		// YAML's printable characters, without NEL, U+2028 and U+2029 (line
		// breaks) and U+FEFF (a byte order mark).
		ok := (r >= 0xA0 && r <= 0xD7FF && r != 0x2028 && r != 0x2029) ||
			(r >= 0xE000 && r <= 0xFFFD && r != 0xFEFF) ||
			r >= 0x10000 && r <= utf8.MaxRune
		if !ok || r == utf8.RuneError && size == 1 {
			return false
		}
		i += size
	}
	return true
}

// scanner is quick's state: the mappings open at each column.
type scanner struct {
	max    int
	frames []frame
	// keys holds the keys of the open mappings, each frame's from its
	// keys0 on: subslices of the input, so that counting does not allocate.
	keys [][]byte
}

type frame struct {
	col, keys0 int
	// set replaces the linear search once a mapping has many keys.
	set map[string]struct{}
}

// manyKeys is when a frame switches from a linear search to a set.
const manyKeys = 16

// pop closes the mappings at columns right of col.
func (s *scanner) pop(col int) {
	for len(s.frames) > 0 && s.frames[len(s.frames)-1].col > col {
		s.keys = s.keys[:s.frames[len(s.frames)-1].keys0]
		s.frames = s.frames[:len(s.frames)-1]
	}
}

// key counts key k at column col: in the mapping open there, or in a new one
// when there is none or the key follows a "- " (a new sequence item).
func (s *scanner) key(col int, k []byte, item bool) bool {
	if n := len(s.frames); item || n == 0 || s.frames[n-1].col != col {
		s.frames = append(s.frames, frame{col: col, keys0: len(s.keys)})
	}
	f := &s.frames[len(s.frames)-1]
	mine := s.keys[f.keys0:]
	if len(mine)+1 > s.max {
		return false
	}
	if f.set != nil {
		if _, dup := f.set[string(k)]; dup {
			return false
		}
		f.set[string(k)] = struct{}{}
	} else {
		for _, prev := range mine {
			if bytes.Equal(prev, k) {
				return false
			}
		}
		if len(mine)+1 > manyKeys {
			f.set = make(map[string]struct{}, 2*manyKeys)
			for _, prev := range mine {
				f.set[string(prev)] = struct{}{}
			}
			f.set[string(k)] = struct{}{}
		}
	}
	s.keys = append(s.keys, k)
	return true
}

// line reads one line (without its line break) and reports false if quick
// must give up.
func (s *scanner) line(l []byte) bool {
	col := 0
	for col < len(l) && l[col] == ' ' {
		col++
	}
	if col == len(l) || l[col] == '#' {
		return true // blank, or a comment: no structure at all
	}
	if col == 0 {
		switch {
		case l[0] == '%':
			return false // a directive
		case len(l) >= 3 && (string(l[:3]) == "---" || string(l[:3]) == "...") && (len(l) == 3 || l[3] == ' '):
			// A document marker: the next document's mappings are new.
			rest := skipSpaces(l, 3)
			if rest < len(l) && l[rest] != '#' {
				return false
			}
			s.frames, s.keys = s.frames[:0], s.keys[:0]
			return true
		}
	}
	s.pop(col)
	item := false
	for l[col] == '-' && (col+1 == len(l) || l[col+1] == ' ') {
		// A sequence item: what it holds starts after the "- ".
		s.pop(col)
		item = true
		col = skipSpaces(l, col+1)
		if col == len(l) || l[col] == '#' {
			return true // the item is on the following lines
		}
	}
	var key, rest []byte
	switch c := l[col]; c {
	case '"', '\'':
		k, end, ok := quoted(l, col, false)
		if !ok {
			return false
		}
		j := skipSpaces(l, end)
		if j == len(l) || l[j] == '#' && j > end {
			return item // a quoted scalar alone: fine as a sequence item
		}
		if l[j] != ':' || j+1 < len(l) && l[j+1] != ' ' {
			return false
		}
		key, rest = k, l[j+1:]
	case '?', ':', ',', '|', '>', '%', '@', '`', '#', '-':
		// Explicit keys and values, block scalars, reserved indicators;
		// "-x" is a plain scalar, but not one worth being sure about.
		return false
	default:
		j := col
		for j < len(l) && !(l[j] == ':' && (j+1 == len(l) || l[j+1] == ' ')) {
			if l[j] == '#' && l[j-1] == ' ' {
				return item // a plain scalar and a comment
			}
			j++
		}
		if j == len(l) {
			return item // a plain scalar alone
		}
		key, rest = bytes.TrimRight(l[col:j], " "), l[j+1:]
	}
	if !s.key(col, key, item) {
		return false
	}
	return value(rest)
}

// value reads what follows a key's colon and reports whether it ends on the
// line, as a plain or quoted scalar, or leaves the value to the following
// lines.
func value(v []byte) bool {
	i := skipSpaces(v, 0)
	if i == len(v) || v[i] == '#' {
		return true // the value is on the following lines, or empty
	}
	switch v[i] {
	case '"', '\'':
		_, end, ok := quoted(v, i, true)
		if !ok {
			return false
		}
		j := skipSpaces(v, end)
		return j == len(v) || v[j] == '#' && j > end
	case '?', ':', ',', '|', '>', '%', '@', '`':
		// "a: ? b" is an error, "a: |" a block scalar.
		return false
	case '-':
		if i+1 == len(v) || v[i+1] == ' ' {
			return false // "a: - b" is an error
		}
	}
	for j := i; j < len(v); j++ {
		switch {
		case v[j] == '#' && v[j-1] == ' ':
			return true // a comment
		case v[j] == ':' && (j+1 == len(v) || v[j+1] == ' '):
			return false // "a: b: c" is an error to yaml.v3
		}
	}
	return true
}

// quoted reads the quoted scalar starting at l[at] and returns its text, the
// offset after its closing quote, and whether it ends on the line. With
// escapes false, a scalar whose value differs from its text (an escape in
// double quotes, ” in single quotes) is refused too.
func quoted(l []byte, at int, escapes bool) (text []byte, end int, ok bool) {
	q := l[at]
	for i := at + 1; i < len(l); i++ {
		switch {
		case q == '"' && l[i] == '\\':
			if !escapes {
				return nil, 0, false
			}
			i++ // the escaped character, which may be a quote
		case l[i] == q:
			if q == '\'' && i+1 < len(l) && l[i+1] == '\'' {
				if !escapes {
					return nil, 0, false
				}
				i++ // '' stands for one quote
				continue
			}
			return l[at+1 : i], i + 1, true
		}
	}
	return nil, 0, false
}

func skipSpaces(l []byte, i int) int {
	for i < len(l) && l[i] == ' ' {
		i++
	}
	return i
}
