package rabbitmq

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/asyncmesh/asyncmesh/collector/queue"
	"github.com/asyncmesh/asyncmesh/internal/retry"
)

var consumerSeq atomic.Uint64

// Consume runs h on the messages of topic with up to workers at once, across
// reconnects, until ctx ends; then it stops taking messages, lets in-flight
// handlers finish and settle, and returns.
func (q *Queue) Consume(ctx context.Context, topic string, workers int, h queue.Handler) error {
	if workers < 1 {
		return errors.New("rabbitmq: consume: workers must be at least 1")
	}
	b := retry.Backoff{Policy: q.reconnectPolicy()}
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
			return nil
		case <-q.Ready():
		}
		var wait time.Duration
		if err := q.consumeOnce(ctx, topic, workers, h); err != nil {
			q.log.Warn("rabbitmq: consuming", "topic", topic, "err", err)
			wait = b.Next()
		} else {
			b.Reset()
			// not a failure, but let the connection loop notice a loss
			// before trying again: the first ceiling, unjittered, so that a
			// channel that keeps closing cannot spin.
			wait = q.reconnectPolicy().Ceiling(1)
		}
		if retry.Sleep(ctx, retry.System, wait) != nil {
			return nil
		}
	}
	return nil
}

// consumeOnce consumes on one channel until ctx ends or the channel closes.
func (q *Queue) consumeOnce(ctx context.Context, topic string, workers int, h queue.Handler) error {
	conn, _, err := q.ensure(topic)
	if err != nil {
		return err
	}
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("opening a consumer channel: %w", err)
	}
	defer ch.Close()
	prefetch := q.cfg.Prefetch
	if prefetch <= 0 {
		prefetch = workers
	}
	if err := ch.Qos(prefetch, 0, false); err != nil {
		return fmt.Errorf("setting prefetch: %w", err)
	}
	queues := []string{q.mainQueue(topic)}
	if q.cfg.Instance != "" {
		queues = append(queues, q.localQueue(topic))
	}
	// One channel, one prefetch window, for the shared queue and the local
	// one: the workers take from both as messages come.
	deliveries := make(chan amqp.Delivery)
	stop := make(chan struct{}) // a return before the workers start: feeders give up
	defer close(stop)
	var tags []string
	var feeders sync.WaitGroup
	for _, name := range queues {
		tag := fmt.Sprintf("%s-%s-%d", q.cfg.Prefix, topic, consumerSeq.Add(1))
		ds, err := ch.Consume(name, tag, false, false, false, false, nil)
		if err != nil {
			return fmt.Errorf("consuming %s: %w", name, err)
		}
		tags = append(tags, tag)
		feeders.Add(1)
		go func() {
			defer feeders.Done()
			for d := range ds {
				select {
				case deliveries <- d:
				case <-stop: // unacked: the broker takes it back with the channel
				}
			}
		}()
	}
	go func() { feeders.Wait(); close(deliveries) }()
	hctx := context.WithoutCancel(ctx) // handlers finish what they started
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for d := range deliveries {
				if ctx.Err() != nil {
					_ = d.Nack(false, true) // shutting down: back to the queue untouched
					continue
				}
				q.handle(hctx, topic, d, h)
			}
		}()
	}
	closed := ch.NotifyClose(make(chan *amqp.Error, 1))
	select {
	case <-ctx.Done():
		for _, tag := range tags {
			_ = ch.Cancel(tag, false) // no new deliveries; the channels of deliveries close
		}
	case <-closed:
	}
	wg.Wait()
	return nil
}

// handle runs h on one delivery and settles it.
func (q *Queue) handle(ctx context.Context, topic string, d amqp.Delivery, h queue.Handler) {
	m := queue.Message{Topic: topic, Key: d.MessageId, Body: d.Body, Deliveries: 1 + intHeader(d.Headers, hdrDeliveries) + intHeader(d.Headers, "x-delivery-count")}
	m.TraceID, _ = d.Headers[hdrTraceID].(string)
	log := q.log.With("topic", topic, "key", m.Key, "trace_id", m.TraceID)
	if n := intHeader(d.Headers, "x-delivery-count"); n > 0 {
		log.Info("rabbitmq: redelivered after its consumer was lost", "x_delivery_count", n, "deliveries", m.Deliveries)
	}
	if due := time.UnixMilli(int64(intHeader(d.Headers, hdrDue))); time.Until(due) > 20*time.Millisecond {
		// Back early from a delay bucket: another round, without a run.
		q.settle(log, d, q.republish(ctx, topic, d, m.Deliveries-1, time.Until(due)))
		return
	}
	err := h(ctx, m)
	switch {
	case err == nil:
		q.settle(log, d, nil)
	case queue.IsPoison(err):
		log.Warn("rabbitmq: dead-lettering poison message", "err", err)
		q.settle(log, d, q.deadLetter(ctx, topic, d, err.Error()))
	default:
		after, isRetry := queue.RetryDelay(err)
		if !isRetry && m.Deliveries >= queue.MaxDeliveries {
			log.Warn("rabbitmq: dead-lettering message after max deliveries", "deliveries", m.Deliveries, "err", err)
			q.settle(log, d, q.deadLetter(ctx, topic, d, fmt.Sprintf("after %d deliveries: %v", m.Deliveries, err)))
			return
		}
		if !isRetry {
			after = queue.Backoff(m.Deliveries)
			log.Warn("rabbitmq: handler failed, will retry", "in", after, "err", err)
		}
		runs := m.Deliveries
		if queue.IsWait(err) {
			runs-- // a wait is not counted (queue.Wait)
		}
		q.settle(log, d, q.republish(ctx, topic, d, runs, after))
	}
}

