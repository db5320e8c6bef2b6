// Package retry is the one retry policy of asyncmesh: every place that waits
// before trying again (callback delivery, queue redelivery, the RabbitMQ
// reconnect and consume loops, the xDS rules subscription, the outbox relay)
// asks a Policy for the wait instead of computing its own.
//
// There is one schedule and one jitter scheme. The schedule is exponential:
// the ceiling of attempt n (1-based) is Initial·2^(n-1), capped at Max. The
// jitter is "full jitter": the wait is uniform in [0, ceiling]. Full jitter is
// the scheme docs/rules.md promises for callback retries (retry.initialBackoff
// "doubles, full jitter"), and of the common schemes it spreads a crowd of
// clients that failed together the most (the thundering herd after a backend
// or a callback receiver comes back), at the price of a wait that can be
// short; where a floor matters the caller waits Ceiling instead (see below).
//
// The one exception is NoJitter, for delays that name something: the queue's
// redelivery delay picks a RabbitMQ delay queue per distinct millisecond
// value, so it must come from a small fixed set.
//
// Randomness and time are injectable (Exponential.Rand, Clock) so tests pin
// waits without sleeping.
package retry

import (
	"context"
	"math/rand/v2"
	"time"
)

// Policy says how long to wait before retry attempt n (1-based: n is the
// number of failures so far).
type Policy interface {
	Delay(n int) time.Duration
}

// Exponential is the one Policy implementation: full jitter under a doubling,
// capped ceiling. The zero Initial or Max means the wait is 0.
type Exponential struct {
	Initial time.Duration // ceiling of attempt 1
	Max     time.Duration // cap of the ceiling
	// NoJitter makes Delay return the ceiling itself, for a delay that must
	// come from a fixed set (see the package comment).
	NoJitter bool
	// Rand returns a uniform int64 in [0, n); nil means math/rand/v2.
	Rand func(n int64) int64
}

// Ceiling is the largest wait of attempt n: min(Max, Initial·2^(n-1)),
// Initial for n < 1.
func (e Exponential) Ceiling(n int) time.Duration {
	c := e.Initial
	for i := 1; i < n && c < e.Max; i++ {
		c *= 2
	}
	return max(min(c, e.Max), 0)
}

// Delay is the wait before attempt n: uniform in [0, Ceiling(n)], or the
// ceiling with NoJitter.
func (e Exponential) Delay(n int) time.Duration {
	c := e.Ceiling(n)
	if e.NoJitter || c <= 0 {
		return c
	}
	r := e.Rand
	if r == nil {
		r = rand.Int64N
	}
	return time.Duration(r(int64(c) + 1))
}

// Backoff counts failures for a loop that retries until it succeeds: Next
// after a failure, Reset after a success (the loop was healthy again).
type Backoff struct {
	Policy Policy
	n      int
}

// Next counts one more failure and returns the wait before the next try.
func (b *Backoff) Next() time.Duration {
	b.n++
	return b.Policy.Delay(b.n)
}

// Reset forgets the failures so far.
func (b *Backoff) Reset() { b.n = 0 }

// Failures is how many failures Next has counted since the last Reset.
func (b *Backoff) Failures() int { return b.n }

// Clock is the time source of a retry loop; System is the real one.
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

type systemClock struct{}

func (systemClock) Now() time.Time                         { return time.Now() }
func (systemClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// System is the wall clock.
var System Clock = systemClock{}

// Sleep waits d on c, or until ctx ends; it returns ctx.Err() in that case.
func Sleep(ctx context.Context, c Clock, d time.Duration) error {
	if c == nil {
		c = System
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-c.After(d):
		return nil
	}
}
