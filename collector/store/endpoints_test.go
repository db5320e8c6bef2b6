package store

import (
	"testing"
	"time"
)

// TestDeltaThen: two deltas added in order count as one delta of all their
// attempts, and the later one decides the failures since a success.
func TestDeltaThen(t *testing.T) {
	t0 := time.Unix(1000, 0)
	tests := []struct {
		name       string
		first, two EndpointDelta
		want       EndpointDelta
	}{
		{"failures then failures", EndpointDelta{Attempts: 2, FailuresSinceSuccess: 2, LastFailure: t0},
			EndpointDelta{Attempts: 3, FailuresSinceSuccess: 3, LastFailure: t0.Add(time.Second)},
			EndpointDelta{Attempts: 5, FailuresSinceSuccess: 5, LastFailure: t0.Add(time.Second)}},
		{"failures then a success", EndpointDelta{Attempts: 2, FailuresSinceSuccess: 2, LastFailure: t0},
			EndpointDelta{Attempts: 2, Successes: 1, FailuresSinceSuccess: 1, LastSuccess: t0.Add(time.Second), LastFailure: t0.Add(2 * time.Second)},
			EndpointDelta{Attempts: 4, Successes: 1, FailuresSinceSuccess: 1, LastSuccess: t0.Add(time.Second), LastFailure: t0.Add(2 * time.Second)}},
		{"a success then failures", EndpointDelta{Attempts: 1, Successes: 1, LastSuccess: t0},
			EndpointDelta{Attempts: 2, FailuresSinceSuccess: 2, LastFailure: t0.Add(time.Second)},
			EndpointDelta{Attempts: 3, Successes: 1, FailuresSinceSuccess: 2, LastSuccess: t0, LastFailure: t0.Add(time.Second)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.first
			got.Then(tt.two)
			if got != tt.want {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}
