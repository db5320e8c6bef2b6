package rabbitmq

import (
	"context"
	"fmt"
	"strconv"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/asyncmesh/asyncmesh/collector/queue"
)

// Publish sends m persistently to its topic and returns nil only on the
// broker's confirm.
func (q *Queue) Publish(ctx context.Context, m queue.Message) error {
	msg := amqp.Publishing{
		DeliveryMode: amqp.Persistent,
		MessageId:    m.Key,
		Timestamp:    time.Now(),
		ContentType:  "application/json",
		Headers:      amqp.Table{hdrTraceID: m.TraceID},
		Body:         m.Body,
	}
	key := m.Topic
	if m.Local > 0 && q.cfg.Instance != "" {
		key, msg.Expiration = q.localKey(m.Topic), strconv.FormatInt(max(m.Local.Milliseconds(), 1), 10)
	}
	if err := q.publish(ctx, m.Topic, q.exchange(), key, msg); err != nil {
		return fmt.Errorf("publishing %s/%s: %w", m.Topic, m.Key, err)
	}
	return nil
}

// publish sends msg to exchange with key, mandatory, and waits for the confirm.
func (q *Queue) publish(ctx context.Context, topic, exchange, key string, msg amqp.Publishing) error {
	_, pub, err := q.ensure(topic)
	if err != nil {
		return err
	}
	q.mu.Lock()
	q.pubSeq++
	id := strconv.FormatUint(q.pubSeq, 10)
	q.mu.Unlock()
	if msg.Headers == nil {
		msg.Headers = amqp.Table{}
	}
	msg.Headers[hdrPublishID] = id
	dc, err := pub.PublishWithDeferredConfirmWithContext(ctx, exchange, key, true, false, msg)
	if err != nil {
		return err
	}
	ok, err := dc.WaitContext(ctx)
	if err != nil {
		return fmt.Errorf("no confirm from the broker: %w", err)
	}
	if !ok {
		return fmt.Errorf("the broker did not confirm (nack, or the channel closed)")
	}
	if q.wasReturned(id) {
		return fmt.Errorf("unroutable: exchange %s has no queue bound for %s", exchange, key)
	}
	return nil
}

// wasReturned drains the returns that arrived so far and reports whether
// publish id was among them.
func (q *Queue) wasReturned(id string) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	for {
		select {
		case r, ok := <-q.returns:
			if !ok {
				return q.returned[id]
			}
			if v, ok := r.Headers[hdrPublishID].(string); ok {
				q.returned[v] = true
			}
			continue
		default:
		}
		break
	}
	got := q.returned[id]
	delete(q.returned, id)
	return got
}
