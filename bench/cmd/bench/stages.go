package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/asyncmesh/asyncmesh/examples/stack"
)

// Stage is where accept → callback time goes: the time between two statuses
// of the records, read from their histories (each status's time is taken when
// its write starts, so a stage holds the write of its first status).
type Stage struct {
	From  string  `json:"from"`
	To    string  `json:"to"`
	P50ms float64 `json:"p50ms"`
	P99ms float64 `json:"p99ms"`
}

// stageOrder is the lifecycle of a request that succeeds (docs/architecture.md).
var stageOrder = []string{"persisted", "queued", "processing", "completed", "delivering", "delivered"}

// statusAt is one entry of a record's history.
type statusAt struct {
	Status string    `json:"status"`
	At     time.Time `json:"at"`
}

// stages reads the records of ids from the collector's API and summarises
// the time between consecutive statuses.
func stages(ctx context.Context, s *stack.Stack, ids []string) ([]Stage, error) {
	var histories [][]statusAt
	for _, id := range ids {
		var rec struct {
			History []statusAt `json:"history"`
		}
		resp, err := s.OperatorGet(ctx, "/v1/requests/"+id)
		if err == nil {
			if resp.StatusCode != http.StatusOK {
				err = fmt.Errorf("answered %s", resp.Status)
			} else {
				err = json.NewDecoder(resp.Body).Decode(&rec)
			}
			resp.Body.Close()
		}
		if err != nil {
			return nil, fmt.Errorf("reading record %s: %w", id, err)
		}
		histories = append(histories, rec.History)
	}
	return summarizeStages(histories), nil
}

// summarizeStages is p50 and p99 of the time between each status of
// stageOrder a history reached and the next one it reached (a status's
// first entry counts: a retried status does not restart its stage; a status
// the common path skips, such as processing, makes no stage of its own).
// Stages come in stageOrder.
func summarizeStages(histories [][]statusAt) []Stage {
	type pair struct{ from, to int }
	spans := map[pair][]time.Duration{}
	for _, h := range histories {
		at := map[string]time.Time{}
		for _, e := range h {
			if _, seen := at[e.Status]; !seen {
				at[e.Status] = e.At
			}
		}
		prev := -1
		for i, st := range stageOrder {
			if _, ok := at[st]; !ok {
				continue
			}
			if prev >= 0 {
				p := pair{prev, i}
				spans[p] = append(spans[p], at[st].Sub(at[stageOrder[prev]]))
			}
			prev = i
		}
	}
	keys := make([]pair, 0, len(spans))
	for p := range spans {
		keys = append(keys, p)
	}
	slices.SortFunc(keys, func(a, b pair) int {
		if a.from != b.from {
			return a.from - b.from
		}
		return a.to - b.to
	})
	var out []Stage
	for _, p := range keys {
		ds := spans[p]
		slices.Sort(ds)
		pct := func(q float64) float64 { return ms(ds[min(len(ds)-1, int(q/100*float64(len(ds))))]) }
		out = append(out, Stage{From: stageOrder[p.from], To: stageOrder[p.to], P50ms: pct(50), P99ms: pct(99)})
	}
	return out
}

// stageSample is how many records of a paced rate are read for its stages.
const stageSample = 1000

// sampleIDs is up to n of the ids in acc (map order: an arbitrary sample).
func sampleIDs(acc map[string]time.Time, n int) []string {
	ids := make([]string, 0, min(n, len(acc)))
	for id := range acc {
		if len(ids) == n {
			break
		}
		ids = append(ids, id)
	}
	return ids
}
