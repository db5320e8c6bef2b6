package store

import (
	"fmt"
	"slices"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/queue"
)

// Event names a transition of the lifecycle. Every Change is one event, and
// the event alone says which statuses it applies from, which it moves to and
// which message follows it: callers cannot write a transition the lifecycle
// does not have (docs/architecture.md, "Lifecycle").
type Event string

// The events. On the common path a request is written three times: Enqueue
// (created queued, with its work message), Complete then StartDelivery (one
// write, by the worker that executed it and now delivers it) and Deliver.
const (
	// Enqueue: persisted → queued: the work message is out. It is written
	// with the message by an outbox, else once the queue confirmed it.
	Enqueue Event = "enqueue"
	// Claim: queued | persisted → processing, leased: a worker takes a
	// request it hands to an external node (internal executions are held by
	// their queue message and are not claimed in the store).
	Claim Event = "claim"
	// Resume: processing stays, leased anew: a redelivered message takes over
	// a record whose lease expired (its worker crashed).
	Resume Event = "resume"
	// Release: processing stays, the lease is released for a retry.
	Release Event = "release"
	// HandOff: processing stays, leased until the external node's deadline:
	// the node took the task.
	HandOff Event = "hand-off"
	// Complete: queued | persisted | processing → completed: the service
	// (or the node) answered; the delivery message follows.
	Complete Event = "complete"
	// Fail: queued | persisted | processing → failed: no answer; the
	// delivery message follows (the callback carries the error).
	Fail Event = "fail"
	// StartDelivery: completed | failed → delivering, leased for an attempt.
	StartDelivery Event = "start-delivery"
	// Reclaim: delivering stays, leased for the next attempt.
	Reclaim Event = "reclaim"
	// Retry: delivering stays; an attempt failed and is recorded, and the
	// record is leased until the next attempt is due.
	Retry Event = "retry"
	// Deliver: delivering → delivered.
	Deliver Event = "deliver"
	// GiveUp: delivering → dead: attempts exhausted, endpoint gone, or the
	// destination refused.
	GiveUp Event = "give-up"
	// Hold: completed | failed | delivering → held: the callback's endpoint
	// is disabled; no attempt is made, none is scheduled.
	Hold Event = "hold"
	// Unhold: held → delivering: the endpoint is enabled again; the
	// delivery message follows.
	Unhold Event = "unhold"
	// Abandon: persisted | queued → dead: intake answered the filter too
	// late, so the caller was told it failed; it never runs.
	Abandon Event = "abandon"
	// Replay: delivered | dead → delivering, the one move back: an operator
	// asks for the callback again (the request is not run again).
	Replay Event = "replay"
)

// step is one event's place in the lifecycle.
type step struct {
	from []Status
	to   Status
	// next is the topic of the message that follows the change ("": none,
	// the message being handled carries on).
	next string
	// quiet events add no history entry (a lease's renewal or release; a
	// failed attempt, which Attempts records).
	quiet bool
	// back marks the one event that moves backwards (Replay).
	back bool
}

var lifecycle = map[Event]step{
	Enqueue:       {from: []Status{Persisted}, to: Queued, next: queue.TopicWork},
	Claim:         {from: []Status{Persisted, Queued}, to: Processing},
	Resume:        {from: []Status{Processing}, to: Processing},
	Release:       {from: []Status{Processing}, to: Processing, quiet: true},
	HandOff:       {from: []Status{Processing}, to: Processing},
	Complete:      {from: []Status{Persisted, Queued, Processing}, to: Completed, next: queue.TopicDelivery},
	Fail:          {from: []Status{Persisted, Queued, Processing}, to: Failed, next: queue.TopicDelivery},
	StartDelivery: {from: []Status{Completed, Failed}, to: Delivering},
	Reclaim:       {from: []Status{Delivering}, to: Delivering, quiet: true},
	Retry:         {from: []Status{Delivering}, to: Delivering, quiet: true, next: queue.TopicDelivery},
	Deliver:       {from: []Status{Delivering}, to: Delivered},
	GiveUp:        {from: []Status{Delivering}, to: Dead},
	Hold:          {from: []Status{Completed, Failed, Delivering}, to: Held},
	Unhold:        {from: []Status{Held}, to: Delivering, next: queue.TopicDelivery},
	Abandon:       {from: []Status{Persisted, Queued}, to: Dead},
	Replay:        {from: []Status{Delivered, Dead}, to: Delivering, back: true, next: queue.TopicDelivery},
}

