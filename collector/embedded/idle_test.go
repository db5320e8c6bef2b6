package embedded

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/queue"
)

// consume runs Consume on topic until the test ends.
func consume(t *testing.T, db *DB, topic string, h queue.Handler) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- db.Queue().Consume(ctx, topic, 4, h) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Consume: %v", err)
		}
	})
}

// TestIdleConsumersOnlyRead: consumers of an empty queue take no write
// (claims went through the writer every 100 ms: 60 writes in 3 s for two
// topics) and read the next due time less and less often, and the
// checkpointer, with nothing committed, does nothing. Counted, not timed:
// a slower machine only makes fewer reads.
func TestIdleConsumersOnlyRead(t *testing.T) {
	db := open(t)
	never := func(ctx context.Context, m queue.Message) error { t.Errorf("handled %s", m.Key); return nil }
	consume(t, db, queue.TopicWork, never)
	consume(t, db, queue.TopicDelivery, never)
	// Each made its first claim, whose commit (of nothing) the checkpointer
	// follows at most twice, a second apart.
	time.Sleep(1500 * time.Millisecond)
	writes, reads, checkpoints := db.writes.Load(), db.dueReads.Load(), db.checkpointsRun.Load()
	time.Sleep(3 * time.Second)
	if n := db.writes.Load() - writes; n != 0 {
		t.Errorf("idle consumers wrote %d times in 3 s, want 0", n)
	}
	// Polls 3.1 and 5.1 s after start (the wait doubling from 100 ms to
	// idlePoll, 2 s): 2 per topic in the window.
	if n := db.dueReads.Load() - reads; n > 6 {
		t.Errorf("idle consumers read the queue %d times in 3 s, want at most 6", n)
	}
	if n := db.checkpointsRun.Load() - checkpoints; n != 0 {
		t.Errorf("%d checkpoints with nothing written", n)
	}
}

// TestPublishWakesAnIdleConsumer: with the idle poll an hour long, only
// the in-process wakeup can bring a message published once the consumer
// has backed off (its polls read the due time 0.1, 0.3, 0.7, 1.5 s after
// start, the next at 3.1 s): it is claimed without a read. A message
// requeued for 1.5 s then comes back when due, after a handful of reads (a
// consumer polling every 100 ms would have made 15).
func TestPublishWakesAnIdleConsumer(t *testing.T) {
	db := open(t)
	db.pollMax = time.Hour
	got := make(chan queue.Message, 10)
	var first atomic.Bool
	consume(t, db, "t", func(ctx context.Context, m queue.Message) error {
		got <- m
		if m.Key == "later" && first.CompareAndSwap(false, true) {
			return queue.RetryAfter(1500*time.Millisecond, "not yet")
		}
		return nil
	})
	for deadline := time.Now().Add(10 * time.Second); db.dueReads.Load() < 4; { // the poll at 1.5 s: the next is 1.6 s away
		if time.Now().After(deadline) {
			t.Fatalf("%d polls in 10 s, want 4 in 1.5 s", db.dueReads.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
	reads := db.dueReads.Load()
	if err := db.Queue().Publish(context.Background(), queue.Message{Topic: "t", Key: "now"}); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-got:
		if m.Key != "now" {
			t.Fatalf("got %s", m.Key)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a published message was not consumed in 10 s")
	}
	if n := db.dueReads.Load() - reads; n != 0 {
		t.Errorf("the consumer read the due time %d times before claiming a published message: a poll found it, not the wakeup", n)
	}

	if err := db.Queue().Publish(context.Background(), queue.Message{Topic: "t", Key: "later"}); err != nil {
		t.Fatal(err)
	}
	var start time.Time
	for i := range 2 {
		select {
		case m := <-got:
			if m.Key != "later" {
				t.Fatalf("got %s", m.Key)
			}
			if i == 0 {
				start, reads = time.Now(), db.dueReads.Load()
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("delivery %d of a delayed message missing after 10 s", i+1)
		}
	}
	if d := time.Since(start); d < 1400*time.Millisecond {
		t.Errorf("a message delayed 1.5 s came back after %v", d)
	}
	if n := db.dueReads.Load() - reads; n > 6 {
		t.Errorf("%d reads of the due time while a message waited 1.5 s, want at most 6", n)
	}
}

// TestWALTruncatedWhenWritesStop: once writes stop and a checkpoint has
// copied every frame, the WAL file is emptied (under sustained load it
// never restarts: 1.4 GB after 20000 requests), and nothing is lost.
func TestWALTruncatedWhenWritesStop(t *testing.T) {
	path := filepath.Join(t.TempDir(), "asyncmesh.db")
	db, err := Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	for i := range 200 {
		if err := db.Queue().Publish(context.Background(), queue.Message{Topic: "t", Key: fmt.Sprint(i), Body: make([]byte, 1000)}); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		fi, err := os.Stat(path + "-wal")
		if err == nil && fi.Size() == 0 && db.walTruncated.Load() > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the WAL was not truncated 10 s after the last write (%d truncations, stat %v %v)", db.walTruncated.Load(), fi, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	var n int
	if err := db.readRow(context.Background(), `SELECT count(*) FROM queue WHERE topic = ?`, "t").Scan(&n); err != nil || n != 200 {
		t.Fatalf("%d messages after the truncation (%v), want 200", n, err)
	}
}
