package collector

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/queue"
	"github.com/asyncmesh/asyncmesh/collector/store"
	"github.com/asyncmesh/asyncmesh/internal/envelope"
)

// Ordered requests (rules ordering:, docs/architecture.md §4 "Ordering").
//
// Requests of one rule with one ordering key (envelope.OrderKey, read by
// the filter) run and are called back in intake order, one at a time,
// whichever collectors take them in and run them:
//   - intake links each to the key's last request (store.Orderer.Chain, a
//     compare-and-set on one document per key) before writing its record,
//     and keeps the link in its envelope (OrderAfter);
//   - a worker runs a linked request only once its predecessor is done:
//     delivered or dead, now or ever (a replay of an old request does not
//     block its key again). Until then the work message goes back to the
//     queue with a delay: a waiting request holds no worker and no lease.
//
// What blocks a key is its oldest request not yet done: while it is queued,
// running, retrying its callback, or held (its endpoint disabled) the
// requests after it wait. A predecessor without a record — intake failed,
// or crashed, between the link's write and the record's; or retention
// deleted it — blocks nothing once its intake deadline (kept in the link)
// and the workers' grace have passed: after that its record can no longer
// be written. An abandoned predecessor is dead, so done.
//
// Unordered requests pay nothing: no write at intake, no read in the
// worker.

// orderIntakeBound is the intake deadline a link names when the filter set
// none (filters before deadlines): its intake has long answered by then.
const orderIntakeBound = time.Minute

// Waiting for a predecessor: the delay grows with the message's deliveries
// from orderRecheckMin to orderRecheckMax, so that a long queue behind a
// slow request reads the store a few times a second, not thousands.
var (
	orderRecheckMin = 100 * time.Millisecond
	orderRecheckMax = 2 * time.Second
)

// chainOrder links env, whose record intake is about to write, to the
// request before it in its ordering key (nothing when it has none, or the
// store keeps no keys: then it is taken in unordered, and says so).
func (c *Collector) chainOrder(ctx context.Context, env *envelope.Envelope, deadline, now time.Time) error {
	env.OrderAfter = nil
	if env.OrderKey == "" {
		return nil
	}
	o, ok := store.OrdererOf(c.store)
	if !ok {
		c.log.Warn("intake: the store keeps no ordering keys; the request is taken in unordered", "id", env.ID, "rule", env.Rule)
		return nil
	}
	if deadline.IsZero() {
		deadline = now.Add(orderIntakeBound)
	}
	prev, err := o.Chain(ctx, store.OrderScope(env.Rule, env.OrderKey), store.Link{ID: env.ID, Deadline: deadline})
	if err != nil {
		return err
	}
	if prev.ID != "" {
		env.OrderAfter = &envelope.OrderLink{ID: prev.ID}
		if !prev.Deadline.IsZero() {
			env.OrderAfter.Deadline = prev.Deadline.UnixMilli()
		}
	}
	return nil
}

// awaitTurn returns nil when record r, queued, may run: it is not ordered,
// or its predecessor is done. Otherwise it returns the delayed redelivery
// of its message m (or the error of reading the predecessor).
//
// It also takes the deliveries the message spent waiting in this process
// off m.Deliveries: run bounds the replay's retries by deliveries
// (replayAttempts), and waits are not failed runs.
func (c *Collector) awaitTurn(ctx context.Context, m *queue.Message, r *store.Record) error {
	if r.Envelope == nil || r.Envelope.OrderAfter == nil {
		return nil
	}
	after := r.Envelope.OrderAfter
	wait, why, err := c.turn(ctx, after, time.Now())
	if err != nil {
		return err
	}
	if wait <= 0 {
		if n := turnWaits.done(r.ID); n > 0 {
			m.Deliveries = max(1, m.Deliveries-n)
		}
		return nil
	}
	turnWaits.add(r.ID)
	wait = min(wait, orderRecheck(m.Deliveries))
	// Logged on its first wait and now and then after: a key that stays
	// blocked shows in the log by the request it waits for.
	level := slog.LevelDebug
	if m.Deliveries <= 1 || m.Deliveries%50 == 0 {
		level = slog.LevelInfo
	}
	c.log.Log(ctx, level, "ordering: waiting for the request before it in its ordering key", "id", r.ID, "trace_id", r.TraceID, "rule", r.Rule, "after", after.ID, "why", why, "deliveries", m.Deliveries)
	return turnWait{queue.RetryAfter(wait, "ordering: "+why)}
}

// turnWait is awaitTurn's delayed redelivery. handleWork keeps intake's
// decision on the request for it (it is forgotten once a worker is done
// with the request): without it, the next delivery could not tell this
// collector's intake from another's, and would wait for the request's
// deadline and the workers' grace (deadline.go) after its turn came. (On
// another collector, a waiting message does wait that long, once.)
type turnWait struct{ error }

func (w turnWait) Unwrap() error { return w.error }

// waitingTurn reports whether err is a turnWait.
func waitingTurn(err error) bool {
	var w turnWait
	return errors.As(err, &w)
}

// turn reports how long a request linked after after must wait (0: it may
// run), and why.
func (c *Collector) turn(ctx context.Context, after *envelope.OrderLink, now time.Time) (time.Duration, string, error) {
	prev, err := store.Peek(ctx, c.store, after.ID)
	switch {
	case errors.Is(err, store.ErrNotFound):
		// Not written yet, or never (a crash between its link and its
		// record, a refused intake), or deleted by retention: its intake
		// can write it only until its deadline and the workers' grace.
		if after.Deadline == 0 {
			return 0, "", nil
		}
		until := time.UnixMilli(after.Deadline).Add(workerGrace)
		if left := until.Sub(now); left > 0 {
			return left + 10*time.Millisecond, "request " + after.ID + " before it not written yet", nil
		}
		return 0, "", nil
	case err != nil:
		return 0, "", err
	case orderDone(prev):
		return 0, "", nil
	}
	return orderRecheckMax, "request " + after.ID + " before it is " + string(prev.Status), nil
}

// orderDone reports whether p no longer blocks the requests after it: it
// is delivered or dead, or was once (a replay sends an old callback again,
// and does not stop its key).
func orderDone(p *store.Record) bool {
	return p.Status.Terminal() || !p.Last(store.Deliver, store.GiveUp, store.Abandon).IsZero()
}

// waitCounts counts, by request, the deliveries its work message spent
// waiting for its turn in this process. An entry whose request ran on
// another collector is never done here: entries are dropped an hour after
// their last wait.
type waitCounts struct {
	mu     sync.Mutex
	m      map[string]waitCount
	pruned time.Time
}

type waitCount struct {
	n    int
	last time.Time
}

var turnWaits = waitCounts{m: map[string]waitCount{}}

func (w *waitCounts) add(id string) {
	now := time.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	if now.Sub(w.pruned) > time.Minute {
		w.pruned = now
		for k, v := range w.m {
			if now.Sub(v.last) > time.Hour {
				delete(w.m, k)
			}
		}
	}
	w.m[id] = waitCount{n: w.m[id].n + 1, last: now}
}

// done forgets id's waits and returns how many there were.
func (w *waitCounts) done(id string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := w.m[id].n
	delete(w.m, id)
	return n
}

// orderRecheck is the delay of a waiting message on its deliveries-th
// delivery.
func orderRecheck(deliveries int) time.Duration {
	d := orderRecheckMin
	for i := 1; i < deliveries && d < orderRecheckMax; i++ {
		d = d * 5 / 4
	}
	return min(d, orderRecheckMax)
}
