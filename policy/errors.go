package policy

import (
	"errors"
	"fmt"
	"strings"

	"github.com/meshd/meshd/internal/suggest"
)

// docsHint ends messages about the shape of a document so that whoever typed
// a field wrong knows where the reference is.
const docsHint = "see docs/policy.md"

var (
	// ErrEmpty is wrapped by the error for a file that holds no policy at
	// all. Such a file is refused rather than read as "no policies": the
	// usual cause is a write caught half-way, and dropping a DENY policy
	// because of one would open access. Delete the file to remove its
	// policies.
	ErrEmpty = errors.New("file holds no policy")
	// ErrUnsupported is wrapped by errors for Istio features meshd does not
	// implement (CUSTOM, JWT, targetRef, some condition keys). Rejecting them
	// is deliberate: ignoring a clause of a security policy changes what it
	// allows.
	ErrUnsupported = errors.New("unsupported Istio feature")
)

// Problem is one thing wrong with the policy input.
type Problem struct {
	// File is the path of the file as given.
	File string
	// Line is the 1-based line, or 0 when the problem is not tied to one.
	Line int
	// Policy names the object: "AuthorizationPolicy prod/allow-web", or
	// "document 2" when the document has no usable kind and name.
	Policy string
	// Field is the path of the field in the document, e.g.
	// "spec.rules[0].from[0].source.principals[1]"; "" for the whole object.
	Field string
	// Message says what is wrong and what would be accepted.
	Message string
	// unsupported marks a problem that is an Istio feature meshd lacks.
	unsupported bool
}

// Location is "file:line", or the file alone when there is no line.
func (p Problem) Location() string {
	if p.Line > 0 {
		return fmt.Sprintf("%s:%d", p.File, p.Line)
	}
	return p.File
}

// String renders "file:line: policy: field: message", the form every
// message of this package and of meshctl analyze takes.
func (p Problem) String() string {
	parts := []string{p.Location()}
	if p.Policy != "" {
		parts = append(parts, p.Policy)
	}
	if p.Field != "" {
		parts = append(parts, p.Field)
	}
	return strings.Join(append(parts, p.Message), ": ")
}

// Error is what Parse, LoadDir and LoadFiles return for input that was read
// but cannot be used: every problem found, one per line.
type Error struct {
	Problems []Problem
	// Err is an underlying cause when there is one (a read error, ErrEmpty,
	// ErrUnsupported), for errors.Is.
	Err error
}

func (e *Error) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

// Unwrap exposes the causes.
func (e *Error) Unwrap() error { return e.Err }

// errorOf builds an Error from problems (nil when there are none), adding
// ErrUnsupported to the causes when any problem is about a missing feature.
func errorOf(problems []Problem, causes ...error) error {
	if len(problems) == 0 {
		return nil
	}
	for _, p := range problems {
		if p.unsupported {
			causes = append(causes, ErrUnsupported)
			break
		}
	}
	return &Error{Problems: problems, Err: errors.Join(causes...)}
}

// didYouMean renders the hint for an unknown word: the likely intended one,
// or the whole list.
func didYouMean(name string, accepted []string) string {
	if s := suggest.Closest(name, accepted); s != "" {
		return fmt.Sprintf("did you mean %q?", s)
	}
	return "accepted: " + strings.Join(accepted, ", ")
}

// suggestion is "; did you mean X?" when a likely intended word exists, for
// messages that list the accepted words already.
func suggestion(name string, accepted []string) string {
	if s := suggest.Closest(name, accepted); s != "" {
		return fmt.Sprintf("; did you mean %q?", s)
	}
	return ""
}
