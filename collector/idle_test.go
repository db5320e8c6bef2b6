package collector

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/queue"
	"github.com/asyncmesh/asyncmesh/collector/store"
)

// countingStore counts the calls a collector makes to its store (other:
// every method but Stale), keeping the embedded store's outbox.
type countingStore struct {
	store.Store
	other, relayRounds, sweeps atomic.Int64
}

func (s *countingStore) Create(ctx context.Context, r *store.Record) error {
	s.other.Add(1)
	return s.Store.Create(ctx, r)
}

func (s *countingStore) Transition(ctx context.Context, id string, c store.Change) (*store.Record, error) {
	s.other.Add(1)
	return s.Store.Transition(ctx, id, c)
}

func (s *countingStore) Get(ctx context.Context, id string) (*store.Record, error) {
	s.other.Add(1)
	return s.Store.Get(ctx, id)
}

func (s *countingStore) Search(ctx context.Context, q store.Query) (store.Page, error) {
	s.other.Add(1)
	return s.Store.Search(ctx, q)
}

func (s *countingStore) Stale(ctx context.Context, st store.Status, before time.Time, limit int) ([]*store.Record, error) {
	switch st {
	case store.Persisted:
		s.relayRounds.Add(1)
	case store.Queued: // the first of a sweep's five
		s.sweeps.Add(1)
	}
	return s.Store.Stale(ctx, st, before, limit)
}

func (s *countingStore) Ping(ctx context.Context) error {
	s.other.Add(1)
	return s.Store.Ping(ctx)
}

func (s *countingStore) Queue() queue.Queue { return s.Store.(store.Outbox).Queue() }

func (s *countingStore) CreatePublish(ctx context.Context, r *store.Record, m *queue.Message) error {
	s.other.Add(1)
	return s.Store.(store.Outbox).CreatePublish(ctx, r, m)
}

func (s *countingStore) TransitionPublish(ctx context.Context, id string, c store.Change, m *queue.Message) (*store.Record, error) {
	s.other.Add(1)
	return s.Store.(store.Outbox).TransitionPublish(ctx, id, c, m)
}

// TestIdleCollectorBacksOff: an idle collector on the embedded default
// calls its store only for relay and sweeper rounds, and those come less
// and less often. With periods of 50 ms, 2.5 s make 50 relay rounds and
// 50 sweeps when the waits do not grow. Here the relay's wait doubles to
// RelayIdle (rounds 0.05, 0.15, 0.35, 0.75, 1.55, 2.35 s after start); the
// sweeper keeps its period until SweepAge + SweepInterval have passed since
// the last move (the start: 17 rounds), then doubles its wait to SweepIdle
// (0.95, 1.15, 1.55, 2.35 s). Counted, not timed: a slower machine only
// makes fewer calls.
func TestIdleCollectorBacksOff(t *testing.T) {
	e := newEnv(t)
	e.stop()
	cs := &countingStore{}
	e.wrap = func(st store.Store) store.Store { cs.Store = st; return cs }
	e.tune = func(c *Config) {
		c.RelayInterval, c.RelayIdle = 50*time.Millisecond, 800*time.Millisecond
		c.SweepInterval, c.SweepAge, c.SweepIdle = 50*time.Millisecond, 800*time.Millisecond, 800*time.Millisecond
	}
	e.start()
	if e.c.outbox == nil {
		t.Fatal("the counting store hides the embedded store's outbox")
	}
	time.Sleep(2500 * time.Millisecond)
	relay, sweeps, other := cs.relayRounds.Load(), cs.sweeps.Load(), cs.other.Load()
	t.Logf("in 2.5 s: %d relay rounds, %d sweeps, %d other store calls", relay, sweeps, other)
	if relay > 8 {
		t.Errorf("%d relay rounds in 2.5 s, want at most 8", relay)
	}
	if sweeps > 25 {
		t.Errorf("%d sweeps in 2.5 s, want at most 25", sweeps)
	}
	if other != 0 {
		t.Errorf("%d store calls besides the relay's and the sweeper's", other)
	}

	// Work brings the collector back: a request is run and called back.
	en := e.envelope("/work", []byte("after idle"))
	if resp := e.intake(en); resp.StatusCode != 201 {
		t.Fatalf("intake answered %d", resp.StatusCode)
	}
	if got, err := e.c.await(context.Background(), en.ID, 10*time.Second, store.Status.Terminal); err != nil || got.Status != store.Delivered {
		t.Fatalf("after idling: %v (%v)", got.Status, err)
	}
}

