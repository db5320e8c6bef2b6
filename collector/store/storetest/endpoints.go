package storetest

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/store"
)

// endpoints checks store.Endpoints: a new endpoint, compare-and-set merges
// from concurrent collectors losing nothing, and the list of disabled ones.
func endpoints(t *testing.T, open func(t *testing.T) store.Store) {
	s := open(t)
	es, ok := store.EndpointsOf(s)
	if !ok {
		t.Skip("the store does not implement store.Endpoints")
	}
	ctx := context.Background()
	id := store.EndpointID("billing", "http", "https://hooks.example/cb")
	if _, err := es.GetEndpoint(ctx, id); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("an endpoint never written: %v, want ErrNotFound", err)
	}
	now := time.Now().UTC().Truncate(time.Millisecond)
	// Concurrent merges, as from several collectors: every attempt counts.
	const writers, each = 8, 5
	var wg sync.WaitGroup
	for range writers {
		wg.Go(func() {
			for range each {
				_, err := es.UpdateEndpoint(ctx, id, func(e *store.Endpoint) error {
					e.URL, e.Protocol, e.Caller = "https://hooks.example/cb", "http", "billing"
					e.Observe(store.EndpointDelta{Attempts: 1, LastFailure: now}, now)
					return nil
				})
				if err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	e, err := es.GetEndpoint(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if e.Attempts != writers*each || e.ConsecutiveFailures != writers*each || e.Successes != 0 || e.URL != "https://hooks.example/cb" {
		t.Fatalf("after %d failed attempts from %d writers: %+v", writers*each, writers, e)
	}
	// A success resets the consecutive failures.
	e, err = es.UpdateEndpoint(ctx, id, func(e *store.Endpoint) error {
		e.Observe(store.EndpointDelta{Attempts: 3, Successes: 1, FailuresSinceSuccess: 2, LastSuccess: now.Add(time.Second), LastFailure: now.Add(2 * time.Second)}, now)
		return nil
	})
	if err != nil || e.ConsecutiveFailures != 2 || e.Successes != 1 || e.Attempts != writers*each+3 {
		t.Fatalf("after a success: %+v, %v", e, err)
	}
	// fn's error writes nothing.
	boom := errors.New("boom")
	if _, err := es.UpdateEndpoint(ctx, id, func(e *store.Endpoint) error { e.Disabled = true; return boom }); !errors.Is(err, boom) {
		t.Fatalf("fn's error: %v", err)
	}
	// Disabled ones are listed apart, in id order.
	other := store.EndpointID("", "http", "https://other.example/cb")
	for _, x := range []string{id, other} {
		if _, err := es.UpdateEndpoint(ctx, x, func(e *store.Endpoint) error {
			e.Disabled, e.DisabledAt, e.Reason = x == id, now, "test"
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	list := func(q store.EndpointQuery, want int) []string {
		t.Helper()
		var ids []string
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			eps, err := es.ListEndpoints(ctx, q)
			if err != nil {
				t.Fatal(err)
			}
			ids = ids[:0]
			for _, e := range eps {
				ids = append(ids, e.ID)
			}
			// Searches may be near-real-time (Elasticsearch refreshes).
			if len(ids) == want || time.Now().After(deadline) {
				return ids
			}
		}
	}
	if got := list(store.EndpointQuery{DisabledOnly: true}, 1); len(got) != 1 || got[0] != id {
		t.Fatalf("disabled endpoints %v, want [%s]", got, id)
	}
	all := list(store.EndpointQuery{}, 2)
	if len(all) != 2 || all[0] > all[1] {
		t.Fatalf("all endpoints %v", all)
	}
	if got := list(store.EndpointQuery{After: all[0]}, 1); len(got) != 1 || got[0] != all[1] {
		t.Fatalf("after %s: %v", all[0], got)
	}
}
