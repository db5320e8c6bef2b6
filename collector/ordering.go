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
//   - intake links each to the key's last requests (store.Orderer.Chain, a
//     compare-and-set on one document per key) before writing its record,
//     and keeps the links in its envelope (OrderAfter, OrderEarlier); one
//     it then answers without writing it leaves the key (unchainOrder);
//   - a worker runs a linked request only once its predecessor is done:
//     delivered or dead, now or ever (a replay of an old request does not
//     block its key again). Until then the work message goes back to the
//     queue with a delay: a waiting request holds no worker and no lease.
//
// What blocks a key is its oldest request not yet done: while it is queued,
// running, retrying its callback, or held (its endpoint disabled) the
// requests after it wait. A predecessor that never ran vouches for nothing
// before it, so the worker looks further back (turn): past one intake
// abandoned (dead, never run) by that record's own links; past one without
// a record — intake failed, or crashed, between the link's write and the
// record's; or retention deleted it — once its intake deadline (kept in the
// link) and the workers' grace have passed (after that its record can no
// longer be written), by the next link.
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
	env.OrderAfter, env.OrderEarlier = nil, nil
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
	links := make([]envelope.OrderLink, len(prev))
	for i, l := range prev {
		links[i].ID = l.ID
		if !l.Deadline.IsZero() {
			links[i].Deadline = l.Deadline.UnixMilli()
		}
	}
	if len(links) > 0 {
		env.OrderAfter, env.OrderEarlier = &links[0], links[1:]
		if len(env.OrderEarlier) == 0 {
			env.OrderEarlier = nil
		}
	}
	return nil
}

// unchainOrder takes env, refused by intake after chainOrder linked it,
// back out of its key (store.Orderer.Unchain): without it the requests
// after it would wait for its intake deadline, and each such request
// spends one of their links (store.MaxOrderLinks). Best effort: a failure
// costs only that wait.
func (c *Collector) unchainOrder(ctx context.Context, env *envelope.Envelope) {
	o, ok := store.OrdererOf(c.store)
	if env.OrderKey == "" || !ok {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), unchainTimeout)
	defer cancel()
	if err := o.Unchain(ctx, store.OrderScope(env.Rule, env.OrderKey), store.Link{ID: env.ID}); err != nil {
		c.log.Warn("intake: taking a refused request back out of its ordering key; the next ones wait for its deadline", "id", env.ID, "err", err)
	}
}

// unchainTimeout bounds unchainOrder, run after intake answered.
const unchainTimeout = 2 * time.Second

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
	wait, after, why, err := c.turn(ctx, orderLinks(r.Envelope), time.Now())
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
	c.log.Log(ctx, level, msg, "id", r.ID, "trace_id", r.TraceID, "rule", r.Rule, "after", after, "why", why,
		"waited", waited.Round(time.Second).String(), "deliveries", m.Deliveries)
	return turnWait{queue.Wait(wait, "ordering: waiting for request "+after+" ("+why+")")}
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

// orderLinks returns the requests before env in its key, newest first.
func orderLinks(env *envelope.Envelope) []envelope.OrderLink {
	if env == nil || env.OrderAfter == nil {
		return nil
	}
	return append([]envelope.OrderLink{*env.OrderAfter}, env.OrderEarlier...)
}

// maxTurnReads bounds the records turn reads for one decision: the walk
// back over requests that never ran (abandoned, or never written) reaches
// as far as that.
const maxTurnReads = 256

// turn reports how long a request whose key's requests before it are links
// (newest first) must wait (0: it may run), for which of them, and why (its
// status, or "not written yet"). It waits for the newest of them that ran
// or will run: a done one that ran vouches for all before it (it ran only
// once they were done); one that never ran — abandoned, or never written —
// vouches for nothing, and the walk goes on back from it (an abandoned
// record's own links reach further than links).
func (c *Collector) turn(ctx context.Context, links []envelope.OrderLink, now time.Time) (wait time.Duration, after, why string, err error) {
	for reads := 0; len(links) > 0; reads++ {
		if reads == maxTurnReads {
			c.log.Warn("ordering: over a bound of requests before this one never ran; it runs without knowing whether the ones before them are done",
				"bound", maxTurnReads, "next", links[0].ID)
			return 0, "", "", nil
		}
		l := links[0]
		links = links[1:]
		prev, err := store.Peek(ctx, c.store, l.ID)
		switch {
		case errors.Is(err, store.ErrNotFound):
			// Not written yet, or never (a crash between its link and its
			// record, a refused intake), or deleted by retention: its
			// intake can write it only until its deadline and the workers'
			// grace. A link without a deadline is from before deadlines:
			// long past.
			if l.Deadline != 0 {
				until := time.UnixMilli(l.Deadline).Add(workerGrace)
				if left := until.Sub(now); left > 0 {
					return left + 10*time.Millisecond, l.ID, "not written yet", nil
				}
			}
			continue
		case err != nil:
			return 0, "", "", err
		case !store.OrderRan(prev):
			if more := orderLinks(prev.Envelope); len(more) > 0 {
				links = more
			}
			continue
		case orderDone(prev):
			return 0, "", "", nil
		}
		return orderRecheckMax, l.ID, string(prev.Status), nil
	}
	return 0, "", "", nil
}

// orderDone reports whether p no longer blocks the requests after it
// (store.OrderDone).
func orderDone(p *store.Record) bool { return store.OrderDone(p) }

// orderRecheck is the delay of a message whose request has waited for
// waited: an eighth of it, within orderRecheckMin and orderRecheckMax.
func orderRecheck(waited time.Duration) time.Duration {
	return min(max(waited/8, orderRecheckMin), orderRecheckMax)
}
