package collector

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"go.opentelemetry.io/otel/attribute"

	"github.com/asyncmesh/asyncmesh/collector/delivery"
	"github.com/asyncmesh/asyncmesh/collector/queue"
	"github.com/asyncmesh/asyncmesh/collector/store"
	"github.com/asyncmesh/asyncmesh/internal/envelope"
)

// The handlers of work and delivery messages (docs/architecture.md,
// "Lifecycle"). Both read the record and act by its status (drive), so a
// redelivered message finishes what a crashed collector started and a late
// duplicate is acked and skipped. The events they write, and what each may
// move from, are the lifecycle table in collector/store.
//
// The common path writes a request three times:
//  1. intake creates it queued (with an outbox, together with its work
//     message; without one, the Enqueue write follows the answer);
//  2. the worker executes it — held by its work message, not by a lease in
//     the store — and writes the result and the start of its delivery in
//     one write (Complete or Fail, then StartDelivery, leased for the
//     callback);
//  3. the same worker calls back and writes delivered.
//
// A failed attempt is recorded (Retry, leased until the next is due) and a
// delivery message carries the next one. A collector that does not deliver
// writes the result alone (its delivery message follows); the delivering
// collector then claims the record (StartDelivery) before each attempt.
//
// What each write buys: the first makes the 202 true; the second records
// the result once (a compare-and-set: a duplicate execution loses it and
// sends nothing) and leases the callback to the worker that won; the third
// ends the lifecycle. The execution has no store lease: a work message is
// held by one consumer at a time, and comes back to another when its
// consumer dies — so the service sees a request twice only when a broker
// redelivers a message whose consumer is still running (it lost its
// connection), as after a crash; the result write still lets one run
// through to the callback. (A callback is sent twice when its outcome write
// is lost — a crash or a partition between the receiver's 2xx and the
// write — as before: receivers dedupe by webhook-id.)
// An external node's task is claimed in the store (processing, leased),
// because its completion arrives from outside.

// handleWork runs a work message: the request's execution, then its first
// callback attempt when this collector delivers.
func (c *Collector) handleWork(ctx context.Context, m queue.Message) error {
	id := m.Key
	deadline, ok := messageDeadline(m)
	if !ok { // a message from before messages named their deadline
		r, err := c.store.Get(ctx, id)
		if err != nil {
			return claimFailed(err, m)
		}
		deadline = r.Envelope.DeadlineTime()
	}
	// Not before intake has told the filter it was accepted (deadline.go),
	// and read after that: intake may have abandoned it meanwhile.
	switch v, wait := c.runnable(ctx, id, deadline, time.Now()); v {
	case waitForIt:
		return queue.Wait(wait, "intake has not answered the filter yet") // not a run: the replay's retries are not spent
	case abandonIt: // intake could not: the store was failing
		if err := c.abandonIfExists(ctx, c.decided.unsettled(id)); err != nil {
			return queue.RetryAfter(time.Second, "abandoning a request intake refused: "+err.Error())
		}
		fallthrough
	case dropIt:
		c.decided.forget(id)
		c.log.Info("worker: dropping the work message of a request intake did not accept", "id", id, "trace_id", m.TraceID)
		return nil
	}
	// The message comes back (a wait for its turn in an ordering key, a
	// retry of a failed execution): intake's decision is kept for its next
	// delivery (ordering.go), and for an Idempotency-Key's retries, which
	// would otherwise find the record still queued and undecided (409)
	// until its deadline passed. Pruned a minute after the deadline.
	again := false
	defer func() {
		if !again {
			c.decided.forget(id)
		}
	}()
	r, err := c.store.Get(ctx, id)
	if errors.Is(err, store.ErrNotFound) && !deadline.IsZero() {
		// Published before its record (accept), and its intake has decided
		// (another collector's, by the deadline): it had created none by
		// then, and the caller was told the request failed. Its write may
		// still land (abandonMissing), so the id is taken first.
		if err := c.abandonMissing(ctx, m, deadline); err != nil {
			return queue.RetryAfter(time.Second, "abandoning a request intake did not accept: "+err.Error())
		}
		c.log.Info("worker: dropping the work message of a request intake did not accept", "id", id, "trace_id", m.TraceID)
		return nil
	}
	if err != nil {
		return claimFailed(err, m)
	}
	err = c.drive(ctx, m, r)
	again = err != nil
	return err
}

// handleDelivery runs a delivery message: one callback attempt. It claims
// without reading first: a delivery message usually finds its record
// completed or failed, and a claim that finds another status names it, which
// drive then follows (a read less per callback: the claim reads anyway).
func (c *Collector) handleDelivery(ctx context.Context, m queue.Message) error {
	ctx, done, err := c.limits.admitMessage(ctx, m) // before the claim: a throttled callback holds no lease
	if err != nil {
		return err
	}
	defer done()
	return c.drive(ctx, m, &store.Record{ID: m.Key, TraceID: m.TraceID, Status: store.Completed})
}

