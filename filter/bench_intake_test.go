package main

import (
	"testing"

	"github.com/asyncmesh/asyncmesh/filter/abi"
)

// BenchmarkAsyncIntake: one async request through the filter's intake path
// (headers, body, the envelope to the collector, its 201, the 202), on the
// fake host: what the filter itself costs per intake, without Envoy.
func BenchmarkAsyncIntake(b *testing.B) {
	h := newHarnessWith(b, testConfig)
	body := []byte(`{"n":1}`)
	b.ReportAllocs()
	for b.Loop() {
		id, _ := h.request("POST", "/slow/report?x=1", body, "content-type", "application/json")
		h.host.Maps[abi.HTTPCallResponseHeaders] = []abi.Header{{":status", "201"}, {"x-async-status", "queued"}}
		h.host.Buffers[abi.HTTPCallResponseBody] = nil
		h.d.OnHTTPCallResponse(1, h.host.Calls[0].Token, 2, 0, 0)
		_ = id
	}
}
