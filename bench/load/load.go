// Package load is asyncmesh's open-loop load generator: requests are sent at
// a fixed arrival rate whatever the answers do, and each latency is measured
// from the moment the request was due, not from when it could be sent, so
// queueing delay in the system under test (and in the generator) is counted,
// not hidden ("coordinated omission"). Runs are bounded in time and in
// requests in flight.
package load

import (
	"context"
	"math"
	"slices"
	"sync"
	"time"
)

// Params of one run.
type Params struct {
	Rate        float64       // requests per second
	Duration    time.Duration // how long requests are started
	MaxInFlight int           // past it, a due request counts as dropped (default 4096)
	// Grace bounds how long the run waits for answers after the last start
	// (default 10s); later answers count as failed.
	Grace time.Duration
}

// Result of one run.
type Result struct {
	Offered   float64         `json:"offered"`  // the rate asked for
	Achieved  float64         `json:"achieved"` // successful answers per second of the run
	Sent      int             `json:"sent"`
	OK        int             `json:"ok"`
	Failed    int             `json:"failed"`
	Dropped   int             `json:"dropped"` // due while MaxInFlight were outstanding
	Elapsed   time.Duration   `json:"elapsedNs"`
	latencies []time.Duration // of OK requests, sorted
}

// Percentile returns the p-th percentile (0..100) of successful latencies.
func (r Result) Percentile(p float64) time.Duration {
	if len(r.latencies) == 0 {
		return 0
	}
	i := int(math.Ceil(p/100*float64(len(r.latencies)))) - 1
	return r.latencies[max(0, min(i, len(r.latencies)-1))]
}

// ErrorRate is the share of due requests that failed or were dropped.
func (r Result) ErrorRate() float64 {
	n := r.Sent + r.Dropped
	if n == 0 {
		return 0
	}
	return float64(r.Failed+r.Dropped) / float64(n)
}

// Run sends do at p.Rate for p.Duration. do gets the request's sequence
// number; a nil error is a success.
func Run(ctx context.Context, p Params, do func(ctx context.Context, seq int) error) Result {
	if p.MaxInFlight <= 0 {
		p.MaxInFlight = 4096
	}
	if p.Grace <= 0 {
		p.Grace = 10 * time.Second
	}
	var (
		mu  sync.Mutex
		res = Result{Offered: p.Rate}
		wg  sync.WaitGroup
	)
	sem := make(chan struct{}, p.MaxInFlight)
	reqCtx, cancel := context.WithTimeout(ctx, p.Duration+p.Grace)
	defer cancel()
	start := time.Now()
	interval := time.Duration(float64(time.Second) / p.Rate)
	for i := 0; ; i++ {
		due := start.Add(time.Duration(i) * interval)
		if due.Sub(start) >= p.Duration || ctx.Err() != nil {
			break
		}
		if d := time.Until(due); d > 0 {
			time.Sleep(d)
		}
		select {
		case sem <- struct{}{}:
		default:
			mu.Lock()
			res.Dropped++
			mu.Unlock()
			continue
		}
		wg.Add(1)
		go func(seq int, due time.Time) {
			defer func() { <-sem; wg.Done() }()
			err := do(reqCtx, seq)
			lat := time.Since(due)
			mu.Lock()
			defer mu.Unlock()
			res.Sent++
			if err != nil {
				res.Failed++
				return
			}
			res.OK++
			res.latencies = append(res.latencies, lat)
		}(i, due)
	}
	wg.Wait()
	res.Elapsed = time.Since(start)
	slices.Sort(res.latencies)
	res.Achieved = float64(res.OK) / res.Elapsed.Seconds()
	return res
}
