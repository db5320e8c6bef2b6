package elastic

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/store"
)

// Endpoint health (store.Endpoints) lives in one index, PREFIX-endpoints,
// a document per endpoint changed by compare-and-set (if_seq_no) through
// the same bulk batcher and _mget reader as records.

func (s *Store) endpointsIndex() string { return s.cfg.Prefix + "-endpoints" }

// endpointsTemplate maps the fields endpoints are listed by; the rest is
// kept in _source only.
func (s *Store) endpointsTemplate(settings map[string]any) map[string]any {
	return map[string]any{"index_patterns": []string{s.endpointsIndex()}, "priority": 200,
		"template": map[string]any{"settings": settings, "mappings": map[string]any{"dynamic": false,
			"properties": map[string]any{"id": keyword, "disabled": map[string]any{"type": "boolean"}}}},
		"_meta": map[string]any{"managed_by": "asyncmesh collector"}}
}

func (s *Store) readEndpoint(ctx context.Context, id string) (*store.Endpoint, readResult, error) {
	res := s.read.get(ctx, s.endpointsIndex(), id)
	if res.err != nil {
		return nil, res, fmt.Errorf("reading endpoint %s: %w", id, res.err)
	}
	if !res.found {
		return nil, res, store.ErrNotFound
	}
	var e store.Endpoint
	if err := json.Unmarshal(res.source, &e); err != nil {
		return nil, res, fmt.Errorf("decoding endpoint %s: %w", id, err)
	}
	return &e, res, nil
}

func (s *Store) GetEndpoint(ctx context.Context, id string) (*store.Endpoint, error) {
	e, _, err := s.readEndpoint(ctx, id)
	return e, err
}

func (s *Store) UpdateEndpoint(ctx context.Context, id string, fn func(*store.Endpoint) error) (*store.Endpoint, error) {
	for attempt := range store.MaxEndpointUpdateRetries {
		e, read, err := s.readEndpoint(ctx, id)
		o := &op{action: "index", index: s.endpointsIndex(), id: id, ifSeqNo: read.seqNo, ifPrimTerm: read.primTerm}
		switch {
		case errors.Is(err, store.ErrNotFound):
			e, o.action = &store.Endpoint{ID: id}, "create"
		case err != nil:
			return nil, err
		}
		if err := fn(e); err != nil {
			return nil, err
		}
		e.ID = id
		if o.doc, err = json.Marshal(e); err != nil {
			return nil, fmt.Errorf("encoding endpoint %s: %w", id, err)
		}
		res := s.batch.do(ctx, o)
		switch {
		case res.err != nil:
			return nil, fmt.Errorf("writing endpoint %s: %w", id, res.err)
		case res.status == http.StatusConflict:
			// Changed (or created) since the read: read again, after a
			// jittered pause, so that concurrent writers spread out.
			select {
			case <-time.After(time.Duration(rand.Int64N(int64(attempt+1) * int64(5*time.Millisecond)))):
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			continue
		case res.status/100 != 2:
			return nil, fmt.Errorf("writing endpoint %s: %d %s: %s", id, res.status, res.errType, res.reason)
		}
		return e, nil
	}
	return nil, fmt.Errorf("writing endpoint %s: still conflicting after %d re-reads", id, store.MaxEndpointUpdateRetries)
}

// ListEndpoints searches the endpoints index: near-real-time, it sees
// changes after the next refresh (1 s).
func (s *Store) ListEndpoints(ctx context.Context, q store.EndpointQuery) ([]*store.Endpoint, error) {
	limit := q.Limit
	if limit <= 0 || limit > store.MaxLimit {
		limit = store.MaxLimit
	}
	filter := []any{}
	if q.DisabledOnly {
		filter = append(filter, map[string]any{"term": map[string]any{"disabled": true}})
	}
	if q.After != "" {
		filter = append(filter, map[string]any{"range": map[string]any{"id": map[string]any{"gt": q.After}}})
	}
	body := map[string]any{"size": limit, "sort": []any{map[string]any{"id": "asc"}},
		"query": map[string]any{"bool": map[string]any{"filter": filter}}}
	hits, err := s.searchSources(ctx, s.endpointsIndex(), body)
	if err != nil {
		return nil, fmt.Errorf("listing endpoints: %w", err)
	}
	out := make([]*store.Endpoint, 0, len(hits))
	for _, h := range hits {
		var e store.Endpoint
		if err := json.Unmarshal(h, &e); err != nil {
			return nil, fmt.Errorf("decoding an endpoint: %w", err)
		}
		out = append(out, &e)
	}
	return out, nil
}

var _ store.Endpoints = (*Store)(nil)
