// Package rabbitmq is the RabbitMQ queue backend of the collector
// (github.com/rabbitmq/amqp091-go): publisher confirms, durable quorum queues,
// delayed retry through TTL queues that dead-letter back, a dead-letter queue,
// manual acks and automatic reconnection.
//
// # Topology
//
// Declared at start for the configured topics, on first use for any other,
// and again after every reconnect. P is the prefix (default "asyncmesh"), T a
// topic ("work", "delivery"), N a delay in milliseconds.
//
//	publish ──▶ [P] direct ──T──▶ (P.T) quorum, manual ack ──▶ consumer
//	                 ▲                 │ x-delivery-limit exceeded (crash loops)
//	                 │                 ▼
//	                 │            [P.dead] direct ──T──▶ (P.T.dead) quorum
//	                 │                 ▲
//	 TTL expired,    │                 └── consumer: Poison, or MaxDeliveries
//	 dead-lettered   │                     plain errors (x-asyncmesh-reason)
//	 back to T       │
//	(P.T.delay.N) ◀──N── [P.delay] direct ◀── consumer: RetryAfter(d)
//	 quorum, x-message-ttl=N
//
// With Config.Instance I, a local queue per topic takes the messages
// published with Message.Local, and I's consumers of T read it beside P.T:
//
//	publish, Local ──▶ [P] ──T.local.I──▶ (P.T.local.I) quorum ──▶ I's consumers
//	                                          │ per-message TTL = Local expired
//	                                          ▼ (dead-lettered at least once)
//	                                     [P] ──T──▶ (P.T): any consumer
//
// A local queue whose instance is gone expires after localExpires unused;
// its messages have moved on long before (their TTL is seconds).
//
// Every queue is a durable quorum queue. Dead-lettering out of them is
// at-least-once (x-dead-letter-strategy=at-least-once, x-overflow=
// reject-publish), so a message is never dropped between two queues.
//
// # Delays
//
// RetryAfter(d) publishes a copy (confirmed) to the largest delay queue not
// longer than d, with the due time in x-asyncmesh-due, then acks the original.
// When the copy comes back early (d was not a bucket) it goes round again
// without running the handler; delays below the smallest bucket round up to
// it. A crash between the confirm and the ack duplicates the message, which
// the collector's handlers absorb (idempotent by request id, leases).
//
// # Deliveries
//
// Message.Deliveries = x-asyncmesh-deliveries (handler runs before this
// copy was republished, not counting those answered with queue.Wait) +
// x-delivery-count (broker redeliveries after a consumer was lost) + 1.
//
// # Faults
//
// One connection. On its loss (or a publishing channel closed by the broker)
// it reconnects with exponential backoff and full jitter, re-declares and the
// consumers resume. Publish fails fast while disconnected: intake then leaves
// the record persisted and the collector's outbox relay publishes it later.
// A confirm that does not come, a nack, a channel closed before the confirm,
// or a basic.return (unroutable) is an error: nothing is reported published
// that the broker did not take.
//
// # Broker setting: dead_letter_worker_publisher_confirm_timeout
//
// A delayed message comes back through the broker's at-least-once
// dead-letter worker, which retries a message it could not forward only
// after rabbit's dead_letter_worker_publisher_confirm_timeout (3 minutes by
// default). When a node restarts, a message whose delay expired while it was
// down is handed to that worker at boot, and RabbitMQ (3.10) may do so
// before it has recovered its exchanges: it logs "Cannot forward any
// dead-letter messages from source quorum queue … does not exist" and the
// message comes back 3 minutes late. Not lost, but a chaos run saw its
// record stuck in delivering past its one-minute wait; it is also the likely
// cause of the 142 callbacks TestRabbitMQRestartUnderLoad once missed, all
// of whose messages had gone through a delay bucket across the restart.
// Set it to a few seconds in advanced.config:
//
//	[{rabbit, [{dead_letter_worker_publisher_confirm_timeout, 5000}]}].
//
// as scripts/start-rabbitmq.sh does. The worker then also re-forwards a
// message whose confirm takes longer than that: a duplicate, which the
// collector's handlers absorb. [e2e TestKilledMidCallbackIsCalledBackAgain]
package rabbitmq

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/asyncmesh/asyncmesh/internal/retry"
)