// To is the status e moves to.
func (e Event) To() Status { return lifecycle[e].to }

// Next is the topic of the message that follows e ("" when none does).
func (e Event) Next() string { return lifecycle[e].next }

// Transition is one entry of a record's history: the status it reached (or
// kept), when, by which event, and a detail for people (a reason, a node's
// address). Code reads Event (and Node), never Detail.
type Transition struct {
	Status Status    `json:"status"`
	At     time.Time `json:"at"`
	Event  Event     `json:"event,omitempty"`
	Detail string    `json:"note,omitempty"`
	// Node is, on a hand-off, the declared processing node that took the
	// task (rules file nodes:): its completion is bound to it.
	Node string `json:"node,omitempty"`
}

// Change is one event applied to a record by compare-and-set: it applies
// only when the record's status is one the event moves from and, with
// Claim, only when no lease is held.
type Change struct {
	Event Event
	// Then, when set, is a second event applied in the same write (the
	// worker's Complete or Fail then StartDelivery). Claim and Lease apply
	// to the write as a whole.
	Then Event
	// Detail is kept with the history entry, and Node (a hand-off's
	// declared node) too.
	Detail string
	Node   string
	// Endpoint, with Hold, is the disabled endpoint the record waits for
	// (Record.Endpoint).
	Endpoint string
	// Claim requires the record's lease to have expired.
	Claim bool
	// Lease leases the record for this long from the change (the store's
	// clock, never the caller's: collectors whose clocks disagree share
	// leases safely); zero releases it.
	Lease time.Duration
	// Optional fields set with the change.
	Response *Response
	Error    string
	Attempt  *Attempt
	// At is the change's time; the store sets it from its clock.
	At time.Time
}

// Apply checks c against r and applies it in place. Implementations call it
// inside their own atomic read-modify-write so that all share one semantics;
// it is the one place that enforces the lifecycle.
func (c Change) Apply(r *Record) error {
	if c.At.IsZero() {
		return fmt.Errorf("change %s of %s: no time (the store sets it)", c.Event, r.ID)
	}
	if c.Claim && c.At.Before(r.LeaseUntil) {
		return &ConflictError{ID: r.ID, Current: r.Status, Want: c.Event.To(), LeasedUntil: r.LeaseUntil}
	}
	// Check every event before changing anything: a refused change writes
	// nothing, and its conflict names the record's status as it is.
	st := r.Status
	for _, e := range c.Events() {
		s, ok := lifecycle[e]
		if !ok {
			return fmt.Errorf("change of %s: %q is not an event of the lifecycle", r.ID, e)
		}
		if !slices.Contains(s.from, st) {
			return &ConflictError{ID: r.ID, Current: r.Status, Want: s.to}
		}
		st = s.to
	}
	for i, e := range c.Events() {
		s := lifecycle[e]
		if !s.quiet {
			h := Transition{Status: s.to, At: c.At, Event: e}
			if i == 0 {
				h.Detail, h.Node = c.Detail, c.Node
			}
			r.History = append(r.History, h)
		}
	}
	r.Status = st
	r.LeaseUntil = time.Time{}
	if c.Lease > 0 {
		r.LeaseUntil = c.At.Add(c.Lease).UTC()
	}
	if c.Response != nil {
		r.Response = c.Response
	}
	if c.Error != "" {
		r.Error = c.Error
	}
	if c.Attempt != nil {
		r.Attempts = append(r.Attempts, *c.Attempt)
	}
	if c.Endpoint != "" {
		r.Endpoint = c.Endpoint
	}
	r.UpdatedAt = c.At
	return nil
}

// Last returns the time of the last history entry of r made by one of
// events (zero when none).
func (r *Record) Last(events ...Event) time.Time {
	for i := len(r.History) - 1; i >= 0; i-- {
		for _, e := range events {
			if r.History[i].Event == e {
				return r.History[i].At
			}
		}
	}
	return time.Time{}
}

// Events is the events c applies, in order.
func (c Change) Events() []Event {
	if c.Then == "" {
		return []Event{c.Event}
	}
	return []Event{c.Event, c.Then}
}

// Next is the topic of the message that follows c ("" when none does).
func (c Change) Next() string {
	if c.Then != "" {
		return c.Then.Next()
	}
	return c.Event.Next()
}

// Moves reports whether e changes a record's status (Resume, Release,
// HandOff, Reclaim and Retry keep it).
func (e Event) Moves() bool {
	s := lifecycle[e]
	return !(len(s.from) == 1 && s.from[0] == s.to)
}
