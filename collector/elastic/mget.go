package elastic

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
)

// mgetMax bounds the documents of one _mget.
const mgetMax = 100

// read is one real-time read of a document by id.
type read struct {
	index, id   string
	done        chan readResult
	contextDone <-chan struct{}
}

type readResult struct {
	found           bool
	seqNo, primTerm int64
	source          json.RawMessage
	err             error
}

// reader groups concurrent reads by id into one _mget request, as the
// batcher groups writes: a read is sent at once when a reader is idle, and
// reads that arrive meanwhile share the next request. Elasticsearch charges a
// request far more than a document in it, and reads come in crowds when
// records were written by another collector (Store.versions does not know
// them): a collector that takes over a backlog reads each record once before
// its first compare-and-set.
type reader struct {
	s     *Store
	reads chan *read
}

func newReader(s *Store, readers int) *reader {
	return &reader{s: s, reads: make(chan *read, mgetMax*readers)}
}

// get reads one document; found is false when it (or its index) does not
// exist.
func (rd *reader) get(ctx context.Context, index, id string) readResult {
	r := &read{index: index, id: id, done: make(chan readResult, 1), contextDone: ctx.Done()}
	select {
	case rd.reads <- r:
	case <-ctx.Done():
		return readResult{err: ctx.Err()}
	}
	select {
	case res := <-r.done:
		return res
	case <-ctx.Done():
		return readResult{err: ctx.Err()}
	}
}

// run sends _mget requests until ctx ends: it blocks for one read, then
// takes whatever else is already waiting, up to mgetMax.
func (rd *reader) run(ctx context.Context) {
	for {
		var batch []*read
		select {
		case <-ctx.Done():
			return
		case r := <-rd.reads:
			batch = append(batch, r)
		}
	fill:
		for len(batch) < mgetMax {
			select {
			case r := <-rd.reads:
				batch = append(batch, r)
			default:
				break fill
			}
		}
		rd.send(ctx, batch)
	}
}

type mgetDoc struct {
	Index string `json:"_index"`
	ID    string `json:"_id"`
}

func (rd *reader) send(ctx context.Context, batch []*read) {
	live := batch[:0]
	docs := make([]mgetDoc, 0, len(batch))
	for _, r := range batch {
		select {
		case <-r.contextDone: // its caller gave up before it was sent
			r.done <- readResult{err: context.Canceled}
			continue
		default:
		}
		live = append(live, r)
		docs = append(docs, mgetDoc{Index: r.index, ID: r.id})
	}
	if len(live) == 0 {
		return
	}
	var resp struct {
		Docs []struct {
			Found   bool            `json:"found"`
			SeqNo   int64           `json:"_seq_no"`
			PrimTrm int64           `json:"_primary_term"`
			Source  json.RawMessage `json:"_source"`
			Error   *struct {
				Type   string `json:"type"`
				Reason string `json:"reason"`
			} `json:"error"`
		} `json:"docs"`
	}
	err := rd.s.call(context.WithoutCancel(ctx), http.MethodPost, "/_mget?realtime=true", map[string]any{"docs": docs}, &resp)
	if err == nil && len(resp.Docs) != len(live) {
		err = fmt.Errorf("_mget answered %d documents for %d ids", len(resp.Docs), len(live))
	}
	for i, r := range live {
		if err != nil {
			r.done <- readResult{err: err}
			continue
		}
		d := resp.Docs[i]
		switch {
		case d.Error != nil && d.Error.Type == "index_not_found_exception":
			r.done <- readResult{} // a day with no records: not found
		case d.Error != nil:
			r.done <- readResult{err: fmt.Errorf("reading %s/%s: %s: %s", r.index, r.id, d.Error.Type, d.Error.Reason)}
		default:
			r.done <- readResult{found: d.Found, seqNo: d.SeqNo, primTerm: d.PrimTrm, source: d.Source}
		}
	}
}
