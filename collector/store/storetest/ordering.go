package storetest

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/store"
)

// ordering checks store.Orderer: a key's first request follows nothing,
// each next one the ones before it, newest first and at most
// store.MaxOrderLinks, keys are apart, and concurrent Chain calls (as from
// several collectors' intakes) form one sequence: every request follows a
// different one, and exactly one follows nothing.
func ordering(t *testing.T, open func(t *testing.T) store.Store) {
	s := open(t)
	o, ok := store.OrdererOf(s)
	if !ok {
		t.Skip("the store does not implement store.Orderer")
	}
	ctx := context.Background()
	deadline := time.Now().Add(time.Minute).UTC().Truncate(time.Millisecond)
	scope, other := store.OrderScope("r", "account-1"), store.OrderScope("r", "account-2")
	var chained []store.Link // newest first
	for i := range store.MaxOrderLinks + 3 {
		l := store.Link{ID: fmt.Sprintf("r%02d", i)}
		if i%2 == 0 {
			l.Deadline = deadline.Add(time.Duration(i) * time.Millisecond)
		}
		prev, err := o.Chain(ctx, scope, l)
		if err != nil {
			t.Fatal(err)
		}
		want := chained[:min(len(chained), store.MaxOrderLinks)]
		if !sameLinks(prev, want) {
			t.Fatalf("request %s follows %+v, want %+v", l.ID, prev, want)
		}
		chained = append([]store.Link{l}, chained...)
	}
	// A retried intake: the last request chained again keeps its place.
	again, err := o.Chain(ctx, scope, chained[0])
	if err != nil || !sameLinks(again, chained[1:min(len(chained), store.MaxOrderLinks)]) {
		t.Fatalf("request %s chained again follows %+v (%v), want %+v", chained[0].ID, again, err, chained[1:store.MaxOrderLinks])
	}
	if prev, err := o.Chain(ctx, scope, store.Link{ID: "after-retry"}); err != nil || len(prev) == 0 || prev[0].ID != chained[0].ID {
		t.Fatalf("the request after a retried one follows %+v (%v), want %s first", prev, err, chained[0].ID)
	}
	if prev, err := o.Chain(ctx, other, store.Link{ID: "x"}); err != nil || len(prev) != 0 {
		t.Fatalf("the first request of another key follows %+v (%v), want nothing", prev, err)
	}
	unchaining(t, o)
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
				after := ""
				if len(prev) > 0 {
					after = prev[0].ID
				}
				mu.Lock()
				if by, dup := follows[after]; dup {
					t.Errorf("%s and %s both follow %q", by, id, after)
				}
				follows[after] = id
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
		case k.gone && len(prev) != 0:
			t.Errorf("%s: the key's next request follows %+v, want nothing (the key expired)", k.name, prev)
		case !k.gone && (len(prev) != 1 || prev[0].ID != last[i]):
			t.Errorf("%s: the key's next request follows %+v, want %s (the key kept)", k.name, prev, last[i])
		}
	}
}

// unchaining checks Orderer.Unchain: the key's last request is taken out
// (the next follows the one before it; a key left empty is gone), any
// other is left in place.
func unchaining(t *testing.T, o store.Orderer) {
	ctx := context.Background()
	scope := store.OrderScope("r", fmt.Sprintf("unchain-%d", time.Now().UnixNano()))
	chain := func(id string) []store.Link {
		t.Helper()
		prev, err := o.Chain(ctx, scope, store.Link{ID: id})
		if err != nil {
			t.Fatal(err)
		}
		return prev
	}
	unchain := func(id string) {
		t.Helper()
		if err := o.Unchain(ctx, scope, store.Link{ID: id}); err != nil {
			t.Fatal(err)
		}
	}
	ids := func(links []store.Link) (out []string) {
		for _, l := range links {
			out = append(out, l.ID)
		}
		return out
	}
	chain("u0")
	unchain("u0")
	if prev := chain("u1"); len(prev) != 0 {
		t.Fatalf("after its only request was taken out, the key's next follows %v, want nothing", ids(prev))
	}
	chain("u2")
	unchain("u2")
	if prev := chain("u3"); !slices.Equal(ids(prev), []string{"u1"}) {
		t.Fatalf("after its last request was taken out, the key's next follows %v, want [u1]", ids(prev))
	}
	unchain("u1") // no longer the last: stays
	if prev := chain("u4"); !slices.Equal(ids(prev), []string{"u3", "u1"}) {
		t.Fatalf("a request taken out when another followed it: the key's next follows %v, want [u3 u1]", ids(prev))
	}
}

// sameLinks reports whether a and b name the same requests with the same
// deadlines, in the same order.
func sameLinks(a, b []store.Link) bool {
	return slices.EqualFunc(a, b, func(x, y store.Link) bool { return x.ID == y.ID && x.Deadline.Equal(y.Deadline) })
}
