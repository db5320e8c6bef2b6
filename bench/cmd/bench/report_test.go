package main

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
)

// TestWhereCPUGoes: the committed report's Elasticsearch delivery phase
// (1336/s, target 2000) is explained from its own usage figures.
func TestWhereCPUGoes(t *testing.T) {
	usage := []Usage{{Process: "collector", CPU: 0.66}, {Process: "elasticsearch", CPU: 0.66}, {Process: "rabbitmq", CPU: 0.18},
		{Process: "receiver", CPU: 0.16}, {Process: loadGenerator, CPU: 0.12}, {Process: machine, CPU: 1.78}}
	got := whereCPUGoes(usage, 1336, "callback", 2)
	for _, want := range []string{"collector 494 µs", "elasticsearch 494 µs", "(1332 µs in all)", "busy 1.78 of its 2 cores", "The cores were the limit", "about 1501/s"} {
		if !strings.Contains(got, want) {
			t.Errorf("%q lacks %q", got, want)
		}
	}
	if got := whereCPUGoes(usage[:5], 1336, "callback", 2); !strings.Contains(got, "not the limit") {
		t.Errorf("an idle machine: %q", got)
	}
	// The committed report renders with it.
	data, err := os.ReadFile("../../report.json")
	if err != nil {
		t.Skip(err)
	}
	var r Report
	if err := json.Unmarshal(data, &r); err != nil {
		t.Fatal(err)
	}
	missed := false
	for _, br := range r.Backends {
		missed = missed || br.Delivery.PerSecond < targetDelivery
	}
	if md := string(r.markdown()); missed != strings.Contains(md, "Where the time goes: CPU per callback") {
		t.Errorf("delivery target missed: %v, but the report says where the time goes: %v", missed, !missed)
	}
}
