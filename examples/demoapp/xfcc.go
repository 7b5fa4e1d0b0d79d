package main

import "strings"

// xfccHeader is the header Envoy's inbound listener sets to the verified
// client certificate of the caller (meshd renders forward_client_cert_details
// SANITIZE_SET with the URI SAN: xds/listener.go).
const xfccHeader = "x-forwarded-client-cert"

// callerFromXFCC returns the caller's SPIFFE ID from an
// x-forwarded-client-cert value: the URI of its last element, which is
// the hop closest to this app (a sidecar that sanitizes and sets the header
// leaves exactly one). "" if there is none.
//
// The format (Envoy's): elements separated by ',', key=value pairs by ';',
// a value in double quotes may contain ',', ';' and '=' and escapes '"' as
// '\"'.
func callerFromXFCC(v string) string {
	elems := splitUnquoted(v, ',')
	if len(elems) == 0 {
		return ""
	}
	for _, pair := range splitUnquoted(elems[len(elems)-1], ';') {
		k, val, ok := strings.Cut(pair, "=")
		if ok && strings.EqualFold(strings.TrimSpace(k), "URI") {
			return unquote(strings.TrimSpace(val))
		}
	}
	return ""
}

// splitUnquoted splits s at sep where sep is not inside double quotes,
// dropping empty parts.
func splitUnquoted(s string, sep byte) []string {
	var parts []string
	inQuotes, escaped, start := false, false, 0
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case escaped:
			escaped = false
		case c == '\\' && inQuotes:
			escaped = true
		case c == '"':
			inQuotes = !inQuotes
		case c == sep && !inQuotes:
			if p := strings.TrimSpace(s[start:i]); p != "" {
				parts = append(parts, p)
			}
			start = i + 1
		}
	}
	if p := strings.TrimSpace(s[start:]); p != "" {
		parts = append(parts, p)
	}
	return parts
}

func unquote(v string) string {
	if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
		return strings.ReplaceAll(v[1:len(v)-1], `\"`, `"`)
	}
	return v
}
