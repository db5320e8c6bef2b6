package elastic

import (
	"context"
	"fmt"
	"net/http"
	"time"
)

// The store's clock (store.Store.Now) is Elasticsearch's, not this
// process's: changes are stamped and leases measured by it, so that
// collectors whose clocks disagree (a host 30 s off) neither steal a lease
// nor let one run over. The store learns the offset between the two by
// asking Elasticsearch for its time — the timestamp of the answering
// node's stats, which any distribution has (a minimal one has no ingest
// processors or scripts) and which writes nothing — and takes the middle of the round trip as the moment it was read. It measures
// on Open (the best of a few tries) and again every clockEvery.
//
// The nodes of a cluster are assumed to agree with each other (NTP, as
// Elasticsearch itself assumes for its own timestamps); a collector reaches
// whichever node answers.

const (
	clockEvery = 5 * time.Minute
	clockTries = 3
)

// Now is the store's clock: this process's, corrected by the last measured
// offset to Elasticsearch's.
func (s *Store) Now() time.Time {
	return s.cfg.Clock().Add(time.Duration(s.offset.Load())).UTC()
}

// measureClock measures the offset to Elasticsearch's clock clockTries
// times and keeps the one read over the shortest round trip.
func (s *Store) measureClock(ctx context.Context) error {
	best, bestRTT := time.Duration(0), time.Duration(-1)
	var lastErr error
	for range clockTries {
		off, rtt, err := s.readClock(ctx)
		if err != nil {
			lastErr = err
			continue
		}
		if bestRTT < 0 || rtt < bestRTT {
			best, bestRTT = off, rtt
		}
	}
	if bestRTT < 0 {
		return fmt.Errorf("elasticsearch: reading its clock: %w", lastErr)
	}
	s.offset.Store(int64(best))
	return nil
}

// readClock reads Elasticsearch's time once — the timestamp of the node
// stats of the node that answers — and returns its offset from this
// process's clock and the round trip it was read over.
func (s *Store) readClock(ctx context.Context) (offset, rtt time.Duration, err error) {
	var res struct {
		Nodes map[string]struct {
			Timestamp int64 `json:"timestamp"`
		} `json:"nodes"`
	}
	t0 := s.cfg.Clock()
	if err := s.call(ctx, http.MethodGet, "/_nodes/_local/stats/os?filter_path=nodes.*.timestamp", nil, &res); err != nil {
		return 0, 0, err
	}
	t1 := s.cfg.Clock()
	if len(res.Nodes) != 1 {
		return 0, 0, fmt.Errorf("node stats named %d nodes, want the local one", len(res.Nodes))
	}
	var server time.Time
	for _, n := range res.Nodes {
		server = time.UnixMilli(n.Timestamp)
	}
	rtt = t1.Sub(t0)
	return server.Sub(t0.Add(rtt / 2)), rtt, nil
}

// keepClock measures the offset again every clockEvery until ctx ends.
func (s *Store) keepClock(ctx context.Context) {
	t := time.NewTicker(clockEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := s.measureClock(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("elasticsearch: measuring its clock; keeping the last offset", "err", err)
		}
	}
}
