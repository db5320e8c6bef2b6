package collector

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/store"

	"github.com/asyncmesh/asyncmesh/internal/strict"
)

// Replay (operator endpoints, bearer-token protected):
//
//	POST /v1/requests/{id}/replay   sends a delivered or dead request's callback again
//	POST /v1/deliveries/replay      the same for every record a filter selects, a page at a time
//
// Decisions:
//   - Replay is the one move back in the lifecycle: delivered | dead →
//     delivering, recorded in the history as the event store.Replay. The
//     request is not run again; its stored result is delivered with the live
//     rule's callback, under the same webhook-id (receivers that already
//     processed it dedupe), with a fresh attempt budget (the rule's
//     maxAttempts counts the attempts since the replay).
//   - A replay is persisted before it is published: a lost publish is found
//     by the sweeper, as any record stuck in delivering.
//   - Without Config.AdminToken the endpoints answer 403: nothing that
//     changes records is open by default (the /async/ prefix that Envoy
//     exposes to callers reaches this API).

// attemptsSinceReplay counts r's delivery attempts since its last replay.
func attemptsSinceReplay(r *store.Record) int {
	since := r.Last(store.Replay)
	n := 0
	for _, a := range r.Attempts {
		if !a.At.Before(since) {
			n++
		}
	}
	return n
}

// authorized checks the operator bearer token and answers 401/403 itself.
func (c *Collector) authorized(w http.ResponseWriter, r *http.Request) bool {
	if len(c.cfg.AdminToken) == 0 {
		writeError(w, http.StatusForbidden, "admin_disabled", "operator endpoints are off: start the collector with -admin-token-env")
		return false
	}
	if !c.operator(r) {
		w.Header().Set("www-authenticate", `Bearer realm="asyncmesh-collector"`)
		writeError(w, http.StatusUnauthorized, "unauthorized", "authorization: want the operator's bearer token")
		return false
	}
	return true
}

// errNotReplayable is a record not (yet) in a terminal status.
var errNotReplayable = errors.New("only delivered or dead requests are replayed")

// replayDelivery moves record rec (as read) back to delivering and
// publishes its delivery.
func (c *Collector) replayDelivery(ctx context.Context, rec *store.Record) (*store.Record, error) {
	r, err := c.advance(ctx, rec, store.Change{Event: store.Replay})
	if err != nil {
		return nil, err
	}
	c.log.Info("replay: requested", "id", r.ID, "trace_id", r.TraceID, "rule", r.Rule)
	return r, nil
}

func (c *Collector) replayOne(w http.ResponseWriter, r *http.Request) {
	if !c.authorized(w, r) {
		return
	}
	id := r.PathValue("id")
	rec, err := store.Peek(r.Context(), c.store, id)
	if err == nil {
		rec, err = c.replayDelivery(r.Context(), rec)
	}
	var conflict *store.ConflictError
	switch {
	case err == nil:
		writeJSON(w, http.StatusAccepted, map[string]string{"id": rec.ID, "traceId": rec.TraceID, "status": string(rec.Status)})
	case errors.Is(err, store.ErrNotFound):
		writeError(w, http.StatusNotFound, "not_found", "no request with id "+id)
	case errors.As(err, &conflict):
		writeError(w, http.StatusConflict, "not_replayable", fmt.Sprintf("request %s is %s: %v", id, conflict.Current, errNotReplayable))
	default:
		c.log.Error("replay: moving the record", "id", id, "err", err)
		writeError(w, http.StatusServiceUnavailable, "store_unavailable", "the replay could not be recorded")
	}
}

// bulkReplay is the body of POST /v1/deliveries/replay.
type bulkReplay struct {
	Status  store.Status `json:"status"` // dead (default) or delivered
	Rule    string       `json:"rule"`
	Caller  string       `json:"caller"`
	Package string       `json:"package"`
	TraceID string       `json:"traceId"`
	Since   time.Time    `json:"since"`
	Until   time.Time    `json:"until"`
	Cursor  string       `json:"cursor"`
	Limit   int          `json:"limit"` // 1..store.MaxLimit, default 100
	// DryRun answers {"matched": N}, how many records the filter selects
	// (cursor and limit aside), and replays nothing: the count an operator
	// confirms before replaying page by page.
	DryRun bool `json:"dryRun"`
}

func (c *Collector) replayMany(w http.ResponseWriter, r *http.Request) {
	if !c.authorized(w, r) {
		return
	}
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 64<<10))
	if err != nil {
		writeError(w, http.StatusBadRequest, "unreadable_body", err.Error())
		return
	}
	var q bulkReplay
	if err := strict.Decode(data, &q); err != nil {
		writeError(w, http.StatusBadRequest, "bad_body", "decoding the filter: "+err.Error())
		return
	}
	switch q.Status {
	case "":
		q.Status = store.Dead
	case store.Dead, store.Delivered:
	default:
		writeError(w, http.StatusBadRequest, "bad_body", "status: "+string(q.Status)+" is not dead or delivered")
		return
	}
	if q.Limit == 0 {
		q.Limit = 100
	}
	if q.Limit < 1 || q.Limit > store.MaxLimit {
		writeError(w, http.StatusBadRequest, "bad_body", "limit: want 1.."+strconv.Itoa(store.MaxLimit))
		return
	}
	sq := store.Query{Status: q.Status, Rule: q.Rule, Caller: q.Caller, Package: q.Package, TraceID: q.TraceID, Since: q.Since, Until: q.Until, Cursor: q.Cursor, Limit: q.Limit}
	if q.DryRun {
		if n, ok := c.countRecords(w, r.Context(), sq); ok {
			writeJSON(w, http.StatusOK, map[string]int64{"matched": n})
		}
		return
	}
	page, err := c.store.Search(r.Context(), sq)
	if err != nil {
		c.log.Error("replay: search", "err", err)
		writeError(w, http.StatusServiceUnavailable, "store_unavailable", "search failed")
		return
	}
	out := struct {
		Replayed []string `json:"replayed"`
		Skipped  []string `json:"skipped"` // moved on since the search (already replayed, for example)
		Next     string   `json:"next,omitempty"`
	}{Replayed: []string{}, Skipped: []string{}, Next: page.Next}
	for _, rec := range page.Records {
		_, err := c.replayDelivery(r.Context(), rec)
		switch {
		case err == nil:
			out.Replayed = append(out.Replayed, rec.ID)
		case store.IsConflict(err) || errors.Is(err, store.ErrNotFound):
			out.Skipped = append(out.Skipped, rec.ID)
		default:
			c.log.Error("replay: moving the record", "id", rec.ID, "err", err)
			writeError(w, http.StatusServiceUnavailable, "store_unavailable", fmt.Sprintf("replayed %d, then the store failed", len(out.Replayed)))
			return
		}
	}
	c.log.Info("replay: bulk", "status", q.Status, "rule", q.Rule, "caller", q.Caller, "package", q.Package, "replayed", len(out.Replayed), "skipped", len(out.Skipped))
	writeJSON(w, http.StatusOK, out)
}
