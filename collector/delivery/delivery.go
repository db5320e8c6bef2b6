// Package delivery calls the caller back: it builds the callback payload, signs it
// (Standard Webhooks v1), posts it through an SSRF-guarded client and classifies
// the answer into delivered, retry (with the backoff to wait) or gone.
//
// Policy (DESIGN.md): 2xx delivered; 410 gone, stop; 429 and 503 honour
// Retry-After; anything else, including redirects, which are never followed, is
// retried with exponential backoff and full jitter until the rule's maxAttempts,
// then the record is dead (and replayable).
package delivery

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/asyncmesh/asyncmesh/collector/store"
	"github.com/asyncmesh/asyncmesh/internal/rules"
	"github.com/asyncmesh/asyncmesh/internal/webhook"
)

// Outcome classifies one attempt.
type Outcome int

const (
	Delivered Outcome = iota // 2xx
	Retry                    // try again after Result.Wait
	Gone                     // 410: the endpoint asked us to stop
)

// Result of one attempt.
type Result struct {
	Outcome Outcome
	Wait    time.Duration // for Retry
	Attempt store.Attempt
}

// Secrets resolves a secret reference to the active signing secrets (more than
// one during a rotation).
type Secrets interface {
	Lookup(ref string) ([]webhook.Secret, error)
}

// Sender posts callbacks.
type Sender struct {
	Secrets Secrets
	Timeout time.Duration // per attempt; default 10s
	guarded *http.Client
	open    *http.Client
}

// NewSender returns a sender; its clients refuse private addresses unless the
// record's callback allows them.
func NewSender(secrets Secrets, timeout time.Duration) *Sender {
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	return &Sender{Secrets: secrets, Timeout: timeout, guarded: newClient(false), open: newClient(true)}
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

// Send makes one delivery attempt of r's callback.
func (s *Sender) Send(ctx context.Context, r *store.Record) Result {
	start := time.Now()
	res := s.send(ctx, r)
	res.Attempt.At = start.UTC()
	res.Attempt.Latency = time.Since(start)
	return res
}

func (s *Sender) send(ctx context.Context, r *store.Record) Result {
	cb := r.Envelope.Callback
	attempt := len(r.Attempts) + 1
	retry := func(err string) Result {
		return Result{Outcome: Retry, Wait: Backoff(r.Envelope.Retry, attempt), Attempt: store.Attempt{Error: err}}
	}
	if cb.Protocol != rules.ProtocolHTTP {
		return retry("callback protocol " + cb.Protocol + " is not supported by this collector yet")
	}
	var secrets []webhook.Secret
	if cb.SecretRef != "" {
		var err error
		if secrets, err = s.Secrets.Lookup(cb.SecretRef); err != nil {
			return retry(err.Error())
		}
	}
	body, err := json.Marshal(NewPayload(r))
	if err != nil {
		return retry("encoding payload: " + err.Error())
	}
	ctx, cancel := context.WithTimeout(ctx, s.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, cb.URL, bytes.NewReader(body))
	if err != nil {
		return retry("building request: " + err.Error())
	}
	req.Header.Set("content-type", "application/json")
	req.Header.Set("user-agent", "asyncmesh-collector")
	req.Header.Set("x-async-trace-id", r.TraceID)
	req.Header.Set("x-async-request-id", r.ID)
	webhook.Sign(req.Header, secrets, r.ID, time.Now(), body)
	if len(secrets) == 0 {
		req.Header.Del(webhook.HeaderSignature)
	}
	client := s.guarded
	if cb.AllowPrivate {
		client = s.open
	}
	resp, err := client.Do(req)
	if err != nil {
		return retry(err.Error())
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	a := store.Attempt{StatusCode: resp.StatusCode}
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return Result{Outcome: Delivered, Attempt: a}
	case resp.StatusCode == http.StatusGone:
		a.Error = "endpoint answered 410 Gone"
		return Result{Outcome: Gone, Attempt: a}
	}
	a.Error = "endpoint answered " + strconv.Itoa(resp.StatusCode)
	wait := Backoff(r.Envelope.Retry, attempt)
	if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable {
		if d, ok := ParseRetryAfter(resp.Header.Get("retry-after"), time.Now()); ok {
			wait = min(d, r.Envelope.Retry.MaxBackoff.D())
		}
	}
	return Result{Outcome: Retry, Wait: wait, Attempt: a}
}

// Backoff is the wait after failed attempt n (1-based): a uniformly random
// duration in [0, min(max, initial·2^(n-1))] ("full jitter").
func Backoff(p rules.Retry, n int) time.Duration {
	ceil := p.InitialBackoff.D()
	if ceil <= 0 {
		ceil = rules.DefaultInitialBackoff
	}
	maxB := p.MaxBackoff.D()
	if maxB <= 0 {
		maxB = rules.DefaultMaxBackoff
	}
	for i := 1; i < n && ceil < maxB; i++ {
		ceil *= 2
	}
	ceil = min(ceil, maxB)
	return time.Duration(rand.Int64N(int64(ceil) + 1))
}

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

// ErrPrivateAddress is returned when a callback resolves to an address the
// rule does not allow.
var ErrPrivateAddress = errors.New("callback address is loopback, private, link-local or metadata; the rule does not allow it")

func errAt(ip string) error { return fmt.Errorf("%w (%s)", ErrPrivateAddress, ip) }
