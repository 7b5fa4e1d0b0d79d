package sds

import (
	"fmt"
	"log/slog"
)

// redacted is what every key renders as. It is a visible marker rather than
// an empty string so that an operator reading a dump knows a key was there and
// was hidden on purpose.
const redacted = "[redacted]"

// PrivateKeyPEM holds PEM-encoded private key bytes.
//
// It formats as "[redacted]" through fmt (every verb), slog, encoding/json,
// encoding.TextMarshaler users and YAML libraries that honour MarshalYAML, so
// a key can travel inside structs that are logged or dumped for debugging.
// Only an explicit conversion ([]byte(k) or string(k)) yields the key, which
// keeps reads of the material greppable and deliberate.
//
// Redaction is one-way: a marshalled PrivateKeyPEM cannot be unmarshalled back.
type PrivateKeyPEM []byte

var (
	_ fmt.Stringer   = PrivateKeyPEM(nil)
	_ fmt.GoStringer = PrivateKeyPEM(nil)
	_ fmt.Formatter  = PrivateKeyPEM(nil)
	_ slog.LogValuer = PrivateKeyPEM(nil)
)

// String implements fmt.Stringer.
func (PrivateKeyPEM) String() string { return redacted }

// GoString implements fmt.GoStringer (%#v).
func (PrivateKeyPEM) GoString() string { return redacted }

// Format implements fmt.Formatter. fmt would otherwise print a []byte as raw
// bytes (%s, %q), hex (%x, %X) or a number list (%v, %d), bypassing String,
// so every verb is intercepted here.
func (PrivateKeyPEM) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(redacted)) }

// MarshalJSON implements json.Marshaler; without it encoding/json would
// base64-encode the key.
func (PrivateKeyPEM) MarshalJSON() ([]byte, error) { return []byte(`"` + redacted + `"`), nil }

// MarshalText implements encoding.TextMarshaler, used by encoders (and JSON
// map keys) that do not know about MarshalJSON.
func (PrivateKeyPEM) MarshalText() ([]byte, error) { return []byte(redacted), nil }

// MarshalYAML implements the yaml.v3 / sigs.k8s.io Marshaler interface
// without importing either library.
func (PrivateKeyPEM) MarshalYAML() (any, error) { return redacted, nil }

// LogValue implements slog.LogValuer so that slog.Any("key", k) is redacted
// by every handler.
func (PrivateKeyPEM) LogValue() slog.Value { return slog.StringValue(redacted) }
