package collector

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/queue"
	"github.com/asyncmesh/asyncmesh/collector/store"
	"github.com/asyncmesh/asyncmesh/internal/envelope"
)

// Records left in a non-terminal status with no message to move them on
// (stuck until the sweeper, 15 minutes later): the holes a chaos-cluster
// run's stuck=1 could come from.

// lateWrite creates the record of en as intake's write does (queued),
// standing for a write that was on its way when everyone gave up on it.
func lateWrite(ctx context.Context, st store.Store, en *envelope.Envelope) error {
	rec := store.NewRecord(en, time.Now())
	if err := (store.Change{Event: store.Enqueue, At: rec.CreatedAt}).Apply(rec); err != nil {
		return err
	}
	return st.Create(ctx, rec)
}

// TestWorkerTakesTheIDOfAMissingRecord: a worker that finds no record for
// a work message past its intake's deadline (plus workerGrace) drops the
// message — and takes the id with a tombstone first, so that the intake's
// write, if it lands after that (a bulk sent before a partition, landing
// when it heals, from a collector that could not abandon it and left it to
// its own worker, whose message another collector took), finds the id
// taken and nothing is left queued with no message to run or abandon it.
// A record that landed between the worker's read and its tombstone is
// abandoned. Neither is ever run nor called back.
func TestWorkerTakesTheIDOfAMissingRecord(t *testing.T) {
	e := newEnv(t)
	e.stop()
	ms := &missingStore{}
	e.wrap = func(st store.Store) store.Store { ms.Store = st; return ms }
	e.start()
	ctx := context.Background()
	past := time.Now().Add(-workerGrace - time.Second)

	for _, tc := range []struct {
		name string
		// landed: the record is written before the worker's read, which
		// misses it (it lands between the read and the tombstone)
		landed bool
		// inline: the work message carries the envelope
		inline bool
	}{
		{"lands after the worker dropped the message", false, true},
		{"lands after, the envelope too large for the message", false, false},
		{"landed between the worker's read and its tombstone", true, true},
	} {
		en := e.envelope("/work", nil)
		en.Deadline = past.UnixMilli()
		m, err := e.c.message(queue.TopicWork, store.NewRecord(en, time.Now()))
		if err != nil {
			t.Fatal(err)
		}
		if !tc.inline {
			var msg taskMessage
			_ = json.Unmarshal(m.Body, &msg)
			msg.Envelope = nil
			m.Body, _ = json.Marshal(msg)
		}
		if tc.landed {
			if err := lateWrite(ctx, e.c.store, en); err != nil {
				t.Fatal(err)
			}
			ms.missOnce(en.ID)
		}
		if err := e.c.handleWork(ctx, m); err != nil {
			t.Fatalf("%s: handleWork: %v, want the message dropped", tc.name, err)
		}
		if !tc.landed {
			if err := lateWrite(ctx, e.c.store, en); !errors.Is(err, store.ErrExists) {
				t.Fatalf("%s: the late write: %v, want ErrExists (the id taken)", tc.name, err)
			}
		}
		code, rec := e.get("/v1/requests/" + en.ID)
		if code != 200 || rec["status"] != "dead" || rec["error"] != AbandonedNote {
			t.Fatalf("%s: record %d %v, want it abandoned", tc.name, code, rec)
		}
	}
	time.Sleep(300 * time.Millisecond)
	e.mu.Lock()
	n := len(e.callbacks)
	e.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d requests intake did not accept were called back", n)
	}
}

// missingStore misses the records of the ids given to missOnce on their
// next read (a read that came before their write landed).
type missingStore struct {
	store.Store
	mu   sync.Mutex
	miss map[string]bool
}

func (s *missingStore) missOnce(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.miss == nil {
		s.miss = map[string]bool{}
	}
	s.miss[id] = true
}

func (s *missingStore) Get(ctx context.Context, id string) (*store.Record, error) {
	s.mu.Lock()
	miss := s.miss[id]
	delete(s.miss, id)
	s.mu.Unlock()
	if miss {
		return nil, store.ErrNotFound
	}
	return s.Store.Get(ctx, id)
}

// retriedStore answers a create it committed with ErrExists (its client
// sent the write again after losing the answer to the first), and fails
// the next read of that record (the store still failing).
type retriedStore struct {
	store.Store
	mu        sync.Mutex
	failReads map[string]bool
}

