package elastic

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/store"
)

// chunkSize is the size of one stored piece of a large body.
const chunkSize = 1 << 20

// doc is a record as indexed: the record, the request line as keywords, and
// the chunk counts of bodies kept by reference.
type doc struct {
	*store.Record
	Method    string `json:"method,omitempty"`
	Authority string `json:"authority,omitempty"`
	Path      string `json:"path,omitempty"`
	// Caller and Package are the envelope's, for searches (indices made
	// before they were leave them out of older documents: those match no
	// search by caller or package).
	Caller  string  `json:"caller,omitempty"`
	Package string  `json:"package,omitempty"`
	Bodies  *bodies `json:"bodies,omitempty"`
}

type bodies struct {
	Request  int `json:"request,omitempty"`  // chunks of the envelope's body
	Response int `json:"response,omitempty"` // chunks of the response body
}

// Create indexes a new record (op_type create) and returns once Elasticsearch
// has it durably.
func (s *Store) Create(ctx context.Context, r *store.Record) error {
	data, err := s.encodeDoc(ctx, r)
	if err != nil {
		return fmt.Errorf("creating record %s: %w", r.ID, err)
	}
	ix, err := s.index("requests", r.ID)
	if err != nil {
		return fmt.Errorf("creating record: %w", err)
	}
	res := s.batch.do(ctx, &op{action: "create", index: ix, id: r.ID, doc: data})
	switch {
	case res.err != nil:
		return fmt.Errorf("creating record %s: %w", r.ID, res.err)
	case res.status == http.StatusConflict:
		return store.ErrExists
	case res.status/100 != 2:
		return fmt.Errorf("creating record %s: %d %s: %s", r.ID, res.status, res.errType, res.reason)
	}
	s.remember(r, res)
	return nil
}

// encodeDoc writes the large bodies of r as chunks and returns its document.
func (s *Store) encodeDoc(ctx context.Context, r *store.Record) ([]byte, error) {
	d := doc{Record: r}
	cp := *r
	if e := r.Envelope; e != nil {
		d.Method, d.Authority, d.Path = e.Method, e.Authority, e.Path
		d.Caller, d.Package = e.Caller, e.Package
		if len(e.Body) > s.cfg.InlineBodyMax {
			n, err := s.putChunks(ctx, r.ID, "request", e.Body)
			if err != nil {
				return nil, err
			}
			env := *e
			env.Body = nil
			cp.Envelope = &env
			d.Bodies = &bodies{Request: n}
		}
	}
	if resp := r.Response; resp != nil && len(resp.Body) > s.cfg.InlineBodyMax {
		n, err := s.putChunks(ctx, r.ID, "response", resp.Body)
		if err != nil {
			return nil, err
		}
		rc := *resp
		rc.Body = nil
		cp.Response = &rc
		if d.Bodies == nil {
			d.Bodies = &bodies{}
		}
		d.Bodies.Response = n
	}
	d.Record = &cp
	return json.Marshal(d)
}

func (s *Store) putChunks(ctx context.Context, id, kind string, body []byte) (int, error) {
	ix, err := s.index("bodies", id)
	if err != nil {
		return 0, err
	}
	n := 0
	for off := 0; off < len(body); off += chunkSize {
		data, _ := json.Marshal(map[string][]byte{"data": body[off:min(off+chunkSize, len(body))]})
		res := s.batch.do(ctx, &op{action: "index", index: ix, id: id + "." + kind + "." + strconv.Itoa(n), doc: data})
		if res.err != nil || res.status/100 != 2 {
			return 0, fmt.Errorf("storing %s body chunk %d: %v %d %s", kind, n, res.err, res.status, res.reason)
		}
		n++
	}
	return n, nil
}

func (s *Store) getChunks(ctx context.Context, id, kind string, n int) ([]byte, error) {
	ix, err := s.index("bodies", id)
	if err != nil {
		return nil, err
	}
	ids := make([]string, n)
	for i := range ids {
		ids[i] = id + "." + kind + "." + strconv.Itoa(i)
	}
	var res struct {
		Docs []struct {
			Found  bool `json:"found"`
			Source struct {
				Data []byte `json:"data"`
			} `json:"_source"`
		} `json:"docs"`
	}
	if err := s.call(ctx, http.MethodPost, "/"+ix+"/_mget", map[string]any{"ids": ids}, &res); err != nil {
		return nil, err
	}
	var out []byte
	for i, d := range res.Docs {
		if !d.Found {
			return nil, fmt.Errorf("%s body chunk %d of %s is missing", kind, i, id)
		}
		out = append(out, d.Source.Data...)
	}
	return out, nil
}

// get reads a record with its sequence number and primary term.
func (s *Store) get(ctx context.Context, id string) (*store.Record, int64, int64, error) {
	return s.getDoc(ctx, id, true)
}

