package sds

import (
	"bytes"
	"crypto/ecdsa"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"encoding/xml"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

// assertNoKeyMaterial fails if output contains keyPEM in any encoding a
// formatter might produce: the PEM armour, any base64 body line, the base64
// of the whole PEM (json's []byte encoding) or hex of PEM or DER (%x).
func assertNoKeyMaterial(t *testing.T, what, output string, keyPEM []byte) {
	t.Helper()
	block, _ := pem.Decode(keyPEM)
	if block == nil {
		t.Fatalf("assertNoKeyMaterial: key is not PEM")
	}
	needles := map[string]string{
		"PEM armour":         "PRIVATE KEY",
		"base64 body":        base64.StdEncoding.EncodeToString(block.Bytes)[:40],
		"base64 of PEM":      base64.StdEncoding.EncodeToString(keyPEM)[:40],
		"hex of PEM":         hex.EncodeToString(keyPEM)[:40],
		"hex of DER":         hex.EncodeToString(block.Bytes)[:40],
		"hex of DER (upper)": strings.ToUpper(hex.EncodeToString(block.Bytes)[:40]),
	}
	for _, line := range strings.Split(string(keyPEM), "\n") {
		if len(line) >= 16 && !strings.HasPrefix(line, "-----") {
			needles["body line "+line[:8]] = line
		}
	}
	for name, n := range needles {
		if strings.Contains(output, n) {
			t.Errorf("%s leaks the key (%s):\n%s", what, name, output)
		}
	}
}

func TestPrivateKeyPEMFmt(t *testing.T) {
	ca := newTestCA(t)
	leaf, err := ca.IssueLeaf(testID, []string{"cart"})
	if err != nil {
		t.Fatal(err)
	}
	type wrapper struct {
		Name string
		Leaf Leaf
		Ptr  *Leaf
		Keys []PrivateKeyPEM
	}
	values := map[string]any{
		"key":      leaf.KeyPEM,
		"leaf":     *leaf,
		"leaf ptr": leaf,
		"wrapper":  wrapper{Name: "w", Leaf: *leaf, Ptr: leaf, Keys: []PrivateKeyPEM{leaf.KeyPEM}},
	}
	for _, verb := range []string{"%v", "%s", "%q", "%x", "%X", "%+v", "%#v", "%d", "%10.3s"} {
		for name, v := range values {
			out := fmt.Sprintf(verb, v)
			assertNoKeyMaterial(t, fmt.Sprintf("Sprintf(%q, %s)", verb, name), out, leaf.KeyPEM)
			if !strings.Contains(out, "[redacted]") {
				t.Errorf("Sprintf(%q, %s) lacks [redacted]: %s", verb, name, out)
			}
		}
	}
	for name, s := range map[string]string{
		"String":   leaf.KeyPEM.String(),
		"GoString": leaf.KeyPEM.GoString(),
		"Sprint":   fmt.Sprint(leaf.KeyPEM),
		"Sprintln": fmt.Sprintln(leaf.KeyPEM),
	} {
		if strings.TrimSpace(s) != "[redacted]" {
			t.Errorf("%s = %q, want [redacted]", name, s)
		}
	}
	// Redaction must not break access for those who ask explicitly.
	if !bytes.HasPrefix([]byte(leaf.KeyPEM), []byte("-----BEGIN PRIVATE KEY-----")) {
		t.Error("KeyPEM bytes are not a PKCS#8 PEM")
	}
}

func TestPrivateKeyPEMMarshalers(t *testing.T) {
	ca := newTestCA(t)
	leaf, err := ca.IssueLeaf(testID, []string{"cart"})
	if err != nil {
		t.Fatal(err)
	}

	js, err := json.Marshal(struct {
		Leaf Leaf
		Ptr  *Leaf
		Map  map[string]PrivateKeyPEM
	}{*leaf, leaf, map[string]PrivateKeyPEM{"k": leaf.KeyPEM}})
	if err != nil {
		t.Fatal(err)
	}
	assertNoKeyMaterial(t, "json", string(js), leaf.KeyPEM)
	if got := strings.Count(string(js), `"[redacted]"`); got != 3 {
		t.Errorf("json has %d redacted keys, want 3: %s", got, js)
	}
	// Public fields still serialise: JSON stays useful for debugging.
	if !strings.Contains(string(js), leaf.Serial.String()) {
		t.Errorf("json lacks the serial %s: %s", leaf.Serial, js)
	}

	// encoding/xml only knows TextMarshaler.
	type holder struct{ Key PrivateKeyPEM }
	x, err := xml.Marshal(holder{leaf.KeyPEM})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(x), "<Key>[redacted]</Key>") {
		t.Errorf("xml = %s, want <Key>[redacted]</Key>", x)
	}
	assertNoKeyMaterial(t, "xml", string(x), leaf.KeyPEM)

	y, err := leaf.KeyPEM.MarshalYAML()
	if err != nil || y != "[redacted]" {
		t.Errorf("MarshalYAML = %v, %v; want [redacted]", y, err)
	}
	// Each interface is checked directly too: the encoders above fall back
	// from one to another, which could hide a missing method.
	if j, err := leaf.KeyPEM.MarshalJSON(); err != nil || string(j) != `"[redacted]"` {
		t.Errorf("MarshalJSON = %s, %v; want \"[redacted]\"", j, err)
	}
	if v := leaf.KeyPEM.LogValue(); v.Kind() != slog.KindString || v.String() != "[redacted]" {
		t.Errorf("LogValue = %v, want [redacted]", v)
	}
	txt, err := leaf.KeyPEM.MarshalText()
	if err != nil || string(txt) != "[redacted]" {
		t.Errorf("MarshalText = %q, %v; want [redacted]", txt, err)
	}
}

