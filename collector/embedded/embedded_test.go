package embedded

import (
	"bytes"
	"context"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/asyncmesh/asyncmesh/collector/queue"
	"github.com/asyncmesh/asyncmesh/collector/queue/queuetest"
	"github.com/asyncmesh/asyncmesh/collector/store"
	"github.com/asyncmesh/asyncmesh/collector/store/storetest"
	"github.com/asyncmesh/asyncmesh/internal/envelope"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func open(t *testing.T) *DB {
	db, err := Open(context.Background(), filepath.Join(t.TempDir(), "asyncmesh.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func TestStoreConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return open(t).Store() })
}

func TestQueueConformance(t *testing.T) {
	queuetest.Run(t, func(t *testing.T) queue.Queue { return open(t).Queue() })
}

// TestStaleCacheRereads: two handles on one database file each cache what
// they wrote; a write through one makes the other's cache stale, and its next
// compare-and-set reads again instead of losing the first write.
func TestStaleCacheRereads(t *testing.T) {
	path := filepath.Join(t.TempDir(), "asyncmesh.db")
	var handles [2]store.Store
	for i := range handles {
		db, err := Open(context.Background(), path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		handles[i] = db.Store()
	}
	a, b := handles[0], handles[1]
	ctx := context.Background()
	r := store.NewRecord(&envelope.Envelope{ID: "r1", TraceID: "t1", Rule: "r"}, time.Now())
	if err := a.Create(ctx, r); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Transition(ctx, "r1", store.Change{Event: store.Enqueue}); err != nil {
		t.Fatal(err)
	}
	// a still caches the persisted record: the change must see queued.
	if _, err := a.Transition(ctx, "r1", store.Change{Event: store.Enqueue}); !store.IsConflict(err) {
		t.Fatalf("a moved a record that b had moved already: %v", err)
	}
	got, err := a.Transition(ctx, "r1", store.Change{Event: store.Claim})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(got.History); n != 3 {
		t.Fatalf("history has %d entries, want persisted, queued, processing: %+v", n, got.History)
	}
}

// TestSearchDoesNotLoadBodies: a page of 100 records whose request and
// response bodies are 1 MiB each allocates a small multiple of the page,
// not of the bodies (368 MiB for one 47 KB page before bodies had columns
// of their own).
func TestSearchDoesNotLoadBodies(t *testing.T) {
	s := open(t).Store()
	ctx := context.Background()
	body := bytes.Repeat([]byte("x"), 1<<20)
	e0 := storetest.NewEnvelope("big", "")
	for range 100 {
		e := storetest.NewEnvelope("big", e0.TraceID)
		e.Body = body
		r := store.NewRecord(e, time.Now())
		if err := s.Create(ctx, r); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Transition(ctx, r.ID, store.Change{Event: store.Complete, Response: &store.Response{Status: 200, Body: body}}); err != nil {
			t.Fatal(err)
		}
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	page, err := s.Search(ctx, store.Query{TraceID: e0.TraceID, Limit: 100})
	runtime.ReadMemStats(&after)
	if err != nil || len(page.Records) != 100 {
		t.Fatalf("search: %d records, %v", len(page.Records), err)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 8<<20 {
		t.Fatalf("one page of 100 records allocated %d MiB: bodies were loaded", alloc>>20)
	}
}