// Config of the queue.
type Config struct {
	// URL is the broker, amqp://user:pass@host:port/vhost, or several,
	// comma-separated (the nodes of a cluster): each connection attempt
	// tries them in turn, from the one that last connected.
	URL string
	// Prefix names the exchanges and queues (default "asyncmesh").
	Prefix string
	// Topics are declared at start (others on first use).
	Topics []string
	// Prefetch bounds unacked messages per consumer (default: its workers).
	Prefetch int
	// DeliveryLimit is the quorum queues' x-delivery-limit: a message whose
	// consumer is lost that often goes to the dead letters (default 20).
	DeliveryLimit int
	// ReconnectMin and ReconnectMax bound the reconnect backoff (100ms, 10s).
	ReconnectMin, ReconnectMax time.Duration
	// Instance names this process among those that share the prefix (a pod's
	// name): it gets a local queue per topic for the messages published
	// with Message.Local. Empty: none, and Local is ignored.
	Instance string
	Logger   *slog.Logger
}

// Delay buckets (milliseconds), one TTL queue per topic each.
var buckets = []int64{250, 1000, 5000, 15000, 60000, 300000, 900000, 3600000}

// Headers set on messages.
const (
	hdrTraceID    = "x-asyncmesh-trace-id"
	hdrPublishID  = "x-asyncmesh-publish-id"
	hdrDeliveries = "x-asyncmesh-deliveries"
	hdrDue        = "x-asyncmesh-due" // unix milliseconds
	hdrReason     = "x-asyncmesh-reason"
	hdrDeadAt     = "x-asyncmesh-dead-at" // unix milliseconds
)

// ErrUnavailable is returned while the broker is not connected.
var ErrUnavailable = errors.New("rabbitmq: not connected to the broker")

// Queue is a queue.Queue on RabbitMQ.
type Queue struct {
	cfg  Config
	urls []string // cfg.URL's nodes
	next int      // the index in urls to dial first (the last that connected); run's goroutine only
	log  *slog.Logger

	mu       sync.Mutex
	conn     *amqp.Connection
	pub      *amqp.Channel
	returns  chan amqp.Return
	returned map[string]bool // publish ids the broker returned as unroutable
	ready    chan struct{}   // closed while connected
	declared map[string]bool // topics declared on this connection
	topics   map[string]bool // every topic seen, re-declared on reconnect
	pubSeq   uint64

	closing chan struct{}
	done    chan struct{}
}

// Open validates cfg and starts connecting. It waits up to ctx for the first
// connection: an authentication or configuration error is returned; a broker
// that is not reachable yet is not an error (the queue keeps trying, and
// Publish answers ErrUnavailable meanwhile).
func Open(ctx context.Context, cfg Config) (*Queue, error) {
	var urls []string
	for _, raw := range strings.Split(cfg.URL, ",") {
		raw = strings.TrimSpace(raw)
		u, err := url.Parse(raw)
		if err != nil || (u.Scheme != "amqp" && u.Scheme != "amqps") || u.Host == "" {
			return nil, fmt.Errorf("rabbitmq: url: want amqp://user:pass@host:port/vhost[,amqp://…], got %q", Redact(raw))
		}
		urls = append(urls, raw)
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "asyncmesh"
	}
	if cfg.DeliveryLimit <= 0 {
		cfg.DeliveryLimit = 20
	}
	if cfg.ReconnectMin <= 0 {
		cfg.ReconnectMin = 100 * time.Millisecond
	}
	if cfg.ReconnectMax <= 0 {
		cfg.ReconnectMax = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	q := &Queue{
		cfg: cfg, urls: urls, log: cfg.Logger.With("queue", "rabbitmq"),
		ready: make(chan struct{}), declared: map[string]bool{}, topics: map[string]bool{},
		returned: map[string]bool{}, closing: make(chan struct{}), done: make(chan struct{}),
	}
	for _, t := range cfg.Topics {
		q.topics[t] = true
	}
	first := make(chan error, 1)
	go q.run(first)
	select {
	case err := <-first:
		if err != nil && isFatal(err) {
			q.Close()
			return nil, err
		}
		if err != nil {
			q.log.Warn("rabbitmq: broker not reachable yet; retrying in the background", "err", err)
		}
	case <-ctx.Done():
		q.log.Warn("rabbitmq: broker not connected yet; retrying in the background")
	}
	return q, nil
}

// isFatal reports errors that retrying will not fix.
func isFatal(err error) bool {
	var ae *amqp.Error
	if errors.As(err, &ae) {
		return ae.Code == amqp.AccessRefused || ae.Code == amqp.NotAllowed || ae.Code == amqp.PreconditionFailed
	}
	return errors.Is(err, amqp.ErrCredentials) || errors.Is(err, amqp.ErrVhost)
}

// Redact hides the password of an AMQP URL for logs and errors.
func Redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable url)"
	}
	return u.Redacted()
}

