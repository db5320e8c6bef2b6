package elastic

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/store"
)

// Retention (store.Expirer): the same rule as the embedded store, a record
// is deleted once it has been terminal (delivered, dead) for longer than
// the retention, and a record that is not terminal is never deleted, however
// old its day. Records live in daily indices named from their creation day,
// and deleting an index costs Elasticsearch nothing where deleting
// documents leaves tombstones to merge away, so a pass works by day:
//
//   - only the days that ended before the cutoff are looked at (a record
//     is deleted between the retention and the retention plus one day
//     after it became terminal: the granularity is one day);
//   - a day whose records are all expired is deleted whole, with its
//     bodies index. Before that, the index is made read-only
//     (index.blocks.write), refreshed and counted again, so that a record
//     replayed a moment ago (moved out of its terminal status) cannot go
//     with it; a block left behind by a pass that stopped half-way is
//     lifted by the next pass;
//   - a day that still holds a record to keep (one stuck or long retrying,
//     or replayed) loses only its expired records: each deleted with the
//     sequence number it was found with (a record changed since is kept),
//     then its body chunks.
//
// In steady state every request of a day is finished long before the day
// is past the retention, so a pass deletes one index a day; only a day kept
// for a record that is not finished is read (refreshed, counted, searched)
// again at every pass.

// expireBatch bounds the records deleted by one bulk request.
const expireBatch = 500

// expiredQuery matches the records terminal since before before.
func expiredQuery(before time.Time) map[string]any {
	return map[string]any{"bool": map[string]any{"filter": []any{
		map[string]any{"terms": map[string]any{"status": []string{string(store.Delivered), string(store.Dead)}}},
		map[string]any{"range": map[string]any{"updatedAt": map[string]any{"lt": before.UTC().Format(time.RFC3339Nano)}}},
	}}}
}

// Expire implements store.Expirer; it returns the records deleted.
func (s *Store) Expire(ctx context.Context, before time.Time) (int, error) {
	var rows []struct {
		Index string `json:"index"`
	}
	if err := s.call(ctx, http.MethodGet, "/_cat/indices/"+s.requestsPattern()+","+s.bodiesPattern()+"?format=json&h=index&expand_wildcards=open", nil, &rows); err != nil {
		return 0, fmt.Errorf("expiring records: listing the daily indices: %w", err)
	}
	blocked, err := s.writeBlocked(ctx)
	if err != nil {
		return 0, fmt.Errorf("expiring records: %w", err)
	}
	requests, bodies := s.cfg.Prefix+"-requests-", s.cfg.Prefix+"-bodies-"
	days := map[string]bool{} // day → it has a requests index
	for _, r := range rows {
		switch {
		case strings.HasPrefix(r.Index, requests):
			days[strings.TrimPrefix(r.Index, requests)] = true
		case strings.HasPrefix(r.Index, bodies):
			if d := strings.TrimPrefix(r.Index, bodies); !days[d] {
				days[d] = false
			}
		}
	}
	names := make([]string, 0, len(days))
	for d := range days {
		names = append(names, d)
	}
	slices.Sort(names)
	total := 0
	for _, d := range names {
		day, err := time.Parse("2006.01.02", d)
		if err != nil || !day.Add(24*time.Hour).Before(before) {
			continue // not a daily index of ours, or a day not yet over
		}
		var n int
		if days[d] {
			n, err = s.expireDay(ctx, requests+d, bodies+d, before, blocked[requests+d])
		} else { // chunks whose record was never created
			err = s.deleteIndices(ctx, bodies+d)
		}
		total += n
		if err != nil {
			return total, fmt.Errorf("expiring records of %s: %w", d, err)
		}
	}
	return total, nil
}

