package collector

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"syscall"
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
	c.decided.decide("mine", accepted)
	c.decided.decide("mine", refused) // the first decision stands
	c.decided.pending("refused", now.Add(time.Second))
	c.decided.decide("refused", refused)
	c.decided.pending("unsettled", now.Add(-time.Hour))
	c.decided.leave(&store.Record{ID: "unsettled"})
	c.decided.pending("deciding", now.Add(300*time.Millisecond))
	go func() { time.Sleep(50 * time.Millisecond); c.decided.decide("deciding", accepted) }()
	c.decided.pending("stuck", time.Now().Add(-workerGrace+100*time.Millisecond))
	for _, tc := range []struct {
		name     string
		id       string
		deadline time.Time
		want     verdict
	}{
		{"no deadline (an older filter)", "x", time.Time{}, runIt},
		{"accepted by this collector's intake", "mine", now.Add(time.Second), runIt},
		{"refused by this collector's intake", "refused", now.Add(time.Second), dropIt},
		{"refused, its record maybe left", "unsettled", now.Add(time.Second), abandonIt},
		{"refused, its record maybe left, past the deadline", "unsettled", now.Add(-time.Hour), abandonIt},
		{"intake deciding: waited for in process", "deciding", now.Add(300 * time.Millisecond), runIt},
		{"intake never decides before the grace ends", "stuck", time.Now().Add(-workerGrace + 100*time.Millisecond), waitForIt},
		{"another collector's, deadline ahead", "other", now.Add(time.Second), waitForIt},
		{"another collector's, within the grace", "other", now.Add(-workerGrace / 2), waitForIt},
		{"another collector's, past the grace", "other", now.Add(-workerGrace), runIt},
	} {
		got, wait := c.runnable(ctx, tc.id, tc.deadline, time.Now())
		if got != tc.want || (got == waitForIt && tc.id == "other" && wait <= 0) {
			t.Errorf("%s: runnable = %v (wait %v), want %v", tc.name, got, wait, tc.want)
		}
	}
	c.decided.prune(now.Add(2 * time.Minute))
	if _, ok := c.decided.m["mine"]; ok {
		t.Error("prune kept a decision a minute past its deadline")
	}
	if _, ok := c.decided.m["unsettled"]; !ok {
		t.Error("prune dropped a refusal whose record is still to be abandoned")
	}
}

func TestMayHaveCommitted(t *testing.T) {
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	unavailable := fmt.Errorf("%w: %w", store.ErrUnavailable, refused)
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"no error", nil, false},
		{"the store vouches nothing was written", store.ErrUnavailable, false},
		{"wrapped, as the elastic store's refused bulk", fmt.Errorf("creating record x: %w", unavailable), false},
		{"the embedded database closed", fmt.Errorf("embedded database is closed: %w", store.ErrUnavailable), false},
		{"the filter hung up mid-write", fmt.Errorf("creating record x: %w", context.Canceled), true},
		{"the store timed out", fmt.Errorf("creating record x: %w", context.DeadlineExceeded), true},
		{"unavailable, but a context ended too", errors.Join(unavailable, context.Canceled), true},
		{"a bare connection refused (a retry after a sent attempt)", fmt.Errorf("POST /_bulk: %w", refused), true},
		{"connection lost mid-request", fmt.Errorf("POST /_bulk: %w", syscall.ECONNRESET), true},
		{"an answer that does not add up", errors.New("bulk answered 0 items for 1 operations"), true},
		{"an error answer", errors.New("creating record x: 429 es_rejected_execution_exception: queue full"), true},
	} {
		if got := mayHaveCommitted(tc.err); got != tc.want {
			t.Errorf("%s (%v): mayHaveCommitted = %v, want %v", tc.name, tc.err, got, tc.want)
		}
	}
}

// failingStore fails every create but a tombstone's with err, after
// committing it when commit is set, and counts the reads of each id.
type failingStore struct {
	store.Store
	mu     sync.Mutex
	err    error
	commit bool
	gets   map[string]int
}

