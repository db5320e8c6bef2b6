package collector

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/store"
)

// The operator's stream, GET /v1/stream?status=&rule=&package=&caller=&traceId=:
// server-sent events of every request's changes, operator-wide (the
// per-request stream is events.go). Each change is an event "record" whose
// data is the record as GET /v1/requests/{id} shows it to an operator and
// whose id is a resume cursor (Last-Event-ID).
//
// Decisions:
//   - The stream polls the store (store.ChangeLister) for records changed
//     since its cursor, once a second, and at once (at most every
//     streamMinGap) when this collector changes a record: so it sees the
//     changes of every collector on a shared store (Elasticsearch), with low
//     latency for its own.
//   - A change is stamped before it is written, and Elasticsearch shows a
//     write to searches after its next refresh: a change may become visible
//     after later ones. So every poll looks back streamLookback behind the
//     cursor and drops what it has already sent (the seen set, which holds
//     only that window). A change that becomes visible more than
//     streamLookback late is missed; the log (GET /v1/requests) is the truth.
//   - The stream starts at the store's now (or at Last-Event-ID, never before
//     it): it shows changes, not history. The event ids only grow.
//   - Bounded: MaxStreams streams per collector (503 beyond); per poll at
//     most streamMaxPerPoll records, read streamPage at a time; each write
//     must reach the client within streamWriteTimeout, or the client is
//     dropped: nothing is buffered for a slow client but the connection's
//     own buffer. Past streamMaxPerPoll the stream catches up without
//     looking back (under that much change it may skip some).
//   - A comment every 15 s keeps proxies from closing an idle stream; a
//     stream ends after MaxOperatorStream, and the client resumes.
const (
	streamPoll       = time.Second
	streamMinGap     = 200 * time.Millisecond
	streamLookback   = 3 * time.Second
	streamPage       = 200
	streamMaxPerPoll = 2000
	streamMaxSeen    = 20000
	streamHeartbeat  = 15 * time.Second
	// MaxOperatorStream bounds one GET /v1/stream; the client resumes with
	// Last-Event-ID.
	MaxOperatorStream = 10 * time.Minute
)

// formatCursor renders a change cursor as an event id: the update time in
// Unix nanoseconds, a dot, the record id.
// streamWriteTimeout is how long one write to a stream may take before the
// client is dropped (a variable for the test of a client that stops reading).
var streamWriteTimeout = 10 * time.Second

func formatCursor(c store.ChangeCursor) string {
	return strconv.FormatInt(c.At.UnixNano(), 10) + "." + c.ID
}

// parseCursor reads an event id of formatCursor (a client's Last-Event-ID).
func parseCursor(s string) (store.ChangeCursor, error) {
	ns, id, ok := strings.Cut(s, ".")
	if !ok || len(s) > 128 {
		return store.ChangeCursor{}, errors.New("want the id of an event of this stream")
	}
	n, err := strconv.ParseInt(ns, 10, 64)
	if err != nil || n < 0 {
		return store.ChangeCursor{}, errors.New("want the id of an event of this stream")
	}
	for _, r := range id {
		if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r == '-' || r == '_') {
			return store.ChangeCursor{}, errors.New("want the id of an event of this stream")
		}
	}
	return store.ChangeCursor{At: time.Unix(0, n).UTC(), ID: id}, nil
}

// after reports whether a comes after b in the order of changes.
func after(a, b store.ChangeCursor) bool {
	if !a.At.Equal(b.At) {
		return a.At.After(b.At)
	}
	return a.ID > b.ID
}

func cursorOf(r *store.Record) store.ChangeCursor {
	return store.ChangeCursor{At: r.UpdatedAt, ID: r.ID}
}

