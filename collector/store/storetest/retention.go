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
// that are not terminal (whenever they last moved) and those that became
// terminal since the cutoff. The passes run now, with cutoffs of their
// own, instead of waiting for a retention to go by.
func retention(t *testing.T, open func(t *testing.T) store.Store) {
	s := open(t)
	e, ok := s.(store.Expirer)
	if !ok {
		t.Skip("the store does not implement store.Expirer")
	}
	ctx := context.Background()
	big := func(b byte) []byte { return bytes.Repeat([]byte{b}, 1<<20+1) } // kept apart from the record on some stores
	ev := func(e store.Event) store.Change { return store.Change{Event: e} }
	toDelivering := []store.Change{ev(store.Enqueue), {Event: store.Complete, Then: store.StartDelivery, Response: &store.Response{Status: 200, Body: []byte("ok")}}}
	type rec struct {
		name     string
		body     []byte
		moves    []store.Change // before the first cutoff
		terminal []store.Change // after it
		gone     bool           // after the second pass
	}
	recs := []rec{
		{name: "delivered", moves: toDelivering, terminal: []store.Change{ev(store.Deliver)}, gone: true},
		{name: "dead (abandoned)", terminal: []store.Change{ev(store.Abandon)}, gone: true},
		{name: "delivered, with large bodies", body: big('b'), moves: []store.Change{ev(store.Enqueue),
			{Event: store.Complete, Then: store.StartDelivery, Response: &store.Response{Status: 200, Body: big('r')}}},
			terminal: []store.Change{ev(store.Deliver)}, gone: true},
		{name: "persisted"},
		{name: "queued", moves: []store.Change{ev(store.Enqueue)}},
		{name: "processing", moves: []store.Change{ev(store.Claim)}},
		{name: "completed", moves: []store.Change{ev(store.Complete)}},
		{name: "delivering", moves: toDelivering},
		{name: "replayed after it was dead", terminal: []store.Change{ev(store.Abandon), ev(store.Replay)}},
	}
	ids := make([]string, len(recs))
	status := make([]store.Status, len(recs))
	move := func(i int, cs []store.Change) {
		t.Helper()
		for _, c := range cs {
			r, err := s.Transition(ctx, ids[i], c)
			if err != nil {
				t.Fatalf("%s: %s: %v", recs[i].name, c.Event, err)
			}
			status[i] = r.Status
		}
	}
	wantGone := 0
	for i, rc := range recs {
		env := NewEnvelope("retention", "")
		if rc.body != nil {
			env.Body = rc.body
		}
		r := store.NewRecord(env, s.Now())
		if err := s.Create(ctx, r); err != nil {
			t.Fatalf("%s: Create: %v", rc.name, err)
		}
		ids[i], status[i] = r.ID, store.Persisted
		move(i, rc.moves)
		if rc.gone {
			wantGone++
		}
	}
	cutoff := s.Now()
	for i, rc := range recs {
		move(i, rc.terminal)
	}

	check := func(pass string, gone func(rec) bool) {
		t.Helper()
		for i, rc := range recs {
			got, err := s.Get(ctx, ids[i])
			switch {
			case gone(rc) && !errors.Is(err, store.ErrNotFound):
				t.Errorf("%s: %s still there (Get: %v)", pass, rc.name, err)
			case !gone(rc) && err != nil:
				t.Errorf("%s: %s: Get: %v, want it kept", pass, rc.name, err)
			case !gone(rc) && got.Status != status[i]:
				t.Errorf("%s: %s is %s, want %s", pass, rc.name, got.Status, status[i])
			}
		}
	}
	// Everything became terminal at or after the cutoff: nothing goes.
	if n, err := e.Expire(ctx, cutoff); err != nil || n != 0 {
		t.Errorf("a pass with a cutoff before every terminal move deleted %d records (%v), want 0", n, err)
	}
	check("after a pass with a cutoff before the terminal moves", func(rec) bool { return false })

	// Two days on: a backend that deletes by the day of creation (the
	// latitude store.Expirer allows) sees today's records in a day that
	// ended before the cutoff.
	later := s.Now().Add(48 * time.Hour)
	n, err := e.Expire(ctx, later)
	if err != nil {
		t.Fatalf("Expire: %v", err)
	}
	if n != wantGone {
		t.Errorf("Expire deleted %d records, want %d", n, wantGone)
	}
	check("after a pass two days on", func(rc rec) bool { return rc.gone })
	if n, err := e.Expire(ctx, later); err != nil || n != 0 {
		t.Errorf("a second pass deleted %d records (%v), want 0", n, err)
	}
	// What was kept still moves (a backend may hold writes while it decides).
	for i := range recs {
		if status[i] == store.Processing {
			move(i, []store.Change{ev(store.Complete)})
		}
	}
}
