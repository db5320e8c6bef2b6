// Package storetest is the conformance suite every store.Store must pass.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/store"
	"github.com/asyncmesh/asyncmesh/internal/envelope"
	"github.com/asyncmesh/asyncmesh/internal/rules"
	"github.com/asyncmesh/asyncmesh/internal/trace"
)

// NewEnvelope returns a valid envelope for rule with the given trace id ("" for a
// fresh one).
func NewEnvelope(rule, traceID string) *envelope.Envelope {
	p := trace.NewParent()
	if traceID == "" {
		traceID = p.TraceIDString()
	}
	return &envelope.Envelope{
		Version: envelope.Version, ID: trace.NewRequestID(), TraceID: traceID, TraceParent: p.String(),
		Rule: rule, Method: "POST", Authority: "svc", Path: "/slow", Body: []byte(`{"n":1}`),
		Headers:  [][2]string{{"content-type", "application/json"}},
		Callback: rules.Callback{URL: "http://127.0.0.1:9/cb", Protocol: "http"},
		Retry:    rules.Retry{MaxAttempts: 3}, Timeout: rules.Duration(time.Second),
	}
}

// Run runs the suite; open returns a fresh, empty store.
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	ctx := context.Background()
	create := func(t *testing.T, s store.Store, rule, traceID string) *store.Record {
		t.Helper()
		r := store.NewRecord(NewEnvelope(rule, traceID), time.Now())
		if err := s.Create(ctx, r); err != nil {
			t.Fatalf("Create: %v", err)
		}
		return r
	}

	t.Run("CreateGet", func(t *testing.T) {
		s := open(t)
		r := create(t, s, "a", "")
		got, err := s.Get(ctx, r.ID)
		if err != nil {
			t.Fatalf("Get: %v", err)
		}
		if got.Status != store.Persisted || got.TraceID != r.TraceID || string(got.Envelope.Body) != `{"n":1}` || len(got.History) != 1 {
			t.Fatalf("Get = %+v", got)
		}
		if err := s.Create(ctx, r); !errors.Is(err, store.ErrExists) {
			t.Fatalf("second Create = %v, want ErrExists", err)
		}
		if _, err := s.Get(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("Get unknown = %v, want ErrNotFound", err)
		}
	})

	t.Run("TransitionHistory", func(t *testing.T) {
		s := open(t)
		r := create(t, s, "a", "")
		steps := []store.Change{
			{From: []store.Status{store.Persisted}, To: store.Queued},
			{From: []store.Status{store.Queued}, To: store.Processing},
			{From: []store.Status{store.Processing}, Note: "sent to a node"}, // a note alone is a history entry
			{From: []store.Status{store.Processing}, To: store.Completed, Response: &store.Response{Status: 200, Body: []byte("ok")}},
			{From: []store.Status{store.Completed}, To: store.Delivering},
			{From: []store.Status{store.Delivering}, Attempt: &store.Attempt{At: time.Now(), StatusCode: 500}},
			{From: []store.Status{store.Delivering}, To: store.Delivered, Attempt: &store.Attempt{At: time.Now(), StatusCode: 200}},
		}
		for _, c := range steps {
			if _, err := s.Transition(ctx, r.ID, c); err != nil {
				t.Fatalf("Transition to %q: %v", c.To, err)
			}
		}
		got, _ := s.Get(ctx, r.ID)
		var hist []store.Status
		for _, h := range got.History {
			hist = append(hist, h.Status)
		}
		want := []store.Status{store.Persisted, store.Queued, store.Processing, store.Processing, store.Completed, store.Delivering, store.Delivered}
		if len(hist) != len(want) {
			t.Fatalf("history %v, want %v", hist, want)
		}
		for i := range want {
			if hist[i] != want[i] {
				t.Fatalf("history %v, want %v", hist, want)
			}
		}
		if got.History[3].Note != "sent to a node" {
			t.Fatalf("note %+v", got.History[3])
		}
		if len(got.Attempts) != 2 || got.Response == nil || string(got.Response.Body) != "ok" {
			t.Fatalf("attempts %v response %v", got.Attempts, got.Response)
		}
	})

	t.Run("CASConflict", func(t *testing.T) {
		s := open(t)
		r := create(t, s, "a", "")
		if _, err := s.Transition(ctx, r.ID, store.Change{From: []store.Status{store.Queued}, To: store.Processing}); !store.IsConflict(err) {
			t.Fatalf("wrong From = %v, want conflict", err)
		}
		if _, err := s.Transition(ctx, "missing", store.Change{From: []store.Status{store.Persisted}, To: store.Queued}); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("missing record = %v, want ErrNotFound", err)
		}
	})

	t.Run("LeaseClaim", func(t *testing.T) {
		s := open(t)
		r := create(t, s, "a", "")
		until := time.Now().Add(time.Hour)
		got, err := s.Transition(ctx, r.ID, store.Change{From: []store.Status{store.Persisted}, To: store.Queued, Claim: true, LeaseUntil: until})
		if err != nil || !got.LeaseUntil.Equal(until.UTC()) {
			t.Fatalf("claim of a free record: %v, lease %v", err, got.LeaseUntil)
		}
		_, err = s.Transition(ctx, r.ID, store.Change{From: []store.Status{store.Queued}, Claim: true, LeaseUntil: time.Now().Add(time.Minute)})
		if lu, ok := store.LeasedUntil(err); !ok || !lu.Equal(until.UTC()) {
			t.Fatalf("claim of a leased record = %v, want a lease conflict until %v", err, until)
		}
		// The owner moves on without Claim; the lease is released with the change.
		if got, err = s.Transition(ctx, r.ID, store.Change{From: []store.Status{store.Queued}, To: store.Processing}); err != nil || !got.LeaseUntil.IsZero() {
			t.Fatalf("owner's change: %v, lease %v", err, got.LeaseUntil)
		}
		if got, err = s.Get(ctx, r.ID); err != nil || !got.LeaseUntil.IsZero() {
			t.Fatalf("stored lease %v (%v)", got.LeaseUntil, err)
		}
		if _, err := s.Transition(ctx, r.ID, store.Change{From: []store.Status{store.Processing}, Claim: true}); err != nil {
			t.Fatalf("claim after release: %v", err)
		}
	})

	t.Run("ConcurrentCASOneWins", func(t *testing.T) {
		s := open(t)
		r := create(t, s, "a", "")
		var wg sync.WaitGroup
		var mu sync.Mutex
		wins := 0
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := s.Transition(ctx, r.ID, store.Change{From: []store.Status{store.Persisted}, To: store.Queued})
				if err == nil {
					mu.Lock()
					wins++
					mu.Unlock()
				} else if !store.IsConflict(err) {
					t.Errorf("Transition: %v", err)
				}
			}()
		}
		wg.Wait()
		if wins != 1 {
			t.Fatalf("%d concurrent transitions won, want 1", wins)
		}
		got, _ := s.Get(ctx, r.ID)
		if len(got.History) != 2 {
			t.Fatalf("history has %d entries, want 2", len(got.History))
		}
	})

	t.Run("Search", func(t *testing.T) {
		s := open(t)
		tid := trace.NewParent().TraceIDString()
		var ids []string
		for range 5 {
			ids = append(ids, create(t, s, "a", tid).ID)
		}
		create(t, s, "b", "")
		slices.Sort(ids) // results are in id order; ids made within one millisecond are not monotonic
		eventually(t, "paged search by trace id", func() string {
			var got []string
			page, err := s.Search(ctx, store.Query{TraceID: tid, Limit: 2})
			for err == nil {
				for _, r := range page.Records {
					got = append(got, r.ID)
				}
				if page.Next == "" {
					break
				}
				page, err = s.Search(ctx, store.Query{TraceID: tid, Limit: 2, Cursor: page.Next})
			}
			if err != nil {
				return err.Error()
			}
			if !slices.Equal(got, ids) {
				return fmt.Sprintf("found %v, want %v", got, ids)
			}
			return ""
		})
		eventually(t, "search by rule", func() string {
			p, err := s.Search(ctx, store.Query{Rule: "b"})
			if err != nil || len(p.Records) != 1 {
				return fmt.Sprintf("found %d (%v)", len(p.Records), err)
			}
			return ""
		})
		if p, err := s.Search(ctx, store.Query{Status: store.Delivered}); err != nil || len(p.Records) != 0 {
			t.Fatalf("status search found %d (%v)", len(p.Records), err)
		}
		if p, err := s.Search(ctx, store.Query{Since: time.Now().Add(time.Hour)}); err != nil || len(p.Records) != 0 {
			t.Fatalf("since search found %d (%v)", len(p.Records), err)
		}
		if p, err := s.Search(ctx, store.Query{TraceID: tid, Until: time.Now().Add(-time.Hour)}); err != nil || len(p.Records) != 0 {
			t.Fatalf("until search found %d (%v)", len(p.Records), err)
		}
	})

	t.Run("Stale", func(t *testing.T) {
		s := open(t)
		old := create(t, s, "a", "")
		moved := create(t, s, "a", "")
		if _, err := s.Transition(ctx, moved.ID, store.Change{From: []store.Status{store.Persisted}, To: store.Queued}); err != nil {
			t.Fatal(err)
		}
		eventually(t, "stale persisted records", func() string {
			recs, err := s.Stale(ctx, store.Persisted, time.Now().Add(time.Second), 10)
			if err != nil || len(recs) != 1 || recs[0].ID != old.ID {
				return fmt.Sprintf("Stale = %d records (%v), want only %s", len(recs), err, old.ID)
			}
			return ""
		})
		if recs, _ := s.Stale(ctx, store.Persisted, time.Now().Add(-time.Hour), 10); len(recs) != 0 {
			t.Fatalf("Stale before creation found %d", len(recs))
		}
	})

	t.Run("ConcurrentUpdatesNotLost", func(t *testing.T) {
		s := open(t)
		r := create(t, s, "a", "")
		var wg sync.WaitGroup
		for i := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				a := store.Attempt{At: time.Now(), StatusCode: 500 + i}
				if _, err := s.Transition(ctx, r.ID, store.Change{From: []store.Status{store.Persisted}, Attempt: &a}); err != nil {
					t.Errorf("Transition: %v", err)
				}
			}()
		}
		wg.Wait()
		got, err := s.Get(ctx, r.ID)
		if err != nil || len(got.Attempts) != 8 {
			t.Fatalf("%d of 8 concurrent updates kept (%v)", len(got.Attempts), err)
		}
	})

	t.Run("Retention", func(t *testing.T) { retention(t, open) }) // retention.go

	t.Run("LargeBodies", func(t *testing.T) {
		s := open(t)
		big := make([]byte, 3<<20+17)
		for i := range big {
			big[i] = byte(i * 7)
		}
		e := NewEnvelope("a", "")
		e.Body = big
		r := store.NewRecord(e, time.Now())
		if err := s.Create(ctx, r); err != nil {
			t.Fatalf("Create with a %d-byte body: %v", len(big), err)
		}
		resp := &store.Response{Status: 200, Body: append(big[:0:0], big[1:]...)}
		if _, err := s.Transition(ctx, r.ID, store.Change{From: []store.Status{store.Persisted}, To: store.Completed, Response: resp}); err != nil {
			t.Fatal(err)
		}
		got, err := s.Get(ctx, r.ID)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got.Envelope.Body, big) || !slices.Equal(got.Response.Body, resp.Body) {
			t.Fatalf("bodies came back as %d and %d bytes, want %d and %d", len(got.Envelope.Body), len(got.Response.Body), len(big), len(resp.Body))
		}
		// Search answers operators a page at a time: it never loads bodies.
		eventually(t, "search without bodies", func() string {
			p, err := s.Search(ctx, store.Query{TraceID: e.TraceID})
			if err != nil || len(p.Records) != 1 {
				return fmt.Sprintf("found %d (%v)", len(p.Records), err)
			}
			r := p.Records[0]
			if r.Envelope == nil || r.Response == nil {
				// Near-real-time: the search may still see the record as created.
				return fmt.Sprintf("search returned the record without its envelope or response (status %s)", r.Status)
			}
			if r.Envelope.Path != e.Path || len(r.Envelope.Body) != 0 || r.Response.Status != 200 || len(r.Response.Body) != 0 {
				return fmt.Sprintf("search returned bodies of %d and %d bytes, or lost the rest of the record", len(r.Envelope.Body), len(r.Response.Body))
			}
			return ""
		})
		if got, err := s.Get(ctx, r.ID); err != nil || !slices.Equal(got.Envelope.Body, big) {
			t.Fatalf("Get after a search lost the body (%v)", err)
		}
		if p, ok := s.(store.Peeker); ok { // a capability: long-polls read without bodies
			got, err := p.Peek(ctx, r.ID)
			if err != nil || len(got.Envelope.Body) != 0 || got.Response == nil || len(got.Response.Body) != 0 || got.Status != store.Completed || got.Envelope.Path != e.Path {
				t.Fatalf("Peek: %+v (%v), want the record without bodies", got, err)
			}
			if _, err := p.Peek(ctx, "0190b3c2-7d6e-7a1b-8c3d-4e5f60718293"); !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("Peek of a missing id: %v, want ErrNotFound", err)
			}
		}
	})
}

// eventually retries check (which returns "" when satisfied) for up to 10s:
// searches may be near-real-time (Elasticsearch refreshes every second).
func eventually(t *testing.T, what string, check func() string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		msg := check()
		if msg == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s", what, msg)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