// getDoc reads record id and its version, with its bodies or not.
func (s *Store) getDoc(ctx context.Context, id string, withBodies bool) (*store.Record, int64, int64, error) {
	ix, err := s.index("requests", id)
	if err != nil {
		return nil, 0, 0, store.ErrNotFound // no such id can have been stored
	}
	res := s.read.get(ctx, ix, id)
	if res.err != nil {
		return nil, 0, 0, fmt.Errorf("reading record %s: %w", id, res.err)
	}
	if !res.found {
		return nil, 0, 0, store.ErrNotFound
	}
	r, err := s.decodeDoc(ctx, res.source, withBodies)
	if err != nil {
		return nil, 0, 0, fmt.Errorf("reading record %s: %w", id, err)
	}
	return r, res.seqNo, res.primTerm, nil
}

// Peek implements store.Peeker: the record without its bodies, and without
// fetching the chunks of those kept by reference (long-polls and event
// streams read records often and render no body).
func (s *Store) Peek(ctx context.Context, id string) (*store.Record, error) {
	r, _, _, err := s.getDoc(ctx, id, false)
	if err != nil {
		return nil, err
	}
	if r.Envelope != nil { // small bodies are inline: drop them too
		r.Envelope.Body = nil
	}
	if r.Response != nil {
		r.Response.Body = nil
	}
	return r, nil
}

// decodeDoc turns a _source into a record, reading bodies kept by reference
// when withBodies.
func (s *Store) decodeDoc(ctx context.Context, src []byte, withBodies bool) (*store.Record, error) {
	d := doc{Record: &store.Record{}}
	if err := json.Unmarshal(src, &d); err != nil {
		return nil, fmt.Errorf("decoding document: %w", err)
	}
	r := d.Record
	if d.Bodies != nil && withBodies {
		if d.Bodies.Request > 0 && r.Envelope != nil {
			b, err := s.getChunks(ctx, r.ID, "request", d.Bodies.Request)
			if err != nil {
				return nil, err
			}
			r.Envelope.Body = b
		}
		if d.Bodies.Response > 0 && r.Response != nil {
			b, err := s.getChunks(ctx, r.ID, "response", d.Bodies.Response)
			if err != nil {
				return nil, err
			}
			r.Response.Body = b
		}
	}
	return r, nil
}

// Get reads a record by id (a real-time GET on its daily index).
func (s *Store) Get(ctx context.Context, id string) (*store.Record, error) {
	r, _, _, err := s.get(ctx, id)
	return r, err
}

// maxCASRetries bounds re-reads after version conflicts.
const maxCASRetries = 20

// Transition applies c with optimistic concurrency (if_seq_no/if_primary_term).
func (s *Store) Transition(ctx context.Context, id string, c store.Change) (*store.Record, error) {
	c.At = s.Now() // one time for every retry of this change
	for i := range maxCASRetries {
		r, ver, cached := s.versions.Get(id)
		seq, term := ver.Seq, ver.Term
		if !cached || i > 0 {
			var err error
			if r, seq, term, err = s.get(ctx, id); err != nil {
				return nil, err
			}
		}
		if err := c.Apply(r); err != nil {
			if cached && i == 0 {
				continue // the cached version may be stale: decide on a fresh read
			}
			return nil, err
		}
		data, err := s.encodeDoc(ctx, r)
		if err != nil {
			return nil, fmt.Errorf("applying %s to record %s: %w", c.Event, id, err)
		}
		ix, _ := s.index("requests", id)
		res := s.batch.do(ctx, &op{action: "index", index: ix, id: id, ifSeqNo: seq, ifPrimTerm: term, doc: data})
		switch {
		case res.err != nil:
			return nil, fmt.Errorf("applying %s to record %s: %w", c.Event, id, res.err)
		case res.status == http.StatusConflict:
			s.versions.Drop(id)
			continue // changed since the read: apply again to the new version
		case res.status/100 != 2:
			return nil, fmt.Errorf("applying %s to record %s: %d %s: %s", c.Event, id, res.status, res.errType, res.reason)
		}
		s.remember(r, res)
		return r, nil
	}
	return nil, fmt.Errorf("applying %s to record %s: still conflicting after %d re-reads", c.Event, id, maxCASRetries)
}

// remember caches r as written by res (a write without a primary term cannot
// be compared against: forgotten).
func (s *Store) remember(r *store.Record, res result) {
	if res.primTerm == 0 {
		s.versions.Drop(r.ID)
		return
	}
	s.versions.Put(r, store.Version{Seq: res.seqNo, Term: res.primTerm})
}

// filter renders q's filters (its Cursor and Limit aside) as a bool query.
func filter(q store.Query) map[string]any {
	var filter []any
	term := func(f, v string) {
		if v != "" {
			filter = append(filter, map[string]any{"term": map[string]any{f: v}})
		}
	}
	term("traceId", q.TraceID)
	term("status", string(q.Status))
	term("rule", q.Rule)
	term("caller", q.Caller)
	term("package", q.Package)
	term("endpoint", q.Endpoint)
	rng := map[string]any{}
	if !q.Since.IsZero() {
		rng["gte"] = q.Since.UTC().Format(time.RFC3339Nano)
	}
	if !q.Until.IsZero() {
		rng["lt"] = q.Until.UTC().Format(time.RFC3339Nano)
	}
	if len(rng) > 0 {
		filter = append(filter, map[string]any{"range": map[string]any{"createdAt": rng}})
	}
	return map[string]any{"bool": map[string]any{"filter": filter}}
}

