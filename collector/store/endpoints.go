package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"time"
)

// Endpoint is the health of one callback endpoint — a URL of a caller, by
// protocol — shared by every collector of a store: each merges its own
// attempts in (UpdateEndpoint), so that consecutive failures count across
// collectors and a disabled endpoint is disabled for all of them.
type Endpoint struct {
	ID       string `json:"id"`
	URL      string `json:"url"`
	Protocol string `json:"protocol"`
	Caller   string `json:"caller,omitempty"`
	// Attempts and Successes are recent counts (halved as they age, see
	// Observe): their ratio is the endpoint's recent success ratio.
	Attempts            int64 `json:"attempts"`
	Successes           int64 `json:"successes"`
	ConsecutiveFailures int64 `json:"consecutiveFailures"`
	// FailingSince is when the consecutive failures began (zero while the
	// last attempt succeeded), to the merge's second.
	FailingSince time.Time `json:"failingSince,omitzero"`
	Since        time.Time `json:"since,omitzero"` // start of the counts
	LastSuccess  time.Time `json:"lastSuccess,omitzero"`
	LastFailure  time.Time `json:"lastFailure,omitzero"`
	// Disabled endpoints get no attempts: their deliveries are held until
	// an operator enables the endpoint again.
	Disabled   bool      `json:"disabled"`
	DisabledAt time.Time `json:"disabledAt,omitzero"`
	Reason     string    `json:"reason,omitempty"`
	UpdatedAt  time.Time `json:"updatedAt"`
	// Limiters share a limited endpoint's budget (limits.go).
	Limiters []EndpointLimiter `json:"limiters,omitempty"`
}

// EndpointID identifies the endpoint of a callback: its URL and protocol,
// per caller (the same URL of two callers is two endpoints).
func EndpointID(caller, protocol, url string) string {
	sum := sha256.Sum256([]byte(caller + "\n" + protocol + "\n" + url))
	return hex.EncodeToString(sum[:16])
}

// SuccessRatio is Successes / Attempts (1 without attempts).
func (e *Endpoint) SuccessRatio() float64 {
	if e.Attempts == 0 {
		return 1
	}
	return float64(e.Successes) / float64(e.Attempts)
}

// EndpointWindow is how long attempts count fully in the success ratio:
// past it the counts are halved, so the ratio follows recent attempts.
const EndpointWindow = 24 * time.Hour

// Observe merges a collector's attempts since its last merge: attempts and
// successes, the failures since its last success (all of them when none
// succeeded), and when the last of each happened.
func (e *Endpoint) Observe(d EndpointDelta, now time.Time) {
	if e.Since.IsZero() {
		e.Since = now
	}
	if now.Sub(e.Since) > EndpointWindow {
		e.Attempts, e.Successes, e.Since = e.Attempts/2, e.Successes/2, now.Add(-EndpointWindow/2)
	}
	e.Attempts += d.Attempts
	e.Successes += d.Successes
	if d.Successes > 0 && !d.LastSuccess.Before(e.LastFailure) {
		e.ConsecutiveFailures = d.FailuresSinceSuccess
		e.FailingSince = time.Time{}
	} else {
		e.ConsecutiveFailures += d.Attempts - d.Successes
	}
	if e.ConsecutiveFailures > 0 && e.FailingSince.IsZero() {
		e.FailingSince = now
	}
	if d.LastSuccess.After(e.LastSuccess) {
		e.LastSuccess = d.LastSuccess
	}
	if d.LastFailure.After(e.LastFailure) {
		e.LastFailure = d.LastFailure
	}
	e.UpdatedAt = now
}

// EndpointDelta is one collector's attempts at an endpoint since its last
// merge.
type EndpointDelta struct {
	Attempts, Successes      int64
	FailuresSinceSuccess     int64 // failed attempts after the last success of the delta
	LastSuccess, LastFailure time.Time
}

// Then adds next, a delta counted after d, to d.
func (d *EndpointDelta) Then(next EndpointDelta) {
	d.Attempts += next.Attempts
	d.Successes += next.Successes
	if next.Successes > 0 {
		d.FailuresSinceSuccess, d.LastSuccess = next.FailuresSinceSuccess, next.LastSuccess
	} else {
		d.FailuresSinceSuccess += next.FailuresSinceSuccess
	}
	if next.LastFailure.After(d.LastFailure) {
		d.LastFailure = next.LastFailure
	}
}

// EndpointQuery lists endpoints in id order after After (a cursor), at most
// Limit (MaxLimit when 0), only the disabled ones when DisabledOnly.
type EndpointQuery struct {
	DisabledOnly bool
	After        string
	Limit        int
}

// MaxEndpointUpdateRetries bounds the re-reads of UpdateEndpoint.
const MaxEndpointUpdateRetries = 20

// Endpoints is a store that keeps endpoint health (both stores do; the
// conformance suite's "Endpoints" part checks it).
type Endpoints interface {
	// UpdateEndpoint applies fn to the endpoint's state (a new Endpoint
	// with its ID when there is none) by compare-and-set, again on a
	// conflict, and returns what was written.
	UpdateEndpoint(ctx context.Context, id string, fn func(*Endpoint) error) (*Endpoint, error)
	// GetEndpoint returns ErrNotFound for an endpoint never written.
	GetEndpoint(ctx context.Context, id string) (*Endpoint, error)
	ListEndpoints(ctx context.Context, q EndpointQuery) ([]*Endpoint, error)
}

// EndpointsOf returns s's endpoint health, when it keeps it.
func EndpointsOf(s Store) (Endpoints, bool) {
	e, ok := s.(Endpoints)
	return e, ok
}
