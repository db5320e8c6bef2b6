package collector

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/external"
	"github.com/asyncmesh/asyncmesh/collector/queue"
	"github.com/asyncmesh/asyncmesh/collector/store"
)

// External processing nodes (collector/external has the protocol):
//   - A record whose rule targets an external node is claimed in the store
//     (queued → processing, leased), then the task is sent to the node. Once
//     the node takes it, the history gets a hand-off entry (store.HandOff,
//     detail: the node) and the record is leased until the node's deadline
//     (target.timeout); the work message comes back at the deadline.
//   - POST /v1/requests/{id}/complete moves processing → completed (or failed
//     with the node's error) and publishes the delivery. It is idempotent: a
//     second completion of a finished record answers 200 with its status.
//   - A work message that finds the deadline passed fails the record with the
//     reason; a crash between sending and the hand-off sends the task again
//     (nodes dedupe by id, as callers do by webhook-id).

// dispatchExternal runs the external step of record r, in processing (its
// envelope with the live rule applied): it sends the task, waits for the
// node's deadline, or fails the record once it has passed.
func (c *Collector) dispatchExternal(ctx context.Context, m queue.Message, r *store.Record) error {
	t := r.Envelope.Target
	id := r.ID
	log := c.log.With("id", id, "trace_id", r.TraceID, "rule", r.Rule)
	if sentAt := r.Last(store.HandOff); !sentAt.IsZero() {
		timeout, node := t.MaxTimeout(), t.Endpoint
		if cand, ok := handedOff(r, t); ok {
			timeout, node = cand.Target.Timeout.D(), handOffDetail(cand)
		}
		// On the store's clock, as the hand-off's time and lease are.
		if left := sentAt.Add(timeout).Sub(c.store.Now()); left > 0 {
			return queue.RetryAfter(left+time.Second, "waiting for the external node") // early: a duplicate message
		}
		log.Warn("external: no completion before the deadline", "node", node, "timeout", timeout)
		return c.finishRun(ctx, m, r, store.Change{Event: store.Fail,
			Error: fmt.Sprintf("external node %s did not complete within %s", node, timeout)})
	}
	if r.LeaseUntil.IsZero() || !c.store.Now().Before(r.LeaseUntil) {
		// Not claimed by this message (a worker crashed before the hand-off,
		// or released it to retry): take it over.
		got, err := c.claim(ctx, r, store.Change{Event: store.Resume, Lease: t.MaxTimeout() + leaseMargin})
		if err != nil {
			return claimFailed(err, m)
		}
		got.Envelope, r = r.Envelope, got
	}
	if c.cfg.APIURL == "" {
		return c.finishRun(ctx, m, r, store.Change{Event: store.Fail,
			Error: "the collector has no -api-url: an external node could not complete the request"})
	}
	e := r.Envelope
	task := external.Task{ID: id, TraceID: r.TraceID, TraceParent: e.TraceParent, Rule: r.Rule,
		CompleteURL: strings.TrimSuffix(c.cfg.APIURL, "/") + "/v1/requests/" + id + "/complete",
		Request:     external.TaskRequest{Method: e.Method, Authority: e.Authority, Path: e.Path, Headers: e.Headers, Body: e.Body}}
	cand, err := c.sendTask(ctx, log, t, task)
	if errors.Is(err, errNodesDisabled) {
		// Not failed (an operator may enable a node) and not run: the
		// record waits, unleased, and the message looks again later.
		log.Warn("external: every node is disabled, waiting", "err", err)
		if _, rerr := c.move(ctx, id, store.Change{Event: store.Release}); rerr != nil && !store.IsConflict(rerr) {
			log.Warn("external: releasing lease", "err", rerr)
		}
		// A wait, not a run (queue.Wait): while the nodes stay disabled
		// the message comes back every nodesDisabledRetry without spending
		// the retries (replayAttempts) the dispatch has once one is enabled.
		return queue.Wait(nodesDisabledRetry, "every node of the rule is disabled")
	}
	if err != nil {
		// Permanent: the node refused the task, or the SSRF guard refused
		// the node's address. Either fails the request now with the reason
		// (the caller is called back with it) instead of retrying.
		var perm *external.PermanentError
		if !errors.As(err, &perm) && m.Deliveries < replayAttempts {
			log.Warn("external: sending the task failed, will retry", "err", err, "deliveries", m.Deliveries)
			if _, rerr := c.move(ctx, id, store.Change{Event: store.Release}); rerr != nil && !store.IsConflict(rerr) {
				log.Warn("external: releasing lease", "err", rerr)
			}
			return err
		}
		return c.finishRun(ctx, m, r, store.Change{Event: store.Fail, Error: err.Error()})
	}
	timeout := cand.Target.Timeout.D()
	_, err = c.move(ctx, id, store.Change{Event: store.HandOff, Detail: handOffDetail(cand), Node: cand.Name, Lease: timeout})
	if store.IsConflict(err) {
		return nil // the node completed it already
	}
	if err != nil {
		return err
	}
	log.Info("external: node took the task", "node", handOffDetail(cand), "timeout", timeout)
	return queue.RetryAfter(timeout+time.Second, "waiting for the external node")
}

