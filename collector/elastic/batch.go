package elastic

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/store"
)

// Batch bounds.
const (
	batchMaxOps   = 500
	batchMaxBytes = 8 << 20
	// batchLingerOps ends a lingering batch early (see Config.Linger).
	batchLingerOps = 64
)

// op is one bulk operation: create, or index (with optional CAS).
type op struct {
	action      string // "create" | "index"
	index, id   string
	ifSeqNo     int64 // CAS when ifPrimaryTerm > 0
	ifPrimTerm  int64
	doc         []byte
	done        chan result
	contextDone <-chan struct{}
}

type result struct {
	status          int
	seqNo, primTerm int64
	errType, reason string
	err             error // the whole request failed
}

// batcher groups concurrent operations into bulk requests.
type batcher struct {
	s      *Store
	ops    chan *op
	linger time.Duration
}

func newBatcher(s *Store, flushers int, linger time.Duration) *batcher {
	return &batcher{s: s, ops: make(chan *op, batchMaxOps*flushers), linger: linger}
}

// do queues o and waits for its result.
func (b *batcher) do(ctx context.Context, o *op) result {
	o.done = make(chan result, 1)
	o.contextDone = ctx.Done()
	select {
	case b.ops <- o:
	case <-ctx.Done():
		return result{err: ctx.Err()}
	}
	select {
	case r := <-o.done:
		return r
	case <-ctx.Done():
		// The operation may still be applied: callers treat this like any
		// unknown outcome (a create is retried and finds ErrExists, a CAS
		// re-reads).
		return result{err: ctx.Err()}
	}
}

// run sends batches until ctx ends: it blocks for one operation, then takes
// whatever else is already waiting, up to the bounds; if that found other
// writes waiting (concurrent writers) and linger is set, it waits up to
// linger for more, until batchLingerOps.
func (b *batcher) run(ctx context.Context) {
	var buf bytes.Buffer
	for {
		var batch []*op
		select {
		case <-ctx.Done():
			return
		case o := <-b.ops:
			batch = append(batch, o)
		}
		batch, size := b.fill(batch, len(batch[0].doc), nil)
		if b.linger > 0 && len(batch) > 1 && len(batch) < batchLingerOps {
			t := time.NewTimer(b.linger)
			batch, _ = b.fill(batch, size, t.C)
			t.Stop()
		}
		b.flush(ctx, &buf, batch)
	}
}

// fill adds waiting operations to batch, up to the bounds: without a timer
// only those already waiting; with one, it also waits for more until the
// timer fires or the batch has batchLingerOps.
func (b *batcher) fill(batch []*op, size int, timer <-chan time.Time) ([]*op, int) {
	limit := batchMaxOps
	if timer != nil {
		limit = batchLingerOps
	}
	for len(batch) < limit && size < batchMaxBytes {
		select {
		case o := <-b.ops:
			batch, size = append(batch, o), size+len(o.doc)
			continue
		default:
		}
		if timer == nil {
			break
		}
		select {
		case o := <-b.ops:
			batch, size = append(batch, o), size+len(o.doc)
		case <-timer:
			return batch, size
		}
	}
	return batch, size
}

func (b *batcher) flush(ctx context.Context, buf *bytes.Buffer, batch []*op) {
	buf.Reset()
	live := batch[:0]
	for _, o := range batch {
		select {
		case <-o.contextDone: // its caller gave up before it was sent
			o.done <- result{err: context.Canceled}
			continue
		default:
		}
		live = append(live, o)
		buf.WriteString(`{"` + o.action + `":{"_index":"` + o.index + `","_id":"` + o.id + `"`)
		if o.ifPrimTerm > 0 {
			buf.WriteString(`,"if_seq_no":` + strconv.FormatInt(o.ifSeqNo, 10) + `,"if_primary_term":` + strconv.FormatInt(o.ifPrimTerm, 10))
		}
		buf.WriteString("}}\n")
		buf.Write(o.doc)
		buf.WriteByte('\n')
	}
	if len(live) == 0 {
		return
	}
	var resp struct {
		Items []map[string]struct {
			Status  int   `json:"status"`
			SeqNo   int64 `json:"_seq_no"`
			PrimTrm int64 `json:"_primary_term"`
			Error   *struct {
				Type   string `json:"type"`
				Reason string `json:"reason"`
			} `json:"error"`
		} `json:"items"`
	}
	// A bulk that never got a connection, on any attempt of the client's,
	// reached no one: nothing of it was written (store.ErrUnavailable).
	// Once connected, a failure may follow a write that Elasticsearch made.
	var connected atomic.Bool
	cctx := httptrace.WithClientTrace(context.WithoutCancel(ctx), &httptrace.ClientTrace{
		GotConn: func(httptrace.GotConnInfo) { connected.Store(true) },
	})
	err := b.s.call(cctx, http.MethodPost, "/_bulk?refresh=false", append([]byte(nil), buf.Bytes()...), &resp)
	if err != nil && !connected.Load() {
		err = fmt.Errorf("%w: %w", store.ErrUnavailable, err)
	}
	if err == nil && len(resp.Items) != len(live) {
		err = fmt.Errorf("bulk answered %d items for %d operations", len(resp.Items), len(live))
	}
	for i, o := range live {
		if err != nil {
			o.done <- result{err: err}
			continue
		}
		var r result
		for _, it := range resp.Items[i] {
			r = result{status: it.Status, seqNo: it.SeqNo, primTerm: it.PrimTrm}
			if it.Error != nil {
				r.errType, r.reason = it.Error.Type, it.Error.Reason
			}
		}
		o.done <- r
	}
}
