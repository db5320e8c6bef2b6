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
// document per key (id = the key's scope hash) naming its last request and
// the ones before it (earlier, newest first; store.MaxOrderLinks),
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
	ID       string       `json:"id"`
	Deadline time.Time    `json:"deadline,omitzero"`
	Earlier  []store.Link `json:"earlier,omitempty"`
	At       time.Time    `json:"at,omitzero"`
}

// Chain implements store.Orderer.
func (s *Store) Chain(ctx context.Context, scope string, l store.Link) ([]store.Link, error) {
	l.Deadline = l.Deadline.UTC()
	var prev []store.Link
	err := s.updateOrder(ctx, scope, func(links []store.Link) ([]store.Link, bool) {
		if before, again := store.Rechained(links, l.ID); again {
			prev = before
			return nil, false
		}
		prev = links
		return store.NextLinks(l, links), true
	})
	if err != nil {
		return nil, fmt.Errorf("chaining request %s: %w", l.ID, err)
	}
	return prev, nil
}

// Unchain implements store.Orderer.
func (s *Store) Unchain(ctx context.Context, scope string, l store.Link) error {
	err := s.updateOrder(ctx, scope, func(links []store.Link) ([]store.Link, bool) {
		if len(links) == 0 || links[0].ID != l.ID {
			return nil, false // chained to since
		}
		return links[1:], true
	})
	if err != nil {
		return fmt.Errorf("taking request %s out of its ordering key: %w", l.ID, err)
	}
	return nil
}

// updateOrder replaces the links of key scope (newest first) by what
// change makes of them, when it says to write: none left deletes the key.
// Each write is a compare-and-set on the version read; on a conflict (a
// collector changed the key since) it reads and changes again.
func (s *Store) updateOrder(ctx context.Context, scope string, change func([]store.Link) ([]store.Link, bool)) error {
	for range store.MaxChainRetries {
		read := s.read.get(ctx, s.orderIndex(), scope)
		if read.err != nil {
			return fmt.Errorf("reading its ordering key: %w", read.err)
		}
		var links []store.Link
		if read.found {
			var d orderDoc
			if err := json.Unmarshal(read.source, &d); err != nil {
				return fmt.Errorf("decoding its ordering key: %w", err)
			}
			links = append([]store.Link{{ID: d.ID, Deadline: d.Deadline}}, d.Earlier...)
		}
		next, write := change(links)
		switch {
		case !write:
			return nil
		case len(next) == 0:
			if !read.found {
				return nil
			}
			var b bytes.Buffer
			writeBulkDelete(&b, s.orderIndex(), scope, read.seqNo, read.primTerm)
			deleted, err := s.bulkDelete(ctx, b.Bytes())
			if err != nil {
				return fmt.Errorf("deleting its ordering key: %w", err)
			}
			if deleted[scope] {
				return nil
			}
			continue // changed or deleted since the read
		}
		data, err := json.Marshal(orderDoc{ID: next[0].ID, Deadline: next[0].Deadline, Earlier: next[1:], At: s.Now()})
		if err != nil {
			return fmt.Errorf("encoding its ordering key: %w", err)
		}
		o := &op{action: "index", index: s.orderIndex(), id: scope, ifSeqNo: read.seqNo, ifPrimTerm: read.primTerm, doc: data}
		if !read.found {
			o.action = "create"
		}
		res := s.batch.do(ctx, o)
		switch {
		case res.err != nil:
			return fmt.Errorf("writing its ordering key: %w", res.err)
		case res.status == http.StatusConflict:
			continue // another request took the key since the read
		case res.status/100 != 2:
			return fmt.Errorf("writing its ordering key: %d %s: %s", res.status, res.errType, res.reason)
		}
		return nil
	}
	return errors.New("its ordering key still conflicting after re-reads")
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
