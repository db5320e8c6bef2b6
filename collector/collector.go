// Package collector is the asyncmesh sidecar: intake (POST /v1/intake, called by
// the Wasm filter), the worker that replays accepted requests through Envoy to the
// real service, delivery of callbacks, the outbox relay, and the read API.
//
// Lifecycle decisions (beyond docs/architecture.md):
//   - "completed" means the service answered (any HTTP status, which the callback
//     carries); "failed" means no answer: timeout, or unreachable after retries.
//   - The work and delivery handlers are idempotent by request id: each reads the
//     record and acts by its status, so a redelivered message finishes what a
//     crashed collector started and a late duplicate is acked and skipped.
//   - The webhook-id of a callback is the request id: stable across retries.
//   - Prefer: wait=N (capped at envelope.MaxWait): intake holds its answer up
//     to N seconds; a request completed by then is answered with the service's
//     own response (intake relays it with x-async-status: completed and the
//     filter passes it on). The callback is still sent: the record's lifecycle
//     does not depend on how the caller was answered, and a caller whose
//     connection broke still learns the outcome. Callers dedupe by webhook-id.
//   - Live rules: with a RuleSource (the control plane over ADS), a record is
//     executed and delivered with its rule's timeout, retry policy and
//     callback as they are now, not as they were at intake; a callback the
//     caller chose (x-async-callback*) keeps its URL and protocol, and one chosen
//     by a request parameter (callback.select) takes the live target of the
//     same key. A record
//     whose rule was removed keeps what it was accepted with. The stored
//     envelope is never rewritten.
//   - The sweeper republishes records stuck in a non-terminal status (lease
//     expired, untouched for SweepAge): the safety net when a message was
//     lost to a dead-letter queue. A slow record gets a harmless duplicate.
//   - Leases: a worker leases the record it processes or delivers for the
//     rule's timeout plus a margin (Change.Claim/LeaseUntil). A duplicate work
//     or delivery message (a republish by the relay, a redelivery by the
//     broker) waits for the lease instead of running the request or the
//     callback a second time at once; a crashed worker's lease expires and its
//     redelivered message takes over.
//   - Outbox: a store that can publish on the collector's own queue in the
//     same commit (embedded, whose queue is a table of the same database)
//     makes intake one write — the record is created queued, with its work
//     message — and the end of processing one write with its delivery
//     message. Other stores write, then publish, and the relay and the
//     handlers cover a crash in between.
package collector

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/delivery"
	"github.com/asyncmesh/asyncmesh/collector/external"
	"github.com/asyncmesh/asyncmesh/collector/queue"
	"github.com/asyncmesh/asyncmesh/collector/store"
	"github.com/asyncmesh/asyncmesh/internal/envelope"
	"github.com/asyncmesh/asyncmesh/internal/retry"
	"github.com/asyncmesh/asyncmesh/internal/rules"
	"github.com/asyncmesh/asyncmesh/internal/webhook"
)

