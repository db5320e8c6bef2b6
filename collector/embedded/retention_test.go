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

// terminalRecords creates n records with a body of size bytes each and
// makes them terminal (dead: abandoned, one write) now; it returns their ids.
func terminalRecords(t testing.TB, s store.Store, n, size int) []string {
	t.Helper()
	ctx := context.Background()
	body := bytes.Repeat([]byte("x"), size)
	ids := make([]string, n)
	for i := range ids {
		e := storetest.NewEnvelope("r", "")
		e.Body = body
		r := store.NewRecord(e, s.Now())
		if err := s.Create(ctx, r); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Transition(ctx, r.ID, store.Change{Event: store.Abandon}); err != nil {
			t.Fatal(err)
		}
		ids[i] = r.ID
	}
	return ids
}

// waitGone waits until record id is deleted.
func waitGone(t *testing.T, s store.Store, id string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if _, err := s.Get(context.Background(), id); errors.Is(err, store.ErrNotFound) {
			return
		} else if err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("record %s still there after 10 s", id)
		}
	}
}

// TestRetentionJob: the job's first pass deletes what expired, in batches
// (600 records take three writes), with the dead letters of the same age,
// and keeps what became terminal within the retention.
func TestRetentionJob(t *testing.T) {
	db := open(t)
	s := db.Store()
	ctx := context.Background()
	old := terminalRecords(t, s, 600, 10)
	if err := db.tx(ctx, func(tx wtx) error {
		_, err := tx.exec(qInsertDeadLetter, "work", "k", []byte("m"), 50, "poison", time.Now().Add(-time.Hour).UnixNano())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	young := terminalRecords(t, s, 1, 10)
	writes := db.writes.Load()
	db.startRetention(500*time.Millisecond, time.Hour) // one pass, now: old is 1 s old, young just made
	waitGone(t, s, old[len(old)-1])
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if dl, err := db.Queue().DeadLetters(ctx, "work", 10); err != nil {
			t.Fatal(err)
		} else if len(dl) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a dead letter an hour old is still there 10 s after the pass started")
		}
	}
	for _, id := range old {
		if _, err := s.Get(ctx, id); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("record %s terminal for 1 s, retention 0.5 s: %v", id, err)
		}
	}
	if _, err := s.Get(ctx, young[0]); err != nil {
		t.Fatalf("a record terminal just now was expired: %v", err)
	}
	// 600 records: batches of 256, 256 and 88; one for the dead letter.
	if n := db.writes.Load() - writes; n != 4 {
		t.Errorf("the pass took %d write operations, want 4", n)
	}
}

// TestRetentionIdle: passes that find nothing take no write (no commit, no
// checkpoint: an idle collector stays idle); the same job then expires a
// record once its retention is over.
func TestRetentionIdle(t *testing.T) {
	db := open(t)
	db.startRetention(200*time.Millisecond, 20*time.Millisecond)
	time.Sleep(300 * time.Millisecond) // about 15 passes
	if n := db.writes.Load(); n != 0 {
		t.Errorf("passes over an empty database took %d write operations, want 0", n)
	}
	id := terminalRecords(t, db.Store(), 1, 10)[0]
	writes := db.writes.Load()
	time.Sleep(100 * time.Millisecond)
	if _, err := db.Store().Get(context.Background(), id); err != nil {
		t.Fatalf("a record terminal for 0.1 s, retention 0.2 s: %v", err)
	}
	waitGone(t, db.Store(), id)
	if n := db.writes.Load() - writes; n != 1 {
		t.Errorf("expiring one record took %d write operations, want 1", n)
	}
}

// TestRetentionStopsOnClose: a pass in progress on a closed database ends
// (with errClosed) and Close returns.
func TestRetentionStopsOnClose(t *testing.T) {
	db, err := Open(context.Background(), t.TempDir()+"/a.db")
	if err != nil {
		t.Fatal(err)
	}
	terminalRecords(t, db.Store(), 300, 10)
	db.startRetention(time.Nanosecond, time.Millisecond)
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
	var cutoff time.Time // after the previous round's records became terminal
	for round := range rounds {
		terminalRecords(t, db.Store(), n, size)
		before, _ := pages()
		deleted, err := s.Expire(ctx, cutoff) // the previous round's records
		if err != nil {
			t.Fatal(err)
		}
		cutoff = db.Store().Now()
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

// TestRetentionExpiresOrderKeys: the retention job deletes an ordering
// key whose last request is done once that request is past the retention,
// with the record, and keeps a key whose last request is not done.
func TestRetentionExpiresOrderKeys(t *testing.T) {
	db := open(t)
	s := db.Store()
	ctx := context.Background()
	o, _ := store.OrdererOf(s)
	done := terminalRecords(t, s, 1, 10)[0]
	waiting := storetest.NewEnvelope("r", "")
	if err := s.Create(ctx, store.NewRecord(waiting, s.Now())); err != nil {
		t.Fatal(err)
	}
	for scope, id := range map[string]string{"done": done, "waiting": waiting.ID} {
		if _, err := o.Chain(ctx, scope, store.Link{ID: id}); err != nil {
			t.Fatal(err)
		}
	}
	keys := func() []string {
		rows, err := db.read(ctx, `SELECT scope FROM order_keys ORDER BY scope`)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		var out []string
		for rows.Next() {
			var s string
			if err := rows.Scan(&s); err != nil {
				t.Fatal(err)
			}
			out = append(out, s)
		}
		return out
	}
	db.startRetention(100*time.Millisecond, 20*time.Millisecond)
	waitGone(t, s, done)
	for deadline := time.Now().Add(10 * time.Second); len(keys()) != 1; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("ordering keys %v 10 s after their retention, want [waiting]", keys())
		}
	}
	if got := keys(); got[0] != "waiting" {
		t.Fatalf("ordering keys %v, want [waiting]", got)
	}
}
