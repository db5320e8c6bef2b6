package load

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestOpenLoopCountsQueueing(t *testing.T) {
	// A system that serves one request at a time, 10ms each, offered 200/s:
	// it falls behind, and latencies measured from the due time grow.
	gate := make(chan struct{}, 1)
	res := Run(context.Background(), Params{Rate: 200, Duration: 300 * time.Millisecond}, func(ctx context.Context, seq int) error {
		gate <- struct{}{}
		time.Sleep(10 * time.Millisecond)
		<-gate
		if seq == 3 {
			return errors.New("boom")
		}
		return nil
	})
	if res.Sent != 60 || res.Failed != 1 || res.OK != 59 {
		t.Fatalf("%+v", res)
	}
	if p99 := res.Percentile(99); p99 < 200*time.Millisecond {
		t.Fatalf("p99 %v: queueing behind the slow server is hidden", p99)
	}
	if res.Achieved > 110 {
		t.Fatalf("achieved %.0f/s, more than the server can do", res.Achieved)
	}
}

func TestDropsPastMaxInFlight(t *testing.T) {
	res := Run(context.Background(), Params{Rate: 1000, Duration: 100 * time.Millisecond, MaxInFlight: 5, Grace: 100 * time.Millisecond}, func(ctx context.Context, _ int) error {
		<-ctx.Done()
		return ctx.Err()
	})
	if res.Dropped == 0 || res.Sent > 5 || res.ErrorRate() != 1 {
		t.Fatalf("%+v", res)
	}
}
