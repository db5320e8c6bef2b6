//go:build e2e

package e2e

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/asyncmesh/asyncmesh/internal/trace"
)

// TestNativePassThroughContract: a request no rule can make async is tagged
// by Envoy's own filters, never entering the Wasm VM (controlplane/xds
// PassThroughFilter), and keeps the whole wire contract: the traceparent the
// filter would keep is kept, any other is replaced by a valid new one, the
// trace id travels as x-async-trace-id to the service and back, and no
// caller-sent x-async-* header reaches the service.
//
// Which side served a request shows in the trace ids it creates: the
// native chain makes them from Envoy's UUID v4 (version nibble 4, variant
// 8-b), the filter from 128 random bits; twenty in a row with those bits
// would happen by chance once in 2^120.
func TestNativePassThroughContract(t *testing.T) {
	const valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	for _, tc := range []struct{ name, traceparent string }{
		{"valid", valid},
		{"later version with a field", "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x"},
		{"absent", ""},
		{"garbage", "bogus"},
		{"upper case", strings.ToUpper(valid)},
		{"zero trace id", "00-00000000000000000000000000000000-00f067aa0ba902b7-01"},
		{"zero parent id", "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"},
		{"version ff", "ff" + valid[2:]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hdrs := []string{"x-async-anything", "forged", "x-async-request-id", "forged", "x-async-replay-refused", "1", "x-custom", "kept"}
			if tc.traceparent != "" {
				hdrs = append(hdrs, "traceparent", tc.traceparent)
			}
			resp, body := do(t, "GET", "/headers?q=1", "", hdrs...)
			var got struct{ Headers map[string]string }
			if err := json.Unmarshal(body, &got); err != nil || resp.StatusCode != 200 {
				t.Fatalf("%s: %s", resp.Status, body)
			}
			h := got.Headers
			for k := range h {
				if strings.HasPrefix(strings.ToLower(k), "x-async-") && !strings.EqualFold(k, "x-async-trace-id") {
					t.Errorf("caller-sent %s reached the service", k)
				}
			}
			tp, ok := trace.ParseParent(h["Traceparent"])
			if !ok {
				t.Fatalf("service saw traceparent %q", h["Traceparent"])
			}
			if _, keep := trace.ParseParent(tc.traceparent); keep != (h["Traceparent"] == tc.traceparent) {
				t.Errorf("sent %q, service saw %q", tc.traceparent, h["Traceparent"])
			}
			id := tp.TraceIDString()
			if h["X-Async-Trace-Id"] != id || resp.Header.Get("x-async-trace-id") != id || h["X-Custom"] != "kept" {
				t.Errorf("trace id %s: service saw x-async-trace-id %q (x-custom %q), the caller got %q",
					id, h["X-Async-Trace-Id"], h["X-Custom"], resp.Header.Get("x-async-trace-id"))
			}
		})
	}

	for i := range 20 {
		resp, _ := do(t, "GET", "/headers", "")
		id := resp.Header.Get("x-async-trace-id")
		if len(id) != 32 || id[12] != '4' || !strings.ContainsRune("89ab", rune(id[16])) {
			t.Fatalf("request %d: trace id %q was not created by Envoy's native chain (UUID v4 bits)", i, id)
		}
	}
}

// TestUntaggedRequests: a request the rules file's filter.untagged lists
// (examples/rules.yaml: /headers/untagged) gets no trace headers, and the
// caller's x-async-* headers are still removed.
func TestUntaggedRequests(t *testing.T) {
	resp, body := do(t, "GET", "/headers/untagged", "", "x-async-request-id", "forged", "x-custom", "kept")
	var got struct{ Headers map[string]string }
	if err := json.Unmarshal(body, &got); err != nil || resp.StatusCode != 200 {
		t.Fatalf("%s: %s", resp.Status, body)
	}
	for k := range got.Headers {
		if l := strings.ToLower(k); strings.HasPrefix(l, "x-async-") || l == "traceparent" {
			t.Errorf("untagged request: the service saw %s", k)
		}
	}
	if got.Headers["X-Custom"] != "kept" || resp.Header.Get("x-async-trace-id") != "" {
		t.Errorf("service saw %v; the caller got x-async-trace-id %q", got.Headers, resp.Header.Get("x-async-trace-id"))
	}
}
