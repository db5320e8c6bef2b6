package main

import (
	"strings"
	"testing"
)

func TestReplaySecretAtStart(t *testing.T) {
	long, prev := strings.Repeat("k", 32), strings.Repeat("p", 40)
	tests := []struct {
		name, value, want, err string
	}{
		{"current only", long, long, ""},
		{"during a rotation the current one signs", long + "," + prev, long, ""},
		{"unset", "", "", "ASYNCMESH_TEST_REPLAY: no secret"},
		{"too short", "replay-secret", "", "ASYNCMESH_TEST_REPLAY: the current secret is 13 bytes; at least 32 are required"},
		{"previous too short", long + ",x", "", "the previous secret is 1 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("ASYNCMESH_TEST_REPLAY", tt.value)
			got, err := replaySecret("ASYNCMESH_TEST_REPLAY")
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) || !strings.HasPrefix(err.Error(), "-replay-secret-env: ") {
					t.Fatalf("err = %v, want one naming the flag and %q", err, tt.err)
				}
				return
			}
			if err != nil || string(got[0]) != tt.want {
				t.Fatalf("replaySecret = %q, %v", got, err)
			}
		})
	}
}