// claimSteps bounds how often drive follows a record's real status after a
// conflict.
const claimSteps = 3

// drive takes record r, as read, one step further by its status: the one
// claim loop of both handlers. A conflict on a claim names the record's
// real status, which it follows.
func (c *Collector) drive(ctx context.Context, m queue.Message, r *store.Record) error {
	work := m.Topic == queue.TopicWork
	for range claimSteps {
		var err error
		switch r.Status {
		case store.Persisted, store.Queued:
			if !work {
				return queue.RetryAfter(time.Second, "record not executed yet: "+string(r.Status))
			}
			if err := c.awaitTurn(ctx, &m, r); err != nil { // ordering.go
				return err
			}
			return c.run(ctx, m, r)
		case store.Processing:
			if !work {
				return queue.RetryAfter(time.Second, "record not executed yet: processing")
			}
			if e := c.applyRules(r.Envelope); e.Target.External() {
				r.Envelope = e
				return c.dispatchExternal(ctx, m, r)
			}
			// Claimed for an internal execution by a collector before
			// executions were held by their message alone: take it over.
			var got *store.Record
			if got, err = c.claim(ctx, r, store.Change{Event: store.Resume, Lease: c.applyRules(r.Envelope).Timeout.D() + leaseMargin}); err == nil {
				return c.run(ctx, m, got)
			}
		case store.Completed, store.Failed:
			if c.cfg.DeliveryWorkers < 0 {
				if work { // the result's delivery message may be lost with a crash after the write
					return c.publish(ctx, queue.TopicDelivery, r)
				}
				return queue.RetryAfter(time.Second, "this collector does not deliver")
			}
			err = c.claimAndDeliver(ctx, r, store.StartDelivery)
		case store.Delivering:
			// The next attempt, or a redelivery after a crash mid-attempt; a
			// duplicate message waits for the lease instead of calling back twice.
			err = c.claimAndDeliver(ctx, r, store.Reclaim)
		default:
			return nil // delivered, dead, or held until its endpoint is enabled
		}
		if err == nil {
			return nil
		}
		now, ok := conflictStatus(err)
		if !ok {
			return claimFailed(err, m)
		}
		r.Status = now
	}
	return queue.RetryAfter(0, "record moved concurrently")
}

// run executes queued record r and writes its result (with the start of its
// delivery when this collector delivers, then delivers it).
func (c *Collector) run(ctx context.Context, m queue.Message, r *store.Record) error {
	log := c.log.With("id", r.ID, "trace_id", r.TraceID, "rule", r.Rule)
	r.Envelope = c.applyRules(r.Envelope)
	target := "internal"
	if r.Envelope.Target.External() {
		target = "external"
	}
	start := time.Now()
	ctx, span := spanFor(ctx, r.Envelope, "asyncmesh.process", attribute.String("asyncmesh.target", target))
	defer span.End()
	observe := func() { c.obs.executeSeconds.WithLabelValues(r.Rule, target).Observe(since(start)) }
	if target == "external" {
		defer observe()
		got, err := c.claim(ctx, r, store.Change{Event: store.Claim, Lease: r.Envelope.Timeout.D() + leaseMargin})
		if err != nil {
			return claimFailed(err, m)
		}
		got.Envelope = r.Envelope
		return c.dispatchExternal(ctx, m, got)
	}
	if m.Deliveries > 1 {
		log.Info("worker: running a redelivered request", "deliveries", m.Deliveries)
	}
	release, err := acquire(ctx, c.execSlots)
	if err != nil {
		return err
	}
	resp, err := c.execute(ctx, r)
	release()
	observe() // before the result's write: the first attempt follows it
	ch := store.Change{Event: store.Complete, Response: resp}
	if err != nil {
		span.RecordError(err)
		var perm *permanentError
		if !errors.As(err, &perm) && m.Deliveries < replayAttempts {
			log.Warn("worker: replay failed, will retry", "err", err, "deliveries", m.Deliveries)
			return err
		}
		log.Warn("worker: request failed", "err", err)
		ch = store.Change{Event: store.Fail, Error: err.Error()}
	}
	log.Info("worker: executed", "status", ch.Event.To())
	return c.finishRun(ctx, m, r, ch)
}