// Config of a collector.
type Config struct {
	// ReplayURL is the Envoy listener through which accepted requests are
	// replayed to the service (for example http://127.0.0.1:10000).
	ReplayURL string
	// ReplaySecret signs replays; the filter verifies it.
	ReplaySecret []byte
	// EndpointDisableAfter is how many consecutive failed attempts, across
	// the collectors of a store, over at least EndpointFailingFor, disable
	// a callback endpoint (its deliveries are then held); 0: 100; negative:
	// never (410 Gone still disables at once). EndpointFailingFor: 0 is
	// 10 minutes, negative none (the count alone).
	EndpointDisableAfter int
	EndpointFailingFor   time.Duration
	// EndpointEventsURL, when set, receives the endpoint events (disabled,
	// enabled) as signed JSON POSTs, signed with EndpointEventsSecrets.
	EndpointEventsURL     string
	EndpointEventsSecrets []webhook.Secret
	// IntakeSecrets are the secrets an intake signature (replay.IntakeHeader,
	// the filter vouching for the caller it recognized) may be made with:
	// the filter's current replay secret and, during a rotation, the
	// previous one (default: ReplaySecret alone).
	IntakeSecrets [][]byte
	// Secrets resolves callback secret references.
	Secrets delivery.Secrets
	// Workers and DeliveryWorkers bound concurrency (defaults 16 and 64:
	// executions load the service, callbacks mostly wait on receivers):
	// Workers requests execute at once, and DeliveryWorkers callbacks are
	// in flight at once, first attempts (made by the worker that executed
	// the request) and retries alike. A
	// negative Workers makes a collector that does not execute, a negative
	// DeliveryWorkers one that does not deliver: another one, on the same
	// store and queue, does.
	Workers, DeliveryWorkers int
	// RelayInterval is how often the outbox relay looks for unpublished
	// records (default 1s); RelayAge is how old they must be (default 2s).
	// Rounds that find nothing double the wait up to RelayIdle (default 1m);
	// a publish that failed here brings the next round to RelayAge after it.
	RelayInterval, RelayAge, RelayIdle time.Duration
	// SweepInterval is how often the sweeper looks for records stuck in a
	// non-terminal status (default 1m); SweepAge is how long a record must
	// have been untouched, its lease expired, to count as stuck (default 15m).
	// Once this collector has moved no record for SweepAge + SweepInterval,
	// rounds that find nothing double the wait up to SweepIdle (default 10m,
	// at most SweepAge).
	SweepInterval, SweepAge, SweepIdle time.Duration
	// PublishTimeout bounds intake's wait for the queue's confirm (default 2s).
	PublishTimeout time.Duration
	// Rules, when set, are the live rules from the control plane: the
	// callback, retry and timeout of a record's rule as they are now apply to
	// its execution and delivery (see applyRules). Nil: the envelope's copy.
	Rules RuleSource
	// APIURL is the base URL of this API as others reach it; queue messages
	// carry statusUrl = APIURL + /v1/requests/{id} (relative when empty).
	APIURL string
	// AdminToken is the bearer token of the operator endpoints (search,
	// replay, metrics, reading any request); empty turns them off.
	AdminToken []byte
	// MaxWaiters bounds the long-polls (?wait=) and event streams this
	// collector holds at once (default 1024); past it they answer 429.
	MaxWaiters int
	// SeparateOperator keeps the operator endpoints (search, replay,
	// metrics) off Handler: they are served by OperatorHandler alone, on a
	// listener of their own.
	SeparateOperator bool
	// MaxStreams bounds the operator's streams (GET /v1/stream) this
	// collector serves at once (default 16); past it they answer 503. Each
	// polls the store once a second.
	MaxStreams int
	// NodeID is this collector's node id (its sidecar's), shown by GET
	// /v1/rules.
	NodeID string
	// ControlPlaneURL is the base URL of the control plane's metrics
	// listener, whose GET /v1/nodes lists the rules version each node was
	// served and acknowledged (GET /v1/rules passes it on); empty: not
	// configured.
	ControlPlaneURL string
	// ControlPlaneToken is the bearer token the control plane's GET
	// /v1/nodes asks for (controlplane serve -operator-token-env).
	ControlPlaneToken []byte
	Logger            *slog.Logger
}

// RuleSource gives the current rule of a name (collector/xdsrules).
type RuleSource interface {
	Rule(name string) (*rules.Rule, bool)
	// Caller returns the current declaration of a caller (rules.Caller).
	Caller(name string) (*rules.Caller, bool)
}

