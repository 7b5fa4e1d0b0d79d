package file

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/meshd/meshd/internal/inputfile"
	"github.com/meshd/meshd/mesh"
)

// docsHint ends every message about the file's shape so that a user who typed
// a field wrong knows where the reference is.
const docsHint = "see docs/catalog.md"

// document is the top level of a catalog file. Its YAML field names, and those
// of the mesh types it holds, are the file format. The JSON names must be the
// same: the JSON fast path (json.go) decodes into the same types, and refuses
// to run if any name differs.
type document struct {
	Services []mesh.Service `yaml:"services" json:"services"`
	Proxies  []mesh.Proxy   `yaml:"proxies" json:"proxies"`
}

var (
	// ErrEmpty is wrapped by the error for a file that defines nothing. An
	// empty catalog would remove every service from every proxy, and the usual
	// reason for an empty file is a write caught half-way, so it is refused.
	ErrEmpty = errors.New("catalog is empty")
	// ErrMultipleDocuments is wrapped by the error for a file holding more than
	// one YAML document; which one should win is not something to guess.
	ErrMultipleDocuments = errors.New("more than one YAML document")
)

// Problem is one thing wrong with a catalog file.
type Problem struct {
	// Line is the 1-based line the problem is on, or 0 when it is not tied to
	// one line (validation problems, which name the object and field instead).
	Line int
	// Message says what is wrong and, where it can, what would be accepted.
	Message string
}

// ParseError is the error Parse and Load return for a file that was read but
// cannot be used. Its message has one line per problem, each starting with the
// file's path, so it reads well both in a terminal and in a log.
type ParseError struct {
	Path     string
	Problems []Problem
	// Err is the underlying cause: a yaml.v3 error, mesh.ValidationErrors,
	// ErrEmpty or ErrMultipleDocuments (possibly joined).
	Err error
}

func (e *ParseError) Error() string {
	var b strings.Builder
	for i, p := range e.Problems {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(e.Path)
		b.WriteString(": ")
		if p.Line > 0 {
			fmt.Fprintf(&b, "line %d: ", p.Line)
		}
		b.WriteString(p.Message)
	}
	return b.String()
}

// Unwrap lets callers use errors.Is(err, ErrEmpty) or
// errors.As(err, &mesh.ValidationErrors{}).
func (e *ParseError) Unwrap() error { return e.Err }

// Load reads and parses the catalog file at path, which must be a regular
// file (or a symlink to one) of at most maxSize bytes (see
// internal/inputfile; inputfile.DefaultMaxSize is the usual limit). A file
// that cannot be read, or is refused, gives "path: cannot read catalog:
// why", wrapping the cause so that errors.Is(err, fs.ErrNotExist) and
// errors.Is(err, inputfile.ErrTooLarge) work; anything else is Parse's
// error.
func Load(path string, maxSize int64) (*mesh.Catalog, error) {
	data, err := readFile(path, maxSize)
	if err != nil {
		return nil, err
	}
	return Parse(path, data)
}

// readFile reads path, reporting failures as "path: cannot read catalog: why"
// so that, like every other catalog error, the message starts with the path.
func readFile(path string, maxSize int64) ([]byte, error) {
	data, err := inputfile.Read(path, maxSize)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			// The PathError would repeat the path; its cause still satisfies
			// errors.Is(err, fs.ErrNotExist).
			err = pe.Err
		}
		return nil, fmt.Errorf("%s: cannot read catalog: %w", path, err)
	}
	return data, nil
}

// Parse decodes one catalog document strictly and validates it. path is used
// only in messages. Errors always start with the path:
//
//   - YAML syntax errors, unknown fields, wrong types and repeated keys carry
//     yaml.v3's line number and name the field as it is spelled in YAML, e.g.
//     `catalog.yaml: line 7: unknown field "prot" in service (services[0]); did you mean "protocol"? see docs/catalog.md`;
//   - validation problems are one line each, e.g.
//     `catalog.yaml: services[1] "web.default": field endpoints[0].port: 0 is not a port: use 1-65535`;
//   - an empty file, or one with only comments or only `---`, is ErrEmpty;
//   - more than one YAML document is ErrMultipleDocuments;
//   - a mapping with more than yamlkeys.MaxKeys keys is ErrTooManyKeys
//     (keys.go).
//
// Every error is a *ParseError.
//
// A file whose first non-blank character is '{' is JSON, which is also
// YAML, and is first tried with encoding/json, about four times faster than
// yaml.v3 on a large catalog (see json.go). That path only ever returns a
// catalog the YAML path would have returned for the same bytes; whenever it
// cannot be sure, or finds anything wrong, the bytes go to the YAML path,
// so a JSON file gets the errors, line numbers and names a YAML file gets.
// The exception is a key repeated in one object, which both paths refuse:
// the JSON path reports it itself, worded as the YAML path does, without
// the YAML path's other problems.
func Parse(path string, data []byte) (*mesh.Catalog, error) {
	if looksLikeJSON(data) {
		doc, err := decodeJSON(data)
		if err == nil && !doc.empty() {
			if cat, err := mesh.NewCatalog(doc.Services, doc.Proxies); err == nil {
				return cat, nil
			}
		}
		var rk *repeatedKeyError
		if errors.As(err, &rk) {
			// The one refusal the YAML path is certain to share: say it
			// now, in its words.
			return nil, &ParseError{Path: path, Problems: []Problem{repeatedKeyProblem(data, rk)}, Err: rk}
		}
		// Whatever went wrong (a syntax error, an unknown or repeated
		// field, a wrong type, a validation problem), the YAML path reads
		// the same bytes again and reports it with line numbers and field
		// names; only a bad file pays for the second parse. The YAML path may also accept what the JSON path refused:
		// an integer written 8080.0, a trailing comma or a comment. That
		// result is used as it stands, because the YAML reading is the
		// definition of what a catalog file means (docs/catalog.md), and it
		// is just as strict: no unknown field, repeated key or second
		// document gets through it, so nothing in the file is lost. The
		// reverse, the JSON path accepting what YAML would refuse or read
		// differently, is what checkJSON exists to prevent.
	}
	return parseYAML(path, data)
}

