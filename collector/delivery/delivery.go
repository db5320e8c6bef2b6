// Package delivery calls the caller back over the protocol its rule (or the
// caller) chose: http (a JSON POST signed by Standard Webhooks v1), soap (the
// same content as a SOAP 1.1 envelope with SOAPAction), grpc (a unary Deliver
// of client/callbackpb's Callback service) or amqp (a persistent message
// published, mandatory and confirmed, to the caller's exchange and routing
// key). Every protocol carries the webhook-id / webhook-timestamp /
// webhook-signature headers (gRPC metadata, AMQP headers) over the exact bytes
// it delivers, plus x-async-trace-id and x-async-request-id.
//
// Policy (docs/architecture.md), the same for every protocol: delivered (2xx, gRPC OK, a
// broker confirm of a routed message); gone, stop (410, gRPC NOT_FOUND);
// throttled, honouring Retry-After up to the rule's maxBackoff (429 and 503,
// gRPC UNAVAILABLE and RESOURCE_EXHAUSTED with a retry-after trailer); anything
// else, redirects included (never followed), is retried with exponential
// backoff and full jitter until the rule's maxAttempts, then the record is
// dead (and replayable).
//
// SSRF: every connection of every protocol is checked after DNS, at connect
// time, against the blocked networks minus what the rule allows (Guard);
// connections are pooled per guard so that one rule's allowance never lends a
// connection to another rule. A destination the guard refuses is Refused:
// the record is dead at once with the reason (retrying cannot change it).
//
// A callback the caller chose (envelope.CallbackFromCaller) borrows nothing
// from its rule (rules.Callback.ForCaller): no broker credentials, and the
// private allowances only for a host on callback.allowedHosts; with such a
// list, a host outside it is refused before any connection and again by the
// dialer. This is applied here to whatever the envelope says, not only at
// intake, so an envelope accepted before the list existed, or forged, lends
// nothing either.
package delivery

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	amqp "github.com/rabbitmq/amqp091-go"
	"golang.org/x/oauth2"
	"google.golang.org/grpc"

	"github.com/asyncmesh/asyncmesh/collector/store"
	"github.com/asyncmesh/asyncmesh/internal/retry"
	"github.com/asyncmesh/asyncmesh/internal/rules"
	"github.com/asyncmesh/asyncmesh/internal/seal"
	"github.com/asyncmesh/asyncmesh/internal/webhook"
)

// Outcome classifies one attempt.
type Outcome int

const (
	Delivered Outcome = iota // 2xx
	Retry                    // try again after Result.Wait
	Gone                     // 410: the endpoint asked us to stop
	Refused                  // the SSRF guard or callback.allowedHosts refused the destination: dead at once
)

// Result of one attempt.
type Result struct {
	Outcome Outcome
	Wait    time.Duration // for Retry
	Attempt store.Attempt
}

// Secrets resolves secret references: Lookup to the active signing secrets
// (more than one during a rotation), Value to a plain value (credentials).
type Secrets interface {
	Lookup(ref string) ([]webhook.Secret, error)
	Value(ref string) (string, error)
}

// Sender makes callback attempts. It keeps connections per target and guard;
// Close releases them.
type Sender struct {
	Secrets Secrets
	Timeout time.Duration // per attempt; default 10s

	mu     sync.Mutex
	http   HTTPClients
	grpc   connCache[*grpc.ClientConn]
	amqp   connCache[*amqp.Connection]
	tokens map[string]oauth2.TokenSource // auth.go
	close  bool
}

// NewSender returns a sender whose attempts last at most timeout.
func NewSender(secrets Secrets, timeout time.Duration) *Sender {
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	return &Sender{Secrets: secrets, Timeout: timeout}
}

// Close closes the pooled connections.
func (s *Sender) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.close = true
	s.http.CloseIdle()
	s.grpc.closeAll(func(c *grpc.ClientConn) { c.Close() })
	s.amqp.closeAll(func(c *amqp.Connection) { c.Close() })
}

// Payload is the JSON body of an http callback.
type Payload struct {
	ID       string           `json:"id"`
	TraceID  string           `json:"traceId"`
	Status   string           `json:"status"`
	Response *PayloadResponse `json:"response,omitempty"`
	Error    string           `json:"error,omitempty"`
}