// writeBlocked returns the request indices that are read-only.
func (s *Store) writeBlocked(ctx context.Context) (map[string]bool, error) {
	var got map[string]struct {
		Settings map[string]string `json:"settings"`
	}
	if err := s.call(ctx, http.MethodGet, "/"+s.requestsPattern()+"/_settings/index.blocks.write?flat_settings=true&expand_wildcards=open&allow_no_indices=true", nil, &got); err != nil {
		return nil, fmt.Errorf("reading write blocks: %w", err)
	}
	out := map[string]bool{}
	for ix, v := range got {
		out[ix] = v.Settings["index.blocks.write"] == "true"
	}
	return out, nil
}

// expireDay expires the records of one day's index ix (and its bodies
// index bx): the whole of both when nothing in ix is to be kept, else
// record by record. blocked says ix is read-only already.
func (s *Store) expireDay(ctx context.Context, ix, bx string, before time.Time, blocked bool) (int, error) {
	// Counts and searches see what the last refresh made visible: refresh
	// first, so that the pass decides on every write acknowledged before it
	// started (a write since is guarded by the block or by if_seq_no).
	if err := s.refresh(ctx, ix); err != nil {
		return 0, err
	}
	keep, all, err := s.countDay(ctx, ix, before)
	if err != nil {
		return 0, err
	}
	if keep == 0 {
		if err := s.setWriteBlock(ctx, ix, true); err != nil {
			return 0, err
		}
		blocked = true
		// Every write acknowledged before the block is searchable after this
		// refresh: the count that follows decides on the records as they are.
		if err := s.refresh(ctx, ix); err != nil {
			return 0, err
		}
		if keep, all, err = s.countDay(ctx, ix, before); err != nil {
			return 0, err
		}
		if keep == 0 {
			if err := s.deleteIndices(ctx, ix, bx); err != nil {
				return 0, err
			}
			s.log.Info("elasticsearch: retention deleted a day", "index", ix, "records", all)
			return all, nil
		}
	}
	if blocked {
		if err := s.setWriteBlock(ctx, ix, false); err != nil {
			return 0, err
		}
	}
	return s.expireRecords(ctx, ix, bx, before)
}

func (s *Store) refresh(ctx context.Context, ix string) error {
	if err := s.call(ctx, http.MethodPost, "/"+ix+"/_refresh", nil, nil); err != nil {
		return fmt.Errorf("refreshing %s: %w", ix, err)
	}
	return nil
}

// countDay counts the records of ix to keep, and all of them.
func (s *Store) countDay(ctx context.Context, ix string, before time.Time) (keep, all int, err error) {
	var c struct {
		Count int `json:"count"`
	}
	if err := s.call(ctx, http.MethodPost, "/"+ix+"/_count", map[string]any{"query": map[string]any{"bool": map[string]any{"must_not": expiredQuery(before)}}}, &c); err != nil {
		return 0, 0, fmt.Errorf("counting the records to keep in %s: %w", ix, err)
	}
	keep = c.Count
	if err := s.call(ctx, http.MethodGet, "/"+ix+"/_count", nil, &c); err != nil {
		return 0, 0, fmt.Errorf("counting the records in %s: %w", ix, err)
	}
	return keep, c.Count, nil
}

func (s *Store) setWriteBlock(ctx context.Context, ix string, on bool) error {
	v := any(true)
	if !on {
		v = nil // removes the setting
	}
	if err := s.call(ctx, http.MethodPut, "/"+ix+"/_settings", map[string]any{"index.blocks.write": v}, nil); err != nil {
		return fmt.Errorf("setting index.blocks.write=%v on %s: %w", on, ix, err)
	}
	return nil
}

func (s *Store) deleteIndices(ctx context.Context, names ...string) error {
	if err := s.call(ctx, http.MethodDelete, "/"+strings.Join(names, ",")+"?ignore_unavailable=true", nil, nil); err != nil {
		return fmt.Errorf("deleting %s: %w", strings.Join(names, ", "), err)
	}
	return nil
}

