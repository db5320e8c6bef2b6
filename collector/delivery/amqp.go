package delivery

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/asyncmesh/asyncmesh/collector/store"
	"github.com/asyncmesh/asyncmesh/internal/rules"
)

func init() { register(rules.ProtocolAMQP, (*Sender).publishAMQP) }

// publishAMQP makes an amqp attempt: the JSON payload published persistent
// and mandatory to the callback's exchange and routing key, on a channel of
// its own in confirm mode. A broker confirm of a routed message is delivered;
// a return (no queue bound) or a nack is retried like a 5xx.
func (s *Sender) publishAMQP(ctx context.Context, a *attempt, p Payload) Result {
	body, contentType, err := s.encode(a, p)
	if err != nil {
		return a.retry(0, err.Error())
	}
	u, err := url.Parse(a.cb.URL)
	if err != nil {
		return a.retry(0, "callback URL: "+err.Error())
	}
	exchange, key := u.Query().Get("exchange"), u.Query().Get("routingKey")
	dialURL := *u
	dialURL.RawQuery = ""
	// a.cb of a caller-chosen callback has no CredentialsRef (ForCaller):
	// the rule's broker password never goes to a broker the caller names.
	if a.cb.CredentialsRef != "" {
		cred, err := s.Secrets.Value(a.cb.CredentialsRef)
		if err != nil {
			return a.retry(0, err.Error())
		}
		user, pass, ok := strings.Cut(strings.TrimSpace(cred), ":")
		if !ok {
			return a.retry(0, "secret "+a.cb.CredentialsRef+" is not user:password")
		}
		dialURL.User = url.UserPassword(user, pass)
	}
	// Signed before connecting, so that the log has what the attempt meant
	// to send even when the broker cannot be reached. The logged URL is the
	// callback's (exchange and routing key in its query), never dialURL,
	// which holds the broker password.
	signed := a.sign(body)
	a.sent = sentRequest("basic.publish", a.cb.URL, signed, len(body), contentType)
	cacheKey := dialURL.String() + "|" + a.guard.Key()
	s.mu.Lock()
	if s.close {
		s.mu.Unlock()
		return a.retry(0, errClosed.Error())
	}
	conn, err := s.amqp.get(cacheKey, (*amqp.Connection).IsClosed, func() (*amqp.Connection, error) {
		return amqp.DialConfig(dialURL.String(), amqp.Config{
			Heartbeat:  10 * time.Second,
			Properties: amqp.Table{"product": "asyncmesh-collector"},
			Dial: func(network, addr string) (net.Conn, error) {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				return a.guard.DialContext(ctx, network, addr)
			},
		})
	}, func(c *amqp.Connection) { c.Close() })
	s.mu.Unlock()
	if err != nil {
		// amqp091's errors never include the URL's password.
		return a.failed(fmt.Errorf("connecting to the callback broker %s: %w", u.Host, err))
	}
	if err := publishConfirmed(ctx, conn, exchange, key, a, signed, contentType, body); err != nil {
		if conn.IsClosed() {
			s.mu.Lock()
			s.amqp.dropIf(cacheKey, conn, func(c *amqp.Connection) { c.Close() })
			s.mu.Unlock()
		}
		return a.retry(0, err.Error())
	}
	return Result{Outcome: Delivered}
}

// publishConfirmed publishes body with the signed headers and waits for the
// broker's confirm, which it logs as the attempt's answer (a.answer).
func publishConfirmed(ctx context.Context, conn *amqp.Connection, exchange, key string, a *attempt, signed http.Header, contentType string, body []byte) error {
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("opening a channel: %w", err)
	}
	defer ch.Close()
	if err := ch.Confirm(false); err != nil {
		return fmt.Errorf("confirm mode: %w", err)
	}
	returns := ch.NotifyReturn(make(chan amqp.Return, 1))
	headers := amqp.Table{}
	for k, v := range signed {
		headers[strings.ToLower(k)] = strings.Join(v, " ")
	}
	dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, exchange, key, true, false, amqp.Publishing{
		DeliveryMode:  amqp.Persistent,
		ContentType:   contentType,
		MessageId:     a.rec.ID,
		CorrelationId: a.rec.ID,
		Timestamp:     time.Now(),
		Type:          "asyncmesh.callback.v1",
		Headers:       headers,
		Body:          body,
	})
	if err != nil {
		return fmt.Errorf("publishing to exchange %q: %w", exchange, err)
	}
	ok, err := dc.WaitContext(ctx)
	if err != nil {
		return fmt.Errorf("no confirm from the callback broker: %w", err)
	}
	if !ok {
		a.answer = &store.AttemptResponse{Status: "nack"}
		return fmt.Errorf("the callback broker did not confirm (nack, or exchange %q does not exist)", exchange)
	}
	// The broker sends basic.return before the ack of the same message.
	select {
	case r := <-returns:
		a.answer = &store.AttemptResponse{Status: "returned", Message: cut(fmt.Sprintf("%d %s", r.ReplyCode, r.ReplyText), maxLoggedMessage)}
		return fmt.Errorf("unroutable: exchange %q has no queue bound for routing key %q (%s)", exchange, key, r.ReplyText)
	default:
		a.answer = &store.AttemptResponse{Status: "ack"}
		return nil
	}
}