// Search finds records (without bodies) in id order, with search_after on the
// id as the cursor. Near-real-time: it sees writes after the next refresh.
func (s *Store) Search(ctx context.Context, q store.Query) (store.Page, error) {
	limit := q.PageLimit()
	order := "asc"
	if q.Desc {
		order = "desc"
	}
	body := map[string]any{
		"size": limit + 1, "sort": []any{map[string]any{"id": order}},
		"query": filter(q),
	}
	if q.Cursor != "" {
		body["search_after"] = []string{q.Cursor}
	}
	recs, err := s.search(ctx, body)
	if err != nil {
		return store.Page{}, err
	}
	return store.NewPage(recs, limit), nil
}

// Count implements store.Counter with _count (near-real-time, as Search).
func (s *Store) Count(ctx context.Context, q store.Query) (int64, error) {
	var res struct {
		Count int64 `json:"count"`
	}
	path := "/" + s.requestsPattern() + "/_count?allow_no_indices=true&ignore_unavailable=true"
	if err := s.call(ctx, http.MethodPost, path, map[string]any{"query": filter(q)}, &res); err != nil {
		return 0, fmt.Errorf("counting records: %w", err)
	}
	return res.Count, nil
}

// Changes implements store.ChangeLister: sorted on updatedAt (a date:
// milliseconds), then id. Near-real-time, as Search.
func (s *Store) Changes(ctx context.Context, q store.Query, after store.ChangeCursor, limit int) ([]*store.Record, error) {
	query := filter(q)
	if !after.At.IsZero() || after.ID != "" {
		// (updatedAt, id) > (at, id) at the field's precision.
		at := after.At.UTC().Truncate(time.Millisecond).Format(time.RFC3339Nano)
		b := query["bool"].(map[string]any)
		b["filter"] = append(b["filter"].([]any), map[string]any{"range": map[string]any{"updatedAt": map[string]any{"gte": at}}})
		b["should"] = []any{
			map[string]any{"range": map[string]any{"updatedAt": map[string]any{"gt": at}}},
			map[string]any{"range": map[string]any{"id": map[string]any{"gt": after.ID}}},
		}
		b["minimum_should_match"] = 1
	}
	return s.search(ctx, map[string]any{
		"size": max(limit, 1), "sort": []any{map[string]any{"updatedAt": "asc"}, map[string]any{"id": "asc"}},
		"query": query,
	})
}

// Stale lists records in status st last updated before before, oldest first.
func (s *Store) Stale(ctx context.Context, st store.Status, before time.Time, limit int) ([]*store.Record, error) {
	return s.search(ctx, map[string]any{
		"size": limit, "sort": []any{map[string]any{"updatedAt": "asc"}, map[string]any{"id": "asc"}},
		"query": map[string]any{"bool": map[string]any{"filter": []any{
			map[string]any{"term": map[string]any{"status": string(st)}},
			map[string]any{"range": map[string]any{"updatedAt": map[string]any{"lt": before.UTC().Format(time.RFC3339Nano)}}},
		}}},
	})
}

func (s *Store) search(ctx context.Context, body map[string]any) ([]*store.Record, error) {
	body["_source"] = map[string]any{"excludes": []string{"envelope.body", "response.body"}}
	hits, err := s.searchSources(ctx, s.requestsPattern(), body)
	if err != nil {
		return nil, fmt.Errorf("searching records: %w", err)
	}
	out := make([]*store.Record, 0, len(hits))
	for _, h := range hits {
		r, err := s.decodeDoc(ctx, h, false)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// searchSources runs a search on index (a name or pattern; none existing
// is an empty result) and returns the hits' _source.
func (s *Store) searchSources(ctx context.Context, index string, body map[string]any) ([]json.RawMessage, error) {
	var res struct {
		Hits struct {
			Hits []struct {
				Source json.RawMessage `json:"_source"`
			} `json:"hits"`
		} `json:"hits"`
	}
	path := "/" + index + "/_search?allow_no_indices=true&ignore_unavailable=true&track_total_hits=false"
	if err := s.call(ctx, http.MethodPost, path, body, &res); err != nil {
		return nil, err
	}
	out := make([]json.RawMessage, len(res.Hits.Hits))
	for i, h := range res.Hits.Hits {
		out[i] = h.Source
	}
	return out, nil
}

var (
	_ store.Store        = (*Store)(nil)
	_ store.Counter      = (*Store)(nil)
	_ store.ChangeLister = (*Store)(nil)
)