func TestPrivateKeyPEMSlog(t *testing.T) {
	ca := newTestCA(t)
	leaf, err := ca.IssueLeaf(testID, []string{"cart"})
	if err != nil {
		t.Fatal(err)
	}
	for name, h := range map[string]func(*bytes.Buffer) slog.Handler{
		"json": func(b *bytes.Buffer) slog.Handler { return slog.NewJSONHandler(b, nil) },
		"text": func(b *bytes.Buffer) slog.Handler { return slog.NewTextHandler(b, nil) },
	} {
		var buf bytes.Buffer
		log := slog.New(h(&buf))
		log.Info("leaf", "leaf", leaf, "leaf_value", *leaf)
		log.Info("key", "key", leaf.KeyPEM)
		// A struct without LogValue goes through json.Marshal / fmt.
		log.Info("wrapped", "wrapped", struct{ L Leaf }{*leaf})
		out := buf.String()
		assertNoKeyMaterial(t, name+" handler", out, leaf.KeyPEM)
		if n := strings.Count(out, "[redacted]"); n < 2 {
			t.Errorf("%s handler: %d [redacted] markers, want one for the bare key and one for the wrapped leaf:\n%s", name, n, out)
		}
		// Leaf.LogValue keeps what operators need.
		if !strings.Contains(out, testID.SPIFFEID()) || !strings.Contains(out, leaf.Serial.Text(16)) {
			t.Errorf("%s handler: leaf log lacks SPIFFE ID or serial:\n%s", name, out)
		}
	}
}

func TestAuthorityFormattingHidesRootKey(t *testing.T) {
	ca := newTestCA(t).Authority
	if _, err := ca.Leaf(testID, nil); err != nil {
		t.Fatal(err)
	}
	var secrets []string
	for _, k := range []any{ca.signing().rootKey, ca.signing().interKey} {
		d := k.(*ecdsa.PrivateKey).D
		secrets = append(secrets, d.String(), d.Text(16), fmt.Sprintf("%X", d.Bytes()))
	}

	var buf bytes.Buffer
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("ca", "ca", ca)
	js, _ := json.Marshal(ca)
	outputs := map[string]string{
		"slog": buf.String(),
		"json": string(js),
	}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%x"} {
		outputs[verb] = fmt.Sprintf(verb, ca)
		outputs[verb+" in struct"] = fmt.Sprintf(verb, struct{ A *Authority }{ca})
	}
	for name, out := range outputs {
		for _, s := range secrets {
			if strings.Contains(out, s) {
				t.Errorf("%s output contains the root private key: %s", name, out)
			}
		}
	}
	if !strings.Contains(outputs["%v"], ca.Fingerprint()) {
		t.Errorf("%%v of Authority should identify the root by fingerprint: %s", outputs["%v"])
	}
}
