package store

import (
	"errors"
	"testing"
	"time"
)

// The lifecycle only moves forward: every event but Replay leads to a status
// of the same or a later rank, and nothing leaves a terminal status but
// Replay. Apply enforces the table, so this test is where monotonicity is
// proven.
func TestLifecycleMovesForward(t *testing.T) {
	reached := map[Status]bool{Persisted: true}
	for e, s := range lifecycle {
		if len(s.from) == 0 || !s.to.Valid() {
			t.Errorf("%s: from %v to %q", e, s.from, s.to)
		}
		for _, f := range s.from {
			if !f.Valid() {
				t.Errorf("%s: from %q is not a status", e, f)
			}
			if Forward(f, s.to) == s.back {
				t.Errorf("%s: %s → %s, back=%v", e, f, s.to, s.back)
			}
			if f.Terminal() && e != Replay {
				t.Errorf("%s leaves terminal status %s", e, f)
			}
		}
		if s.back && e != Replay {
			t.Errorf("%s moves back: only Replay may", e)
		}
		if s.next != "" && s.next != "work" && s.next != "delivery" {
			t.Errorf("%s: next %q is not a topic", e, s.next)
		}
		reached[s.to] = true
	}
	for st := range rank {
		if !reached[st] {
			t.Errorf("no event reaches %s", st)
		}
	}
}

func TestApply(t *testing.T) {
	at := time.Date(2026, 12, 6, 1, 0, 0, 0, time.UTC)
	fresh := func() *Record {
		return &Record{ID: "r", Status: Queued, History: []Transition{{Status: Persisted}, {Status: Queued, Event: Enqueue}}}
	}
	for _, tc := range []struct {
		name    string
		status  Status
		lease   time.Time
		c       Change
		want    Status
		history int // entries added
		err     string
	}{
		{name: "complete then start delivery", status: Queued, c: Change{Event: Complete, Then: StartDelivery, Lease: time.Minute}, want: Delivering, history: 2},
		{name: "quiet retry", status: Delivering, c: Change{Event: Retry, Attempt: &Attempt{}}, want: Delivering},
		{name: "hand-off keeps the status with an entry", status: Processing, c: Change{Event: HandOff}, want: Processing, history: 1},
		{name: "replay moves back", status: Dead, c: Change{Event: Replay}, want: Delivering, history: 1},
		{name: "no skipping", status: Queued, c: Change{Event: Deliver}, err: "conflict"},
		{name: "then must follow", status: Queued, c: Change{Event: Complete, Then: Deliver}, err: "conflict"},
		{name: "no way back but replay", status: Delivered, c: Change{Event: Complete}, err: "conflict"},
		{name: "abandon after the result is refused", status: Completed, c: Change{Event: Abandon}, err: "conflict"},
		{name: "unknown event", status: Queued, c: Change{Event: "skip"}, err: "not an event"},
		{name: "claim of a leased record", status: Delivering, lease: at.Add(time.Second), c: Change{Event: Reclaim, Claim: true}, err: "leased"},
		{name: "claim of an expired lease", status: Delivering, lease: at.Add(-time.Second), c: Change{Event: Reclaim, Claim: true, Lease: time.Minute}, want: Delivering},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := fresh()
			r.Status, r.LeaseUntil = tc.status, tc.lease
			before := len(r.History)
			tc.c.At = at
			err := tc.c.Apply(r)
			switch {
			case tc.err == "conflict":
				var ce *ConflictError
				if !errors.As(err, &ce) || ce.Current != tc.status {
					t.Fatalf("Apply = %v, want a conflict naming %s", err, tc.status)
				}
				if r.Status != tc.status || len(r.History) != before {
					t.Fatalf("a refused change wrote: %s, %d entries", r.Status, len(r.History))
				}
			case tc.err == "leased":
				if _, ok := LeasedUntil(err); !ok {
					t.Fatalf("Apply = %v, want a lease conflict", err)
				}
			case tc.err != "":
				if err == nil || IsConflict(err) {
					t.Fatalf("Apply = %v, want an error with %q", err, tc.err)
				}
			default:
				if err != nil {
					t.Fatal(err)
				}
				if r.Status != tc.want || len(r.History)-before != tc.history {
					t.Fatalf("status %s with %d new entries, want %s with %d", r.Status, len(r.History)-before, tc.want, tc.history)
				}
				if tc.c.Lease > 0 && !r.LeaseUntil.Equal(at.Add(tc.c.Lease)) {
					t.Fatalf("lease until %v", r.LeaseUntil)
				}
			}
		})
	}
}