// finishRun writes the outcome ch (Complete or Fail) of record r, which
// message m ran, and, when this collector delivers, the start of its
// delivery in the same write, leased to this worker, which then makes the
// first attempt. A conflict means that another run of the request wrote its
// result first — or that this one's write landed and its answer was lost
// (a store that sent it again found it done): either way the handler
// follows the record's status (drive), so that a delivering record is not
// left without a message; its lease makes that wait.
func (c *Collector) finishRun(ctx context.Context, m queue.Message, r *store.Record, ch store.Change) error {
	release := func() {}
	deliverHere := c.cfg.DeliveryWorkers >= 0
	if deliverHere {
		// Within the endpoint's limits, or the result goes alone and its
		// delivery message waits for a token (limits.go).
		var done func()
		ctx, deliverHere, done = c.limits.admitFirst(ctx, r)
		defer done()
	}
	if deliverHere {
		// The place for the attempt first: the lease runs from the write.
		var err error
		if release, err = acquire(ctx, c.deliverySlots); err != nil {
			return err
		}
		ch.Then, ch.Lease = store.StartDelivery, c.deliveryLease()
	}
	got, err := c.advanceHeld(ctx, r, ch)
	if err == nil && got.Status == store.Delivering {
		defer release()
		return c.deliver(ctx, got)
	}
	release()
	now, conflict := conflictStatus(err)
	if !conflict {
		return err
	}
	c.log.Info("worker: the result was written already; following the record", "id", r.ID, "trace_id", r.TraceID, "status", now)
	r.Status = now
	return c.drive(ctx, m, r)
}

// claimAndDeliver claims record r for an attempt by event (StartDelivery
// or Reclaim) and makes it, within the bound of callbacks in flight (taken
// before the claim: the lease runs from it).
func (c *Collector) claimAndDeliver(ctx context.Context, r *store.Record, event store.Event) error {
	release, err := acquire(ctx, c.deliverySlots)
	if err != nil {
		return err
	}
	defer release()
	got, err := c.claim(ctx, r, store.Change{Event: event, Lease: c.deliveryLease()})
	if err != nil {
		return err
	}
	return c.deliver(ctx, got)
}

// deliveryLease is how long an attempt leases its record.
func (c *Collector) deliveryLease() time.Duration { return c.sender.Timeout + leaseMargin }

// claim applies ch, a claim, to record r (the record as read) and returns
// it as written. A record leased to another worker becomes a delayed
// redelivery of this message; other conflicts are returned for the caller
// to follow (conflictStatus).
func (c *Collector) claim(ctx context.Context, r *store.Record, ch store.Change) (*store.Record, error) {
	ch.Claim = true
	got, err := c.move(ctx, r.ID, ch)
	if until, ok := store.LeasedUntil(err); ok {
		// Rare (a duplicate message, or a redelivery after a crash or a
		// broker restart), and the only trace of this message until the
		// lease ends: the queue's delayed redelivery logs nothing. The wait
		// is on the store's clock, as the lease is.
		wait := until.Sub(c.store.Now()) + 50*time.Millisecond
		c.log.Info("claim: record leased; this message waits for the lease", "id", r.ID, "leased_until", until, "in", wait.Round(time.Millisecond).String())
		return nil, queue.RetryAfter(wait, "leased by another worker")
	}
	return got, err
}

// conflictStatus reports the status a record was found in by a compare-and-set
// that failed on its status (not on a lease).
func conflictStatus(err error) (store.Status, bool) {
	var ce *store.ConflictError
	if errors.As(err, &ce) && ce.LeasedUntil.IsZero() {
		return ce.Current, true
	}
	return "", false
}

// claimFailed is what a handler answers when its claim failed: a missing
// record makes a poison message (nothing can ever run it), a conflict still
// unresolved after claimSteps an immediate redelivery.
func claimFailed(err error, m queue.Message) error {
	switch {
	case errors.Is(err, store.ErrNotFound):
		return queue.Poison("no record for " + m.Topic + " message " + m.Key)
	case store.IsConflict(err):
		return queue.RetryAfter(0, "record moved concurrently")
	}
	return err
}

// messageDeadline is the filter's deadline of the request a work message
// carries, and whether the message says (zero: the filter set none).
func messageDeadline(m queue.Message) (time.Time, bool) {
	var msg struct {
		Deadline *int64 `json:"deadline"`
		Envelope *struct {
			Deadline int64 `json:"deadline"`
		} `json:"envelope"`
	}
	if json.Unmarshal(m.Body, &msg) != nil {
		return time.Time{}, false
	}
	var ms int64
	switch {
	case msg.Deadline != nil:
		ms = *msg.Deadline
	case msg.Envelope != nil:
		ms = msg.Envelope.Deadline
	default:
		return time.Time{}, false
	}
	return (&envelope.Envelope{Deadline: ms}).DeadlineTime(), true
}