// Ready returns a channel closed while the broker is connected.
func (q *Queue) Ready() <-chan struct{} {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.ready
}

// run keeps one connection up until Close.
func (q *Queue) run(first chan<- error) {
	defer close(q.done)
	b := retry.Backoff{Policy: q.reconnectPolicy()}
	for {
		conn, pub, err := q.connect()
		if first != nil {
			first <- err
			first = nil
		}
		if err != nil {
			if isFatal(err) {
				q.log.Error("rabbitmq: connecting", "err", err)
			} else {
				q.log.Warn("rabbitmq: connecting", "err", err, "attempt", b.Failures()+1)
			}
			if !q.sleep(b.Next()) {
				return
			}
			continue
		}
		b.Reset()
		connClosed := conn.NotifyClose(make(chan *amqp.Error, 1))
		pubClosed := pub.NotifyClose(make(chan *amqp.Error, 1))
		q.log.Info("rabbitmq: connected", "url", Redact(q.urls[q.next]))
		var reason *amqp.Error
		select {
		case reason = <-connClosed:
		case reason = <-pubClosed:
		case <-q.closing:
		}
		q.mu.Lock()
		q.conn, q.pub, q.ready, q.declared = nil, nil, make(chan struct{}), map[string]bool{}
		q.mu.Unlock()
		_ = conn.Close()
		select {
		case <-q.closing:
			return
		default:
		}
		q.log.Warn("rabbitmq: connection lost; reconnecting", "reason", reason)
	}
}

// connect dials, opens the confirming publisher channel and declares the
// topology of every known topic.
func (q *Queue) connect() (*amqp.Connection, *amqp.Channel, error) {
	var conn *amqp.Connection
	var errs []error
	for i := range q.urls {
		u := q.urls[(q.next+i)%len(q.urls)]
		c, err := amqp.DialConfig(u, amqp.Config{Heartbeat: 10 * time.Second, Dial: amqp.DefaultDial(5 * time.Second)})
		if err == nil {
			conn, q.next = c, (q.next+i)%len(q.urls)
			break
		}
		errs = append(errs, fmt.Errorf("dialing %s: %w", Redact(u), err))
		if isFatal(err) {
			break
		}
	}
	if conn == nil {
		return nil, nil, errors.Join(errs...)
	}
	pub, err := conn.Channel()
	if err == nil {
		err = pub.Confirm(false)
	}
	if err != nil {
		conn.Close()
		return nil, nil, fmt.Errorf("opening the publishing channel: %w", err)
	}
	// Buffered, and drained by Publish after each confirm: the library hands a
	// basic.return over before it processes the ack of the same message.
	returns := pub.NotifyReturn(make(chan amqp.Return, 1024))
	q.mu.Lock()
	topics := make([]string, 0, len(q.topics))
	for t := range q.topics {
		topics = append(topics, t)
	}
	q.mu.Unlock()
	declared := map[string]bool{}
	for _, t := range topics {
		if err := q.declare(conn, t); err != nil {
			conn.Close()
			return nil, nil, err
		}
		declared[t] = true
	}
	q.mu.Lock()
	q.conn, q.pub, q.returns, q.declared = conn, pub, returns, declared
	q.returned = map[string]bool{}
	close(q.ready)
	q.mu.Unlock()
	return conn, pub, nil
}

// reconnectPolicy is the wait between failed connects or consumes:
// ReconnectMin doubling up to ReconnectMax, full jitter (package retry).
func (q *Queue) reconnectPolicy() retry.Exponential {
	return retry.Exponential{Initial: q.cfg.ReconnectMin, Max: q.cfg.ReconnectMax}
}

// sleep waits d or until Close; false means closing.
func (q *Queue) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-q.closing:
		return false
	}
}

// Names of the topology.
func (q *Queue) exchange() string          { return q.cfg.Prefix }
func (q *Queue) delayExchange() string     { return q.cfg.Prefix + ".delay" }
func (q *Queue) deadExchange() string      { return q.cfg.Prefix + ".dead" }
func (q *Queue) mainQueue(t string) string { return q.cfg.Prefix + "." + t }
func (q *Queue) deadQueue(t string) string { return q.cfg.Prefix + "." + t + ".dead" }
func (q *Queue) delayQueue(t string, ms int64) string {
	return q.cfg.Prefix + "." + t + ".delay." + strconv.FormatInt(ms, 10)
}
func delayKey(t string, ms int64) string { return t + "." + strconv.FormatInt(ms, 10) }
func (q *Queue) localQueue(t string) string {
	return q.cfg.Prefix + "." + t + ".local." + q.cfg.Instance
}
func (q *Queue) localKey(t string) string { return t + ".local." + q.cfg.Instance }