func (s *failingStore) Create(ctx context.Context, r *store.Record) error {
	if r.Status == store.Dead { // intake's tombstone (abandonIfExists)
		return s.Store.Create(ctx, r)
	}
	s.mu.Lock()
	err, commit := s.err, s.commit
	s.mu.Unlock()
	if commit {
		if cerr := s.Store.Create(context.WithoutCancel(ctx), r); cerr != nil {
			return cerr
		}
	}
	return err
}

func (s *failingStore) Get(ctx context.Context, id string) (*store.Record, error) {
	s.mu.Lock()
	s.gets[id]++
	s.mu.Unlock()
	return s.Store.Get(ctx, id)
}

// levels records the level and message of every log line.
type levels struct {
	mu    sync.Mutex
	lines []string
}

func (l *levels) Enabled(context.Context, slog.Level) bool { return true }
func (l *levels) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	l.lines = append(l.lines, r.Level.String()+" "+r.Message)
	l.mu.Unlock()
	return nil
}
func (l *levels) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *levels) WithGroup(string) slog.Handler      { return l }

func (l *levels) take() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := l.lines
	l.lines = nil
	return out
}

// TestFailedIntakeReadsBackOnlyWhatMayHaveCommitted: a create the store
// vouches never happened (store.ErrUnavailable) is refused with a warning
// and no read; any other failure is read back and, when the record exists
// after all, abandoned (an error is logged): the caller is told 503 either
// way, and nothing of it ever runs.
func TestFailedIntakeReadsBackOnlyWhatMayHaveCommitted(t *testing.T) {
	e := newEnv(t)
	e.stop()
	fs := &failingStore{gets: map[string]int{}}
	e.wrap = func(st store.Store) store.Store { fs.Store = st; return fs }
	logs := &levels{}
	e.tune = func(c *Config) { c.Logger = slog.New(logs) }
	e.start()
	refused := fmt.Errorf("creating record: %w", fmt.Errorf("%w: %w", store.ErrUnavailable, &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}))
	for _, tc := range []struct {
		name      string
		err       error
		commit    bool
		read      bool   // intake reads the record back
		log       string // the level of intake's line
		abandoned bool
	}{
		{"the store unavailable, nothing written", refused, false, false, "WARN", false},
		{"the answer lost after the commit", errors.New("reading the answer: connection reset by peer"), true, true, "ERROR", true},
		{"the store's deadline after the commit", fmt.Errorf("creating record: %w", context.DeadlineExceeded), true, true, "ERROR", true},
		// Not written: a tombstone takes the id, in case the write lands late.
		{"failed, not written, but not vouched for", errors.New("dial tcp: connection refused"), false, true, "ERROR", true},
	} {
		fs.mu.Lock()
		fs.err, fs.commit = tc.err, tc.commit
		fs.mu.Unlock()
		logs.take()
		env := e.envelope("/work", nil)
		env.Deadline = time.Now().Add(5 * time.Second).UnixMilli()
		if resp := e.intake(env); resp.StatusCode != 503 {
			t.Errorf("%s: intake answered %d, want 503", tc.name, resp.StatusCode)
		}
		fs.mu.Lock()
		gets := fs.gets[env.ID]
		fs.mu.Unlock()
		if read := gets > 0; read != tc.read {
			t.Errorf("%s: read back %d times, want a read: %v", tc.name, gets, tc.read)
		}
		var intakeLines []string
		for _, l := range logs.take() {
			if strings.Contains(l, "intake: ") {
				intakeLines = append(intakeLines, l)
			}
		}
		if len(intakeLines) != 1 || !strings.HasPrefix(intakeLines[0], tc.log+" ") {
			t.Errorf("%s: intake logged %q, want one %s line", tc.name, intakeLines, tc.log)
		}
		code, rec := e.get("/v1/requests/" + env.ID)
		switch {
		case tc.abandoned && (code != 200 || rec["status"] != "dead" || rec["error"] != AbandonedNote):
			t.Errorf("%s: record %d %v, want it abandoned", tc.name, code, rec)
		case !tc.abandoned && code != 404:
			t.Errorf("%s: record %d %v, want none", tc.name, code, rec)
		}
	}
	// Longer than the relay's age and interval: nothing of the above ran.
	time.Sleep(300 * time.Millisecond)
	e.mu.Lock()
	n := len(e.callbacks)
	e.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d failed intakes were called back", n)
	}
}
