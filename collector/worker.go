package collector

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"

	"github.com/asyncmesh/asyncmesh/collector/delivery"
	"github.com/asyncmesh/asyncmesh/collector/queue"
	"github.com/asyncmesh/asyncmesh/collector/store"
	"github.com/asyncmesh/asyncmesh/internal/envelope"
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
	timeout, deadline := c.messageTimeout(m)
	status := store.Queued
	if timeout <= 0 { // a message without its envelope (large, or older): read the record
		r, err := c.store.Get(ctx, id)
		if err != nil {
			return claimFailed(err, m)
		}
		status, timeout, deadline = r.Status, c.applyRules(r.Envelope).Timeout.D(), r.Envelope.DeadlineTime()
	}
	// Not before intake has told the filter it was accepted (deadline.go).
	if ok, wait := c.runnable(ctx, id, deadline, time.Now()); !ok {
		return queue.RetryAfter(wait, "intake has not answered the filter yet")
	}
	defer c.decided.forget(id)
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
		// Rare (a duplicate message, or a redelivery after a crash or a
		// broker restart), and the only trace of this message until the
		// lease ends: the queue's delayed redelivery logs nothing.
		wait := time.Until(until) + 50*time.Millisecond
		c.log.Info("claim: record leased; this message waits for the lease", "id", id, "leased_until", until, "in", wait.Round(time.Millisecond).String())
		return nil, queue.RetryAfter(wait, "leased by another worker")
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
// live rule's when there is one) and its intake deadline, or 0 when the
// message has no envelope.
func (c *Collector) messageTimeout(m queue.Message) (time.Duration, time.Time) {
	var msg struct {
		Envelope *struct { // what the claim needs: decoding the body is not
			Rule     string         `json:"rule"`
			Timeout  rules.Duration `json:"timeout"`
			Deadline int64          `json:"deadline"`
		} `json:"envelope"`
	}
	if json.Unmarshal(m.Body, &msg) != nil || msg.Envelope == nil {
		return 0, time.Time{}
	}
	deadline := (&envelope.Envelope{Deadline: msg.Envelope.Deadline}).DeadlineTime()
	if c.cfg.Rules != nil {
		if r, ok := c.cfg.Rules.Rule(msg.Envelope.Rule); ok && r.Mode != rules.ModeSync {
			return r.Timeout.D(), deadline
		}
	}
	return msg.Envelope.Timeout.D(), deadline
}

type permanentError struct{ error }

// replayRefusedError is the filter's refusal of a replay (its 403 with
// replay.RefusedHeader): never the service's answer. It is retried (signed
// anew: a nonce already spent, a secret in rotation or a clock step can pass
// on the next attempt), then the record fails with it.
type replayRefusedError struct{ reason, message string }

func (e *replayRefusedError) Error() string {
	msg := "the filter refused the replay (" + e.reason + ")"
	if e.message != "" {
		msg += ": " + e.message
	}
	return msg
}

// execute replays the original request through Envoy with a signed replay header.
func (c *Collector) execute(ctx context.Context, r *store.Record) (*store.Response, error) {
	e := r.Envelope
	ctx, cancel := context.WithTimeout(ctx, e.Timeout.D())
	defer cancel()
	req, err := replayRequest(ctx, c.cfg.ReplayURL, e.Method, e.Authority, e.Path, e.Body)
	if err != nil {
		return nil, &permanentError{err}
	}
	for _, h := range e.Headers {
		req.Header.Add(h[0], h[1])
	}
	req.Header.Set("traceparent", traceParentOf(ctx, e.TraceParent))
	req.Header.Set("x-async-request-id", e.ID)
	// Signed at each attempt (a fresh time and nonce: the filter spends each
	// signature once) over exactly what is sent: the request-target's bytes,
	// the Host, and the body's digest.
	req.Header.Set(replay.Header, replay.Sign(c.cfg.ReplaySecret, replay.Request{
		ID: e.ID, Method: req.Method, Authority: req.Host, Path: e.Path, BodyDigest: replay.Digest(e.Body),
	}, time.Now()))
	client, done := c.replayClient(e.Path)
	defer done()
	resp, err := client.Do(req)
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
	if reason := resp.Header.Get(replay.RefusedHeader); resp.StatusCode == http.StatusForbidden && reason != "" {
		var refusal struct{ Message string }
		_ = json.Unmarshal(body, &refusal)
		return nil, &replayRefusedError{reason: reason, message: refusal.Message}
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

// replayClient is the client that can carry target to Envoy byte for byte:
// the pooled HTTP/1.1 one, or, for a target with bytes over 0x7f (which
// Envoy accepts in an HTTP/2 caller's :path but refuses in an HTTP/1.1
// request line), an HTTP/2 one without TLS (prior knowledge, which Envoy's
// listeners speak with the default codec_type AUTO). Those are rare, so the
// HTTP/2 client is made for the one replay and closed after it (done).
func (c *Collector) replayClient(target string) (*http.Client, func()) {
	for i := 0; i < len(target); i++ {
		if target[i] >= 0x80 {
			var p http.Protocols
			p.SetUnencryptedHTTP2(true)
			tr := &http.Transport{Protocols: &p}
			return &http.Client{Transport: tr, CheckRedirect: c.replay.CheckRedirect}, tr.CloseIdleConnections
		}
	}
	return c.replay, func() {}
}

// replayRequest builds the replay of (method, authority, target, body)
// through base, sending target as the request-target byte for byte: the
// filter verifies the signature over the bytes it receives, and the service
// must see what the caller sent. net/http would re-escape a parsed path
// ({ } | ^ " spaces and raw UTF-8 become %XX) or refuse it (%zz), so the
// target goes into URL.Opaque, which the client writes as it is — except a
// target starting with "//", which Opaque would turn into a scheme-relative
// URL; that one is sent as an escaped Path when it round-trips exactly, and
// refused otherwise.
func replayRequest(ctx context.Context, base, method, authority, target string, body []byte) (*http.Request, error) {
	u, err := url.Parse(strings.TrimSuffix(base, "/"))
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("replay URL %q: not an absolute URL", base)
	}
	if !strings.HasPrefix(target, "/") {
		return nil, fmt.Errorf("path %q: a replay's request-target must start with /", target)
	}
	if u.Path != "" && u.Path != "/" {
		return nil, fmt.Errorf("replay URL %q: must have no path (the request's own is sent)", base)
	}
	if strings.HasPrefix(target, "//") {
		p, err := url.ParseRequestURI(target)
		if err != nil || p.RequestURI() != target {
			return nil, fmt.Errorf("path %q cannot be sent byte for byte", target)
		}
		u.Path, u.RawPath, u.RawQuery = p.Path, p.RawPath, p.RawQuery
	} else {
		u.Opaque, u.RawQuery = target, ""
	}
	req, err := http.NewRequestWithContext(ctx, method, "", bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("building replay request: %w", err)
	}
	req.URL, req.Host = u, authority
	if authority == "" {
		req.Host = u.Host
	}
	if got := u.RequestURI(); got != target {
		return nil, fmt.Errorf("path %q would be sent as %q", target, got)
	}
	return req, nil
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