// empty reports whether doc defines nothing at all.
func (doc *document) empty() bool { return len(doc.Services) == 0 && len(doc.Proxies) == 0 }

// parseYAML is the reference path: strict decoding with yaml.v3, with
// messages that carry line numbers and name objects and fields.
func parseYAML(path string, data []byte) (*mesh.Catalog, error) {
	doc, err := decodeYAML(path, data)
	if err != nil {
		return nil, err
	}
	// A document that is just `---` or `~`, or a write caught after its first
	// line, decodes to nothing at all.
	if doc.empty() {
		return nil, emptyError(path)
	}
	return buildCatalog(path, data, doc)
}

// decodeYAML decodes data strictly, reporting every problem it can find.
func decodeYAML(path string, data []byte) (document, error) {
	if err := checkKeys(path, data); err != nil {
		return document{}, err
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	// A misspelt field would otherwise be dropped silently, and the mesh
	// would quietly differ from what the operator wrote.
	dec.KnownFields(true)

	var doc document
	err := dec.Decode(&doc)
	if errors.Is(err, io.EOF) {
		return doc, emptyError(path)
	}
	var (
		problems []Problem
		causes   []error
		typeErr  *yaml.TypeError
	)
	switch {
	case err == nil:
	case errors.As(err, &typeErr):
		// yaml.v3 reports every field problem of the document at once; keep
		// going to also report a second document.
		problems = append(problems, explainTypeErrors(data, typeErr)...)
		causes = append(causes, err)
	default:
		// A syntax error leaves nothing reliable to look at after it.
		return document{}, &ParseError{Path: path, Problems: []Problem{syntaxProblem(data, err)}, Err: err}
	}

	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case errors.Is(err, io.EOF):
	case err != nil:
		problems = append(problems, syntaxProblem(data, err))
		causes = append(causes, err)
	default:
		problems = append(problems, Problem{
			Line: extra.Line,
			Message: "a second YAML document starts here, but a catalog file holds exactly one: " +
				"remove the '---' separator and put everything under one services: and one proxies: list",
		})
		causes = append(causes, ErrMultipleDocuments)
	}
	if len(problems) > 0 {
		return document{}, &ParseError{Path: path, Problems: problems, Err: errors.Join(causes...)}
	}
	return doc, nil
}

// buildCatalog validates a decoded document, reporting every problem as a
// line naming the object and the field, on the line of data where that
// field (or, if the field is missing, its object) is written.
func buildCatalog(path string, data []byte, doc document) (*mesh.Catalog, error) {
	cat, err := mesh.NewCatalog(doc.Services, doc.Proxies)
	if err != nil {
		var verrs mesh.ValidationErrors
		if !errors.As(err, &verrs) {
			return nil, &ParseError{Path: path, Problems: []Problem{{Message: err.Error()}}, Err: err}
		}
		var root yaml.Node
		if data != nil {
			_ = yaml.Unmarshal(data, &root) // it decoded once already
		}
		problems := make([]Problem, len(verrs))
		for i, fe := range verrs {
			problems[i] = Problem{Line: fieldLine(&root, fe.Object, fe.Field), Message: fe.Error()}
		}
		return nil, &ParseError{Path: path, Problems: problems, Err: err}
	}
	return cat, nil
}

var pathStep = regexp.MustCompile(`^([A-Za-z0-9_]+)(?:\[(\d+)\])?$`)

// fieldLine finds the line of a validation problem's field: object is
// `services[1] "api.default"`, field a path within it such as
// endpoints[0].port. It returns the line of the deepest node of the path
// the document has (the object's, when the field is missing), 0 if none.
func fieldLine(root *yaml.Node, object, field string) int {
	n := root
	if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	line := 0
	steps := strings.Split(strings.Fields(object + " ")[0], ".")
	if field != "" {
		steps = append(steps, strings.Split(field, ".")...)
	}
	for _, step := range steps {
		m := pathStep.FindStringSubmatch(step)
		if m == nil || n == nil || n.Kind != yaml.MappingNode {
			return line
		}
		var next *yaml.Node
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == m[1] {
				next = n.Content[i+1]
				if line == 0 || m[2] == "" {
					line = n.Content[i].Line
				}
				break
			}
		}
		if next == nil {
			return line
		}
		if m[2] != "" {
			idx, _ := strconv.Atoi(m[2])
			if next.Kind != yaml.SequenceNode || idx >= len(next.Content) {
				return line
			}
			next = next.Content[idx]
			line = next.Line
		}
		n = next
	}
	return line
}

func emptyError(path string) error {
	return &ParseError{
		Path: path,
		Problems: []Problem{{Message: ErrEmpty.Error() +
			": it defines no services or proxies (an empty mesh is never loaded, to protect against a truncated write); " + docsHint}},
		Err: ErrEmpty,
	}
}
