package collector

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/delivery"
	"github.com/asyncmesh/asyncmesh/collector/store"
	"github.com/asyncmesh/asyncmesh/internal/envelope"
	"github.com/asyncmesh/asyncmesh/internal/webhook"
)

// Endpoint health (docs/architecture.md, "Endpoint health"). Every attempt's
// outcome is counted in memory per endpoint and merged into the store's
// endpoint state about once a second (store.Endpoints), so that health is
// shared by the collectors of a store at one write per endpoint per second
// each, not one per callback. Past EndpointDisableAfter consecutive failed
// attempts — counted across collectors — or at once on 410 Gone, the
// endpoint is disabled: its deliveries are held (store.Hold) instead of
// attempted, until an operator enables it (POST /v1/endpoints/{id}/enable),
// which resumes them in the order they were accepted. Every collector learns
// of a disabled endpoint from the store within EndpointRefresh.

// healthFlushEvery is how often a collector merges its counts into the store
// and reads the disabled endpoints back.
const healthFlushEvery = time.Second

// maxDisabledKnown bounds the disabled endpoints a collector keeps in memory.
const maxDisabledKnown = 100_000

type health struct {
	eps        store.Endpoints // nil: the store keeps no endpoint health
	threshold  int64           // consecutive failed attempts that disable; 0: never
	failingFor time.Duration   // ... and for at least this long
	log        *slog.Logger
	obs        *metrics
	events     *endpointEvents

	// resume moves an endpoint's held deliveries back (Collector.resumeHeld).
	resume func(ctx context.Context, id string) (int, error)

	mu       sync.Mutex
	pending  map[string]*pendingDelta
	disabled map[string]string      // id → reason
	resumes  map[string]resumeState // endpoints enabled lately: when to look for their held deliveries again
}

// resumePasses are when, after an endpoint is enabled, its held deliveries
// are looked for again: a store's search may not see the latest holds at
// once (Elasticsearch refreshes every second), a hold may race the
// enabling, and the collector that enabled it may have stopped midway.
var resumePasses = []time.Duration{2 * time.Second, 30 * time.Second}

type pendingDelta struct {
	d                     store.EndpointDelta
	url, protocol, caller string
}

func newHealth(st store.Store, threshold int, failingFor time.Duration, log *slog.Logger, obs *metrics, events *endpointEvents) *health {
	h := &health{threshold: int64(max(threshold, 0)), failingFor: failingFor, log: log, obs: obs, events: events,
		pending: map[string]*pendingDelta{}, disabled: map[string]string{}, resumes: map[string]resumeState{}}
	h.eps, _ = store.EndpointsOf(st)
	return h
}

// endpointOf is the endpoint of e's callback (e as the live rules made it).
func endpointOf(e *envelope.Envelope) string {
	return store.EndpointID(e.Caller, e.Callback.Protocol, e.Callback.URL)
}

// isDisabled reports whether the endpoint of e is disabled, and why.
func (h *health) isDisabled(e *envelope.Envelope) (string, bool) {
	return h.disabledID(endpointOf(e))
}

