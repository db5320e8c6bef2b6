package elastic

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

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

func (s *Store) orderIndex() string { return s.cfg.Prefix + "-order-keys" }

// orderTemplate keeps order-key documents in _source only: they are read
// by id, never searched.
func (s *Store) orderTemplate(settings map[string]any) map[string]any {
	return map[string]any{"index_patterns": []string{s.orderIndex()}, "priority": 200,
		"template": map[string]any{"settings": settings, "mappings": map[string]any{"dynamic": false, "properties": map[string]any{}}},
		"_meta":    map[string]any{"managed_by": "asyncmesh collector"}}
}

// Chain implements store.Orderer.
func (s *Store) Chain(ctx context.Context, scope string, l store.Link) (store.Link, error) {
	data, err := json.Marshal(store.Link{ID: l.ID, Deadline: l.Deadline.UTC()})
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

var _ store.Orderer = (*Store)(nil)
