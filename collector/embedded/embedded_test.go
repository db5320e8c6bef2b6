package embedded

import (
	"context"
	"path/filepath"
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
	if _, err := b.Transition(ctx, "r1", store.Change{From: []store.Status{store.Persisted}, To: store.Queued}); err != nil {
		t.Fatal(err)
	}
	// a still caches the persisted record: the change must see queued.
	if _, err := a.Transition(ctx, "r1", store.Change{From: []store.Status{store.Persisted}, To: store.Queued}); !store.IsConflict(err) {
		t.Fatalf("a moved a record that b had moved already: %v", err)
	}
	got, err := a.Transition(ctx, "r1", store.Change{From: []store.Status{store.Queued}, To: store.Processing})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(got.History); n != 3 {
		t.Fatalf("history has %d entries, want persisted, queued, processing: %+v", n, got.History)
	}
}
