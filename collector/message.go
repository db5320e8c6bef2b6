package collector

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/asyncmesh/asyncmesh/collector/queue"
	"github.com/asyncmesh/asyncmesh/collector/store"
)

// inlineEnvelopeMax bounds the encoded envelope carried inside a work
// message; larger ones are read from the store (by StatusURL for others).
const inlineEnvelopeMax = 64 << 10

// taskMessage is the body of work and delivery messages. The handlers read the
// record from the store, the source of truth; the body makes a message
// self-describing for operators and other consumers of the queue.
type taskMessage struct {
	ID        string `json:"id"`
	TraceID   string `json:"traceId"`
	StatusURL string `json:"statusUrl"`
	// Deadline is the filter's deadline of a work message's request (Unix
	// ms), also when the envelope is too large to come along: a worker may
	// get the message before its record exists (accept).
	Deadline int64           `json:"deadline,omitempty"`
	Envelope json.RawMessage `json:"envelope,omitempty"`
	// Limit, on a delivery message, names its endpoint's rateLimit and
	// maxInFlight: checked before the claim (limits.go).
	Limit *endpointLimit `json:"limit,omitempty"`
}

// publish sends the work or delivery message of r (see send).
func (c *Collector) publish(ctx context.Context, topic string, r *store.Record) error {
	m, err := c.message(topic, r)
	if err != nil {
		return err
	}
	return c.send(ctx, m)
}

// send publishes m and waits for the queue's confirm, at most PublishTimeout.
func (c *Collector) send(ctx context.Context, m queue.Message) error {
	pctx, cancel := context.WithTimeout(ctx, c.cfg.PublishTimeout)
	defer cancel()
	return c.queue.Publish(pctx, m)
}

// message is the work or delivery message of r.
func (c *Collector) message(topic string, r *store.Record) (queue.Message, error) {
	msg := taskMessage{ID: r.ID, TraceID: r.TraceID, StatusURL: strings.TrimSuffix(c.cfg.APIURL, "/") + "/v1/requests/" + r.ID}
	if topic == queue.TopicWork && r.Envelope != nil {
		msg.Deadline = r.Envelope.Deadline
		if env, err := json.Marshal(r.Envelope); err == nil && len(env) <= inlineEnvelopeMax {
			msg.Envelope = env
		}
	}
	if topic == queue.TopicDelivery {
		// The live rule's limits, whatever envelope r carries: without an
		// outbox the message is built from the record as the store returned
		// it (advance), whose envelope is the one accepted, and a message
		// without the limits skips the check before the claim — its callback
		// would then be refused after the claim, in deliver.
		msg.Limit = limitOf(c.applyRules(r.Envelope))
	}
	body, err := json.Marshal(msg)
	if err != nil {
		return queue.Message{}, fmt.Errorf("encoding the %s message of %s: %w", topic, r.ID, err)
	}
	return queue.Message{Topic: topic, Key: r.ID, TraceID: r.TraceID, Body: body}, nil
}
