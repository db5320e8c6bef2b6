package collector

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/store"
)

// slowStore is a store whose creates take delay: a loaded or stalled
// backend. It hides the embedded store's outbox, as a remote store would.
type slowStore struct {
	store.Store
	delay time.Duration
}

func (s slowStore) Create(ctx context.Context, r *store.Record) error {
	time.Sleep(s.delay)
	return s.Store.Create(context.WithoutCancel(ctx), r)
}

// TestLateIntakeNeverRuns plays the filter giving up on intakes: an
// envelope that arrives after the filter's deadline is refused unstored,
// and one whose commit ends after it is abandoned — neither is ever run or
// called back, whatever happens next.
func TestLateIntakeNeverRuns(t *testing.T) {
	e := newEnv(t)
	e.stop()
	e.wrap = func(st store.Store) store.Store { return slowStore{st, 600 * time.Millisecond} }
	e.start()

	gone := e.envelope("/work", nil)
	gone.Deadline = time.Now().Add(-time.Second).UnixMilli()
	if resp := e.intake(gone); resp.StatusCode != 503 {
		t.Fatalf("an envelope past its deadline: %d, want 503", resp.StatusCode)
	}
	if code, _ := e.get("/v1/requests/" + gone.ID); code != 404 {
		t.Fatalf("an envelope past its deadline was stored: %d", code)
	}

	slow := e.envelope("/work", nil)
	slow.Deadline = time.Now().Add(400 * time.Millisecond).UnixMilli() // the commit takes 600 ms
	if resp := e.intake(slow); resp.StatusCode != 503 {
		t.Fatalf("an intake whose commit outlived the deadline: %d, want 503", resp.StatusCode)
	}
	// Long enough for the worker's grace, a run and a callback.
	time.Sleep(workerGrace + time.Second)
	code, rec := e.get("/v1/requests/" + slow.ID)
	if code != 200 || rec["status"] != "dead" || rec["error"] != AbandonedNote {
		t.Fatalf("abandoned record: %d %v", code, rec)
	}
	for _, h := range rec["history"].([]any) {
		if st := h.(map[string]any)["status"]; st == "processing" || st == "completed" {
			t.Fatalf("an abandoned record ran: %v", rec["history"])
		}
	}
	e.mu.Lock()
	n := e.callbacks[slow.ID]
	e.mu.Unlock()
	if n != 0 {
		t.Fatalf("an abandoned record was called back %d times", n)
	}

	// In time: accepted, run and called back as ever.
	ok := e.envelope("/work", nil)
	ok.Deadline = time.Now().Add(5 * time.Second).UnixMilli()
	if resp := e.intake(ok); resp.StatusCode != 201 {
		t.Fatalf("an intake in time: %d", resp.StatusCode)
	}
	if code, rec := e.get("/v1/requests/" + ok.ID + "?wait=10s"); code != 200 || rec["status"] != "delivered" {
		t.Fatalf("in time: %d %v", code, rec)
	}
	// The filter does not retry, but a replayed intake of an abandoned id
	// is not resurrected.
	data, _ := json.Marshal(slow)
	if resp := e.post("/v1/intake", data); resp.StatusCode == 201 {
		t.Fatal("a second intake of an abandoned request was accepted")
	}
}

func TestRunnable(t *testing.T) {
	c := &Collector{decided: newDecisions()}
	ctx := context.Background()
	now := time.Now()
	c.decided.pending("mine", now.Add(time.Second))
	c.decided.decide("mine")
	c.decided.pending("deciding", now.Add(300*time.Millisecond))
	go func() { time.Sleep(50 * time.Millisecond); c.decided.decide("deciding") }()
	c.decided.pending("stuck", time.Now().Add(-workerGrace+100*time.Millisecond))
	for _, tc := range []struct {
		name     string
		id       string
		deadline time.Time
		want     bool
	}{
		{"no deadline (an older filter)", "x", time.Time{}, true},
		{"decided by this collector's intake", "mine", now.Add(time.Second), true},
		{"intake deciding: waited for in process", "deciding", now.Add(300 * time.Millisecond), true},
		{"intake never decides before the grace ends", "stuck", time.Now().Add(-workerGrace + 100*time.Millisecond), false},
		{"another collector's, deadline ahead", "other", now.Add(time.Second), false},
		{"another collector's, within the grace", "other", now.Add(-workerGrace / 2), false},
		{"another collector's, past the grace", "other", now.Add(-workerGrace), true},
	} {
		got, wait := c.runnable(ctx, tc.id, tc.deadline, time.Now())
		if got != tc.want || (!got && tc.id == "other" && wait <= 0) {
			t.Errorf("%s: runnable = %v (wait %v), want %v", tc.name, got, wait, tc.want)
		}
	}
	c.decided.prune(now.Add(2 * time.Minute))
	if _, ok := c.decided.m["mine"]; ok {
		t.Error("prune kept a decision a minute past its deadline")
	}
}
