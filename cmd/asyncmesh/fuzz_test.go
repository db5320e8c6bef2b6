package main

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// FuzzReadEvents: any stream a server sends (tail's input) gives events or
// an error, never a panic or a hang, and no event larger than the stream.
func FuzzReadEvents(f *testing.F) {
	f.Add("id: 1\nevent: record\ndata: {\"id\":\"a\"}\n\n: heartbeat\n\n")
	f.Add("data: a\ndata: b\n\nevent: other\ndata: x\n\n")
	f.Add("id\n:\nevent:record\ndata\n\n\n")
	f.Fuzz(func(t *testing.T, stream string) {
		resp := &http.Response{Body: io.NopCloser(strings.NewReader(stream))}
		n := 0
		_, _, _ = readEvents(resp, "", func(data []byte) bool {
			if len(data) > len(stream) {
				t.Fatalf("an event of %d bytes from a stream of %d", len(data), len(stream))
			}
			n++
			return n < 1000
		})
	})
}

// FuzzParseWhen: --since and --until never panic.
func FuzzParseWhen(f *testing.F) {
	for _, s := range []string{"1h", "90m", "2026-12-06", "2026-12-06T07:00:00Z", "-1h", "yesterday", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) { _, _ = parseWhen(s, time.Time{}) })
}