// deliver makes one callback attempt of record r, leased to this worker in
// delivering, and writes its outcome: delivered, dead (gone, refused, or
// out of attempts), or the failed attempt with a lease until the next one
// is due, whose delivery message follows. A destination the SSRF guard
// refuses is dead at once.
func (c *Collector) deliver(ctx context.Context, r *store.Record) error {
	log := c.log.With("id", r.ID, "trace_id", r.TraceID, "rule", r.Rule)
	r.Envelope = c.applyRules(r.Envelope)
	if reason, off := c.health.isDisabled(r.Envelope); off {
		if _, err := c.advance(ctx, r, store.Change{Event: store.Hold, Endpoint: endpointOf(r.Envelope), Detail: "endpoint disabled: " + reason}); err != nil && !store.IsConflict(err) {
			return err
		}
		log.Info("delivery: held, its endpoint is disabled", "endpoint", endpointOf(r.Envelope), "reason", reason)
		return nil
	}
	leave, err := c.limits.enter(ctx, r.Envelope, r.ID)
	if err != nil {
		// Refused after the claim (a message checked under other limits, or
		// none): release the lease, or the message's short wait would find
		// the record leased for the whole attempt's lease (20 s by default).
		if _, rerr := c.move(ctx, r.ID, store.Change{Event: store.Reclaim}); rerr != nil && !store.IsConflict(rerr) {
			log.Info("delivery: releasing the lease of a throttled callback; it waits for the lease", "err", rerr)
		}
		return err
	}
	defer leave()
	attempts := attemptsSinceReplay(r) + 1
	protocol := r.Envelope.Callback.Protocol
	ctx, span := spanFor(ctx, r.Envelope, "asyncmesh.deliver", attribute.String("asyncmesh.protocol", protocol), attribute.Int("asyncmesh.attempt", attempts))
	res := c.sender.Send(ctx, r, attempts)
	// The receiver is done with it: its place is free before the result's
	// write (maxInFlight bounds what the receiver serves at once).
	leave()
	outcome := map[delivery.Outcome]string{delivery.Delivered: "delivered", delivery.Retry: "retry", delivery.Gone: "gone", delivery.Refused: "refused"}[res.Outcome]
	c.obs.attempts.WithLabelValues(r.Rule, protocol, outcome).Inc()
	c.obs.attemptSeconds.WithLabelValues(r.Rule, protocol).Observe(res.Attempt.Latency.Seconds())
	span.SetAttributes(attribute.String("asyncmesh.outcome", outcome), attribute.Int("asyncmesh.status_code", res.Attempt.StatusCode))
	var attemptErr error
	if res.Attempt.Error != "" {
		attemptErr = errors.New(res.Attempt.Error)
	}
	endSpan(span, attemptErr)
	disabled := c.health.observe(ctx, r.Envelope, res.Outcome, res.Attempt.At)
	// Until the next attempt is due, the record stays leased.
	ch := store.Change{Event: store.Retry, Attempt: &res.Attempt, Lease: res.Wait}
	switch {
	case res.Outcome == delivery.Delivered:
		ch = store.Change{Event: store.Deliver, Attempt: &res.Attempt}
	case disabled:
		// The endpoint is disabled now (410 Gone, or this failure reached the
		// threshold): held with the endpoint's other deliveries.
		ch = store.Change{Event: store.Hold, Endpoint: endpointOf(r.Envelope), Attempt: &res.Attempt, Detail: "endpoint disabled: " + res.Attempt.Error}
	case res.Outcome == delivery.Gone:
		ch = store.Change{Event: store.GiveUp, Attempt: &res.Attempt, Detail: "endpoint gone (410)"}
	case res.Outcome == delivery.Refused:
		// The SSRF guard or the rule's allowedHosts refused the destination:
		// no retry can change that, and each would be another attempt at it.
		ch = store.Change{Event: store.GiveUp, Attempt: &res.Attempt, Detail: "callback refused: " + res.Attempt.Error}
	case attempts >= r.Envelope.Retry.MaxAttempts:
		ch = store.Change{Event: store.GiveUp, Attempt: &res.Attempt, Detail: fmt.Sprintf("gave up after %d attempts", attempts)}
	}
	if _, err := c.advanceHeld(ctx, r, ch); err != nil {
		if store.IsConflict(err) {
			return nil // someone else finished it
		}
		var lost *unpublishedError
		if errors.As(err, &lost) {
			// The next attempt's message: the one being handled stands for
			// it, redelivered (advanceHeld).
			log.Warn("delivery: attempt failed and recorded, but its next attempt's message was not published; this message will carry it", "attempt", attempts, "err", lost.err)
		}
		return err
	}
	if ch.Event == store.Retry {
		log.Info("delivery: attempt failed, will retry", "attempt", attempts, "in", res.Wait, "code", res.Attempt.StatusCode, "err", res.Attempt.Error)
		return nil
	}
	log.Info("delivery: finished", "status", ch.Event.To(), "attempts", attempts, "code", res.Attempt.StatusCode)
	return nil
}

// acquire takes a place in slots, waiting for one until ctx ends, and
// returns its release.
func acquire(ctx context.Context, slots chan struct{}) (func(), error) {
	select {
	case slots <- struct{}{}:
		return func() { <-slots }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