// Collector is one running collector.
type Collector struct {
	cfg    Config
	store  store.Store
	queue  queue.Queue
	outbox store.Outbox     // nil unless the store publishes on queue
	idem   store.Idempotent // nil unless the store keeps Idempotency-Keys
	sender *delivery.Sender
	nodes  *external.Client
	obs    *metrics
	log    *slog.Logger
	replay *http.Client
	notify *notifier
	// stopping is closed when Run's context ends: long-polls then answer at once
	// so that the API server can shut down.
	stopping     chan struct{}
	stoppingOnce sync.Once
	waiters      chan struct{} // a place per long-poll or event stream (MaxWaiters)
	streams      chan struct{} // a place per operator stream (MaxStreams)
	controlPlane *http.Client
	decided      *decisions // ids intake accepted before the filter's deadline
	// execSlots and deliverySlots hold a place per execution (Workers) and
	// per callback attempt in flight (DeliveryWorkers).
	execSlots, deliverySlots chan struct{}
	relayWake                chan struct{} // a publish failed: the relay has work (wakeRelay)
	lastMove                 atomic.Int64  // when this collector last created or moved a record (Unix ns)
	health                   *health       // endpoint health (health.go)
	limits                   *limiter      // endpoint rate and concurrency limits (limits.go)
	endpointEvents           *endpointEvents
}

// New returns a collector over st and q.
func New(cfg Config, st store.Store, q queue.Queue) (*Collector, error) {
	if cfg.ReplayURL == "" {
		return nil, errors.New("collector: ReplayURL is required")
	}
	if len(cfg.ReplaySecret) == 0 {
		return nil, errors.New("collector: ReplaySecret is required")
	}
	if cfg.Secrets == nil {
		return nil, errors.New("collector: Secrets is required")
	}
	if len(cfg.IntakeSecrets) == 0 {
		cfg.IntakeSecrets = [][]byte{cfg.ReplaySecret}
	}
	defD := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	if cfg.Workers == 0 {
		cfg.Workers = 16
	}
	if cfg.DeliveryWorkers == 0 {
		cfg.DeliveryWorkers = 64
	}
	if cfg.MaxWaiters <= 0 {
		cfg.MaxWaiters = 1024
	}
	if cfg.MaxStreams <= 0 {
		cfg.MaxStreams = 16
	}
	defD(&cfg.RelayInterval, time.Second)
	defD(&cfg.RelayAge, 2*time.Second)
	defD(&cfg.RelayIdle, time.Minute)
	cfg.RelayIdle = max(cfg.RelayIdle, cfg.RelayInterval)
	defD(&cfg.SweepInterval, time.Minute)
	defD(&cfg.SweepAge, 15*time.Minute)
	defD(&cfg.SweepIdle, 10*time.Minute)
	cfg.SweepIdle = max(min(cfg.SweepIdle, cfg.SweepAge), cfg.SweepInterval)
	defD(&cfg.PublishTimeout, 2*time.Second)
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	c := &Collector{
		cfg: cfg, store: st, queue: q, outbox: store.OutboxFor(st, q), log: cfg.Logger,
		idem:   idempotentStore(st),
		sender: delivery.NewSender(cfg.Secrets, 10*time.Second),
		nodes:  external.New(cfg.Secrets, 10*time.Second),
		obs:    newMetrics(),
		replay: &http.Client{
			Transport:     &http.Transport{MaxIdleConnsPerHost: 64, IdleConnTimeout: 90 * time.Second},
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		notify:   newNotifier(),
		stopping: make(chan struct{}),
		waiters:  make(chan struct{}, cfg.MaxWaiters),
		streams:  make(chan struct{}, cfg.MaxStreams),
		controlPlane: &http.Client{Timeout: 5 * time.Second,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
		decided:   newDecisions(),
		execSlots: make(chan struct{}, max(cfg.Workers, 1)), deliverySlots: make(chan struct{}, max(cfg.DeliveryWorkers, 1)),
		relayWake: make(chan struct{}, 1),
	}
	if cfg.EndpointDisableAfter == 0 {
		cfg.EndpointDisableAfter = 100
	}
	c.endpointEvents = &endpointEvents{url: cfg.EndpointEventsURL, secrets: cfg.EndpointEventsSecrets, log: cfg.Logger,
		client: &http.Client{Timeout: 10 * time.Second}, slots: make(chan struct{}, maxEventsInFlight), stop: c.stopping}
	switch {
	case cfg.EndpointFailingFor == 0:
		cfg.EndpointFailingFor = 10 * time.Minute
	case cfg.EndpointFailingFor < 0:
		cfg.EndpointFailingFor = 0
	}
	c.health = newHealth(st, cfg.EndpointDisableAfter, cfg.EndpointFailingFor, cfg.Logger, c.obs, c.endpointEvents)
	c.health.resume = c.resumeHeld
	c.limits = newLimiter(st, cfg.Logger, c.obs.reg)
	// A quarter of the delivery workers at most wait for an endpoint's
	// token or place (limits.go, hold): the rest serve other endpoints.
	c.limits.maxHolders = max(1, cfg.DeliveryWorkers/4)
	c.lastMove.Store(time.Now().UnixNano()) // records a previous run left: swept at SweepInterval for a while
	return c, nil
}

// Run consumes work and deliveries and runs the outbox relay until ctx ends,
// then lets in-flight handlers finish and returns. Serve the HTTP API with
// Handler beside it.
func (c *Collector) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	run := func(name string, f func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(ctx); err != nil {
				errs <- errors.New(name + ": " + err.Error())
			}
		}()
	}
	if c.cfg.Workers > 0 {
		// A work message is held through its execution and its first
		// callback, each within its own bound (execSlots, deliverySlots):
		// enough handlers for both at once.
		handlers := c.cfg.Workers + max(c.cfg.DeliveryWorkers, 0)
		run("work consumer", func(ctx context.Context) error {
			return c.queue.Consume(ctx, queue.TopicWork, handlers, c.handleWork)
		})
	}
	if c.cfg.DeliveryWorkers > 0 {
		run("delivery consumer", func(ctx context.Context) error {
			return c.queue.Consume(ctx, queue.TopicDelivery, c.cfg.DeliveryWorkers, c.handleDelivery)
		})
	}
	run("outbox relay", c.relay)
	run("sweeper", c.sweep)
	run("endpoint health", c.health.run)
	// The limits' heartbeats outlive the handlers: a callback still in
	// flight keeps its place counted until it ends.
	limitsCtx, stopLimits := context.WithCancel(context.WithoutCancel(ctx))
	limitsDone := make(chan struct{})
	go func() { defer close(limitsDone); c.limits.run(limitsCtx) }()
	<-ctx.Done()
	c.stoppingOnce.Do(func() { close(c.stopping) })
	wg.Wait()
	stopLimits()
	<-limitsDone
	c.endpointEvents.wait()
	c.sender.Close()
	close(errs)
	var all []error
	for err := range errs {
		all = append(all, err)
	}
	return errors.Join(all...)
}

