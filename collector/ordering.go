package collector

import (
	"context"
	"errors"
	"log/slog"
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

// Waiting for a predecessor: the delay grows with how long the request
// has waited (since its intake) from orderRecheckMin to orderRecheckMax,
// so that a long queue behind a slow request reads the store a few times a
// second, not thousands, while a key that keeps up starts each request soon
// after the one before it.
var (
	orderRecheckMin = 100 * time.Millisecond
	orderRecheckMax = 2 * time.Second
)

// A request that has waited for its turn longer than orderStuckAfter is
// reported (a warning, asyncmesh_collector_ordering_stuck_total) once per
// orderStuckAfter while it keeps waiting; one waiting longer than
// orderNoteAfter gets an info line as often. Shorter waits log at debug.
var (
	orderStuckAfter = 5 * time.Minute
	orderNoteAfter  = 30 * time.Second
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
// of its message m (a queue.Wait: the waits are not deliveries, so that
// the replay's retries, bounded by deliveries (replayAttempts), are all
// there when its turn comes, whichever collectors saw it wait), or the
// error of reading the predecessor.
func (c *Collector) awaitTurn(ctx context.Context, m *queue.Message, r *store.Record) error {
	if r.Envelope == nil || r.Envelope.OrderAfter == nil {
		return nil
	}
	after := r.Envelope.OrderAfter
	wait, why, err := c.turn(ctx, after, time.Now())
	if err != nil {
		return err
	}
	// How long it has waited: since its intake, on the store's clock (its
	// CreatedAt's).
	waited := max(c.store.Now().Sub(r.CreatedAt), 0)
	if wait <= 0 {
		if m.Deliveries <= 1 { // its first run, not a retry after a failed one
			c.obs.orderTurnSeconds.WithLabelValues(r.Rule).Observe(waited.Seconds())
		}
		return nil
	}
	wait = min(wait, orderRecheck(waited))
	c.obs.orderWaits.WithLabelValues(r.Rule).Inc()
	level := slog.LevelDebug
	msg := "ordering: waiting for the request before it in its ordering key"
	switch {
	case crosses(waited, wait, orderStuckAfter):
		// Once per orderStuckAfter while it waits: a key that does not
		// move shows by the request it waits for.
		level, msg = slog.LevelWarn, "ordering: key stuck: waiting for the request before it in its ordering key"
		c.obs.orderStuck.WithLabelValues(r.Rule).Inc()
	case crosses(waited, wait, orderNoteAfter):
		level = slog.LevelInfo
	}
	c.log.Log(ctx, level, msg, "id", r.ID, "trace_id", r.TraceID, "rule", r.Rule, "after", after.ID, "why", why,
		"waited", waited.Round(time.Second).String(), "deliveries", m.Deliveries)
	return turnWait{queue.Wait(wait, "ordering: "+why)}
}

// crosses reports whether a wait of next after having waited waited
// reaches the next multiple of every (so that what it marks happens once
// per every, without keeping anything between deliveries).
func crosses(waited, next, every time.Duration) bool {
	return every > 0 && waited+next >= every && (waited+next)/every != waited/every
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

// orderDone reports whether p no longer blocks the requests after it
// (store.OrderDone).
func orderDone(p *store.Record) bool { return store.OrderDone(p) }

// orderRecheck is the delay of a message whose request has waited for
// waited: an eighth of it, within orderRecheckMin and orderRecheckMax.
func orderRecheck(waited time.Duration) time.Duration {
	return min(max(waited/8, orderRecheckMin), orderRecheckMax)
}