// complete takes an external node's answer.
func (c *Collector) complete(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	rec, err := store.Peek(r.Context(), c.store, id)
	if errors.Is(err, store.ErrNotFound) {
		writeError(w, http.StatusNotFound, "not_found", "no request with id "+id)
		return
	}
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, "store_unavailable", "reading the request failed")
		return
	}
	env := c.applyRules(rec.Envelope)
	t := env.Target
	if !t.External() {
		writeError(w, http.StatusConflict, "not_external", "request "+id+" is not processed by an external node")
		return
	}
	log := c.log.With("id", id, "trace_id", rec.TraceID, "rule", rec.Rule)
	// The completion is the node's that took the task, authenticated as
	// that node's: a node the task failed over from is refused.
	cand, ok := handedOff(rec, t)
	if !ok {
		// Only a party that could be one of the rule's nodes learns more.
		if !c.preverifyAny(t, id, r.Header) {
			log.Warn("external: refused completion: not authenticated as a node of the rule")
			writeError(w, http.StatusUnauthorized, "unauthorized", "not authenticated as a node of the rule")
			return
		}
		if rec.Status == store.Processing && rec.Last(store.HandOff).IsZero() {
			// The node answered before the collector wrote the hand-off
			// naming it: which node this is will be known in a moment.
			w.Header().Set("Retry-After", "1")
			writeError(w, http.StatusServiceUnavailable, "not_handed_off", "request "+id+" is not yet recorded as handed off to a node; retry")
			return
		}
		writeError(w, http.StatusConflict, "not_handed_off", "request "+id+" was not handed off to a node of its rule")
		return
	}
	t = cand.Target
	log = log.With("node", handOffDetail(cand))
	// Authenticate before reading a body of up to ~22 MB.
	if err := c.nodes.Preverify(t, id, r.Header); err != nil {
		log.Warn("external: refused completion", "err", err)
		writeError(w, http.StatusUnauthorized, "unauthorized", err.Error())
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 4*maxResponseBody/3+1<<20))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeError(w, http.StatusRequestEntityTooLarge, "body_too_large", "completion over the size limit")
		} else {
			writeError(w, http.StatusBadRequest, "unreadable_body", err.Error())
		}
		return
	}
	cp, err := c.nodes.Complete(t, id, r.Header, body)
	switch {
	case errors.Is(err, external.ErrUnauthenticated):
		log.Warn("external: refused completion", "err", err)
		writeError(w, http.StatusUnauthorized, "unauthorized", err.Error())
		return
	case err != nil:
		log.Warn("external: bad completion", "err", err)
		writeError(w, http.StatusBadRequest, "bad_completion", err.Error())
		return
	}
	if rec.Status == store.Persisted || rec.Status == store.Queued {
		writeError(w, http.StatusConflict, "not_processing", fmt.Sprintf("request %s is %s, not processing", id, rec.Status))
		return
	}
	ch := store.Change{Event: store.Complete}
	if cp.Error != "" {
		ch = store.Change{Event: store.Fail, Error: "external node: " + cp.Error}
	} else {
		resp := &store.Response{Status: cp.Status, Body: cp.BodyBytes()}
		for k, v := range cp.Headers {
			resp.Headers = append(resp.Headers, [2]string{strings.ToLower(k), v})
		}
		ch.Response = resp
	}
	got, err := c.advance(r.Context(), rec, ch)
	var conflict *store.ConflictError
	switch {
	case errors.As(err, &conflict) && conflict.Current.HasResult():
		writeJSON(w, http.StatusOK, map[string]string{"id": id, "status": string(conflict.Current)}) // a repeat
		return
	case errors.As(err, &conflict):
		writeError(w, http.StatusConflict, "not_processing", fmt.Sprintf("request %s is %s, not processing", id, conflict.Current))
		return
	case err != nil:
		writeError(w, http.StatusServiceUnavailable, "store_unavailable", "the completion could not be recorded")
		return
	}
	log.Info("external: completed", "status", got.Status)
	writeJSON(w, http.StatusOK, map[string]string{"id": id, "status": string(got.Status)})
}
