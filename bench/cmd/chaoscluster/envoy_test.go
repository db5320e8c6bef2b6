package main

import (
	"os"
	"strings"
	"testing"
)

// The cluster test rewrites the demo's Envoy bootstrap: it must still have
// the two single-collector clusters the rewrite replaces.
func TestEnvoyTemplateHasTheCollectorClusters(t *testing.T) {
	raw, err := os.ReadFile("../../../envoy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(raw), oneCollector); n != 2 {
		t.Errorf("envoy.yaml has %d collector clusters of the expected shape, want 2 (update startPod)", n)
	}
	if !strings.Contains(string(raw), listenerLoopback) {
		t.Errorf("envoy.yaml's listener is not on %q (update startPod)", listenerLoopback)
	}
}
