// Package queue defines the work queue between intake, worker and delivery:
// publish with confirm, consume with ack/nack, delayed retry and a dead letter
// list. Delivery is at least once; consumers are idempotent by request id and the
// store's compare-and-set.
//
// Implementations: collector/embedded (SQLite, the default) and
// collector/rabbitmq (RabbitMQ). Every implementation must pass queuetest.Run.
package queue

import (
	"context"
	"errors"
	"time"

	"github.com/asyncmesh/asyncmesh/internal/retry"
)

// Topics used by the collector.
const (
	TopicWork     = "work"     // execute an accepted request
	TopicDelivery = "delivery" // call the caller back
)

// Message is one message, published or delivered.
type Message struct {
	Topic   string
	Key     string // the request id
	TraceID string // carried beside the body (an AMQP header on RabbitMQ)
	Body    []byte
	// Deliveries counts deliveries of this message, this one included, but
	// not those its handlers answered with Wait (set on delivery; ignored
	// by Publish).
	Deliveries int
	// Local, on Publish, keeps the message for this process's own consumers
	// for up to that long; past it any consumer of the topic may take it.
	// Intake publishes a request's work message so: the collector that took
	// the request in knows at once whether it told the filter "accepted",
	// while another must wait for the filter's deadline (deadline.go). A
	// queue that one process consumes (embedded) delivers it as any other.
	Local time.Duration
}

// Handler processes one message. nil acks it; an error from RetryAfter requeues
// it after the given delay, as often as the handler asks (it bounds its own
// retries, like delivery by the rule's maxAttempts); Wait does the same
// without counting the delivery (Message.Deliveries); Poison sends it to the
// dead letters at once; any other error requeues it with Backoff and, from
// MaxDeliveries deliveries on, dead-letters it.
type Handler func(ctx context.Context, m Message) error

// MaxDeliveries bounds how often a failing message is redelivered.
const MaxDeliveries = 50

// Queue is the work queue.
type Queue interface {
	// Publish returns nil only once the message is durable (the broker confirmed it).
	Publish(ctx context.Context, m Message) error
	// Consume runs h on messages of topic with up to workers at once until ctx
	// ends, then waits for in-flight handlers (which get a context that is not
	// cancelled with ctx) and returns.
	Consume(ctx context.Context, topic string, workers int, h Handler) error
	// DeadLetters lists dead-lettered messages of topic with their reasons.
	DeadLetters(ctx context.Context, topic string, limit int) ([]DeadLetter, error)
	Close() error
}

// DeadLetter is a message that will not be retried.
type DeadLetter struct {
	Message
	Reason string
	At     time.Time
}

type retryError struct {
	after  time.Duration
	reason string
	wait   bool // Wait: this delivery is not counted
}

func (e *retryError) Error() string { return "retry after " + e.after.String() + ": " + e.reason }

// RetryAfter asks for redelivery after d.
func RetryAfter(d time.Duration, reason string) error { return &retryError{d, reason, false} }

// Wait asks for redelivery after d, like RetryAfter, of a message the
// handler only looked at: it waits for something else (the request before
// it in an ordering key, a node to be enabled) and ran nothing. The queue
// does not count this delivery: the next one has the Deliveries this one
// had, so that a handler that bounds its retries by deliveries (the
// collector's replays) spends none of them on waits, whichever consumer
// waited. A redelivery after a consumer was lost still counts.
func Wait(d time.Duration, reason string) error { return &retryError{d, reason, true} }

// IsWait reports whether err came from Wait.
func IsWait(err error) bool {
	var r *retryError
	return errors.As(err, &r) && r.wait
}

// RetryDelay returns the delay asked by a RetryAfter or Wait error.
func RetryDelay(err error) (time.Duration, bool) {
	var r *retryError
	if errors.As(err, &r) {
		return r.after, true
	}
	return 0, false
}

type poisonError struct{ reason string }

func (e *poisonError) Error() string { return "poison: " + e.reason }

// Poison marks a message that can never succeed.
func Poison(reason string) error { return &poisonError{reason} }

// IsPoison reports whether err came from Poison.
func IsPoison(err error) bool {
	var p *poisonError
	return errors.As(err, &p)
}

// Redelivery is the redelivery policy after a plain handler error: exponential
// from 100ms, capped at 30s, without jitter because RabbitMQ keeps one delay
// queue per distinct delay (see package retry).
var Redelivery = retry.Exponential{Initial: 100 * time.Millisecond, Max: 30 * time.Second, NoJitter: true}

// Backoff is the redelivery delay after the message's deliveries-th plain
// handler error.
func Backoff(deliveries int) time.Duration { return Redelivery.Delay(deliveries) }
