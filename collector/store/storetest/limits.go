package storetest

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/store"
)

// endpointLimiters checks what the endpoint limits keep in an endpoint's
// state (store.EndpointLimiter): the heartbeats of concurrent collectors,
// each replacing its own entry, all kept and read back as written, and kept
// by the health merges that write the same document.
func endpointLimiters(t *testing.T, open func(t *testing.T) store.Store) {
	s := open(t)
	es, ok := store.EndpointsOf(s)
	if !ok {
		t.Skip("the store does not implement store.Endpoints")
	}
	ctx := context.Background()
	id := store.EndpointID("", "http", "https://slow.example/cb")
	now := time.Now().UTC().Truncate(time.Millisecond)
	const collectors, beats = 6, 4
	var wg sync.WaitGroup
	for c := range collectors {
		wg.Go(func() {
			me := fmt.Sprintf("collector-%d", c)
			for b := range beats {
				_, err := es.UpdateEndpoint(ctx, id, func(e *store.Endpoint) error {
					e.Limiters = slices.DeleteFunc(e.Limiters, func(l store.EndpointLimiter) bool { return l.Collector == me })
					e.Limiters = append(e.Limiters, store.EndpointLimiter{Collector: me, Seen: now.Add(time.Duration(b) * time.Second), Rate: 2.5, InFlight: c})
					return nil
				})
				if err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	// A health merge leaves the heartbeats alone.
	if _, err := es.UpdateEndpoint(ctx, id, func(e *store.Endpoint) error {
		e.URL, e.Protocol = "https://slow.example/cb", "http"
		e.Observe(store.EndpointDelta{Attempts: 1, Successes: 1, LastSuccess: now}, now)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	e, err := es.GetEndpoint(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if len(e.Limiters) != collectors {
		t.Fatalf("%d heartbeats kept, want one per collector (%d): %+v", len(e.Limiters), collectors, e.Limiters)
	}
	for _, l := range e.Limiters {
		var c int
		if _, err := fmt.Sscanf(l.Collector, "collector-%d", &c); err != nil {
			t.Fatalf("heartbeat %+v", l)
		}
		if !l.Seen.Equal(now.Add((beats-1)*time.Second)) || l.Rate != 2.5 || l.InFlight != c {
			t.Fatalf("heartbeat read back as %+v, want seen %v, rate 2.5, inFlight %d", l, now.Add((beats-1)*time.Second), c)
		}
	}
}