// move applies a change and wakes long-pollers of the record.
func (c *Collector) move(ctx context.Context, id string, ch store.Change) (*store.Record, error) {
	r, err := c.store.Transition(ctx, id, ch)
	if err == nil {
		c.moved(r, ch)
	}
	return r, err
}

func (c *Collector) moved(r *store.Record, ch store.Change) {
	c.lastMove.Store(time.Now().UnixNano())
	c.obs.transitioned(r, ch) // before waking waiters, who may read the metrics
	c.notify.broadcast(r.ID)
}

// advance applies ch to record r and publishes the message its events say
// follows (Change.Next): in one commit with an outbox, else after the write
// (the sweeper republishes a record whose publish was lost). It returns
// the record as written; a conflict is returned as it is, with nothing
// published: whoever moved the record published its message.
func (c *Collector) advance(ctx context.Context, r *store.Record, ch store.Change) (*store.Record, error) {
	got, err := c.advanceHeld(ctx, r, ch)
	var lost *unpublishedError
	if errors.As(err, &lost) {
		c.log.Warn("publishing failed; the sweeper will republish", "id", r.ID, "trace_id", r.TraceID, "topic", lost.topic, "status", got.Status, "err", lost.err)
		return got, nil
	}
	return got, err
}

// unpublishedError is advanceHeld's: the change was written, the message
// that follows it was not published.
type unpublishedError struct {
	topic string
	err   error
}

