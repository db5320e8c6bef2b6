package storetest

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/store"
)

// ordering checks store.Orderer: a key's first request follows nothing,
// each next one the last before it, keys are apart, and concurrent Chain
// calls (as from several collectors' intakes) form one sequence: every
// request follows a different one, and exactly one follows nothing.
func ordering(t *testing.T, open func(t *testing.T) store.Store) {
	s := open(t)
	o, ok := store.OrdererOf(s)
	if !ok {
		t.Skip("the store does not implement store.Orderer")
	}
	ctx := context.Background()
	deadline := time.Now().Add(time.Minute).UTC().Truncate(time.Millisecond)
	scope, other := store.OrderScope("r", "account-1"), store.OrderScope("r", "account-2")
	for i, want := range []store.Link{{}, {ID: "a", Deadline: deadline}, {ID: "b"}} {
		id := string(rune('a' + i))
		l := store.Link{ID: id}
		if i == 0 {
			l.Deadline = deadline
		}
		prev, err := o.Chain(ctx, scope, l)
		if err != nil {
			t.Fatal(err)
		}
		if prev.ID != want.ID || !prev.Deadline.Equal(want.Deadline) {
			t.Fatalf("request %s follows %+v, want %+v", id, prev, want)
		}
	}
	if prev, err := o.Chain(ctx, other, store.Link{ID: "x"}); err != nil || prev != (store.Link{}) {
		t.Fatalf("the first request of another key follows %+v (%v), want nothing", prev, err)
	}
	// Concurrent intakes on one new key: one sequence.
	seq := store.OrderScope("r", "concurrent")
	const writers, each = 8, 5
	var mu sync.Mutex
	follows := map[string]string{} // predecessor → request
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				id := fmt.Sprintf("w%d-%d", w, i)
				prev, err := o.Chain(ctx, seq, store.Link{ID: id})
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				if by, dup := follows[prev.ID]; dup {
					t.Errorf("%s and %s both follow %q", by, id, prev.ID)
				}
				follows[prev.ID] = id
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(follows) != writers*each {
		t.Fatalf("%d distinct predecessors of %d requests", len(follows), writers*each)
	}
	// Walking from the first request reaches every one: a single chain.
	n, at := 0, ""
	for {
		next, ok := follows[at]
		if !ok {
			break
		}
		n, at = n+1, next
	}
	if n != writers*each {
		t.Fatalf("the sequence from its first request has %d of %d requests", n, writers*each)
	}
}

// orderingExpiry checks Orderer.ExpireOrder: a key whose last request is
// done (delivered, dead, never written with its intake deadline past) and
// was chained before the cutoff is deleted, so that its next request
// follows nothing; a key whose last request is not done (queued, or not
// written yet with its intake deadline ahead) is kept, however old; and a
// cutoff before the keys' writes deletes nothing.
func orderingExpiry(t *testing.T, open func(t *testing.T) store.Store) {
	s := open(t)
	o, ok := store.OrdererOf(s)
	if !ok {
		t.Skip("the store does not implement store.Orderer")
	}
	ctx := context.Background()
	ev := func(e store.Event) store.Change { return store.Change{Event: e} }
	toDelivering := []store.Change{ev(store.Enqueue), {Event: store.Complete, Then: store.StartDelivery, Response: &store.Response{Status: 200}}}
	type key struct {
		name     string
		record   bool // the last request has a record
		moves    []store.Change
		deadline time.Duration // of the last request, from the cutoff
		gone     bool
	}
	keys := []key{
		{name: "delivered", record: true, moves: append(toDelivering, ev(store.Deliver)), gone: true},
		{name: "dead", record: true, moves: []store.Change{ev(store.Abandon)}, gone: true},
		{name: "never written, its intake over", deadline: -time.Minute, gone: true},
		{name: "queued", record: true, moves: []store.Change{ev(store.Enqueue)}},
		{name: "delivering", record: true, moves: toDelivering},
		{name: "not written yet, its intake under way", deadline: time.Hour},
	}
	before := s.Now().Add(-time.Second) // every key is chained after it
	cutoff := s.Now().Add(time.Minute)  // and before this one
	scopes := make([]string, len(keys))
	last := make([]string, len(keys))
	for i, k := range keys {
		scopes[i] = store.OrderScope("expiry", fmt.Sprintf("key-%d-%d", i, time.Now().UnixNano()))
		env := NewEnvelope("expiry", "")
		last[i] = env.ID
		l := store.Link{ID: env.ID}
		if k.deadline != 0 {
			l.Deadline = cutoff.Add(k.deadline).UTC().Truncate(time.Millisecond)
		}
		if _, err := o.Chain(ctx, scopes[i], l); err != nil {
			t.Fatalf("%s: Chain: %v", k.name, err)
		}
		if !k.record {
			continue
		}
		if err := s.Create(ctx, store.NewRecord(env, s.Now())); err != nil {
			t.Fatalf("%s: Create: %v", k.name, err)
		}
		for _, c := range k.moves {
			if _, err := s.Transition(ctx, env.ID, c); err != nil {
				t.Fatalf("%s: %s: %v", k.name, c.Event, err)
			}
		}
	}
	if n, err := o.ExpireOrder(ctx, before); err != nil || n != 0 {
		t.Errorf("a pass with a cutoff before every key's write deleted %d keys (%v), want 0", n, err)
	}
	want := 0
	for _, k := range keys {
		if k.gone {
			want++
		}
	}
	// Other tests' keys in the same store may go too: at least ours.
	if n, err := o.ExpireOrder(ctx, cutoff); err != nil || n < want {
		t.Errorf("ExpireOrder deleted %d keys (%v), want at least %d", n, err, want)
	}
	for i, k := range keys {
		prev, err := o.Chain(ctx, scopes[i], store.Link{ID: "next-" + last[i]})
		switch {
		case err != nil:
			t.Errorf("%s: Chain after the pass: %v", k.name, err)
		case k.gone && prev.ID != "":
			t.Errorf("%s: the key's next request follows %s, want nothing (the key expired)", k.name, prev.ID)
		case !k.gone && prev.ID != last[i]:
			t.Errorf("%s: the key's next request follows %q, want %s (the key kept)", k.name, prev.ID, last[i])
		}
	}
}
