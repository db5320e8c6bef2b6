package collector

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"

	"github.com/asyncmesh/asyncmesh/collector/delivery"
	"github.com/asyncmesh/asyncmesh/collector/queue"
	"github.com/asyncmesh/asyncmesh/collector/store"
	"github.com/asyncmesh/asyncmesh/internal/replay"
	"github.com/asyncmesh/asyncmesh/internal/rules"
)

// maxResponseBody bounds a stored response body.
const maxResponseBody = 16 << 20

// replayAttempts is how many deliveries of a work message may fail to reach the
// service (Envoy down, connection refused) before the record is failed.
const replayAttempts = 5

// leaseMargin is added to a request's timeout (or a callback's) to lease a
// record while it runs: long enough that a duplicate message never runs it at
// the same time, short enough that a crashed worker's record is taken over.
const leaseMargin = 10 * time.Second

// handleWork executes one accepted request: queued → processing → completed |
// failed, then hands it to delivery.
//
// It claims without reading the record first: the message carries the rule
// and timeout the lease needs, and the record is usually queued (intake's
// write). When it is not, the conflict names its real status and the handler
// acts on that instead (claimSteps).
func (c *Collector) handleWork(ctx context.Context, m queue.Message) error {
	id := m.Key
	status, timeout := store.Queued, c.messageTimeout(m)
	if timeout <= 0 { // a message without its envelope (large, or older): read the record
		r, err := c.store.Get(ctx, id)
		if err != nil {
			return claimFailed(err, m)
		}
		status, timeout = r.Status, c.applyRules(r.Envelope).Timeout.D()
	}
	lease := timeout + leaseMargin
	var r *store.Record
	var err error
	for range claimSteps {
		switch status {
		case store.Persisted, store.Queued:
			if status == store.Persisted { // intake's queued write was lost or is late
				_, err = c.move(ctx, id, store.Change{From: []store.Status{store.Persisted}, To: store.Queued})
				if err != nil && !store.IsConflict(err) {
					break
				}
			}
			r, err = c.claim(ctx, id, store.Processing, lease, store.Queued)
		case store.Processing:
			// A redelivery after a crash mid-processing runs it again (at least
			// once) — unless the lease says another worker is running it now.
			if r, err = c.claim(ctx, id, "", lease, store.Processing); err == nil {
				c.log.Info("worker: resuming a record left in processing", "id", id, "trace_id", m.TraceID, "deliveries", m.Deliveries)
			}
		case store.Completed, store.Failed:
			return c.publish(ctx, queue.TopicDelivery, &store.Record{ID: id, TraceID: m.TraceID})
		default:
			return nil // already delivering or done
		}
		if now, ok := conflictStatus(err); ok {
			status = now
			continue
		}
		break
	}
	if err != nil {
		return claimFailed(err, m)
	}
	log := c.log.With("id", id, "trace_id", r.TraceID, "rule", r.Rule)
	r.Envelope = c.applyRules(r.Envelope)
	target := "internal"
	if r.Envelope.Target.External() {
		target = "external"
	}
	start := time.Now()
	ctx, span := spanFor(ctx, r.Envelope, "asyncmesh.process", attribute.String("asyncmesh.target", target))
	defer func() {
		c.obs.executeSeconds.WithLabelValues(r.Rule, target).Observe(since(start))
		span.End()
	}()
	if target == "external" {
		return c.dispatchExternal(ctx, r, m)
	}
	resp, err := c.execute(ctx, r)
	if err != nil {
		span.RecordError(err)
	}
	change := store.Change{From: []store.Status{store.Processing}, To: store.Completed, Response: resp}
	if err != nil {
		var perm *permanentError
		if !errors.As(err, &perm) && m.Deliveries < replayAttempts {
			log.Warn("worker: replay failed, will retry", "err", err, "deliveries", m.Deliveries)
			// Release the lease so that the retry is not held back by it.
			if _, rerr := c.move(ctx, id, store.Change{From: []store.Status{store.Processing}}); rerr != nil && !store.IsConflict(rerr) {
				log.Warn("worker: releasing lease", "err", rerr)
			}
			return err
		}
		log.Warn("worker: request failed", "err", err)
		change = store.Change{From: []store.Status{store.Processing}, To: store.Failed, Error: err.Error()}
	}
	if err := c.finish(ctx, r, change); err != nil {
		return err
	}
	log.Info("worker: executed", "status", change.To)
	return nil
}