// expireRecords deletes the expired records of ix one batch at a time,
// each conditioned on the version it was found with, then the body chunks
// (in bx) of those deleted.
func (s *Store) expireRecords(ctx context.Context, ix, bx string, before time.Time) (int, error) {
	total := 0
	var after []any
	for {
		body := map[string]any{
			"size": expireBatch, "seq_no_primary_term": true, "_source": []string{"id", "bodies"},
			"sort": []any{map[string]any{"id": "asc"}}, "query": expiredQuery(before),
		}
		if after != nil {
			body["search_after"] = after
		}
		var res struct {
			Hits struct {
				Hits []struct {
					SeqNo    int64 `json:"_seq_no"`
					PrimTerm int64 `json:"_primary_term"`
					Source   struct {
						ID     string  `json:"id"`
						Bodies *bodies `json:"bodies"`
					} `json:"_source"`
					Sort []any `json:"sort"`
				} `json:"hits"`
			} `json:"hits"`
		}
		if err := s.call(ctx, http.MethodPost, "/"+ix+"/_search?track_total_hits=false", body, &res); err != nil {
			return total, fmt.Errorf("searching %s for expired records: %w", ix, err)
		}
		hits := res.Hits.Hits
		if len(hits) == 0 {
			return total, nil
		}
		var bulk bytes.Buffer
		for _, h := range hits {
			writeBulkDelete(&bulk, ix, h.Source.ID, h.SeqNo, h.PrimTerm)
		}
		deleted, err := s.bulkDelete(ctx, bulk.Bytes())
		if err != nil {
			return total, fmt.Errorf("deleting expired records of %s: %w", ix, err)
		}
		total += len(deleted)
		bulk.Reset()
		for _, h := range hits {
			b := h.Source.Bodies
			if b == nil || !deleted[h.Source.ID] {
				continue // kept, or no chunks: a record changed since keeps its bodies
			}
			for kind, n := range map[string]int{"request": b.Request, "response": b.Response} {
				for i := range n {
					writeBulkDelete(&bulk, bx, h.Source.ID+"."+kind+"."+strconv.Itoa(i), 0, 0)
				}
			}
		}
		if bulk.Len() > 0 {
			if _, err := s.bulkDelete(ctx, bulk.Bytes()); err != nil {
				return total, fmt.Errorf("deleting body chunks of expired records in %s: %w", bx, err)
			}
		}
		if len(hits) < expireBatch {
			return total, nil
		}
		after = hits[len(hits)-1].Sort
	}
}

// writeBulkDelete appends a bulk delete of id in ix, conditioned on its
// sequence number when primTerm is set.
func writeBulkDelete(b *bytes.Buffer, ix, id string, seqNo, primTerm int64) {
	meta := map[string]any{"_index": ix, "_id": id}
	if primTerm > 0 {
		meta["if_seq_no"], meta["if_primary_term"] = seqNo, primTerm
	}
	line, _ := json.Marshal(map[string]any{"delete": meta})
	b.Write(line)
	b.WriteByte('\n')
}

// bulkDelete sends a bulk of deletes and returns the ids it deleted. A
// document already gone (404) or changed since it was read (409) is not an
// error: retention simply does not delete it.
func (s *Store) bulkDelete(ctx context.Context, ndjson []byte) (map[string]bool, error) {
	var res struct {
		Items []map[string]struct {
			ID     string `json:"_id"`
			Status int    `json:"status"`
			Error  *struct {
				Type   string `json:"type"`
				Reason string `json:"reason"`
			} `json:"error"`
		} `json:"items"`
	}
	if err := s.call(ctx, http.MethodPost, "/_bulk", ndjson, &res); err != nil {
		return nil, err
	}
	deleted := map[string]bool{}
	var errs []error
	for _, item := range res.Items {
		d := item["delete"]
		switch {
		case d.Status/100 == 2:
			deleted[d.ID] = true
		case d.Status == http.StatusNotFound || d.Status == http.StatusConflict:
		case d.Error != nil:
			errs = append(errs, fmt.Errorf("%s: %d %s: %s", d.ID, d.Status, d.Error.Type, d.Error.Reason))
		default:
			errs = append(errs, fmt.Errorf("%s: %d", d.ID, d.Status))
		}
	}
	return deleted, errors.Join(errs...)
}

var _ store.Expirer = (*Store)(nil)