// disabledID reports whether endpoint id is disabled, and why.
func (h *health) disabledID(id string) (string, bool) {
	if h.eps == nil {
		return "", false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	reason, ok := h.disabled[id]
	return reason, ok
}

// observe counts an attempt's outcome, and reports whether it disabled the
// endpoint (410 Gone does at once; enough consecutive failures, merged
// with the other collectors', do at the next flush, or at once when this
// collector alone saw enough).
func (h *health) observe(ctx context.Context, e *envelope.Envelope, out delivery.Outcome, at time.Time) bool {
	return h.observeID(ctx, endpointOf(e), e.Callback.URL, e.Callback.Protocol, e.Caller, out, at)
}

// observeID is observe for endpoint id (a callback's, or a processing
// node's: nodeEndpoint).
func (h *health) observeID(ctx context.Context, id, url, protocol, caller string, out delivery.Outcome, at time.Time) bool {
	if h.eps == nil || out == delivery.Refused {
		return false // a refusal is this collector's guard, not the receiver
	}
	h.mu.Lock()
	p := h.pending[id]
	if p == nil {
		p = &pendingDelta{url: url, protocol: protocol, caller: caller}
		h.pending[id] = p
	}
	p.d.Attempts++
	if out == delivery.Delivered {
		p.d.Successes++
		p.d.FailuresSinceSuccess = 0
		p.d.LastSuccess = at
	} else {
		p.d.FailuresSinceSuccess++
		p.d.LastFailure = at
	}
	urgent := out == delivery.Gone || h.threshold > 0 && h.failingFor == 0 && p.d.FailuresSinceSuccess >= h.threshold
	h.mu.Unlock()
	if !urgent {
		return false
	}
	reason := ""
	if out == delivery.Gone {
		reason = "the endpoint answered 410 Gone"
	}
	return h.flushOne(ctx, id, reason)
}

// flush merges every pending delta into the store and reads the disabled
// endpoints back.
func (h *health) flush(ctx context.Context) {
	if h.eps == nil {
		return
	}
	h.mu.Lock()
	ids := make([]string, 0, len(h.pending))
	for id := range h.pending {
		ids = append(ids, id)
	}
	h.mu.Unlock()
	for _, id := range ids {
		h.flushOne(ctx, id, "")
	}
	h.refresh(ctx)
}

// flushOne merges endpoint id's pending delta, disabling the endpoint when
// reason is set or the merged consecutive failures reach the threshold. It
// reports whether the endpoint is disabled after it. A failed write keeps
// the delta for the next flush.
func (h *health) flushOne(ctx context.Context, id, reason string) bool {
	h.mu.Lock()
	p := h.pending[id]
	delete(h.pending, id)
	h.mu.Unlock()
	if p == nil && reason == "" {
		return false
	}
	var newly bool
	e, err := h.eps.UpdateEndpoint(ctx, id, func(e *store.Endpoint) error {
		newly = false
		now := time.Now().UTC()
		if p != nil {
			e.URL, e.Protocol, e.Caller = p.url, p.protocol, p.caller
			e.Observe(p.d, now)
		}
		why := reason
		if why == "" && h.threshold > 0 && e.ConsecutiveFailures >= h.threshold && now.Sub(e.FailingSince) >= h.failingFor {
			why = fmt.Sprintf("%d consecutive failed attempts over %s", e.ConsecutiveFailures, now.Sub(e.FailingSince).Round(time.Second))
		}
		if why != "" && !e.Disabled {
			e.Disabled, e.DisabledAt, e.Reason, newly = true, now, why, true
		}
		e.UpdatedAt = now
		return nil
	})
	if err != nil {
		h.log.Warn("endpoint health: merging counts; kept for the next try", "endpoint", id, "err", err)
		if p != nil {
			h.mu.Lock()
			if q := h.pending[id]; q != nil { // attempts counted meanwhile
				p.d.Then(q.d)
			}
			h.pending[id] = p
			h.mu.Unlock()
		}
		return false
	}
	if e.Disabled {
		h.setDisabled(e.ID, e.Reason)
	}
	if newly {
		h.log.Warn("endpoint disabled: its deliveries are held until it is enabled (POST /v1/endpoints/{id}/enable)",
			"endpoint", e.ID, "url", e.URL, "caller", e.Caller, "reason", e.Reason)
		h.obs.endpointEvents.WithLabelValues("disabled").Inc()
		h.events.send(endpointEvent{Type: "endpoint.disabled", Endpoint: e})
	}
	return e.Disabled
}

func (h *health) setDisabled(id, reason string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.disabled) < maxDisabledKnown {
		h.disabled[id] = reason
	}
	h.obs.endpointsDisabled.Set(float64(len(h.disabled)))
}

// refresh reads the disabled endpoints from the store: those other
// collectors disabled, and those an operator enabled.
func (h *health) refresh(ctx context.Context) {
	got := map[string]string{}
	after := ""
	for len(got) < maxDisabledKnown {
		page, err := h.eps.ListEndpoints(ctx, store.EndpointQuery{DisabledOnly: true, After: after})
		if err != nil {
			h.log.Warn("endpoint health: reading the disabled endpoints", "err", err)
			return
		}
		for _, e := range page {
			got[e.ID] = e.Reason
		}
		if len(page) < store.MaxLimit {
			break
		}
		after = page[len(page)-1].ID
	}
	h.mu.Lock()
	for id := range h.disabled {
		if _, still := got[id]; !still { // enabled, here or by another collector
			h.scheduleResume(id)
		}
	}
	h.disabled = got
	h.mu.Unlock()
	h.obs.endpointsDisabled.Set(float64(len(got)))
}

// resumeState is an enabled endpoint's next resume pass.
type resumeState struct {
	enabled time.Time
	pass    int // index in resumePasses
}

func (r resumeState) due() time.Time { return r.enabled.Add(resumePasses[r.pass]) }

// scheduleResume plans the passes of resumePasses for endpoint id; h.mu
// held.
func (h *health) scheduleResume(id string) {
	if len(h.resumes) < maxDisabledKnown {
		h.resumes[id] = resumeState{enabled: time.Now()}
	}
}

