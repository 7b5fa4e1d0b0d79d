// Package promtext reads samples from Prometheus's text exposition format —
// meshd's /metrics and Envoy's /stats/prometheus — for the tests that check
// exported series by name and labels, whatever the order of the labels.
package promtext

import (
	"maps"
	"regexp"
	"strings"
)

// Sample is one line of the format: a series and its value as written.
type Sample struct {
	Name   string
	Labels map[string]string // without labels whose value is empty
	Value  string
}

var (
	sampleLine = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)(?: \S+)?$`)
	labelPair  = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"`)
)

// Samples returns every sample of text; comments (# HELP, # TYPE) and blank
// lines are skipped. A label with an empty value is left out, as Prometheus
// treats it as absent.
func Samples(text string) []Sample {
	var out []Sample
	for _, line := range strings.Split(text, "\n") {
		m := sampleLine.FindStringSubmatch(strings.TrimSpace(line))
		if m == nil {
			continue
		}
		s := Sample{Name: m[1], Labels: map[string]string{}, Value: m[3]}
		for _, l := range labelPair.FindAllStringSubmatch(m[2], -1) {
			if l[2] != "" {
				s.Labels[l[1]] = l[2]
			}
		}
		out = append(out, s)
	}
	return out
}

// Find returns the value of the sample of name whose labels are exactly
// labels (an empty value meaning the label is absent).
func Find(text, name string, labels map[string]string) (string, bool) {
	want := maps.Clone(labels)
	maps.DeleteFunc(want, func(_, v string) bool { return v == "" })
	for _, s := range Samples(text) {
		if s.Name == name && maps.Equal(s.Labels, want) {
			return s.Value, true
		}
	}
	return "", false
}
