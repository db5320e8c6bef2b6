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
			var mu sync.Mutex
			var ids []string
			refused := 0
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			var wg sync.WaitGroup
			for range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for ctx.Err() == nil {
						resp, err := client.Post(st.EnvoyURL+"/slow?ms=30", "application/json", strings.NewReader(`{"load":true}`))
						if err != nil {
							t.Errorf("load request: %v", err) // Envoy itself must stay up
							return
						}
						body, _ := io.ReadAll(resp.Body)
						resp.Body.Close()
						mu.Lock()
						if resp.StatusCode == 202 {
							var b struct{ ID string }
							_ = json.Unmarshal(body, &b)
							ids = append(ids, b.ID)
						} else {
							refused++ // 503 while the collector is down: not accepted, not counted
						}
						mu.Unlock()
						time.Sleep(10 * time.Millisecond)
					}
				}()
			}
			time.Sleep(time.Second)
			if err := st.StopCollector(tc.kill); err != nil {
				t.Fatal(err)
			}
			time.Sleep(300 * time.Millisecond)
			if err := st.StartCollector(); err != nil {
				t.Fatal(err)
			}
			if err := st.WaitCollector(context.Background()); err != nil {
				t.Fatal(err)
			}
			wg.Wait()

			// After kill -9, what the dead collector held comes back when its
			// queue and record leases expire (30 s).
			counts := map[string]int{}
			deadline := time.Now().Add(75 * time.Second)
			missing := len(ids)
			for time.Now().Before(deadline) && missing > 0 {
				clear(counts)
				for _, r := range receivedAll(t) {
					counts[r.WebhookID]++
				}
				missing = 0
				for _, id := range ids {
					if counts[id] == 0 {
						missing++
					}
				}
				time.Sleep(250 * time.Millisecond)
			}
			dups := 0
			for _, id := range ids {
				if counts[id] > 1 {
					dups++
				}
			}
			t.Logf("%s: accepted %d, refused %d, lost %d, duplicated %d", tc.name, len(ids), refused, missing, dups)
			if len(ids) < 20 {
				t.Fatalf("only %d accepted: the load did not run", len(ids))
			}
			if missing > 0 {
				t.Fatalf("%d accepted requests never called back", missing)
			}
			if !tc.kill && dups > 0 {
				t.Fatalf("%d duplicates after a graceful stop", dups)
			}
		})
	}
}

func receivedAll(t *testing.T) []received {
	t.Helper()
	resp, err := client.Get(st.ReceiverURL + "/received")
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
