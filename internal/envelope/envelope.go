// Package envelope is the intake contract between the Wasm filter and the collector:
// everything the collector needs to persist, replay and call back one async request.
// It is JSON on the wire (POST /v1/intake on the collector) and the stored form of
// the request in every Store.
package envelope

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/asyncmesh/asyncmesh/internal/access"
	"github.com/asyncmesh/asyncmesh/internal/idempotency"
	"github.com/asyncmesh/asyncmesh/internal/rules"
	"github.com/asyncmesh/asyncmesh/internal/trace"

	"github.com/asyncmesh/asyncmesh/internal/strict"
)

// Version of the envelope format.
const Version = 1

// Envelope is one accepted async request.
type Envelope struct {
	Version     int    `json:"v"`
	ID          string `json:"id"`
	TraceID     string `json:"traceId"`
	TraceParent string `json:"traceparent"`
	XRequestID  string `json:"xRequestId,omitempty"`
	Rule        string `json:"rule"`
	// Caller names the declared caller (rules file callers:) that the mesh
	// authenticated the request as; empty for an anonymous caller. Principal
	// is the identity it was recognized by (the peer certificate's URI SAN,
	// or the JWT's issuer and subject). The filter vouches for both with
	// the intake signature (IntakeSignature).
	Caller    string `json:"caller,omitempty"`
	Principal string `json:"principal,omitempty"`
	// Package is the rule's package (rules file packages:), if any.
	Package string `json:"package,omitempty"`
	// AccessHash is the hash of the access token the caller got in the 202
	// (internal/access): reading the request through the caller-facing API
	// needs the token. Empty on requests accepted before tokens existed:
	// only operators read those.
	AccessHash string `json:"accessHash,omitempty"`

	Method    string      `json:"method"`
	Scheme    string      `json:"scheme,omitempty"`
	Authority string      `json:"authority"`
	Path      string      `json:"path"`
	Headers   [][2]string `json:"headers,omitempty"`
	Body      []byte      `json:"body,omitempty"`

	Callback rules.Callback `json:"callback"`
	// CallbackFromCaller is set when the caller chose the callback URL or
	// protocol (x-async-callback*): live rule changes then keep them.
	CallbackFromCaller bool `json:"callbackFromCaller,omitempty"`
	// CallbackTarget is the key of the rule's callback.select target that the
	// request chose: live rule changes re-resolve it.
	CallbackTarget string `json:"callbackTarget,omitempty"`
	// Target is the rule's target when it is external (nil: internal).
	Target  *rules.Target  `json:"target,omitempty"`
	Retry   rules.Retry    `json:"retry"`
	Timeout rules.Duration `json:"timeout"`
	// Wait is how long the caller is willing to hold the answer (Prefer: wait=N).
	Wait rules.Duration `json:"wait,omitempty"`
	// Deadline is when the filter stops waiting for intake's answer (Unix
	// milliseconds; 0 from filters that predate it): past it the caller was
	// answered 503 or served synchronously, so a request intake could not
	// accept in time must never run (see the collector's deadline.go).
	Deadline int64 `json:"deadline,omitempty"`
	// IdempotencyKey is the caller's Idempotency-Key (parsed: without the
	// sf-string's quotes), and IdempotencyWindow how long it holds (the
	// rule's idempotencyWindow): intake creates no second job for the same
	// key from the same Caller on the same Rule within it
	// (internal/idempotency, the collector's idempotency.go).
	IdempotencyKey    string         `json:"idempotencyKey,omitempty"`
	IdempotencyWindow rules.Duration `json:"idempotencyWindow,omitempty"`
	// OrderKey is the value of the rule's ordering parameter (rules.Ordering),
	// set by the filter: requests of one Rule with one OrderKey run and are
	// called back in intake order, one at a time (the collector's
	// ordering.go). Empty: not ordered.
	OrderKey string `json:"orderKey,omitempty"`
	// OrderAfter is the request taken into the key's sequence just before
	// this one, set by intake (never by the filter: intake refuses an
	// envelope that carries it).
	OrderAfter *OrderLink `json:"orderAfter,omitempty"`
	// OrderEarlier are the requests taken into the key before OrderAfter,
	// newest first (store.MaxOrderLinks in all), also set by intake: when
	// OrderAfter never ran (its intake failed after its link was written),
	// the request's turn depends on these.
	OrderEarlier []OrderLink `json:"orderEarlier,omitempty"`
}

// OrderLink names the request before another in an ordering key's
// sequence, and its intake deadline (Unix milliseconds): past it, and the
// workers' grace, a predecessor without a record was never written (a
// crash between the key's write and the record's) and blocks nothing.
type OrderLink struct {
	ID       string `json:"id"`
	Deadline int64  `json:"deadline,omitempty"`
}

