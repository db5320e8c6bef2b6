package collector

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/store"
)

// MaxEventStream bounds one GET /v1/requests/{id}/events stream; a client
// that wants more reconnects (EventSource does so by itself).
const MaxEventStream = 5 * time.Minute

// events streams a record's status changes as server-sent events: an
// event "status" with the record (as GET /v1/requests/{id}) now and at every
// change, until the record is delivered or dead, the client leaves, the
// collector stops or MaxEventStream passes. A comment every 15 s keeps
// proxies from closing an idle stream.
func (c *Collector) events(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	flusher, ok := w.(http.Flusher)
	if !ok {
		writeError(w, http.StatusInternalServerError, "no_streaming", "this server cannot stream")
		return
	}
	ctx := r.Context()
	deadline := time.Now().Add(MaxEventStream)
	if !c.holdWaiter(w) {
		return
	}
	defer c.releaseWaiter()
	// The server's write timeout fits a long-poll; a stream lives longer.
	_ = http.NewResponseController(w).SetWriteDeadline(deadline.Add(15 * time.Second))
	var last *store.Record
	lastWrite := time.Now()
	for {
		changed, cancel := c.notify.wait(id)
		rec, err := store.Peek(ctx, c.store, id)
		if err == nil && last == nil && !c.mayRead(r, rec) {
			err = store.ErrNotFound // as for an id that does not exist
		}
		if err != nil {
			cancel()
			if last == nil {
				if errors.Is(err, store.ErrNotFound) {
					writeError(w, http.StatusNotFound, "not_found", "no request with id "+id)
				} else {
					writeError(w, http.StatusServiceUnavailable, "store_unavailable", "reading the request failed")
				}
			}
			return
		}
		if last == nil {
			w.Header().Set("content-type", "text/event-stream")
			w.Header().Set("cache-control", "no-cache")
			w.WriteHeader(http.StatusOK)
		}
		if last == nil || rec.UpdatedAt != last.UpdatedAt || rec.Status != last.Status {
			data, _ := json.Marshal(viewOf(rec, c.operator(r)))
			fmt.Fprintf(w, "id: %s\nevent: status\ndata: %s\n\n", rec.UpdatedAt.Format(time.RFC3339Nano), data)
			flusher.Flush()
			last, lastWrite = rec, time.Now()
		} else if time.Since(lastWrite) >= 15*time.Second {
			fmt.Fprint(w, ": keep-alive\n\n")
			flusher.Flush()
			lastWrite = time.Now()
		}
		if rec.Status.Terminal() || time.Now().After(deadline) {
			cancel()
			return
		}
		// Other collectors may move the record: read again at least every second.
		stopping := c.pause(ctx, changed, time.Second)
		cancel()
		if stopping || ctx.Err() != nil {
			return
		}
	}
}
