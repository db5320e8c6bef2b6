package elastic

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/store"
)

// Ordering keys (store.Orderer) live in one index, PREFIX-order-keys, a
// document per key (id = the key's scope hash) naming its last request,
// replaced by compare-and-set (if_seq_no; op_type create for a new key)
// through the same bulk batcher and real-time _mget reader as records, so
// that concurrent Chain calls from any collector form one sequence. The
// document is written before the record it names (no transaction spans
// two documents): a crash in between leaves a link to a request that never
// existed, which its successor waits for only until that request's intake
// deadline (the collector's ordering.go).
//
// Each document also names when it was written (at, the store's clock; the
// one indexed field), so that retention (ExpireOrder) finds the keys last
// chained before its cutoff. Documents written before that field existed
// have none and are not expired.

func (s *Store) orderIndex() string { return s.cfg.Prefix + "-order-keys" }

// orderMapping keeps order-key documents in _source but for at: they are
// read by id, and searched by age by retention alone.
var orderMapping = map[string]any{"dynamic": false, "properties": map[string]any{"at": date}}

func (s *Store) orderTemplate(settings map[string]any) map[string]any {
	return map[string]any{"index_patterns": []string{s.orderIndex()}, "priority": 200,
		"template": map[string]any{"settings": settings, "mappings": orderMapping},
		"_meta":    map[string]any{"managed_by": "asyncmesh collector"}}
}

// orderDoc is an ordering key's document.
type orderDoc struct {
	ID       string    `json:"id"`
	Deadline time.Time `json:"deadline,omitzero"`
	At       time.Time `json:"at,omitzero"`
}

// Chain implements store.Orderer.
func (s *Store) Chain(ctx context.Context, scope string, l store.Link) (store.Link, error) {
	data, err := json.Marshal(orderDoc{ID: l.ID, Deadline: l.Deadline.UTC(), At: s.Now()})
	if err != nil {
		return store.Link{}, fmt.Errorf("chaining request %s: encoding its link: %w", l.ID, err)
	}
	for range store.MaxChainRetries {
		read := s.read.get(ctx, s.orderIndex(), scope)
		if read.err != nil {
			return store.Link{}, fmt.Errorf("chaining request %s: reading its ordering key: %w", l.ID, read.err)
		}
		var prev store.Link
		o := &op{action: "index", index: s.orderIndex(), id: scope, ifSeqNo: read.seqNo, ifPrimTerm: read.primTerm, doc: data}
		if !read.found {
			o.action = "create"
		} else if err := json.Unmarshal(read.source, &prev); err != nil {
			return store.Link{}, fmt.Errorf("chaining request %s: decoding its ordering key: %w", l.ID, err)
		}
		res := s.batch.do(ctx, o)
		switch {
		case res.err != nil:
			return store.Link{}, fmt.Errorf("chaining request %s: writing its ordering key: %w", l.ID, res.err)
		case res.status == http.StatusConflict:
			continue // another request took the key since the read
		case res.status/100 != 2:
			return store.Link{}, fmt.Errorf("chaining request %s: writing its ordering key: %d %s: %s", l.ID, res.status, res.errType, res.reason)
		}
		return prev, nil
	}
	return store.Link{}, errors.New("chaining request " + l.ID + ": its ordering key still conflicting after re-reads")
}

// ExpireOrder implements store.Orderer: it pages through the keys chained
// before before (oldest first), reads the last request of each, and
// deletes the keys whose request is done, each conditioned on the version
// it found (a key chained to meanwhile is kept).
func (s *Store) ExpireOrder(ctx context.Context, before time.Time) (int, error) {
	ix := s.orderIndex()
	opts := "allow_no_indices=true&ignore_unavailable=true"
	if err := s.call(ctx, http.MethodPost, "/"+ix+"/_refresh?"+opts, nil, nil); err != nil {
		return 0, fmt.Errorf("expiring ordering keys: %w", err)
	}
	total := 0
	var after []any // search_after: the last page's last sort values
	for {
		body := map[string]any{
			"size": expireBatch, "seq_no_primary_term": true, "sort": []any{map[string]any{"at": "asc"}},
			"query": map[string]any{"range": map[string]any{"at": map[string]any{"lt": before.UTC().Format(time.RFC3339Nano)}}},
		}
		if after != nil {
			body["search_after"] = after
		}
		var res struct {
			Hits struct {
				Hits []struct {
					ID       string   `json:"_id"`
					SeqNo    int64    `json:"_seq_no"`
					PrimTerm int64    `json:"_primary_term"`
					Source   orderDoc `json:"_source"`
					Sort     []any    `json:"sort"`
				} `json:"hits"`
			} `json:"hits"`
		}
		if err := s.call(ctx, http.MethodPost, "/"+ix+"/_search?track_total_hits=false&"+opts, body, &res); err != nil {
			return total, fmt.Errorf("searching for old ordering keys: %w", err)
		}
		hits := res.Hits.Hits
		if len(hits) == 0 {
			return total, nil
		}
		var bulk bytes.Buffer
		for _, h := range hits {
			done, err := s.orderLastDone(ctx, h.Source, before)
			if err != nil {
				return total, fmt.Errorf("expiring ordering keys: reading request %s: %w", h.Source.ID, err)
			}
			if done {
				writeBulkDelete(&bulk, ix, h.ID, h.SeqNo, h.PrimTerm)
			}
		}
		if bulk.Len() > 0 {
			deleted, err := s.bulkDelete(ctx, bulk.Bytes())
			total += len(deleted)
			if err != nil {
				return total, fmt.Errorf("deleting expired ordering keys: %w", err)
			}
		}
		if len(hits) < expireBatch {
			return total, nil
		}
		after = hits[len(hits)-1].Sort
	}
}

// orderLastDone reports whether the last request d names is done
// (store.Orderer.ExpireOrder).
func (s *Store) orderLastDone(ctx context.Context, d orderDoc, before time.Time) (bool, error) {
	r, err := s.Peek(ctx, d.ID)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return d.Deadline.Before(before), nil
	case err != nil:
		return false, err
	}
	return store.OrderDone(r), nil
}

var _ store.Orderer = (*Store)(nil)
