//go:build e2e

package e2e

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"strings"
	"sync"

	_ "modernc.org/sqlite"
	"testing"
	"time"
)

// TestTimedOutIntakeNeverRuns stalls the collector's store (another
// process holds the embedded database's write lock) while callers send
// async requests, and releases it around the filter's collectorTimeout (2 s
// in examples/rules.yaml): intake's commits then end just before, at or just
// after the moment the filter gives up and answers 503 (or, for
// onCollectorDown: passthrough, serves the request itself). Whatever the
// timing, a request whose caller was told it failed (or was served
// synchronously) must never run through the collector nor be called back: a
// retrying caller would run a non-idempotent operation twice.
func TestTimedOutIntakeNeverRuns(t *testing.T) {
	db, err := sql.Open("sqlite", "file:"+st.DBPath()+"?_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	type sent struct {
		path, traceID string
		status        int
	}
	var mu sync.Mutex
	var all []sent
	for round, hold := range []time.Duration{1900 * time.Millisecond, 1960 * time.Millisecond, 2020 * time.Millisecond, 2100 * time.Millisecond} {
		conn, err := db.Conn(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := conn.ExecContext(t.Context(), "BEGIN EXCLUSIVE"); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		var wg sync.WaitGroup
		for i := range 8 {
			path := fmt.Sprintf("/slow?ms=10&round=%d&n=%d", round, i)
			if i%4 == 3 {
				path = fmt.Sprintf("/soft?ms=10&round=%d&n=%d", round, i)
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				resp, _ := do(t, "POST", path, `{"pay":1}`, "content-type", "application/json")
				mu.Lock()
				all = append(all, sent{path, resp.Header.Get("x-async-trace-id"), resp.StatusCode})
				mu.Unlock()
			}()
		}
		time.Sleep(time.Until(start.Add(hold)))
		_, _ = conn.ExecContext(context.Background(), "ROLLBACK")
		conn.Close()
		wg.Wait()
	}
	// Time for the collector to run what it accepted (its workers' grace
	// after the deadline included) and call it back.
	time.Sleep(5 * time.Second)
	svcLog, _ := os.ReadFile(st.LogPath("service"))
	got := receivedAt(t, st)
	told := map[int]int{}
	for _, s := range all {
		told[s.status]++
		if s.traceID == "" {
			t.Fatalf("%s: no trace id (status %d)", s.path, s.status)
		}
		n := strings.Count(string(svcLog), s.traceID)
		called := false
		for _, r := range got {
			called = called || r.TraceID == s.traceID
		}
		switch s.status {
		case 202: // accepted: run once, through the collector
			if n != 1 {
				t.Errorf("%s (accepted): the service saw it %d times", s.path, n)
			}
		case 200, 503: // served synchronously, or told it failed
			if want := map[int]int{200: 1, 503: 0}[s.status]; n != want || called {
				t.Errorf("%s (told %d): the service saw it %d times (want %d), called back %v", s.path, s.status, n, want, called)
			}
		default:
			t.Errorf("%s: answered %d", s.path, s.status)
		}
	}
	t.Logf("answers: %v", told)
}