// PayloadResponse is the service's answer inside a callback.
type PayloadResponse struct {
	Status       int               `json:"status"`
	Headers      map[string]string `json:"headers,omitempty"`
	Body         string            `json:"body"`
	BodyEncoding string            `json:"bodyEncoding,omitempty"` // "base64" when not UTF-8
}

// NewPayload builds the callback payload of a record that has a result.
func NewPayload(r *store.Record) Payload {
	p := Payload{ID: r.ID, TraceID: r.TraceID, Error: r.Error}
	// The status the caller sees is the outcome of the request, not of delivery.
	p.Status = string(store.Completed)
	if r.Response == nil {
		p.Status = string(store.Failed)
	}
	if r.Response != nil {
		p.Response = ResponseView(r.Response)
	}
	return p
}

// ResponseView renders a stored response for callers (callbacks and the API).
func ResponseView(resp *store.Response) *PayloadResponse {
	pr := &PayloadResponse{Status: resp.Status, Headers: map[string]string{}}
	for _, h := range resp.Headers {
		if old, ok := pr.Headers[h[0]]; ok {
			pr.Headers[h[0]] = old + ", " + h[1]
		} else {
			pr.Headers[h[0]] = h[1]
		}
	}
	if utf8.Valid(resp.Body) {
		pr.Body = string(resp.Body)
	} else {
		b, _ := json.Marshal(resp.Body) // base64 in quotes
		pr.Body, pr.BodyEncoding = strings.Trim(string(b), `"`), "base64"
	}
	return pr
}

// Send makes delivery attempt n (1-based, for the backoff) of r's callback.
func (s *Sender) Send(ctx context.Context, r *store.Record, n int) Result {
	start := time.Now()
	res := s.send(ctx, r, n)
	res.Attempt.At = start.UTC()
	res.Attempt.Latency = time.Since(start)
	return res
}

// attempt is one callback attempt being made.
type attempt struct {
	rec     *store.Record
	cb      rules.Callback
	guard   Guard
	n       int // 1-based attempt number
	secrets []webhook.Secret
	// authorization and cert are the receiver auth of the callback
	// (authorize): an Authorization value, a TLS client certificate.
	authorization string
	cert          *tls.Certificate
}

// sign returns the signed headers of body (no signature without a secret).
func (a *attempt) sign(body []byte) http.Header {
	h := http.Header{}
	webhook.Sign(h, a.secrets, a.rec.ID, time.Now(), body)
	if len(a.secrets) == 0 {
		h.Del(webhook.HeaderSignature)
	}
	h.Set("x-async-trace-id", a.rec.TraceID)
	h.Set("x-async-request-id", a.rec.ID)
	if a.authorization != "" {
		h.Set("authorization", a.authorization)
	}
	return h
}

// retry is a failed attempt to try again after the rule's backoff.
func (a *attempt) retry(code int, err string) Result {
	return Result{Outcome: Retry, Wait: Backoff(a.rec.Envelope.Retry, a.n), Attempt: store.Attempt{StatusCode: code, Error: err}}
}

// throttled is a failed attempt whose receiver asked for a wait (Retry-After).
func (a *attempt) throttled(code int, err string, retryAfter time.Duration) Result {
	res := a.retry(code, err)
	res.Wait = min(retryAfter, a.rec.Envelope.Retry.MaxBackoff.D())
	return res
}

// refused is an attempt whose destination the guard refused.
func (a *attempt) refused(err string) Result {
	return Result{Outcome: Refused, Attempt: store.Attempt{Error: err}}
}

// failed is a failed attempt: refused when the guard refused the
// destination, else retried.
func (a *attempt) failed(err error) Result {
	if IsRefusal(err) {
		return a.refused(err.Error())
	}
	return a.retry(0, err.Error())
}

