//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/asyncmesh/asyncmesh/examples/stack"
)

// TestCollectorRestartUnderLoad stops the collector (SIGTERM, then kill -9) in
// the middle of a bounded load of async requests through Envoy, starts it
// again, and counts from the receiver's side: every request that got 202 is
// called back (deduplicated by webhook-id). Duplicates are reported; after a
// graceful stop there must be none.
func TestCollectorRestartUnderLoad(t *testing.T) {
	for _, tc := range []struct {
		name string
		kill bool
	}{{"sigterm", false}, {"kill9", true}} {
		t.Run(tc.name, func(t *testing.T) {
			l := loadDuring(t, st, "/slow?ms=30", 3*time.Second, func() {
				time.Sleep(time.Second)
				if err := st.StopCollector(tc.kill); err != nil {
					t.Error(err)
				}
				time.Sleep(300 * time.Millisecond)
				if err := st.StartCollector(); err != nil {
					t.Error(err)
				}
				if err := st.WaitCollector(context.Background()); err != nil {
					t.Error(err)
				}
			})
			// After kill -9, what the dead collector held comes back when its
			// queue and record leases expire (30 s).
			if len(l.ids) < 20 {
				t.Fatalf("only %d accepted: the load did not run", len(l.ids))
			}
			lost, dups := countCallbacks(t, st, l.ids, 75*time.Second)
			t.Logf("%s: accepted %d, refused %d, lost %d, duplicated %d", tc.name, len(l.ids), l.refused(), lost, dups)
			if lost > 0 {
				t.Fatalf("%d accepted requests never called back", lost)
			}
			if !tc.kill && dups > 0 {
				t.Fatalf("%d duplicates after a graceful stop", dups)
			}
		})
	}
}

// load is what a bounded load saw.
type load struct {
	ids           []string    // request ids of the 202s
	codes         map[int]int // responses by status
	firstAccepted time.Time
}

// refused counts the answers other than 202 (503 while a part is down).
func (l load) refused() int {
	n := 0
	for c, k := range l.codes {
		if c != 202 {
			n += k
		}
	}
	return n
}

// loadDuring POSTs to path through s's Envoy from 4 clients for d while fault
// runs. A failed request (Envoy itself down) is a test error.
func loadDuring(t *testing.T, s *stack.Stack, path string, d time.Duration, fault func()) load {
	t.Helper()
	var mu sync.Mutex
	l := load{codes: map[int]int{}}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				resp, err := client.Post(s.EnvoyURL+path, "application/json", strings.NewReader(`{"load":true}`))
				if err != nil {
					t.Errorf("load request: %v", err)
					return
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				mu.Lock()
				l.codes[resp.StatusCode]++
				if resp.StatusCode == 202 {
					var b struct{ ID string }
					_ = json.Unmarshal(body, &b)
					l.ids = append(l.ids, b.ID)
					if l.firstAccepted.IsZero() {
						l.firstAccepted = time.Now()
					}
				}
				mu.Unlock()
				time.Sleep(10 * time.Millisecond)
			}
		}()
	}
	fault()
	wg.Wait()
	return l
}

// countCallbacks waits up to wait for a callback of every id at s's receiver
// and returns how many never came and how many came more than once.
func countCallbacks(t *testing.T, s *stack.Stack, ids []string, wait time.Duration) (lost, dups int) {
	t.Helper()
	counts := map[string]int{}
	deadline := time.Now().Add(wait)
	for lost = len(ids); lost > 0 && time.Now().Before(deadline); time.Sleep(250 * time.Millisecond) {
		clear(counts)
		for _, r := range receivedAt(t, s) {
			counts[r.WebhookID]++
		}
		lost = 0
		for _, id := range ids {
			if counts[id] == 0 {
				lost++
			}
		}
	}
	for _, id := range ids {
		if counts[id] > 1 {
			dups++
		}
	}
	return lost, dups
}

func receivedAt(t *testing.T, s *stack.Stack) []received {
	t.Helper()
	resp, err := client.Get(s.ReceiverURL + "/received")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got []received
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
		t.Fatal(err)
	}
	return got
}