// claimSteps bounds how often a handler follows a record's real status
// after a conflict (persisted → queued → claim is the longest path).
const claimSteps = 3

// claim moves record id from one of from to to (to "" keeps the status) and
// leases it for d. A record leased to another worker becomes a delayed
// redelivery of this message; other conflicts are returned for the caller to
// follow (conflictStatus).
func (c *Collector) claim(ctx context.Context, id string, to store.Status, d time.Duration, from ...store.Status) (*store.Record, error) {
	r, err := c.move(ctx, id, store.Change{From: from, To: to, Claim: true, LeaseUntil: time.Now().Add(d)})
	if until, ok := store.LeasedUntil(err); ok {
		return nil, queue.RetryAfter(time.Until(until)+50*time.Millisecond, "leased by another worker")
	}
	return r, err
}

// conflictStatus reports the status a record was found in by a compare-and-set
// that failed on its status (not on a lease).
func conflictStatus(err error) (store.Status, bool) {
	var ce *store.ConflictError
	if errors.As(err, &ce) && ce.LeasedUntil.IsZero() {
		return ce.Current, true
	}
	return "", false
}

// claimFailed is what a handler answers when its claim failed: a missing
// record makes a poison message (nothing can ever run it), a conflict still
// unresolved after claimSteps an immediate redelivery.
func claimFailed(err error, m queue.Message) error {
	switch {
	case errors.Is(err, store.ErrNotFound):
		return queue.Poison("no record for " + m.Topic + " message " + m.Key)
	case store.IsConflict(err):
		return queue.RetryAfter(0, "record moved concurrently")
	}
	return err
}

// messageTimeout is the timeout of the request a work message carries (its
// live rule's when there is one), or 0 when the message has no envelope.
func (c *Collector) messageTimeout(m queue.Message) time.Duration {
	var msg struct {
		Envelope *struct {
			Rule    string         `json:"rule"`
			Timeout rules.Duration `json:"timeout"`
		} `json:"envelope"`
	}
	if json.Unmarshal(m.Body, &msg) != nil || msg.Envelope == nil {
		return 0
	}
	if c.cfg.Rules != nil {
		if r, ok := c.cfg.Rules.Rule(msg.Envelope.Rule); ok && r.Mode != rules.ModeSync {
			return r.Timeout.D()
		}
	}
	return msg.Envelope.Timeout.D()
}

type permanentError struct{ error }

// execute replays the original request through Envoy with a signed replay header.
func (c *Collector) execute(ctx context.Context, r *store.Record) (*store.Response, error) {
	e := r.Envelope
	ctx, cancel := context.WithTimeout(ctx, e.Timeout.D())
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, e.Method, strings.TrimSuffix(c.cfg.ReplayURL, "/")+e.Path, bytes.NewReader(e.Body))
	if err != nil {
		return nil, &permanentError{fmt.Errorf("building replay request: %w", err)}
	}
	for _, h := range e.Headers {
		req.Header.Add(h[0], h[1])
	}
	req.Host = e.Authority
	req.Header.Set("traceparent", traceParentOf(ctx, e.TraceParent))
	req.Header.Set("x-async-request-id", e.ID)
	req.Header.Set(replay.Header, replay.Sign(c.cfg.ReplaySecret, e.ID, e.Method, e.Path, time.Now()))
	resp, err := c.replay.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, &permanentError{fmt.Errorf("no answer within the rule's timeout of %s", e.Timeout.D())}
		}
		return nil, fmt.Errorf("replaying through %s: %w", c.cfg.ReplayURL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBody+1))
	if err != nil {
		return nil, fmt.Errorf("reading the service's response: %w", err)
	}
	if len(body) > maxResponseBody {
		return nil, &permanentError{fmt.Errorf("response body over %d bytes", maxResponseBody)}
	}
	out := &store.Response{Status: resp.StatusCode, Body: body}
	for k, vs := range resp.Header {
		for _, v := range vs {
			out.Headers = append(out.Headers, [2]string{strings.ToLower(k), v})
		}
	}
	return out, nil
}