// settle acks d once what replaces it (a delayed or dead copy) is confirmed,
// or returns it to the queue when that failed. A failed ack means the channel
// is gone and the broker redelivers: at least once.
func (q *Queue) settle(log *slog.Logger, d amqp.Delivery, replaced error) {
	if replaced != nil {
		log.Warn("rabbitmq: could not move the message; returning it to the queue", "err", replaced)
		if err := d.Nack(false, true); err != nil {
			log.Warn("rabbitmq: nack", "err", err)
		}
		return
	}
	if err := d.Ack(false); err != nil {
		log.Warn("rabbitmq: ack failed; the broker will redeliver", "err", err)
	}
}

// copyOf is d as a new publishing with fresh bookkeeping headers.
func copyOf(d amqp.Delivery) amqp.Publishing {
	h := amqp.Table{}
	for k, v := range d.Headers {
		switch k {
		case "x-delivery-count", "x-death", "x-first-death-exchange", "x-first-death-queue", "x-first-death-reason",
			"x-last-death-exchange", "x-last-death-queue", "x-last-death-reason", hdrPublishID:
		default:
			h[k] = v
		}
	}
	return amqp.Publishing{DeliveryMode: amqp.Persistent, MessageId: d.MessageId, Timestamp: d.Timestamp,
		ContentType: d.ContentType, Headers: h, Body: d.Body}
}

// republish sends a copy of d back to topic after delay, counting runs handler runs.
func (q *Queue) republish(ctx context.Context, topic string, d amqp.Delivery, runs int, after time.Duration) error {
	p := copyOf(d)
	p.Headers[hdrDeliveries] = int64(runs)
	if after <= 20*time.Millisecond {
		delete(p.Headers, hdrDue)
		return q.publish(ctx, topic, q.exchange(), topic, p)
	}
	p.Headers[hdrDue] = time.Now().Add(after).UnixMilli()
	ms := buckets[0]
	for _, b := range buckets {
		if b <= after.Milliseconds() {
			ms = b
		}
	}
	return q.publish(ctx, topic, q.delayExchange(), delayKey(topic, ms), p)
}

func (q *Queue) deadLetter(ctx context.Context, topic string, d amqp.Delivery, reason string) error {
	p := copyOf(d)
	p.Headers[hdrReason] = reason
	p.Headers[hdrDeadAt] = time.Now().UnixMilli()
	return q.publish(ctx, topic, q.deadExchange(), topic, p)
}

// DeadLetters lists up to limit dead letters of topic without removing them
// (they are fetched unacknowledged and return to the queue).
func (q *Queue) DeadLetters(ctx context.Context, topic string, limit int) ([]queue.DeadLetter, error) {
	conn, _, err := q.ensure(topic)
	if err != nil {
		return nil, err
	}
	ch, err := conn.Channel()
	if err != nil {
		return nil, fmt.Errorf("opening a channel to list dead letters: %w", err)
	}
	defer ch.Close() // returns every fetched message to the queue
	var out []queue.DeadLetter
	for len(out) < limit && ctx.Err() == nil {
		d, ok, err := ch.Get(q.deadQueue(topic), false)
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", q.deadQueue(topic), err)
		}
		if !ok {
			break
		}
		dl := queue.DeadLetter{Message: queue.Message{Topic: topic, Key: d.MessageId, Body: d.Body,
			Deliveries: 1 + intHeader(d.Headers, hdrDeliveries) + intHeader(d.Headers, "x-delivery-count")}}
		dl.TraceID, _ = d.Headers[hdrTraceID].(string)
		dl.Reason, _ = d.Headers[hdrReason].(string)
		dl.At = time.UnixMilli(int64(intHeader(d.Headers, hdrDeadAt)))
		if dl.Reason == "" { // dead-lettered by the broker (x-delivery-limit)
			dl.Reason, _ = d.Headers["x-first-death-reason"].(string)
			dl.Reason = "broker: " + dl.Reason
			dl.At = d.Timestamp
		}
		out = append(out, dl)
	}
	return out, nil
}

// intHeader reads a numeric header of any AMQP integer type.
func intHeader(t amqp.Table, k string) int {
	switch v := t[k].(type) {
	case int64:
		return int(v)
	case int32:
		return int(v)
	case int16:
		return int(v)
	case int8:
		return int(v)
	case int:
		return v
	case uint8:
		return int(v)
	case uint16:
		return int(v)
	case uint32:
		return int(v)
	}
	return 0
}