// TestFailedPublishWakesTheRelay: with a RelayInterval of an hour, only the
// wakeup of a publish that failed at intake can bring a relay round: the
// record is published RelayAge later and delivered once.
func TestFailedPublishWakesTheRelay(t *testing.T) {
	e := newEnv(t)
	e.stop()
	var refused atomic.Int64
	e.tune = func(c *Config) { c.RelayInterval, c.RelayAge = time.Hour, 50*time.Millisecond }
	e.wrapQueue = func(q queue.Queue) queue.Queue { return &flakyQueue{Queue: q, refuse: &refused} }
	e.start()

	en := e.envelope("/work", nil)
	resp := e.intake(en)
	if resp.StatusCode != 201 || resp.Header.Get("x-async-status") != string(store.Persisted) || refused.Load() != 1 {
		t.Fatalf("intake with the first publish refused: %d %s (%d refused)", resp.StatusCode, resp.Header.Get("x-async-status"), refused.Load())
	}
	got, err := e.c.await(context.Background(), en.ID, 10*time.Second, store.Status.Terminal)
	if err != nil || got.Status != store.Delivered {
		t.Fatalf("a record whose publish failed ended %v (%v): the relay was not woken", got.Status, err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.callbacks[en.ID] != 1 {
		t.Fatalf("%d callbacks", e.callbacks[en.ID])
	}
}

// flakyQueue refuses its first publish (refused counts it).
type flakyQueue struct {
	queue.Queue
	refuse *atomic.Int64
	once   atomic.Bool
}

func (q *flakyQueue) Publish(ctx context.Context, m queue.Message) error {
	if q.once.CompareAndSwap(false, true) {
		q.refuse.Add(1)
		return errors.New("no confirm")
	}
	return q.Queue.Publish(ctx, m)
}

func TestRelayAndSweepWaits(t *testing.T) {
	c, err := New(Config{ReplayURL: "http://127.0.0.1:1", ReplaySecret: replaySecret, Secrets: testSecrets{}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	fail := errors.New("down")
	w := c.relayWaits()
	for i, tt := range []struct {
		n    int
		err  error
		want time.Duration // at most, with full jitter after a failure
	}{
		{0, nil, 2 * time.Second},
		{0, nil, 4 * time.Second},
		{0, nil, 8 * time.Second},
		{0, nil, 16 * time.Second},
		{0, nil, 32 * time.Second},
		{0, nil, time.Minute}, // RelayIdle
		{0, nil, time.Minute},
		{3, nil, time.Second}, // found some: RelayInterval
		{0, nil, 2 * time.Second},
		{0, fail, 2 * time.Second},
		{0, fail, 4 * time.Second},
		{0, fail, 8 * time.Second},
		{0, fail, 16 * time.Second},
		{0, fail, 30 * time.Second}, // failing: at most 30 s
		{0, fail, 30 * time.Second},
		{0, nil, 4 * time.Second}, // healthy again: idle doubling goes on
	} {
		got := w.next(tt.n, tt.err)
		if tt.err == nil && got != tt.want || tt.err != nil && (got < 0 || got > tt.want) {
			t.Errorf("round %d: next(%d, %v) = %v, want %v", i, tt.n, tt.err, got, tt.want)
		}
	}
	now := time.Now()
	for _, tt := range []struct {
		wait  time.Duration
		n     int
		err   error
		moved time.Duration // before now
		want  time.Duration
	}{
		{time.Minute, 0, nil, time.Second, time.Minute},                     // moved lately: SweepInterval
		{time.Minute, 0, nil, 15*time.Minute + 59*time.Second, time.Minute}, // what it moved may still get stuck
		{time.Minute, 0, nil, 16 * time.Minute, 2 * time.Minute},
		{8 * time.Minute, 0, nil, time.Hour, 10 * time.Minute}, // SweepIdle
		{10 * time.Minute, 1, nil, time.Hour, time.Minute},     // found one
		{10 * time.Minute, 0, fail, time.Hour, time.Minute},    // failed
	} {
		if got := c.sweepWait(tt.wait, tt.n, tt.err, now, now.Add(-tt.moved)); got != tt.want {
			t.Errorf("sweepWait(%v, %d, %v, moved %v ago) = %v, want %v", tt.wait, tt.n, tt.err, tt.moved, got, tt.want)
		}
	}
}