func (e *unpublishedError) Error() string {
	return "written, but its " + e.topic + " message was not published: " + e.err.Error()
}

// advanceHeld is advance for a handler of a queue message: when the
// message that follows the change could not be published after the write
// (no outbox), it returns the record as written with an *unpublishedError,
// which the handler returns, so that the queue redelivers the message it
// handles instead of taking its ack — the redelivered one follows the
// record's status (drive) as the lost one would have. Acked, it would leave
// the record with no message at all (delivering after a failed attempt,
// completed after a result written alone) until the sweeper, SweepAge
// later.
func (c *Collector) advanceHeld(ctx context.Context, r *store.Record, ch store.Change) (*store.Record, error) {
	topic := ch.Next()
	if topic == "" {
		return c.move(ctx, r.ID, ch)
	}
	if c.outbox != nil {
		m, err := c.message(topic, r)
		if err != nil {
			return nil, err
		}
		got, err := c.outbox.TransitionPublish(ctx, r.ID, ch, &m)
		if err == nil {
			c.moved(got, ch)
		}
		return got, err
	}
	got, err := c.move(ctx, r.ID, ch)
	if err != nil {
		return nil, err
	}
	if err := c.publish(ctx, topic, got); err != nil {
		return got, &unpublishedError{topic: topic, err: err}
	}
	return got, nil
}

// accept persists a new record and publishes its work message, in one of
// three ways:
//   - with an outbox, both in one commit: r is created queued;
//   - otherwise, when the filter set a deadline, the message first — kept
//     for this collector's workers until the deadline has passed
//     (Message.Local), when others may run it (deadline.go) — then r,
//     created queued: one write. The message may reach a worker before r
//     exists: the worker waits for intake's decision, and drops a message
//     whose record intake did not create. A publish that fails falls back
//     to the last way, for the relay;
//   - otherwise (or with an Idempotency-Key) r is created persisted, then published; owed then says that
//     the Enqueue write (queued: the message is out, so the relay leaves r
//     alone) is still to be made, by markQueued, which intake makes after
//     its answer. A failed publish leaves r persisted for the relay (logged,
//     not returned: r is durable).
//
// With key (an Idempotency-Key), r is created only if no live request
// holds the key (store.Idempotent): otherwise accept returns a
// *store.KeyHeldError and wrote nothing (a message it published first is
// dropped by its worker: intake refuses r).
func (c *Collector) accept(ctx context.Context, r *store.Record, key *keyClaim) (owed bool, err error) {
	m, err := c.message(queue.TopicWork, r)
	if err != nil {
		return false, err
	}
	deadline := r.Envelope.DeadlineTime()
	enqueue := store.Change{Event: store.Enqueue, At: r.CreatedAt}
	switch {
	case c.outbox != nil:
		if err := enqueue.Apply(r); err != nil {
			return false, err
		}
		if err := c.create(ctx, r, key, &m); err != nil {
			return false, err
		}
	case !deadline.IsZero() && key == nil:
		// (A keyed record is created before its message is published: a
		// retry whose key is held must publish nothing.)
		m.Local = time.Until(deadline.Add(workerGrace))
		if err := c.send(ctx, m); err != nil {
			c.log.Warn("intake: publish failed; the record is created persisted, for the outbox relay", "id", r.ID, "trace_id", r.TraceID, "err", err)
			return c.acceptPersisted(ctx, r, key, false)
		}
		if err := enqueue.Apply(r); err != nil {
			return false, err
		}
		if err := c.create(ctx, r, key, nil); err != nil {
			return false, err
		}
	default:
		return c.acceptPersisted(ctx, r, key, true)
	}
	c.lastMove.Store(time.Now().UnixNano())
	c.obs.transitioned(r, enqueue)
	return false, nil
}