func (s *retriedStore) Create(ctx context.Context, r *store.Record) error {
	if r.Status == store.Dead { // a tombstone
		return s.Store.Create(ctx, r)
	}
	if err := s.Store.Create(ctx, r); err != nil {
		return err
	}
	s.mu.Lock()
	s.failReads[r.ID] = true
	s.mu.Unlock()
	return store.ErrExists
}

func (s *retriedStore) Get(ctx context.Context, id string) (*store.Record, error) {
	s.mu.Lock()
	fail := s.failReads[id]
	delete(s.failReads, id)
	s.mu.Unlock()
	if fail {
		return nil, errors.New("reading record: connection reset by peer")
	}
	return s.Store.Get(ctx, id)
}

// TestIntakeAbandonsWhatItCannotReadBack: a create that reports the id
// taken (the store's client retried a write that had landed) is read back;
// when that read fails, intake answers 503 — so the record, its own, must
// never run: it is abandoned, not left queued while its work message is
// dropped as refused.
func TestIntakeAbandonsWhatItCannotReadBack(t *testing.T) {
	e := newEnv(t)
	e.stop()
	rs := &retriedStore{failReads: map[string]bool{}}
	e.wrap = func(st store.Store) store.Store { rs.Store = st; return rs }
	e.start()

	en := e.envelope("/work", nil)
	en.Deadline = time.Now().Add(5 * time.Second).UnixMilli()
	if resp := e.intake(en); resp.StatusCode != 503 {
		t.Fatalf("intake: %d, want 503 (the record could not be read back)", resp.StatusCode)
	}
	// Long enough for its worker to have run it, had it been left queued.
	time.Sleep(500 * time.Millisecond)
	code, rec := e.get("/v1/requests/" + en.ID)
	if code != 200 || rec["status"] != "dead" || rec["error"] != AbandonedNote {
		t.Fatalf("record %d %v, want it abandoned", code, rec)
	}
	e.mu.Lock()
	n := e.callbacks[en.ID]
	e.mu.Unlock()
	if n != 0 {
		t.Fatalf("a request intake answered 503 was called back %d times", n)
	}
}

// losingQueue refuses the next publish of topic once armed, as a broker
// that does not confirm in time, and calls then (when set) at that moment.
type losingQueue struct {
	queue.Queue
	topic string
	armed sync.Mutex
	lose  bool
	then  func()
}

func (q *losingQueue) arm(then func()) {
	q.armed.Lock()
	q.lose, q.then = true, then
	q.armed.Unlock()
}

func (q *losingQueue) Publish(ctx context.Context, m queue.Message) error {
	q.armed.Lock()
	lose, then := q.lose && m.Topic == q.topic, q.then
	if lose {
		q.lose = false
	}
	q.armed.Unlock()
	if lose {
		if then != nil {
			then()
		}
		return errors.New("no confirm from the broker: context deadline exceeded")
	}
	return q.Queue.Publish(ctx, m)
}

// TestLostRetryMessageIsCarriedByTheHandledOne: without an outbox, a
// failed callback attempt is written (retry, leased until the next is due)
// and then its delivery message is published. When that publish fails, the
// message being handled is not acked: redelivered, it makes the next
// attempt. Acked, it left the record delivering with no message at all —
// a callback the receiver may already have had (an attempt that timed out
// after the receiver took it), and a record stuck until the sweeper.
func TestLostRetryMessageIsCarriedByTheHandledOne(t *testing.T) {
	e := newEnv(t)
	e.stop()
	q := &losingQueue{topic: queue.TopicDelivery}
	e.wrapQueue = func(inner queue.Queue) queue.Queue { q.Queue = inner; return q }
	e.start()
	e.failing.Store(true)
	q.arm(func() { e.failing.Store(false) }) // the next attempt succeeds

	en := e.envelope("/work", nil)
	if resp := e.intake(en); resp.StatusCode != 201 {
		t.Fatalf("intake: %d", resp.StatusCode)
	}
	code, rec := e.get("/v1/requests/" + en.ID + "?wait=10s")
	if code != 200 || rec["status"] != "delivered" {
		t.Fatalf("record %d %v, want it delivered on its second attempt", code, rec)
	}
	if n := len(rec["attempts"].([]any)); n != 2 {
		t.Fatalf("%d attempts, want 2 (a failed one, then the one that delivered)", n)
	}
	e.mu.Lock()
	n := e.callbacks[en.ID]
	e.mu.Unlock()
	if n != 1 {
		t.Fatalf("%d callbacks, want 1", n)
	}
}
