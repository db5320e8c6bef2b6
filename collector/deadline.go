package collector

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/queue"
	"github.com/asyncmesh/asyncmesh/collector/store"
	"github.com/asyncmesh/asyncmesh/internal/envelope"
	"github.com/asyncmesh/asyncmesh/internal/trace"
)

// Intake deadlines: nothing the caller was told failed is ever run.
//
// The filter waits for intake's answer until the envelope's Deadline; past
// it the caller gets 503 (or, with onCollectorDown: passthrough, the
// service's own answer), whatever intake does next. So:
//   - intake refuses an envelope that arrives with less than answerMargin
//     left, without persisting it;
//   - when the record's commit (without an outbox: its write and the wait
//     for the queue's confirm) returns with less than answerMargin left,
//     intake abandons it — persisted or queued → dead, noted AbandonedNote,
//     no callback — and answers 503; a worker never claims it. So does a
//     failed write that may have committed (mayHaveCommitted);
//   - a worker claims a record whose deadline has not passed by workerGrace
//     only once intake has decided: on this collector, intake marks the
//     record pending before writing it and decided once it knows (in memory,
//     decisions), and the worker waits for that in process; a record
//     accepted by another collector waits until deadline + workerGrace, by
//     when that intake has decided — unless its commit took longer than the
//     whole collector timeout plus workerGrace, the one window left (both
//     then race on the record's compare-and-set, and intake abandons it only
//     if it wins). A worker that finds no record then takes its id with a
//     tombstone before dropping the message (abandonMissing): the write
//     may still land, from an intake that could not abandon it.
//   - Prefer: wait ends in time for the answer to reach the filter.
//
// Records from filters that set no deadline run as before.
const (
	answerMargin = 200 * time.Millisecond
	workerGrace  = time.Second
)

// AbandonedNote marks, in a record's history, a request that intake could
// not accept before the filter's deadline: it is never run.
const AbandonedNote = "abandoned: intake finished after the filter's deadline; the caller was not told it was accepted"

// late reports whether an answer started at now reaches the filter too late.
func late(deadline, now time.Time) bool {
	return !deadline.IsZero() && now.After(deadline.Add(-answerMargin))
}

// abandon moves a record that intake persisted too late to dead. It runs
// apart from the intake's context: the filter that hung up cancels that one,
// and this write is what keeps the record from running.
func (c *Collector) abandon(ctx context.Context, r *store.Record) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_, err := c.move(ctx, r.ID, store.Change{Event: store.Abandon, Detail: AbandonedNote, Error: AbandonedNote})
	return err
}

// abandonIfExists makes sure that record r, whose write failed in a way
// that may have committed, never runs: it abandons the record if it exists,
// and otherwise creates it dead (a tombstone), so that the write, if it is
// still on its way to the store (a bulk sent after intake gave up on it),
// finds the id taken. It runs apart from the intake's context, which may be
// why the write failed.
func (c *Collector) abandonIfExists(ctx context.Context, r *store.Record) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	for range 3 {
		got, err := c.store.Get(ctx, r.ID)
		if err == nil {
			if err := c.abandon(ctx, got); err != nil {
				var ce *store.ConflictError
				if errors.As(err, &ce) {
					// Abandoned already (dead), or it has run meanwhile: no
					// abandon can stop it now, and retrying would loop.
					if ce.Current != store.Dead {
						c.log.Warn("abandoning: the record has moved on; it runs", "id", r.ID, "trace_id", r.TraceID, "status", ce.Current)
					}
					return nil
				}
				return err
			}
			return nil
		}
		if !errors.Is(err, store.ErrNotFound) {
			return err
		}
		tomb := store.NewRecord(r.Envelope, r.CreatedAt)
		abandon := store.Change{Event: store.Abandon, Detail: AbandonedNote, Error: AbandonedNote, At: c.store.Now()}
		if err := abandon.Apply(tomb); err != nil {
			return err
		}
		if err = c.store.Create(ctx, tomb); !errors.Is(err, store.ErrExists) {
			return err // created dead, or failed
		}
		// The write landed meanwhile: abandon it.
	}
	return fmt.Errorf("abandoning %s: the record kept changing", r.ID)
}

// abandonMissing makes sure that the request of work message m, whose
// record a worker did not find once its intake deadline (plus workerGrace)
// had passed, never runs. Its intake had not committed the record in time,
// so the caller was told it failed; but the write may still be on its way
// — a bulk sent before a partition lands when the partition heals, long
// after the deadline — and that intake may be unable to abandon it (its
// store was unreachable: it left it to its own worker, whose message this
// is) or be gone. Without this the record would land queued, with no
// message left to run or abandon it: stuck until the sweeper. So the id is
// taken by a tombstone, as intake does (abandonIfExists), and a record that
// landed meanwhile is abandoned.
func (c *Collector) abandonMissing(ctx context.Context, m queue.Message, deadline time.Time) error {
	var msg taskMessage
	_ = json.Unmarshal(m.Body, &msg)
	var e *envelope.Envelope
	if len(msg.Envelope) > 0 {
		var inline envelope.Envelope
		if json.Unmarshal(msg.Envelope, &inline) == nil && inline.ID == m.Key {
			e = &inline
		}
	}
	if e == nil { // too large to come along (or undecodable): the tombstone names the request only
		e = &envelope.Envelope{Version: envelope.Version, ID: m.Key, TraceID: m.TraceID, Deadline: deadline.UnixMilli()}
	}
	created, ok := trace.RequestIDTime(m.Key)
	if !ok {
		created = deadline
	}
	return c.abandonIfExists(ctx, store.NewRecord(e, created))
}