func (s *Sender) send(ctx context.Context, r *store.Record, n int) Result {
	cb, fromCaller := r.Envelope.Callback, r.Envelope.CallbackFromCaller
	a := &attempt{rec: r, cb: cb, guard: GuardFor(cb, fromCaller), n: n}
	if fromCaller {
		a.cb = cb.ForCaller()
		if r.Envelope.Caller != "" {
			// A declared caller's own auth (rules.Callback.WithCaller, by the
			// filter and applyRules after ForCaller; its envelope is signed).
			a.cb.Auth = cb.Auth
		}
		if err := a.cb.CheckCallerURL(a.cb.URL); err != nil {
			return a.refused(fmt.Sprintf("%v: %v", ErrHostNotAllowed, err))
		}
	}
	var err error
	if a.secrets, err = s.signingSecrets(a.cb); err != nil {
		return a.retry(0, err.Error())
	}
	payload := NewPayload(r)
	ctx, cancel := context.WithTimeout(ctx, s.Timeout)
	defer cancel()
	if err := s.authorize(ctx, a); err != nil {
		return a.retry(0, "callback auth: "+err.Error())
	}
	send, ok := senders[a.cb.Protocol]
	if !ok {
		return a.retry(0, "unknown callback protocol "+a.cb.Protocol)
	}
	return send(s, ctx, a, payload)
}

// signingSecrets resolves the secrets that sign cb: its caller's active
// signing secrets (all of them during a rotation's grace), or the rule's
// secretRef; none leaves the callback unsigned.
func (s *Sender) signingSecrets(cb rules.Callback) ([]webhook.Secret, error) {
	if len(cb.Signing) == 0 {
		if cb.SecretRef == "" {
			return nil, nil
		}
		return s.Secrets.Lookup(cb.SecretRef)
	}
	var out []webhook.Secret
	now := time.Now()
	for _, sg := range cb.Signing {
		if !sg.Active(now) {
			continue
		}
		ss, err := s.Secrets.Lookup(sg.SecretRef)
		if err != nil {
			return nil, err
		}
		out = append(out, ss...)
	}
	if len(out) == 0 {
		return nil, errors.New("every signing secret of the caller has ended (callers[].signing[].until): refusing to send its callback unsigned")
	}
	return out, nil
}

// sendFunc makes one attempt of a protocol and classifies its outcome.
type sendFunc func(s *Sender, ctx context.Context, a *attempt, p Payload) Result

// senders is the sending half of the callback protocol registry, filled by
// each protocol's file (http.go, soap.go, grpc.go, amqp.go) with register.
// The configuration half (URL schemes, allowed fields, docs line) is
// rules.Protocols, in a package light enough for the Wasm filter;
// TestProtocolRegistry checks that both name the same protocols.
var senders = map[string]sendFunc{}

// register adds a protocol's sender; called from init, so a name registered
// twice is a programming error.
func register(name string, send sendFunc) {
	if _, dup := senders[name]; dup {
		panic("delivery: protocol " + name + " registered twice")
	}
	senders[name] = send
}

// RetryPolicy is the retry policy of a callback rule: retry.initialBackoff
// doubling up to retry.maxBackoff with full jitter, as docs/rules.md says
// (the rule's defaults where a field is unset).
func RetryPolicy(p rules.Retry) retry.Exponential {
	initial := p.InitialBackoff.D()
	if initial <= 0 {
		initial = rules.DefaultInitialBackoff
	}
	maxB := p.MaxBackoff.D()
	if maxB <= 0 {
		maxB = rules.DefaultMaxBackoff
	}
	return retry.Exponential{Initial: initial, Max: maxB}
}

// Backoff is the wait after failed attempt n (1-based): uniform in
// [0, min(max, initial·2^(n-1))].
func Backoff(p rules.Retry, n int) time.Duration { return RetryPolicy(p).Delay(n) }

// ParseRetryAfter reads a Retry-After value: delay-seconds or an HTTP date.
func ParseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n < 0 || n > 86400 {
			return 0, false
		}
		return time.Duration(n) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(t.Sub(now), 0), true
	}
	return 0, false
}

// encode renders the payload as JSON, sealed when the callback's rule says
// so (the signature then covers the sealed bytes).
func (s *Sender) encode(a *attempt, p Payload) ([]byte, string, error) {
	b, err := json.Marshal(p)
	if err != nil {
		return nil, "", fmt.Errorf("encoding payload: %w", err)
	}
	enc := a.cb.Encryption
	if enc == nil {
		return b, "application/json", nil
	}
	v, err := s.Secrets.Value(enc.KeyRef)
	if err != nil {
		return nil, "", err
	}
	key, err := seal.ParseKey(v)
	if err != nil {
		return nil, "", fmt.Errorf("secret %s: %w", enc.KeyRef, err)
	}
	return seal.Seal(enc.Type, key, a.rec.ID, b)
}
