package storetest

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/store"
	"github.com/asyncmesh/asyncmesh/internal/idempotency"
)

// runIdempotency checks store.Idempotent, where the store has it: one
// record per live key, whatever the concurrency; nothing written for a
// held key; expiry by the store's clock; take-over only of the holder
// named (compare-and-set).
func runIdempotency(t *testing.T, open func(t *testing.T) store.Store) {
	ctx := context.Background()
	probe := open(t)
	if _, ok := probe.(store.Idempotent); !ok {
		t.Skip("the store does not implement store.Idempotent")
	}
	keyed := func(s store.Store, scope string, window time.Duration) (*store.Record, store.Key) {
		r := store.NewRecord(NewEnvelope("idem", ""), time.Now())
		e := r.Envelope
		return r, store.Key{Scope: scope, ID: r.ID, Fingerprint: idempotency.Fingerprint(e.Method, e.Path, e.Body), Expires: s.Now().Add(window)}
	}
	held := func(t *testing.T, err error, holder string) {
		t.Helper()
		var h *store.KeyHeldError
		if !errors.As(err, &h) || h.Held.ID != holder {
			t.Fatalf("CreateKeyed = %v, want the key held by %s", err, holder)
		}
	}
	absent := func(t *testing.T, s store.Store, id string) {
		t.Helper()
		if _, err := s.Get(ctx, id); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("Get(%s) = %v, want ErrNotFound: a refused CreateKeyed writes nothing", id, err)
		}
	}

	t.Run("FirstTakesIt", func(t *testing.T) {
		s := open(t).(store.Idempotent)
		scope := idempotency.Scope("a", "idem", "k1")
		r1, k1 := keyed(s, scope, time.Hour)
		if err := s.CreateKeyed(ctx, r1, k1, nil, ""); err != nil {
			t.Fatalf("first CreateKeyed: %v", err)
		}
		if got, err := s.Get(ctx, r1.ID); err != nil || got.Status != store.Persisted {
			t.Fatalf("Get = %v, %v", got, err)
		}
		r2, k2 := keyed(s, scope, time.Hour)
		err := s.CreateKeyed(ctx, r2, k2, nil, "")
		held(t, err, r1.ID)
		var h *store.KeyHeldError
		errors.As(err, &h)
		if h.Held.Fingerprint != k1.Fingerprint || h.Held.Scope != scope || h.Held.Expires.Sub(k1.Expires).Abs() > time.Millisecond {
			t.Fatalf("held key = %+v, want %+v", h.Held, k1)
		}
		absent(t, s, r2.ID)
		// Another scope (another caller, rule or key) is another key.
		r3, k3 := keyed(s, idempotency.Scope("b", "idem", "k1"), time.Hour)
		if err := s.CreateKeyed(ctx, r3, k3, nil, ""); err != nil {
			t.Fatalf("CreateKeyed under another scope: %v", err)
		}
		// The record's id stays unique under any key.
		r4 := *r1
		_, k4 := keyed(s, idempotency.Scope("a", "idem", "k4"), time.Hour)
		k4.ID = r4.ID
		if err := s.CreateKeyed(ctx, &r4, k4, nil, ""); !errors.Is(err, store.ErrExists) {
			t.Fatalf("CreateKeyed of an existing id = %v, want ErrExists", err)
		}
	})

	t.Run("Concurrent", func(t *testing.T) {
		s := open(t).(store.Idempotent)
		scope := idempotency.Scope("", "idem", "race")
		const n = 8
		var wg sync.WaitGroup
		errs := make([]error, n)
		recs := make([]*store.Record, n)
		for i := range n {
			r, k := keyed(s, scope, time.Hour)
			recs[i] = r
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = s.CreateKeyed(ctx, r, k, nil, "")
			}()
		}
		wg.Wait()
		var winner string
		for i, err := range errs {
			var h *store.KeyHeldError
			switch {
			case err == nil && winner == "":
				winner = recs[i].ID
			case err == nil:
				t.Fatalf("two CreateKeyed under one key succeeded: %s and %s", winner, recs[i].ID)
			case !errors.As(err, &h):
				t.Fatalf("CreateKeyed: %v", err)
			}
		}
		if winner == "" {
			t.Fatal("no CreateKeyed succeeded")
		}
		for i, err := range errs {
			if err != nil {
				held(t, err, winner)
				absent(t, s, recs[i].ID)
			}
		}
	})

	t.Run("ExpiresByTheStoresClock", func(t *testing.T) {
		s := open(t).(store.Idempotent)
		scope := idempotency.Scope("a", "idem", "old")
		r1, k1 := keyed(s, scope, -time.Second) // expired as soon as written
		if err := s.CreateKeyed(ctx, r1, k1, nil, ""); err != nil {
			t.Fatal(err)
		}
		r2, k2 := keyed(s, scope, time.Hour)
		if err := s.CreateKeyed(ctx, r2, k2, nil, ""); err != nil {
			t.Fatalf("CreateKeyed under an expired key: %v", err)
		}
		r3, k3 := keyed(s, scope, time.Hour)
		held(t, s.CreateKeyed(ctx, r3, k3, nil, ""), r2.ID)

		// ExpireKeys deletes what has expired, and only that.
		r4, k4 := keyed(s, idempotency.Scope("a", "idem", "old2"), -time.Second)
		if err := s.CreateKeyed(ctx, r4, k4, nil, ""); err != nil {
			t.Fatal(err)
		}
		n, err := s.ExpireKeys(ctx, s.Now())
		if err != nil || n != 1 {
			t.Fatalf("ExpireKeys = %d, %v; want 1 (the expired key, not the live one)", n, err)
		}
		held(t, s.CreateKeyed(ctx, r3, k3, nil, ""), r2.ID)
		for _, id := range []string{r1.ID, r2.ID, r4.ID} {
			if _, err := s.Get(ctx, id); err != nil {
				t.Fatalf("Get(%s) = %v: expiring keys deletes no record", id, err)
			}
		}
	})

	t.Run("ReplaceIsCompareAndSet", func(t *testing.T) {
		s := open(t).(store.Idempotent)
		scope := idempotency.Scope("a", "idem", "dead")
		r1, k1 := keyed(s, scope, time.Hour)
		if err := s.CreateKeyed(ctx, r1, k1, nil, ""); err != nil {
			t.Fatal(err)
		}
		r2, k2 := keyed(s, scope, time.Hour)
		held(t, s.CreateKeyed(ctx, r2, k2, nil, "some-other-id"), r1.ID)
		if err := s.CreateKeyed(ctx, r2, k2, nil, r1.ID); err != nil {
			t.Fatalf("taking over r1's key: %v", err)
		}
		// A second collector that also found r1 dead loses the race.
		r3, k3 := keyed(s, scope, time.Hour)
		held(t, s.CreateKeyed(ctx, r3, k3, nil, r1.ID), r2.ID)
		absent(t, s, r3.ID)
	})
}
