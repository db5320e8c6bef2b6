package collector

import (
	"slices"
	"strings"
	"testing"
)

// FuzzParseCursor: a Last-Event-ID is the client's: it is taken only as a
// cursor this stream could have written (digits, a dot, an id's
// characters), which formats back to itself.
func FuzzParseCursor(f *testing.F) {
	for _, s := range []string{"1796540466000000000.01a24a28-037a-7923-b46f-e92e43517df0", "0.", "", ".", "1.a\nb", "-5.x", "1.a.b", "99999999999999999999.a"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := parseCursor(s)
		if err != nil {
			return
		}
		if strings.ContainsAny(c.ID, "\r\n:. ") {
			t.Fatalf("parseCursor(%q) took id %q", s, c.ID)
		}
		again, err := parseCursor(formatCursor(c))
		if err != nil || !again.At.Equal(c.At) || again.ID != c.ID {
			t.Fatalf("cursor %q does not round-trip: %v %v", s, again, err)
		}
	})
}

// FuzzParseNodes: the control plane's answer is another party's: only the
// contract's fields, with scalar values, are passed on, and nothing panics.
func FuzzParseNodes(f *testing.F) {
	for _, s := range []string{
		`{"nodes":[{"node":"n1","cluster":"c","served":"v2","acked":"v1","nacks":1,"lastNack":"x","connected":true}]}`,
		`{"nodes":[{"node":{"a":1},"x":2}]}`, `{"nodes":null}`, `[]`, `{"nodes":[null]}`, `{`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		nodes, err := parseNodes(data)
		if err != nil {
			return
		}
		for _, n := range nodes {
			for k, v := range n {
				if !slices.Contains(nodeFields, k) {
					t.Fatalf("field %q passed on", k)
				}
				switch v.(type) {
				case string, float64, bool, nil:
				default:
					t.Fatalf("field %q: %T passed on", k, v)
				}
			}
		}
	})
}