// localExpires is how long a local queue lives without a consumer.
const localExpires = time.Hour

// declare declares the exchanges and topic t's queues on a fresh channel.
func (q *Queue) declare(conn *amqp.Connection, t string) error {
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("opening a channel to declare topic %s: %w", t, err)
	}
	defer ch.Close()
	for _, ex := range []string{q.exchange(), q.delayExchange(), q.deadExchange()} {
		if err := ch.ExchangeDeclare(ex, amqp.ExchangeDirect, true, false, false, false, nil); err != nil {
			return fmt.Errorf("declaring exchange %s: %w", ex, err)
		}
	}
	quorum := func(extra amqp.Table) amqp.Table {
		a := amqp.Table{"x-queue-type": "quorum"}
		for k, v := range extra {
			a[k] = v
		}
		return a
	}
	atLeastOnce := func(dlx, key string) amqp.Table {
		return amqp.Table{"x-dead-letter-exchange": dlx, "x-dead-letter-routing-key": key,
			"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}
	}
	type decl struct {
		name, exchange, key string
		args                amqp.Table
	}
	ds := []decl{
		{q.mainQueue(t), q.exchange(), t, quorum(atLeastOnce(q.deadExchange(), t))},
		{q.deadQueue(t), q.deadExchange(), t, quorum(nil)},
	}
	ds[0].args["x-delivery-limit"] = int64(q.cfg.DeliveryLimit)
	if q.cfg.Instance != "" {
		a := quorum(atLeastOnce(q.exchange(), t))
		a["x-delivery-limit"] = int64(q.cfg.DeliveryLimit)
		a["x-expires"] = localExpires.Milliseconds()
		ds = append(ds, decl{q.localQueue(t), q.exchange(), q.localKey(t), a})
	}
	for _, ms := range buckets {
		a := quorum(atLeastOnce(q.exchange(), t))
		a["x-message-ttl"] = ms
		ds = append(ds, decl{q.delayQueue(t, ms), q.delayExchange(), delayKey(t, ms), a})
	}
	for _, d := range ds {
		if _, err := ch.QueueDeclare(d.name, true, false, false, false, d.args); err != nil {
			return fmt.Errorf("declaring queue %s (an existing queue with other arguments must be deleted first): %w", d.name, err)
		}
		if err := ch.QueueBind(d.name, d.key, d.exchange, false, nil); err != nil {
			return fmt.Errorf("binding queue %s to %s: %w", d.name, d.exchange, err)
		}
	}
	return nil
}

// ensure declares topic t on the current connection if needed and returns the
// connection and the publishing channel.
func (q *Queue) ensure(t string) (*amqp.Connection, *amqp.Channel, error) {
	q.mu.Lock()
	conn, pub, done := q.conn, q.pub, q.declared[t]
	q.topics[t] = true
	q.mu.Unlock()
	if conn == nil {
		return nil, nil, ErrUnavailable
	}
	if !done {
		if err := q.declare(conn, t); err != nil {
			return nil, nil, err
		}
		q.mu.Lock()
		if q.conn == conn {
			q.declared[t] = true
		}
		q.mu.Unlock()
	}
	return conn, pub, nil
}

// Close stops reconnecting and closes the connection. Consumers must have
// returned first.
func (q *Queue) Close() error {
	select {
	case <-q.closing:
	default:
		close(q.closing)
	}
	<-q.done
	return nil
}

// Teardown deletes the exchanges and the queues of every topic this queue has
// used (tests and operators; the messages in them are lost).
func (q *Queue) Teardown(ctx context.Context) error {
	q.mu.Lock()
	var topics []string
	for t := range q.topics {
		topics = append(topics, t)
	}
	q.mu.Unlock()
	var conn *amqp.Connection
	for _, t := range topics { // declared, so that deleting finds every queue
		c, _, err := q.ensure(t)
		if err != nil {
			return err
		}
		conn = c
	}
	if conn == nil {
		return nil
	}
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	defer ch.Close()
	var errs []error
	for _, t := range topics {
		names := []string{q.mainQueue(t), q.deadQueue(t)}
		if q.cfg.Instance != "" {
			names = append(names, q.localQueue(t))
		}
		for _, ms := range buckets {
			names = append(names, q.delayQueue(t, ms))
		}
		for _, n := range names {
			if _, err := ch.QueueDelete(n, false, false, false); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for _, ex := range []string{q.exchange(), q.delayExchange(), q.deadExchange()} {
		if err := ch.ExchangeDelete(ex, false, false); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