// resumeDue runs the resume passes that are due.
func (h *health) resumeDue(ctx context.Context) {
	now := time.Now()
	var due []string
	h.mu.Lock()
	for id, rs := range h.resumes {
		if _, off := h.disabled[id]; off {
			delete(h.resumes, id) // disabled again
			continue
		}
		if !now.Before(rs.due()) {
			due = append(due, id)
		}
	}
	h.mu.Unlock()
	for _, id := range due {
		n, err := h.resume(ctx, id)
		if err != nil {
			h.log.Warn("endpoint health: resuming held deliveries; will try again", "endpoint", id, "err", err)
			continue
		}
		if n > 0 {
			h.log.Info("endpoint health: resumed held deliveries of an enabled endpoint", "endpoint", id, "resumed", n)
		}
		h.mu.Lock()
		if rs, ok := h.resumes[id]; ok {
			if rs.pass++; rs.pass < len(resumePasses) {
				h.resumes[id] = rs
			} else {
				delete(h.resumes, id)
			}
		}
		h.mu.Unlock()
	}
}

// run flushes until ctx ends, and once more after.
func (h *health) run(ctx context.Context) error {
	if h.eps == nil {
		return nil
	}
	t := time.NewTicker(healthFlushEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			flushCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			h.flush(flushCtx)
			return nil
		case <-t.C:
			h.flush(ctx)
			if h.resume != nil {
				h.resumeDue(ctx)
			}
		}
	}
}

// setEnabled enables or disables endpoint id by an operator's decision.
func (h *health) setEnabled(ctx context.Context, id string, enabled bool) (*store.Endpoint, error) {
	var changed bool
	e, err := h.eps.UpdateEndpoint(ctx, id, func(e *store.Endpoint) error {
		if e.URL == "" {
			return store.ErrNotFound // never written: no such endpoint
		}
		changed = e.Disabled == enabled
		now := time.Now().UTC()
		if enabled {
			e.Disabled, e.Reason, e.ConsecutiveFailures, e.FailingSince = false, "", 0, time.Time{}
		} else if !e.Disabled {
			e.Disabled, e.DisabledAt, e.Reason = true, now, "disabled by an operator"
		}
		e.UpdatedAt = now
		return nil
	})
	if err != nil {
		return nil, err
	}
	h.mu.Lock()
	if enabled {
		delete(h.disabled, id)
		h.scheduleResume(id)
	} else {
		h.disabled[id] = e.Reason
	}
	h.mu.Unlock()
	if changed {
		ev := map[bool]string{true: "enabled", false: "disabled"}[enabled]
		h.log.Info("endpoint "+ev+" by an operator", "endpoint", id, "url", e.URL, "caller", e.Caller)
		h.obs.endpointEvents.WithLabelValues(ev).Inc()
		h.events.send(endpointEvent{Type: "endpoint." + ev, Endpoint: e})
	}
	return e, nil
}

// endpointEvent is what the operator webhook receives.
type endpointEvent struct {
	Type     string          `json:"type"` // endpoint.disabled | endpoint.enabled
	Endpoint *store.Endpoint `json:"endpoint"`
}

// endpointEvents posts endpoint events to the operator's webhook
// (EndpointEventsURL), signed like callbacks (Standard Webhooks) with
// EndpointEventsSecret when set. Best effort: a few attempts, then a log
// line; never more than maxEventsInFlight at once.
type endpointEvents struct {
	url     string
	secrets []webhook.Secret
	client  *http.Client
	log     *slog.Logger
	slots   chan struct{}
	stop    <-chan struct{} // the collector is stopping: no more retries
	wg      sync.WaitGroup
}

const maxEventsInFlight = 16

func (ev *endpointEvents) send(e endpointEvent) {
	if ev == nil || ev.url == "" {
		return
	}
	select {
	case ev.slots <- struct{}{}:
	default:
		ev.log.Warn("endpoint events: too many in flight; event dropped (the log line above says what happened)", "type", e.Type)
		return
	}
	ev.wg.Add(1)
	go func() {
		defer ev.wg.Done()
		defer func() { <-ev.slots }()
		body, _ := json.Marshal(e)
		id := e.Type + "." + e.Endpoint.ID + "." + e.Endpoint.UpdatedAt.Format("20060102T150405.000000000")
		for attempt := range 3 {
			if attempt > 0 {
				select {
				case <-time.After(time.Duration(attempt) * 2 * time.Second):
				case <-ev.stop:
					return
				}
			}
			req, _ := http.NewRequest(http.MethodPost, ev.url, bytes.NewReader(body))
			webhook.Sign(req.Header, ev.secrets, id, time.Now(), body)
			req.Header.Set("content-type", "application/json")
			resp, err := ev.client.Do(req)
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode/100 == 2 {
					return
				}
				err = fmt.Errorf("answered %d", resp.StatusCode)
			}
			ev.log.Warn("endpoint events: posting to the operator's webhook", "type", e.Type, "endpoint", e.Endpoint.ID, "attempt", attempt+1, "err", err)
		}
	}()
}

// wait waits for the events in flight (Run, when it ends).
func (ev *endpointEvents) wait() {
	if ev != nil {
		ev.wg.Wait()
	}
}