// acceptPersisted creates r persisted and, with publish, publishes it (see
// accept).
func (c *Collector) acceptPersisted(ctx context.Context, r *store.Record, key *keyClaim, publish bool) (owed bool, err error) {
	if err := c.create(ctx, r, key, nil); err != nil {
		return false, err
	}
	c.lastMove.Store(time.Now().UnixNano())
	if !publish {
		c.wakeRelay()
		return false, nil
	}
	if err := c.publish(ctx, queue.TopicWork, r); err != nil {
		c.log.Warn("intake: publish failed; the outbox relay will publish it", "id", r.ID, "trace_id", r.TraceID, "err", err)
		c.wakeRelay()
		return false, nil
	}
	return true, nil
}

// markQueued records that r's work message is out (persisted → queued). A
// conflict means a worker got there first; a failure leaves r for the
// relay, which publishes it again (a duplicate the handlers skip). It runs
// apart from ctx's cancellation: the filter may hang up once answered.
func (c *Collector) markQueued(ctx context.Context, r *store.Record) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.PublishTimeout)
	defer cancel()
	if _, err := c.move(ctx, r.ID, store.Change{Event: store.Enqueue}); err != nil && !store.IsConflict(err) {
		c.log.Warn("marking a published record queued failed; the relay will publish it again", "id", r.ID, "trace_id", r.TraceID, "err", err)
	}
}

// relay publishes records that intake persisted but could not publish (queue
// down, no confirm, crash between the two), oldest first, at most 200 a round.
//
// It is a safety net, and idle most of the time (with an outbox, intake
// never leaves a record persisted): rounds come every RelayInterval after
// one that found records, and the wait doubles up to RelayIdle while rounds
// find nothing. A publish that fails in this collector wakes it
// (wakeRelay): the next round comes RelayAge later, when the record is old
// enough to be found. While the queue refuses, rounds back off from
// RelayInterval to 30s, and wakeups do not shorten that.
func (c *Collector) relay(ctx context.Context) error {
	waits := c.relayWaits()
	wait := c.cfg.RelayInterval
	t := time.NewTimer(wait)
	defer t.Stop()
	next := time.Now().Add(wait)
	failing := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-c.relayWake:
			if at := time.Now().Add(c.cfg.RelayAge); !failing && at.Before(next) {
				t.Reset(time.Until(at))
				next = at
				waits.idle.Reset()
			}
			continue
		case <-t.C:
		}
		c.decided.prune(time.Now())
		n, err := c.relayRound(ctx)
		wait = waits.next(n, err)
		if err != nil && ctx.Err() == nil {
			c.log.Warn("outbox relay: will retry", "in", wait, "err", err)
		}
		failing = err != nil
		t.Reset(wait)
		next = time.Now().Add(wait)
	}
}

// relaySchedule is the relay's waits: RelayInterval after a round that
// found records; doubling from there up to RelayIdle while rounds find
// nothing (idle polling: no jitter); after a failed round, exponential
// backoff with full jitter up to 30 s (internal/retry).
type relaySchedule struct {
	idle, fail retry.Backoff
	interval   time.Duration
}

func (c *Collector) relayWaits() *relaySchedule {
	from := 2 * c.cfg.RelayInterval
	return &relaySchedule{
		idle:     retry.Backoff{Policy: retry.Exponential{Initial: from, Max: c.cfg.RelayIdle, NoJitter: true}},
		fail:     retry.Backoff{Policy: retry.Exponential{Initial: from, Max: 30 * time.Second}},
		interval: c.cfg.RelayInterval,
	}
}

// next is the wait before the next round, after one that found n records
// (err: failed).
func (w *relaySchedule) next(n int, err error) time.Duration {
	if err != nil {
		return w.fail.Next()
	}
	w.fail.Reset()
	if n > 0 {
		w.idle.Reset()
		return w.interval
	}
	return w.idle.Next()
}

// wakeRelay tells the relay that a record was left persisted.
func (c *Collector) wakeRelay() {
	select {
	case c.relayWake <- struct{}{}:
	default:
	}
}

