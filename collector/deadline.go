package collector

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/store"
)

// Intake deadlines: nothing the caller was told failed is ever run.
//
// The filter waits for intake's answer until the envelope's Deadline; past
// it the caller gets 503 (or, with onCollectorDown: passthrough, the
// service's own answer), whatever intake does next. So:
//   - intake refuses an envelope that arrives with less than answerMargin
//     left, without persisting it;
//   - when the record's commit returns with less than answerMargin left,
//     intake abandons it — queued → dead, noted AbandonedNote, no callback
//     — and answers 503; a worker never claims it;
//   - a worker claims a record whose deadline has not passed by workerGrace
//     only once intake decided it was accepted in time: on this collector,
//     intake records that decision in memory (decisions); a record accepted
//     by another collector waits until deadline + workerGrace, by when that
//     intake has decided — unless its commit took longer than the whole
//     collector timeout plus workerGrace, the one window left (both then
//     race on the record's compare-and-set, and intake abandons it only if
//     it wins).
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

// abandon moves a record that intake persisted too late to dead.
func (c *Collector) abandon(ctx context.Context, r *store.Record) error {
	_, err := c.move(ctx, r.ID, store.Change{From: []store.Status{store.Persisted, store.Queued}, To: store.Dead,
		Note: AbandonedNote, Error: AbandonedNote})
	return err
}

// abandonIfExists abandons record id if a failed intake wrote it after all.
// It runs apart from the intake's context, which may be why it failed.
func (c *Collector) abandonIfExists(ctx context.Context, id string) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	r, err := c.store.Get(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	return c.abandon(ctx, r)
}

// runnable reports whether a worker may claim record id, whose intake
// deadline is deadline, now; when not, how long to wait.
func (c *Collector) runnable(id string, deadline, now time.Time) (bool, time.Duration) {
	if deadline.IsZero() || !now.Before(deadline.Add(workerGrace)) || c.decided.has(id) {
		return true, 0
	}
	return false, deadline.Add(workerGrace).Sub(now)
}

// decisions are the ids this collector's intake accepted in time, until a
// worker claims them (or a minute after their deadline, for those another
// collector runs).
type decisions struct {
	mu sync.Mutex
	m  map[string]time.Time // id → deadline
}

func newDecisions() *decisions { return &decisions{m: map[string]time.Time{}} }

func (d *decisions) accept(id string, deadline time.Time) {
	d.mu.Lock()
	d.m[id] = deadline
	d.mu.Unlock()
}

func (d *decisions) has(id string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	_, ok := d.m[id]
	return ok
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
	for id, dl := range d.m {
		if now.After(dl.Add(time.Minute)) {
			delete(d.m, id)
		}
	}
}