// mayHaveCommitted reports whether a write that failed with err may have
// committed all the same, so that intake must read the record back and
// abandon it: every error but one the store vouches nothing was written
// for (store.ErrUnavailable: closed, or its server never reached). A
// cancelled or expired context counts as may — the write may have gone out
// before it ended — whatever else err wraps. A bare "connection refused"
// does not vouch: a client that retried may have sent a first attempt.
func mayHaveCommitted(err error) bool {
	switch {
	case err == nil:
		return false
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return true
	}
	return !errors.Is(err, store.ErrUnavailable)
}

// verdict is what a worker may do with a work message now (runnable).
type verdict int

const (
	runIt     verdict = iota // read the record and act by its status
	waitForIt                // intake has not decided yet: come back later
	dropIt                   // this collector's intake refused it: nothing to run
	abandonIt                // refused, but its record may exist: abandon it, then drop
)

// outcome is intake's decision on a request.
type outcome int

const (
	accepted  outcome = iota + 1 // the filter was told "accepted"
	refused                      // told it failed; no record, or intake abandoned it
	unsettled                    // told it failed; a record may exist that intake could not abandon
)

// runnable says whether a worker may run record id, whose intake deadline
// is deadline, now; when it must wait, for how long. A record this
// collector's intake is still deciding (its message can be consumed before
// the decision, even before the record exists) is waited for here, in
// process.
func (c *Collector) runnable(ctx context.Context, id string, deadline, now time.Time) (verdict, time.Duration) {
	until := deadline.Add(workerGrace)
	if c.decided.unsettled(id) != nil {
		return abandonIt, 0 // however late: only its abandon remains to be done
	}
	if deadline.IsZero() || !now.Before(until) {
		return runIt, 0
	}
	switch c.decided.wait(ctx, id, until) {
	case accepted:
		return runIt, 0
	case refused:
		return dropIt, 0
	case unsettled:
		return abandonIt, 0
	}
	return waitForIt, until.Sub(now)
}

// decisions are intake's decisions on the records this collector takes in:
// pending from before the record is written until intake knows whether it
// answered in time, then kept until a worker claims the record (or a minute
// after its deadline, for those another collector runs).
type decisions struct {
	mu     sync.Mutex
	m      map[string]*decision
	pruned time.Time // the last prune (pending prunes at most once a second)
}

type decision struct {
	rec      *store.Record // an unsettled refusal's record, for its abandon
	deadline time.Time
	done     chan struct{} // closed once decided
	outcome  outcome       // set before done is closed
}

func newDecisions() *decisions { return &decisions{m: map[string]*decision{}} }

// pending records that intake is about to write id. It prunes the
// decisions at most once a second: while intakes come in, as often as the
// relay did when its rounds came every second (an idle relay's rounds are
// far apart, and only prune what the last intakes left).
func (d *decisions) pending(id string, deadline time.Time) {
	d.mu.Lock()
	if now := time.Now(); now.Sub(d.pruned) >= time.Second {
		d.pruneLocked(now)
	}
	d.m[id] = &decision{deadline: deadline, done: make(chan struct{})}
	d.mu.Unlock()
}

// decide ends the pending decision on id with o. The first decision
// stands.
func (d *decisions) decide(id string, o outcome) {
	d.mu.Lock()
	if x, ok := d.m[id]; ok {
		select {
		case <-x.done:
		default:
			x.outcome = o
			close(x.done)
		}
	}
	d.mu.Unlock()
}

// wait reports this collector's intake's decision on id, waiting for a
// pending one until until (0: none).
func (d *decisions) wait(ctx context.Context, id string, until time.Time) outcome {
	d.mu.Lock()
	x, ok := d.m[id]
	d.mu.Unlock()
	if !ok {
		return 0
	}
	t := time.NewTimer(time.Until(until))
	defer t.Stop()
	select {
	case <-x.done:
		return x.outcome
	case <-t.C:
	case <-ctx.Done():
	}
	return 0
}

// state reports this collector's intake's decision on id without waiting:
// known is false when this collector has none (another took it in, or it
// was forgotten), and o is 0 while intake is still deciding.
func (d *decisions) state(id string) (o outcome, known bool) {
	d.mu.Lock()
	x, ok := d.m[id]
	d.mu.Unlock()
	if !ok {
		return 0, false
	}
	select {
	case <-x.done:
		return x.outcome, true
	default:
		return 0, true
	}
}

func (d *decisions) forget(id string) {
	d.mu.Lock()
	delete(d.m, id)
	d.mu.Unlock()
}

// prune drops decisions no worker of this collector will ask for.
func (d *decisions) prune(now time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.pruneLocked(now)
}

func (d *decisions) pruneLocked(now time.Time) {
	d.pruned = now
	for id, x := range d.m {
		if x.unsettled() {
			continue // its worker has still to abandon it, however long the store fails
		}
		if now.After(x.deadline.Add(time.Minute)) {
			delete(d.m, id)
		}
	}
}

// leave decides that intake refused r but could not abandon it: its worker
// will (abandonIfExists).
func (d *decisions) leave(r *store.Record) {
	d.mu.Lock()
	if x, ok := d.m[r.ID]; ok {
		x.rec = r
	}
	d.mu.Unlock()
	d.decide(r.ID, unsettled)
}

// unsettled returns the record intake refused as id but could not abandon
// (nil when none).
func (d *decisions) unsettled(id string) *store.Record {
	d.mu.Lock()
	x, ok := d.m[id]
	d.mu.Unlock()
	if ok && x.unsettled() {
		return x.rec
	}
	return nil
}

func (x *decision) unsettled() bool {
	select {
	case <-x.done:
		return x.outcome == unsettled
	default:
		return false
	}
}