// relayRound publishes what it finds and says how many it found.
func (c *Collector) relayRound(ctx context.Context) (int, error) {
	recs, err := c.store.Stale(ctx, store.Persisted, c.store.Now().Add(-c.cfg.RelayAge), 200)
	if err != nil {
		return 0, fmt.Errorf("listing persisted records: %w", err)
	}
	for _, r := range recs {
		if err := c.publish(ctx, queue.TopicWork, r); err != nil {
			return len(recs), fmt.Errorf("publishing %s (trace %s): %w", r.ID, r.TraceID, err)
		}
		c.markQueued(ctx, r)
		c.log.Info("outbox relay: published", "id", r.ID, "trace_id", r.TraceID)
	}
	return len(recs), nil
}

// sweep republishes the message of records stuck in a non-terminal status:
// their message was lost (dead-lettered as poison, or by the broker's
// delivery limit, or dropped by an operator). It is the safety net behind
// "no accepted request is lost"; handlers are idempotent, so a record that
// was only slow gets a harmless duplicate.
//
// A record can only be found SweepAge after its last change, so rounds come
// every SweepInterval until this collector has moved no record for SweepAge
// + SweepInterval (every record it moved has been looked at once stuck,
// and those a previous run left, from its start); then, while rounds find
// nothing, the wait doubles up to SweepIdle, for records other collectors
// on the same store leave stuck. SweepIdle ≤ SweepAge: a record moved while
// the sweeper waits long is not due before the next round.
func (c *Collector) sweep(ctx context.Context) error {
	wait := c.cfg.SweepInterval
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		now := time.Now()
		n, err := c.sweepOnce(ctx, c.store.Now())
		if err != nil && ctx.Err() == nil {
			c.log.Warn("sweeper: round failed", "err", err)
		} else if n > 0 {
			c.log.Warn("sweeper: republished stuck records", "count", n)
		}
		wait = c.sweepWait(wait, n, err, now, time.Unix(0, c.lastMove.Load()))
		t.Reset(wait)
	}
}

// sweepWait is the wait before the next sweep, after one at now that
// waited wait and found n records (err: failed), when this collector last
// created or moved a record at moved.
func (c *Collector) sweepWait(wait time.Duration, n int, err error, now, moved time.Time) time.Duration {
	if n > 0 || err != nil || now.Sub(moved) < c.cfg.SweepAge+c.cfg.SweepInterval {
		return c.cfg.SweepInterval
	}
	return min(2*wait, c.cfg.SweepIdle)
}

// sweepOnce republishes, at most 200 per status, the records untouched since
// now-SweepAge (the store's clock) whose lease has expired. A queued record
// is stuck only once its rule's timeout has passed on top: its worker holds
// the work message, not a lease, while it executes.
func (c *Collector) sweepOnce(ctx context.Context, now time.Time) (int, error) {
	topics := map[store.Status]string{
		store.Queued: queue.TopicWork, store.Processing: queue.TopicWork,
		store.Completed: queue.TopicDelivery, store.Failed: queue.TopicDelivery, store.Delivering: queue.TopicDelivery,
	}
	n := 0
	for _, st := range []store.Status{store.Queued, store.Processing, store.Completed, store.Failed, store.Delivering} {
		recs, err := c.store.Stale(ctx, st, now.Add(-c.cfg.SweepAge), 200)
		if err != nil {
			return n, fmt.Errorf("listing %s records: %w", st, err)
		}
		for _, r := range recs {
			if now.Before(r.LeaseUntil) {
				continue // a worker holds it, or its next delivery attempt is scheduled
			}
			if st == store.Queued && r.Envelope != nil && now.Before(r.UpdatedAt.Add(c.cfg.SweepAge+c.applyRules(r.Envelope).Timeout.D())) {
				continue // it may be executing
			}
			if err := c.publish(ctx, topics[st], r); err != nil {
				return n, fmt.Errorf("republishing %s: %w", r.ID, err)
			}
			c.log.Warn("sweeper: republished a stuck record", "id", r.ID, "trace_id", r.TraceID, "status", st, "updated_at", r.UpdatedAt)
			n++
		}
	}
	return n, nil
}

