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
