package embedded

import (
	"bytes"
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/store"
	"github.com/asyncmesh/asyncmesh/collector/store/storetest"
)

// terminalRecords creates n records that became delivered at at, with a
// body of size bytes each, and returns their ids.
func terminalRecords(t testing.TB, s store.Store, n, size int, at time.Time) []string {
	t.Helper()
	ctx := context.Background()
	body := bytes.Repeat([]byte("x"), size)
	ids := make([]string, n)
	for i := range ids {
		e := storetest.NewEnvelope("r", "")
		e.Body = body
		r := store.NewRecord(e, at)
		if err := s.Create(ctx, r); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Transition(ctx, r.ID, store.Change{From: []store.Status{store.Persisted}, To: store.Delivered, At: at}); err != nil {
			t.Fatal(err)
		}
		ids[i] = r.ID
	}
	return ids
}

// TestRetentionJob: the job deletes what expired, in batches (600 records
// take three), and the dead letters of the same age; an idle database's
// passes take no write; Close stops the job (goleak in TestMain checks
// that no goroutine is left).
func TestRetentionJob(t *testing.T) {
	db := open(t)
	s := db.Store()
	ctx := context.Background()
	old := terminalRecords(t, s, 600, 10, time.Now().Add(-2*time.Hour))
	young := terminalRecords(t, s, 1, 10, time.Now())
	if err := db.tx(ctx, func(tx wtx) error {
		_, err := tx.exec(qInsertDeadLetter, "work", "k", []byte("m"), 50, "poison", time.Now().Add(-2*time.Hour).UnixNano())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	writes := db.writes.Load()
	db.startRetention(time.Hour, 20*time.Millisecond)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := s.Get(ctx, old[len(old)-1]); errors.Is(err, store.ErrNotFound) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("expired records still there 10 s after the job started")
		}
	}
	time.Sleep(100 * time.Millisecond) // the pass ends with the dead letters
	for _, id := range old {
		if _, err := s.Get(ctx, id); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("record %s terminal 2 h ago, retention 1 h: %v", id, err)
		}
	}
	if _, err := s.Get(ctx, young[0]); err != nil {
		t.Fatalf("a record terminal just now was expired: %v", err)
	}
	if dl, err := db.Queue().DeadLetters(ctx, "work", 10); err != nil || len(dl) != 0 {
		t.Fatalf("%d dead letters 2 h old left (%v)", len(dl), err)
	}
	// 600 records: batches of 256, 256 and 88; one for the dead letter.
	if n := db.writes.Load() - writes; n != 4 {
		t.Errorf("the pass took %d write operations, want 4", n)
	}
	writes = db.writes.Load()
	time.Sleep(200 * time.Millisecond) // about ten idle passes
	if n := db.writes.Load() - writes; n != 0 {
		t.Errorf("passes with nothing to delete took %d write operations, want 0", n)
	}
}

// TestRetentionStopsOnClose: a pass in progress on a closed database ends
// (with errClosed) and Close returns.
func TestRetentionStopsOnClose(t *testing.T) {
	db, err := Open(context.Background(), t.TempDir()+"/a.db")
	if err != nil {
		t.Fatal(err)
	}
	terminalRecords(t, db.Store(), 300, 10, time.Now().Add(-2*time.Hour))
	db.startRetention(time.Hour, time.Millisecond)
	done := make(chan error, 1)
	go func() { done <- db.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return within 10 s with the retention job running")
	}
}

// TestExpiredPagesAreReused: the database file stops growing once a
// retention's worth of records is in it. Each round writes as many records
// as the first and expires the previous round's: the pages of deleted rows
// go to SQLite's freelist and the next round's inserts take them, so the
// page count stays where the first two rounds left it. Run with -v for the
// figures.
func TestExpiredPagesAreReused(t *testing.T) {
	const n, size, rounds = 500, 4 << 10, 5
	path := t.TempDir() + "/a.db"
	db, err := Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	s := db.Store().(store.Expirer)
	ctx := context.Background()
	pages := func() (count, free int64) {
		if err := db.readRow(ctx, "SELECT page_count, freelist_count FROM pragma_page_count(), pragma_freelist_count()").Scan(&count, &free); err != nil {
			t.Fatal(err)
		}
		return count, free
	}
	var steady int64
	for round := range rounds {
		at := time.Unix(int64(round)*3600, 0) // round r became terminal at hour r
		terminalRecords(t, db.Store(), n, size, at)
		before, _ := pages()
		deleted, err := s.Expire(ctx, at) // everything before this round
		if err != nil {
			t.Fatal(err)
		}
		_, free := pages()
		t.Logf("round %d: %d records of %d KiB written, %d expired: %d pages (%.1f MiB), %d of them free after the pass",
			round, n, size>>10, deleted, before, float64(before*4096)/(1<<20), free)
		if round == 1 {
			steady = before
		}
		if round > 1 && before > steady+steady/10 {
			t.Errorf("round %d: %d pages, the second round had %d: freed pages are not reused", round, before, steady)
		}
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("file after %d rounds of %d records (%d KiB of bodies each round): %.1f MiB", rounds, n, n*size>>10, float64(fi.Size())/(1<<20))
}