// notifier wakes long-polls when a record changes.
type notifier struct {
	mu      sync.Mutex
	waiters map[string][]chan struct{}
	any     chan struct{} // closed at the next change of any record (waitAny)
}

// waitAny returns a channel closed at the next change of any record: the
// operator's streams wake on this collector's own changes at once (they
// poll the store for the others').
func (n *notifier) waitAny() <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.any == nil {
		n.any = make(chan struct{})
	}
	return n.any
}

func newNotifier() *notifier { return &notifier{waiters: map[string][]chan struct{}{}} }

// wait returns a channel closed at the next change of id.
func (n *notifier) wait(id string) (<-chan struct{}, func()) {
	ch := make(chan struct{})
	n.mu.Lock()
	n.waiters[id] = append(n.waiters[id], ch)
	n.mu.Unlock()
	return ch, func() {
		n.mu.Lock()
		defer n.mu.Unlock()
		ws := n.waiters[id]
		for i, w := range ws {
			if w == ch {
				ws = append(ws[:i], ws[i+1:]...)
				break
			}
		}
		if len(ws) == 0 {
			delete(n.waiters, id)
		} else {
			n.waiters[id] = ws
		}
	}
}

func (n *notifier) broadcast(id string) {
	n.mu.Lock()
	ws := n.waiters[id]
	delete(n.waiters, id)
	if n.any != nil {
		close(n.any)
		n.any = nil
	}
	n.mu.Unlock()
	for _, ch := range ws {
		close(ch)
	}
}

// applyRules returns e with the live rule's policy (see the package doc).
//
// A callback the caller chose keeps its URL and protocol but borrows nothing
// from the live rule (rules.Callback.ForCaller): no broker credentials, and
// the private allowances only for a host on the live rule's
// callback.allowedHosts — so a rule change cannot re-grant them, and a host
// the operator removes from the list is refused from the next attempt on. A
// rule that no longer lets callers choose gives them no allowance at all.
// A rule without a URL of its own can only be delivered to the caller's, so
// such a callback is treated as the caller's whatever the envelope says. The
// delivery path applies the same again (delivery.GuardFor).
func (c *Collector) applyRules(e *envelope.Envelope) *envelope.Envelope {
	if c.cfg.Rules == nil || e == nil {
		return e
	}
	r, ok := c.cfg.Rules.Rule(e.Rule)
	if !ok || r.Mode == rules.ModeSync {
		return e
	}
	cp := *e
	cp.Timeout, cp.Retry, cp.Target = r.Timeout, r.Retry, nil
	if r.Target.External() {
		cp.Target = r.Target
	}
	cb := r.Callback
	switch {
	case e.CallbackFromCaller || (cb.URL == "" && cb.Select == nil):
		if cb.Select != nil { // the rule now selects: sign as the request was accepted
			cb = e.Callback
		}
		cb.URL, cb.Protocol = e.Callback.URL, e.Callback.Protocol
		if !r.Callback.AllowOverride {
			cb.AllowedHosts, cb.AllowPrivate, cb.AllowNetworks = nil, false, nil
		}
		cb = cb.ForCaller()
		cp.CallbackFromCaller = true
	case cb.Select != nil:
		if t, ok := cb.Select.Targets[e.CallbackTarget]; ok {
			cb = t
		} else {
			cb = e.Callback // the target is gone from the rule: keep the request's
		}
	}
	if e.Caller != "" {
		// The caller's own signing, auth and key, as declared now: a
		// rotation or a revoked token applies from the next attempt. A
		// caller no longer declared lends its requests nothing.
		caller, _ := c.cfg.Rules.Caller(e.Caller)
		cb = cb.WithCaller(caller)
	}
	cp.Callback = cb
	return &cp
}