// DeadlineTime is Deadline as a time (zero when unset).
func (e *Envelope) DeadlineTime() time.Time {
	if e.Deadline == 0 {
		return time.Time{}
	}
	return time.UnixMilli(e.Deadline)
}

// MaxWait bounds Wait: the filter caps Prefer: wait=N to it and the collector
// refuses more.
const MaxWait = 60 * time.Second

// MaxSize bounds an encoded envelope: the largest body limit plus headers, in
// base64.
const MaxSize = rules.MaxBodyLimit*4/3 + 1<<20

// Decode parses and validates an envelope strictly; errors name the field.
func Decode(data []byte) (*Envelope, error) {
	var e Envelope
	if err := strict.Decode(data, &e); err != nil {
		return nil, fmt.Errorf("decoding envelope: %w", err)
	}
	return &e, e.Validate()
}

// Validate checks every field the collector relies on.
func (e *Envelope) Validate() error {
	switch {
	case e.Version != Version:
		return fmt.Errorf("v: unsupported envelope version %d", e.Version)
	case !trace.ValidRequestID(e.ID):
		return fmt.Errorf("id: %q is not a UUIDv7", e.ID)
	case !trace.ValidTraceID(e.TraceID):
		return fmt.Errorf("traceId: %q is not 32 lower-case hex digits", e.TraceID)
	case e.AccessHash != "" && !access.ValidHash(e.AccessHash):
		return errors.New("accessHash: not a token hash (43 base64url characters)")
	case e.Rule == "":
		return errors.New("rule: required")
	case e.Method == "" || strings.ToUpper(e.Method) != e.Method || strings.ContainsAny(e.Method, " \r\n"):
		return fmt.Errorf("method: %q is not an HTTP method", e.Method)
	case e.Authority == "":
		return errors.New("authority: required")
	case !strings.HasPrefix(e.Path, "/"):
		return fmt.Errorf("path: %q must start with /", e.Path)
	case e.Timeout <= 0:
		return errors.New("timeout: must be positive")
	case e.Retry.MaxAttempts < 1:
		return errors.New("retry.maxAttempts: must be at least 1")
	case e.Wait < 0 || e.Wait.D() > MaxWait:
		return fmt.Errorf("wait: must be between 0 and %s", MaxWait)
	case e.Deadline < 0:
		return errors.New("deadline: must be Unix milliseconds")
	case e.IdempotencyKey != "" && !idempotency.ValidKey(e.IdempotencyKey):
		return fmt.Errorf("idempotencyKey: want 1 to %d bytes of printable ASCII", idempotency.MaxKeyLen)
	case e.IdempotencyKey != "" && (e.IdempotencyWindow < rules.Duration(time.Second) || e.IdempotencyWindow.D() > idempotency.MaxWindow):
		return fmt.Errorf("idempotencyWindow: must be between 1s and %s with an idempotencyKey", idempotency.MaxWindow)
	case e.IdempotencyKey == "" && e.IdempotencyWindow != 0:
		return errors.New("idempotencyWindow: set without an idempotencyKey")
	case e.OrderKey != "" && !rules.ValidOrderKey(e.OrderKey):
		return fmt.Errorf("orderKey: want 1 to %d bytes of printable ASCII", rules.MaxOrderKeyLen)
	case e.OrderAfter != nil:
		// Only intake links a request to its predecessor: one that came
		// with the envelope could make a request wait for any other.
		return errors.New("orderAfter: set by the collector, not in an envelope")
	case e.OrderEarlier != nil:
		return errors.New("orderEarlier: set by the collector, not in an envelope")
	}
	if _, ok := trace.ParseParent(e.TraceParent); !ok {
		return fmt.Errorf("traceparent: %q is not a W3C traceparent", e.TraceParent)
	}
	if err := rules.CheckProtocol(e.Callback.Protocol); err != nil {
		return fmt.Errorf("callback.protocol: %w", err)
	}
	if e.Callback.Select != nil {
		return errors.New("callback.select: an envelope carries the chosen target, not the choice")
	}
	if err := rules.CheckCallbackURLFor(e.Callback.Protocol, e.Callback.URL); err != nil {
		return fmt.Errorf("callback.url: %w", err)
	}
	if err := rules.CheckLimits(e.Callback.RateLimit, e.Callback.MaxInFlight); err != nil {
		return fmt.Errorf("callback.%w", err)
	}
	for i, h := range e.Headers {
		if h[0] == "" || strings.ContainsAny(h[0], " :\r\n") || strings.ContainsAny(h[1], "\r\n") {
			return fmt.Errorf("headers[%d]: invalid header %q", i, h[0])
		}
	}
	return nil
}
