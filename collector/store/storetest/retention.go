package storetest

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/store"
)

// retention checks store.Expirer, where the store has it: a pass deletes
// the records that became terminal before the cutoff, and keeps the ones
// that are not terminal (however old) and those terminal since the cutoff.
// The pass runs now with a cutoff of its own instead of waiting for a
// retention to pass.
func retention(t *testing.T, open func(t *testing.T) store.Store) {
	s := open(t)
	e, ok := s.(store.Expirer)
	if !ok {
		t.Skip("the store does not implement store.Expirer")
	}
	ctx := context.Background()
	now := time.Now().UTC()
	// Two days ahead: a backend that deletes by the day of creation (the
	// latitude store.Expirer allows) sees today's records in a day that
	// ended before the cutoff.
	before := now.Add(48 * time.Hour)

	type rec struct {
		name  string
		moves []store.Change // from persisted
		body  []byte
		gone  bool
	}
	to := func(from, to store.Status, at time.Time) store.Change {
		return store.Change{From: []store.Status{from}, To: to, At: at}
	}
	recs := []rec{
		{name: "delivered before the cutoff", moves: []store.Change{to(store.Persisted, store.Delivered, now)}, gone: true},
		{name: "dead before the cutoff", moves: []store.Change{to(store.Persisted, store.Dead, now)}, gone: true},
		{name: "delivered before the cutoff, with bodies kept apart", body: bytes.Repeat([]byte("b"), 1<<20+1),
			moves: []store.Change{{From: []store.Status{store.Persisted}, To: store.Delivered, At: now,
				Response: &store.Response{Status: 200, Body: bytes.Repeat([]byte("r"), 1<<20+1)}}}, gone: true},
		{name: "delivered after the cutoff", moves: []store.Change{to(store.Persisted, store.Delivered, before.Add(time.Hour))}},
		{name: "processing since long before the cutoff", moves: []store.Change{to(store.Persisted, store.Processing, now.Add(-90*24*time.Hour))}},
		{name: "persisted"},
		{name: "completed, not yet delivered", moves: []store.Change{to(store.Persisted, store.Completed, now)}},
		{name: "replayed after it was delivered", moves: []store.Change{to(store.Persisted, store.Delivered, now), to(store.Delivered, store.Delivering, now)}},
	}
	ids := make([]string, len(recs))
	status := make([]store.Status, len(recs))
	wantGone := 0
	for i, rc := range recs {
		env := NewEnvelope("retention", "")
		if rc.body != nil {
			env.Body = rc.body
		}
		r := store.NewRecord(env, now)
		if err := s.Create(ctx, r); err != nil {
			t.Fatalf("%s: Create: %v", rc.name, err)
		}
		ids[i], status[i] = r.ID, store.Persisted
		for _, c := range rc.moves {
			if _, err := s.Transition(ctx, r.ID, c); err != nil {
				t.Fatalf("%s: Transition to %s: %v", rc.name, c.To, err)
			}
			status[i] = c.To
		}
		if rc.gone {
			wantGone++
		}
	}

	n, err := e.Expire(ctx, before)
	if err != nil {
		t.Fatalf("Expire: %v", err)
	}
	if n != wantGone {
		t.Errorf("Expire deleted %d records, want %d", n, wantGone)
	}
	for i, rc := range recs {
		got, err := s.Get(ctx, ids[i])
		switch {
		case rc.gone && !errors.Is(err, store.ErrNotFound):
			t.Errorf("%s: still there after a retention pass (Get: %v)", rc.name, err)
		case !rc.gone && err != nil:
			t.Errorf("%s: Get after a retention pass: %v, want it kept", rc.name, err)
		case !rc.gone && got.Status != status[i]:
			t.Errorf("%s: %s after a retention pass, want %s", rc.name, got.Status, status[i])
		}
	}
	if n, err := e.Expire(ctx, before); err != nil || n != 0 {
		t.Errorf("a second pass deleted %d records (%v), want 0", n, err)
	}
	// What was kept still moves (a backend may hold writes while it decides).
	for i, rc := range recs {
		if status[i] == store.Processing {
			if _, err := s.Transition(ctx, ids[i], to(store.Processing, store.Completed, time.Time{})); err != nil {
				t.Errorf("%s: Transition after a retention pass: %v", rc.name, err)
			}
		}
	}
}