func (c *Collector) stream(w http.ResponseWriter, r *http.Request) {
	q, ok := parseQuery(w, r)
	if !ok {
		return
	}
	if !q.Since.IsZero() || !q.Until.IsZero() {
		writeError(w, http.StatusBadRequest, "bad_parameter", "since, until: the stream shows changes from now on (GET /v1/requests searches the past)")
		return
	}
	lister, ok := c.store.(store.ChangeLister)
	if !ok {
		writeError(w, http.StatusNotImplemented, "not_supported", "this store cannot list changes")
		return
	}
	if _, ok := w.(http.Flusher); !ok {
		writeError(w, http.StatusInternalServerError, "no_streaming", "this server cannot stream")
		return
	}
	floor := store.ChangeCursor{At: c.store.Now()}
	if v := r.Header.Get("last-event-id"); v != "" {
		cur, err := parseCursor(v)
		if err != nil {
			writeError(w, http.StatusBadRequest, "bad_last_event_id", "last-event-id: "+err.Error())
			return
		}
		floor = cur
	}
	select {
	case c.streams <- struct{}{}:
		defer func() { <-c.streams }()
	default:
		w.Header().Set("retry-after", "5")
		writeError(w, http.StatusServiceUnavailable, "too_many_streams", "this collector serves "+strconv.Itoa(cap(c.streams))+" streams already; retry later")
		return
	}
	ctx := r.Context()
	rc := http.NewResponseController(w)
	// write sends one piece within streamWriteTimeout, or fails: a client
	// that does not read is dropped.
	write := func(p string) error {
		_ = rc.SetWriteDeadline(time.Now().Add(streamWriteTimeout))
		if _, err := fmt.Fprint(w, p); err != nil {
			return err
		}
		return rc.Flush()
	}
	w.Header().Set("content-type", "text/event-stream")
	w.Header().Set("cache-control", "no-store")
	w.Header().Set("x-accel-buffering", "no")
	w.WriteHeader(http.StatusOK)
	if err := write(": stream of changes\n\n"); err != nil {
		return
	}
	end := time.Now().Add(MaxOperatorStream)
	cur := floor                   // the last change sent (or the start)
	seen := map[string]time.Time{} // changes sent within the look-back window: id → UpdatedAt
	lastWrite, lastPoll := time.Now(), time.Time{}
	lookBack := true
	for {
		changed := c.notify.waitAny() // before the poll: a change during it is not missed
		if gap := time.Since(lastPoll); gap < streamMinGap {
			if c.pause(ctx, nil, streamMinGap-gap) || ctx.Err() != nil {
				return
			}
		}
		lastPoll = time.Now()
		from := cur
		if lookBack {
			from = store.ChangeCursor{At: cur.At.Add(-streamLookback)}
			if after(floor, from) {
				from = floor
			}
		}
		read := 0
		for read < streamMaxPerPoll {
			recs, err := lister.Changes(ctx, q, from, streamPage)
			if err != nil {
				if ctx.Err() == nil {
					c.log.Warn("stream: listing changes", "err", err)
				}
				break // tried again at the next poll
			}
			read += len(recs)
			for _, rec := range recs {
				from = cursorOf(rec)
				if !after(from, floor) {
					continue
				}
				if at, ok := seen[rec.ID]; ok && !rec.UpdatedAt.After(at) {
					continue // sent already
				}
				seen[rec.ID] = rec.UpdatedAt
				if after(from, cur) {
					cur = from
				}
				data, err := json.Marshal(viewOf(rec, true))
				if err != nil {
					continue
				}
				if write("event: record\nid: "+formatCursor(cur)+"\ndata: "+string(data)+"\n\n") != nil {
					return
				}
				lastWrite = time.Now()
			}
			if len(recs) < streamPage {
				break
			}
		}
		// Looking back costs a re-read of the window at every poll: not when
		// the stream is behind, or its seen set would grow past its bound.
		lookBack = read < streamMaxPerPoll && len(seen) < streamMaxSeen
		if !lookBack {
			clear(seen)
			floor = cur // what was sent is not sent again
		}
		for id, at := range seen {
			if at.Before(cur.At.Add(-2 * streamLookback)) {
				delete(seen, id)
			}
		}
		if time.Since(lastWrite) >= streamHeartbeat {
			if write(": keep-alive\n\n") != nil {
				return
			}
			lastWrite = time.Now()
		}
		if time.Now().After(end) {
			return
		}
		if read >= streamMaxPerPoll {
			continue // behind: read on at once
		}
		if c.pause(ctx, changed, streamPoll) || ctx.Err() != nil {
			return
		}
	}
}
