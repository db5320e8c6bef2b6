// Package storetest is the conformance suite every store.Store must pass.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/queue"
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

// AttemptLog returns delivery attempts with every field of the attempt log
// set, as the stores must keep them: a refused connection (a request, no
// answer), a refusal with a base64 body cut at a KiB and cut headers, and
// the delivery.
func AttemptLog() []store.Attempt {
	at := time.Now().UTC().Truncate(time.Millisecond)
	req := &store.AttemptRequest{Method: "POST", URL: "https://receiver.example/cb?token=REDACTED",
		Headers:  [][2]string{{"content-type", "application/json"}, {"webhook-id", "msg_1"}, {"webhook-signature", "[redacted]"}},
		BodySize: 321, ContentType: "application/json"}
	return []store.Attempt{
		{At: at, Latency: 3 * time.Millisecond, Error: "connection refused", Request: req},
		{At: at.Add(time.Second), StatusCode: 403, Latency: 12 * time.Millisecond, Error: "endpoint answered 403",
			Request: &store.AttemptRequest{Method: "/asyncmesh.callback.v1.Callback/Deliver", URL: "grpcs://receiver.example:443", BodySize: 7, HeadersTruncated: true},
			Response: &store.AttemptResponse{Status: "403 Forbidden", Message: "déjà refusé",
				Headers:          [][2]string{{"set-cookie", "[redacted]"}, {"www-authenticate", `Bearer error="invalid_token"`}, {"x-multi", "a"}, {"x-multi", "b"}},
				HeadersTruncated: true, Body: "AP8Q", BodyEncoding: "base64", BodyTruncated: true}},
		{At: at.Add(2 * time.Second), StatusCode: 200, Latency: time.Millisecond, Request: req,
			Response: &store.AttemptResponse{Status: "200 OK", Body: `{"ok":true}`}},
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

	t.Run("Outbox", func(t *testing.T) { runOutbox(t, open) })
	t.Run("Idempotency", func(t *testing.T) { runIdempotency(t, open) })

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
			{Event: store.Enqueue},
			{Event: store.Claim},
			{Event: store.HandOff, Detail: "http://node"}, // a typed entry within the status
			{Event: store.Complete, Then: store.StartDelivery, Response: &store.Response{Status: 200, Body: []byte("ok")}},
			{Event: store.Retry, Attempt: &store.Attempt{At: time.Now(), StatusCode: 500}}, // quiet: Attempts records it
			{Event: store.Deliver, Attempt: &store.Attempt{At: time.Now(), StatusCode: 200}},
		}
		for _, c := range steps {
			if _, err := s.Transition(ctx, r.ID, c); err != nil {
				t.Fatalf("Transition %s: %v", c.Event, err)
			}
		}
		got, _ := s.Get(ctx, r.ID)
		var hist []string
		for _, h := range got.History {
			hist = append(hist, string(h.Status)+"/"+string(h.Event))
		}
		want := []string{"persisted/", "queued/enqueue", "processing/claim", "processing/hand-off", "completed/complete", "delivering/start-delivery", "delivered/deliver"}
		if !slices.Equal(hist, want) {
			t.Fatalf("history %v, want %v", hist, want)
		}
		if got.History[3].Detail != "http://node" || got.Last(store.HandOff) != got.History[3].At {
			t.Fatalf("hand-off entry %+v", got.History[3])
		}
		if len(got.Attempts) != 2 || got.Response == nil || string(got.Response.Body) != "ok" {
			t.Fatalf("attempts %v response %v", got.Attempts, got.Response)
		}
		// The one move back: replay, then the lifecycle goes on.
		if got, err := s.Transition(ctx, r.ID, store.Change{Event: store.Replay}); err != nil || got.Status != store.Delivering || got.Last(store.Replay).IsZero() {
			t.Fatalf("replay: %v, %+v", err, got)
		}
	})

	t.Run("AttemptLog", func(t *testing.T) {
		s := open(t)
		r := create(t, s, "a", "")
		for _, c := range []store.Change{{Event: store.Enqueue}, {Event: store.Claim},
			{Event: store.Complete, Then: store.StartDelivery, Response: &store.Response{Status: 200, Body: []byte("ok")}}} {
			if _, err := s.Transition(ctx, r.ID, c); err != nil {
				t.Fatalf("Transition %s: %v", c.Event, err)
			}
		}
		want := AttemptLog()
		for _, a := range want {
			ev := store.Retry
			if a.Response != nil && a.Response.Status == "200 OK" {
				ev = store.Deliver
			}
			if _, err := s.Transition(ctx, r.ID, store.Change{Event: ev, Attempt: &a}); err != nil {
				t.Fatalf("Transition %s: %v", ev, err)
			}
		}
		for name, read := range map[string]func(context.Context, string) (*store.Record, error){
			"Get": s.Get, "Peek": func(ctx context.Context, id string) (*store.Record, error) { return store.Peek(ctx, s, id) },
		} {
			got, err := read(ctx, r.ID)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if len(got.Attempts) != len(want) {
				t.Fatalf("%s: %d attempts, want %d", name, len(got.Attempts), len(want))
			}
			for i, a := range got.Attempts {
				w := want[i]
				if !a.At.Equal(w.At) {
					t.Errorf("%s: attempt %d at %v, want %v", name, i, a.At, w.At)
				}
				a.At, w.At = time.Time{}, time.Time{}
				if !reflect.DeepEqual(a, w) {
					t.Errorf("%s: attempt %d\n got %+v %+v %+v\nwant %+v %+v %+v", name, i, a, a.Request, a.Response, w, w.Request, w.Response)
				}
			}
		}
	})

	t.Run("CASConflict", func(t *testing.T) {
		s := open(t)
		r := create(t, s, "a", "")
		for _, e := range []store.Event{store.StartDelivery, store.Deliver, store.Replay, store.HandOff} {
			_, err := s.Transition(ctx, r.ID, store.Change{Event: e})
			var ce *store.ConflictError
			if !errors.As(err, &ce) || ce.Current != store.Persisted {
				t.Fatalf("%s on a persisted record = %v, want a conflict naming persisted", e, err)
			}
		}
		if _, err := s.Transition(ctx, r.ID, store.Change{Event: "jump"}); err == nil || store.IsConflict(err) {
			t.Fatalf("unknown event = %v, want an error", err)
		}
		if _, err := s.Transition(ctx, "missing", store.Change{Event: store.Enqueue}); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("missing record = %v, want ErrNotFound", err)
		}
		if got, _ := s.Get(ctx, r.ID); got.Status != store.Persisted || len(got.History) != 1 {
			t.Fatalf("refused changes wrote: %+v", got)
		}
	})

	t.Run("LeaseClaim", func(t *testing.T) {
		s := open(t)
		r := create(t, s, "a", "")
		got, err := s.Transition(ctx, r.ID, store.Change{Event: store.Claim, Claim: true, Lease: time.Hour})
		if err != nil {
			t.Fatalf("claim of a free record: %v", err)
		}
		// The lease is on the store's clock.
		if now := s.Now(); got.LeaseUntil.Before(now.Add(59*time.Minute)) || got.LeaseUntil.After(now.Add(time.Hour)) {
			t.Fatalf("lease until %v, want an hour from the store's %v", got.LeaseUntil, now)
		}
		until := got.LeaseUntil
		_, err = s.Transition(ctx, r.ID, store.Change{Event: store.Resume, Claim: true, Lease: time.Minute})
		if lu, ok := store.LeasedUntil(err); !ok || !lu.Equal(until) {
			t.Fatalf("claim of a leased record = %v, want a lease conflict until %v", err, until)
		}
		// The owner moves on without Claim; the lease is released with the change.
		if got, err = s.Transition(ctx, r.ID, store.Change{Event: store.Release}); err != nil || !got.LeaseUntil.IsZero() {
			t.Fatalf("owner's release: %v, lease %v", err, got.LeaseUntil)
		}
		if got, err = s.Get(ctx, r.ID); err != nil || !got.LeaseUntil.IsZero() || len(got.History) != 2 {
			t.Fatalf("stored lease %v, history %v (%v): a release adds no entry", got.LeaseUntil, got.History, err)
		}
		if _, err := s.Transition(ctx, r.ID, store.Change{Event: store.Resume, Claim: true, Lease: time.Millisecond}); err != nil {
			t.Fatalf("claim after release: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
		if _, err := s.Transition(ctx, r.ID, store.Change{Event: store.Resume, Claim: true}); err != nil {
			t.Fatalf("claim after the lease ran out: %v", err)
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
				_, err := s.Transition(ctx, r.ID, store.Change{Event: store.Enqueue})
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
		eventually(t, "paged search newest first", func() string {
			var got []string
			page, err := s.Search(ctx, store.Query{TraceID: tid, Limit: 2, Desc: true})
			for err == nil {
				for _, r := range page.Records {
					got = append(got, r.ID)
				}
				if page.Next == "" {
					break
				}
				page, err = s.Search(ctx, store.Query{TraceID: tid, Limit: 2, Cursor: page.Next, Desc: true})
			}
			want := slices.Clone(ids)
			slices.Reverse(want)
			if err != nil {
				return err.Error()
			}
			if !slices.Equal(got, want) {
				return fmt.Sprintf("found %v, want %v", got, want)
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

	// createAs creates a record whose envelope names a caller and a package.
	createAs := func(t *testing.T, s store.Store, caller, pkg string) *store.Record {
		t.Helper()
		e := NewEnvelope("r", "")
		e.Caller, e.Package = caller, pkg
		r := store.NewRecord(e, time.Now())
		if err := s.Create(ctx, r); err != nil {
			t.Fatalf("Create: %v", err)
		}
		return r
	}

	t.Run("SearchCallerPackage", func(t *testing.T) {
		s := open(t)
		alice := createAs(t, s, "alice", "billing")
		createAs(t, s, "bob", "billing")
		createAs(t, s, "", "")
		for _, tc := range []struct {
			name string
			q    store.Query
			want int
		}{
			{"caller", store.Query{Caller: "alice"}, 1},
			{"package", store.Query{Package: "billing"}, 2},
			{"both", store.Query{Caller: "bob", Package: "billing"}, 1},
			{"caller of another package", store.Query{Caller: "alice", Package: "other"}, 0},
			{"no such caller", store.Query{Caller: "carol"}, 0},
		} {
			eventually(t, "search by "+tc.name, func() string {
				p, err := s.Search(ctx, tc.q)
				if err != nil || len(p.Records) != tc.want {
					return fmt.Sprintf("found %d (%v), want %d", len(p.Records), err, tc.want)
				}
				if tc.name == "caller" && p.Records[0].ID != alice.ID {
					return "found " + p.Records[0].ID + ", want " + alice.ID
				}
				return ""
			})
		}
	})

	t.Run("SearchHeldByEndpoint", func(t *testing.T) {
		s := open(t)
		hold := func(endpoint string) *store.Record {
			t.Helper()
			r := create(t, s, "a", "")
			for _, c := range []store.Change{{Event: store.Enqueue}, {Event: store.Complete, Response: &store.Response{Status: 200}},
				{Event: store.Hold, Endpoint: endpoint, Detail: "endpoint disabled"}} {
				if _, err := s.Transition(ctx, r.ID, c); err != nil {
					t.Fatalf("Transition %s: %v", c.Event, err)
				}
			}
			return r
		}
		a1, a2, b := hold("endpoint-a"), hold("endpoint-a"), hold("endpoint-b")
		create(t, s, "a", "") // never held
		if got, err := s.Get(ctx, b.ID); err != nil || got.Endpoint != "endpoint-b" || got.Status != store.Held {
			t.Fatalf("held record: %+v, %v", got, err)
		}
		eventually(t, "the held records of endpoint-a, oldest first", func() string {
			p, err := s.Search(ctx, store.Query{Status: store.Held, Endpoint: "endpoint-a"})
			if err != nil || len(p.Records) != 2 || p.Records[0].ID != a1.ID || p.Records[1].ID != a2.ID {
				return fmt.Sprintf("found %d (%v), want %s and %s", len(p.Records), err, a1.ID, a2.ID)
			}
			return ""
		})
		// Unheld, a record keeps its endpoint, and leaves the held search.
		if _, err := s.Transition(ctx, a1.ID, store.Change{Event: store.Unhold}); err != nil {
			t.Fatal(err)
		}
		eventually(t, "endpoint-a once a1 is resumed", func() string {
			p, err := s.Search(ctx, store.Query{Status: store.Held, Endpoint: "endpoint-a"})
			if err != nil || len(p.Records) != 1 || p.Records[0].ID != a2.ID {
				return fmt.Sprintf("found %d (%v), want %s", len(p.Records), err, a2.ID)
			}
			return ""
		})
		if c, ok := s.(store.Counter); ok {
			eventually(t, "count of endpoint-b", func() string {
				if n, err := c.Count(ctx, store.Query{Status: store.Held, Endpoint: "endpoint-b"}); err != nil || n != 1 {
					return fmt.Sprintf("count %d (%v), want 1", n, err)
				}
				return ""
			})
		}
	})

	t.Run("Count", func(t *testing.T) {
		s := open(t)
		c, ok := s.(store.Counter)
		if !ok {
			t.Fatal("the store is not a store.Counter")
		}
		tid := trace.NewParent().TraceIDString()
		for range 3 {
			create(t, s, "a", tid)
		}
		r := createAs(t, s, "alice", "billing")
		if _, err := s.Transition(ctx, r.ID, store.Change{Event: store.Enqueue}); err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			name string
			q    store.Query
			want int64
		}{
			{"all", store.Query{}, 4},
			{"trace id", store.Query{TraceID: tid}, 3},
			{"trace id, cursor and limit aside", store.Query{TraceID: tid, Cursor: "~", Limit: 1}, 3},
			{"rule", store.Query{Rule: "r"}, 1},
			{"status", store.Query{Status: store.Queued}, 1},
			{"caller", store.Query{Caller: "alice"}, 1},
			{"package", store.Query{Package: "billing", Status: store.Persisted}, 0},
			{"since", store.Query{Since: time.Now().Add(time.Hour)}, 0},
			{"until", store.Query{Until: time.Now().Add(time.Hour)}, 4},
		} {
			eventually(t, "count by "+tc.name, func() string {
				n, err := c.Count(ctx, tc.q)
				if err != nil || n != tc.want {
					return fmt.Sprintf("counted %d (%v), want %d", n, err, tc.want)
				}
				return ""
			})
		}
	})

	t.Run("Changes", func(t *testing.T) {
		s := open(t)
		cl, ok := s.(store.ChangeLister)
		if !ok {
			t.Fatal("the store is not a store.ChangeLister")
		}
		a := createAs(t, s, "alice", "billing")
		b := create(t, s, "a", "")
		time.Sleep(5 * time.Millisecond) // a later millisecond than both creations
		a2, err := s.Transition(ctx, a.ID, store.Change{Event: store.Enqueue})
		if err != nil {
			t.Fatal(err)
		}
		// every: all changes in (updatedAt, id) order, paged one at a time.
		every := func(q store.Query, from store.ChangeCursor) ([]string, error) {
			var ids []string
			for range 10 {
				recs, err := cl.Changes(ctx, q, from, 1)
				if err != nil || len(recs) == 0 {
					return ids, err
				}
				if len(recs) > 1 {
					return nil, fmt.Errorf("limit 1 gave %d records", len(recs))
				}
				r := recs[0]
				if r.Envelope != nil && len(r.Envelope.Body) > 0 {
					return nil, errors.New("Changes loaded a body")
				}
				ids = append(ids, r.ID)
				from = store.ChangeCursor{At: r.UpdatedAt, ID: r.ID}
			}
			return ids, nil
		}
		eventually(t, "changes in order of update", func() string {
			got, err := every(store.Query{}, store.ChangeCursor{})
			if want := []string{b.ID, a.ID}; err != nil || !slices.Equal(got, want) {
				return fmt.Sprintf("changes %v (%v), want %v (b created after a, a moved after both)", got, err, want)
			}
			return ""
		})
		eventually(t, "changes with a filter", func() string {
			got, err := every(store.Query{Caller: "alice", Status: store.Queued}, store.ChangeCursor{})
			if want := []string{a.ID}; err != nil || !slices.Equal(got, want) {
				return fmt.Sprintf("changes %v (%v), want %v", got, err, want)
			}
			return ""
		})
		eventually(t, "changes after a cursor", func() string {
			got, err := every(store.Query{}, store.ChangeCursor{At: b.UpdatedAt, ID: b.ID})
			if want := []string{a.ID}; err != nil || !slices.Equal(got, want) {
				return fmt.Sprintf("changes after %s: %v (%v), want %v", b.ID, got, err, want)
			}
			return ""
		})
		if recs, err := cl.Changes(ctx, store.Query{}, store.ChangeCursor{At: a2.UpdatedAt.Add(time.Second)}, 10); err != nil || len(recs) != 0 {
			t.Fatalf("changes after the last one: %d (%v)", len(recs), err)
		}
	})

	t.Run("Stale", func(t *testing.T) {
		s := open(t)
		old := create(t, s, "a", "")
		moved := create(t, s, "a", "")
		if _, err := s.Transition(ctx, moved.ID, store.Change{Event: store.Enqueue}); err != nil {
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
		for _, e := range []store.Event{store.Complete, store.StartDelivery} {
			if _, err := s.Transition(ctx, r.ID, store.Change{Event: e}); err != nil {
				t.Fatal(err)
			}
		}
		var wg sync.WaitGroup
		for i := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				a := store.Attempt{At: time.Now(), StatusCode: 500 + i}
				if _, err := s.Transition(ctx, r.ID, store.Change{Event: store.Retry, Attempt: &a}); err != nil {
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
	t.Run("Endpoints", func(t *testing.T) { endpoints(t, open) }) // endpoints.go
	t.Run("Ordering", func(t *testing.T) { ordering(t, open) })   // ordering.go
	t.Run("OrderingExpiry", func(t *testing.T) { orderingExpiry(t, open) })

	t.Run("EndpointLimiters", func(t *testing.T) { endpointLimiters(t, open) }) // limits.go

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
		if _, err := s.Transition(ctx, r.ID, store.Change{Event: store.Complete, Response: resp}); err != nil {
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

// runOutbox is the part of the suite for a store that declares the outbox
// capability (store.Outbox): a write and its message commit together, and a
// refused write publishes nothing.
func runOutbox(t *testing.T, open func(t *testing.T) store.Store) {
	ctx := context.Background()
	o, ok := open(t).(store.Outbox)
	if !ok {
		t.Skip("the store does not declare store.Outbox")
	}
	// received collects the messages of topic for a while.
	received := func(t *testing.T, topic string, want int) []queue.Message {
		t.Helper()
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		var mu sync.Mutex
		var got []queue.Message
		go func() {
			for cctx.Err() == nil {
				mu.Lock()
				n := len(got)
				mu.Unlock()
				if n >= want {
					time.Sleep(200 * time.Millisecond) // and nothing more
					cancel()
					return
				}
				time.Sleep(10 * time.Millisecond)
			}
		}()
		if err := o.Queue().Consume(cctx, topic, 1, func(_ context.Context, m queue.Message) error {
			mu.Lock()
			got = append(got, m)
			mu.Unlock()
			return nil
		}); err != nil {
			t.Fatalf("Consume %s: %v", topic, err)
		}
		return got
	}
	r := store.NewRecord(NewEnvelope("a", ""), time.Now())
	if err := (store.Change{Event: store.Enqueue, At: r.CreatedAt}).Apply(r); err != nil {
		t.Fatal(err)
	}
	work := queue.Message{Topic: queue.TopicWork, Key: r.ID, TraceID: r.TraceID, Body: []byte(`{}`)}
	if err := o.CreatePublish(ctx, r, &work); err != nil {
		t.Fatalf("CreatePublish: %v", err)
	}
	if err := o.CreatePublish(ctx, r, &work); !errors.Is(err, store.ErrExists) {
		t.Fatalf("second CreatePublish = %v, want ErrExists", err)
	}
	if got := received(t, queue.TopicWork, 1); len(got) != 1 || got[0].Key != r.ID {
		t.Fatalf("work messages %v, want one for %s (a refused create publishes nothing)", got, r.ID)
	}
	if got, err := o.Get(ctx, r.ID); err != nil || got.Status != store.Queued {
		t.Fatalf("record after CreatePublish: %v, %v", got, err)
	}
	deliver := queue.Message{Topic: queue.TopicDelivery, Key: r.ID, TraceID: r.TraceID, Body: []byte(`{}`)}
	if _, err := o.TransitionPublish(ctx, r.ID, store.Change{Event: store.Deliver}, &deliver); !store.IsConflict(err) {
		t.Fatalf("refused TransitionPublish = %v, want a conflict", err)
	}
	if _, err := o.TransitionPublish(ctx, r.ID, store.Change{Event: store.Complete}, &deliver); err != nil {
		t.Fatalf("TransitionPublish: %v", err)
	}
	if got := received(t, queue.TopicDelivery, 1); len(got) != 1 || got[0].Key != r.ID {
		t.Fatalf("delivery messages %v, want exactly one for %s", got, r.ID)
	}
}