// handleDelivery makes one callback attempt: completed | failed → delivering →
// delivered | dead, retried through the queue's delayed redelivery; a
// destination the SSRF guard refuses is dead at once.
func (c *Collector) handleDelivery(ctx context.Context, m queue.Message) error {
	id := m.Key
	lease := c.sender.Timeout + leaseMargin
	status := store.Completed // what the worker left (or failed: claimed alike)
	var r *store.Record
	var err error
	for range claimSteps {
		switch status {
		case store.Completed, store.Failed:
			r, err = c.claim(ctx, id, store.Delivering, lease, store.Completed, store.Failed)
		case store.Delivering:
			// The next attempt, or a redelivery after a crash mid-attempt; a
			// duplicate message waits for the lease instead of calling back twice.
			r, err = c.claim(ctx, id, "", lease, store.Delivering)
		case store.Delivered, store.Dead:
			return nil
		default:
			return queue.RetryAfter(time.Second, "record not executed yet: "+string(status))
		}
		if now, ok := conflictStatus(err); ok {
			status = now
			continue
		}
		break
	}
	if err != nil {
		return claimFailed(err, m)
	}
	log := c.log.With("id", id, "trace_id", r.TraceID, "rule", r.Rule)
	r.Envelope = c.applyRules(r.Envelope)
	attempts := attemptsSinceReplay(r) + 1
	protocol := r.Envelope.Callback.Protocol
	ctx, span := spanFor(ctx, r.Envelope, "asyncmesh.deliver", attribute.String("asyncmesh.protocol", protocol), attribute.Int("asyncmesh.attempt", attempts))
	res := c.sender.Send(ctx, r, attempts)
	outcome := map[delivery.Outcome]string{delivery.Delivered: "delivered", delivery.Retry: "retry", delivery.Gone: "gone", delivery.Refused: "refused"}[res.Outcome]
	c.obs.attempts.WithLabelValues(r.Rule, protocol, outcome).Inc()
	c.obs.attemptSeconds.WithLabelValues(r.Rule, protocol).Observe(res.Attempt.Latency.Seconds())
	span.SetAttributes(attribute.String("asyncmesh.outcome", outcome), attribute.Int("asyncmesh.status_code", res.Attempt.StatusCode))
	var attemptErr error
	if res.Attempt.Error != "" {
		attemptErr = errors.New(res.Attempt.Error)
	}
	endSpan(span, attemptErr)
	// Until the next attempt is due, the record stays leased to this message.
	change := store.Change{From: []store.Status{store.Delivering}, Attempt: &res.Attempt, LeaseUntil: time.Now().Add(res.Wait)}
	switch {
	case res.Outcome == delivery.Delivered:
		change.To, change.LeaseUntil = store.Delivered, time.Time{}
	case res.Outcome == delivery.Gone:
		change.To, change.Note, change.LeaseUntil = store.Dead, "endpoint gone (410)", time.Time{}
	case res.Outcome == delivery.Refused:
		// The SSRF guard or the rule's allowedHosts refused the destination:
		// no retry can change that, and each would be another attempt at it.
		change.To, change.Note, change.LeaseUntil = store.Dead, "callback refused: "+res.Attempt.Error, time.Time{}
	case attempts >= r.Envelope.Retry.MaxAttempts:
		change.To, change.Note, change.LeaseUntil = store.Dead, fmt.Sprintf("gave up after %d attempts", attempts), time.Time{}
	}
	if _, err := c.move(ctx, id, change); err != nil {
		if store.IsConflict(err) {
			return nil // someone else finished it
		}
		return err
	}
	if change.To == "" {
		log.Info("delivery: attempt failed, will retry", "attempt", attempts, "in", res.Wait, "code", res.Attempt.StatusCode, "err", res.Attempt.Error)
		return queue.RetryAfter(res.Wait, res.Attempt.Error)
	}
	log.Info("delivery: finished", "status", change.To, "attempts", attempts, "code", res.Attempt.StatusCode)
	return nil
}
