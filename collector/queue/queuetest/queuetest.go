// Package queuetest is the conformance suite every queue.Queue must pass.
package queuetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/queue"
)

// Run runs the suite; open returns a fresh, empty queue.
func Run(t *testing.T, open func(t *testing.T) queue.Queue) {
	ctx := context.Background()

	// consume runs h until stop() and returns stop.
	consume := func(t *testing.T, q queue.Queue, topic string, workers int, h queue.Handler) (stop func()) {
		cctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- q.Consume(cctx, topic, workers, h) }()
		return func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Consume: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Error("Consume did not return after cancel")
			}
		}
	}

	t.Run("PublishConsumeAck", func(t *testing.T) {
		q := open(t)
		const n = 50
		for i := range n {
			if err := q.Publish(ctx, queue.Message{Topic: "t1", Key: fmt.Sprint(i), TraceID: fmt.Sprint("trace", i), Body: []byte(fmt.Sprint("body", i))}); err != nil {
				t.Fatalf("Publish: %v", err)
			}
		}
		var mu sync.Mutex
		seen := map[string]int{}
		all := make(chan struct{})
		stop := consume(t, q, "t1", 4, func(ctx context.Context, m queue.Message) error {
			mu.Lock()
			defer mu.Unlock()
			if string(m.Body) != "body"+m.Key || m.TraceID != "trace"+m.Key || m.Topic != "t1" {
				t.Errorf("message %s has topic %q, trace id %q, body %q", m.Key, m.Topic, m.TraceID, m.Body)
			}
			seen[m.Key]++
			if len(seen) == n {
				close(all)
			}
			return nil
		})
		select {
		case <-all:
		case <-time.After(10 * time.Second):
			t.Fatalf("consumed %d of %d", len(seen), n)
		}
		stop()
		for k, c := range seen {
			if c != 1 {
				t.Errorf("message %s consumed %d times", k, c)
			}
		}
	})

	t.Run("LocalReachesOwnConsumerAtOnce", func(t *testing.T) {
		q := open(t)
		got := make(chan time.Time, 1)
		stop := consume(t, q, "loc", 1, func(ctx context.Context, m queue.Message) error { got <- time.Now(); return nil })
		defer stop()
		start := time.Now()
		if err := q.Publish(ctx, queue.Message{Topic: "loc", Key: "k", Local: time.Minute}); err != nil {
			t.Fatal(err)
		}
		select {
		case at := <-got:
			if d := at.Sub(start); d > 5*time.Second {
				t.Fatalf("a Local message reached this process's consumer after %v", d)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a Local message did not reach this process's consumer")
		}
	})

	t.Run("OtherTopicUntouched", func(t *testing.T) {
		q := open(t)
		if err := q.Publish(ctx, queue.Message{Topic: "a", Key: "k"}); err != nil {
			t.Fatal(err)
		}
		got := make(chan string, 1)
		stop := consume(t, q, "b", 1, func(ctx context.Context, m queue.Message) error { got <- m.Key; return nil })
		select {
		case k := <-got:
			t.Fatalf("topic b got message %s of topic a", k)
		case <-time.After(300 * time.Millisecond):
		}
		stop()
	})

	t.Run("RetryAfterRedelivers", func(t *testing.T) {
		q := open(t)
		if err := q.Publish(ctx, queue.Message{Topic: "t", Key: "k", Body: []byte("x")}); err != nil {
			t.Fatal(err)
		}
		var times []time.Time
		var deliveries []int
		done := make(chan struct{})
		stop := consume(t, q, "t", 1, func(ctx context.Context, m queue.Message) error {
			times = append(times, time.Now())
			deliveries = append(deliveries, m.Deliveries)
			if len(times) < 3 {
				return queue.RetryAfter(200*time.Millisecond, "not yet")
			}
			close(done)
			return nil
		})
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("redelivered %d times", len(times))
		}
		stop()
		if d := times[1].Sub(times[0]); d < 150*time.Millisecond {
			t.Fatalf("redelivered after %v, want >= 200ms", d)
		}
		if deliveries[0] != 1 || deliveries[2] != 3 {
			t.Fatalf("deliveries %v", deliveries)
		}
	})

	// Waits are not deliveries: a message waited on twice (Wait), then
	// failed once (RetryAfter), then waited on again comes back as its
	// second delivery, whichever consumer waited.
	t.Run("WaitIsNotCounted", func(t *testing.T) {
		q := open(t)
		if err := q.Publish(ctx, queue.Message{Topic: "t", Key: "k", Body: []byte("x")}); err != nil {
			t.Fatal(err)
		}
		var deliveries []int
		done := make(chan struct{})
		answers := []error{queue.Wait(50*time.Millisecond, "waiting"), queue.Wait(50*time.Millisecond, "waiting"),
			queue.RetryAfter(50*time.Millisecond, "failed"), queue.Wait(50*time.Millisecond, "waiting")}
		stop := consume(t, q, "t", 1, func(ctx context.Context, m queue.Message) error {
			deliveries = append(deliveries, m.Deliveries)
			if n := len(deliveries); n <= len(answers) {
				return answers[n-1]
			}
			close(done)
			return nil
		})
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Fatalf("delivered %d times: %v", len(deliveries), deliveries)
		}
		stop()
		if want := []int{1, 1, 1, 2, 2}; fmt.Sprint(deliveries) != fmt.Sprint(want) {
			t.Fatalf("deliveries %v, want %v", deliveries, want)
		}
	})

	t.Run("PoisonDeadLetters", func(t *testing.T) {
		q := open(t)
		if err := q.Publish(ctx, queue.Message{Topic: "t", Key: "bad", Body: []byte("x")}); err != nil {
			t.Fatal(err)
		}
		calls := make(chan struct{}, 10)
		stop := consume(t, q, "t", 1, func(ctx context.Context, m queue.Message) error {
			calls <- struct{}{}
			return queue.Poison("cannot decode")
		})
		deadline := time.Now().Add(10 * time.Second)
		var dl []queue.DeadLetter
		for time.Now().Before(deadline) {
			var err error
			if dl, err = q.DeadLetters(ctx, "t", 10); err != nil {
				t.Fatal(err)
			}
			if len(dl) > 0 {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		time.Sleep(300 * time.Millisecond)
		stop()
		if len(dl) != 1 || dl[0].Key != "bad" || dl[0].Reason == "" {
			t.Fatalf("dead letters %+v", dl)
		}
		if len(calls) != 1 {
			t.Fatalf("poison message handled %d times, want 1", len(calls))
		}
	})

	t.Run("ShutdownFinishesInFlight", func(t *testing.T) {
		q := open(t)
		if err := q.Publish(ctx, queue.Message{Topic: "t", Key: "slow"}); err != nil {
			t.Fatal(err)
		}
		started := make(chan struct{})
		var finished bool
		stop := consume(t, q, "t", 1, func(ctx context.Context, m queue.Message) error {
			close(started)
			time.Sleep(300 * time.Millisecond)
			if ctx.Err() != nil {
				return errors.New("handler context cancelled by shutdown")
			}
			finished = true
			return nil
		})
		<-started
		stop()
		if !finished {
			t.Fatal("Consume returned before the in-flight handler finished")
		}
		// It was acked: nothing is delivered again.
		again := make(chan struct{}, 1)
		stop = consume(t, q, "t", 1, func(ctx context.Context, m queue.Message) error { again <- struct{}{}; return nil })
		select {
		case <-again:
			t.Fatal("acked message delivered again")
		case <-time.After(300 * time.Millisecond):
		}
		stop()
	})
}
