// Package store defines the system of record of asyncmesh: one Record per
// accepted request, moved through the status lifecycle of
// docs/architecture.md by compare-and-set transitions that keep a
// timestamped history.
//
// Implementations: collector/embedded (SQLite, the default) and
// collector/elastic (Elasticsearch). Every implementation must pass
// storetest.Run.
package store

import (
	"context"
	"errors"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/queue"
	"github.com/asyncmesh/asyncmesh/internal/envelope"
)

// Status is a record's place in the lifecycle.
type Status string

// The lifecycle: persisted → queued → processing → completed | failed →
// delivering → delivered | dead; a delivery whose endpoint is disabled is
// held (delivering ⇄ held) until the endpoint is enabled again.
const (
	Persisted  Status = "persisted"
	Queued     Status = "queued"
	Processing Status = "processing"
	Completed  Status = "completed"
	Failed     Status = "failed"
	Delivering Status = "delivering"
	Held       Status = "held"
	Delivered  Status = "delivered"
	Dead       Status = "dead"
)

var rank = map[Status]int{
	Persisted: 0, Queued: 1, Processing: 2, Completed: 3, Failed: 3,
	Delivering: 4, Held: 4, Delivered: 5, Dead: 5,
}

// Statuses returns every status, in lifecycle order.
func Statuses() []Status {
	return []Status{Persisted, Queued, Processing, Completed, Failed, Delivering, Held, Delivered, Dead}
}

// Valid reports whether s is a known status.
func (s Status) Valid() bool { _, ok := rank[s]; return ok }

// Terminal reports whether no further transition happens without a replay.
func (s Status) Terminal() bool { return s == Delivered || s == Dead }

// HasResult reports whether the request has been executed (its response is known).
func (s Status) HasResult() bool { return rank[s] >= rank[Completed] }

// Forward reports whether from → to moves forward in the lifecycle (or
// stays): every event but Replay does (lifecycle_test.go).
func Forward(from, to Status) bool {
	f, ok1 := rank[from]
	t, ok2 := rank[to]
	return ok1 && ok2 && t >= f
}

// Response is the service's answer to the replayed request.
type Response struct {
	Status  int         `json:"status"`
	Headers [][2]string `json:"headers,omitempty"`
	Body    []byte      `json:"body,omitempty"`
}

// Attempt is one callback delivery attempt: what was sent and what the
// receiver answered, so that an operator can see why a receiver refused.
// Everything in it is bounded and free of secrets (collector/delivery,
// attemptlog.go): it is kept for every attempt of every record.
type Attempt struct {
	At         time.Time     `json:"at"`
	StatusCode int           `json:"statusCode,omitempty"`
	Latency    time.Duration `json:"latency"`
	Error      string        `json:"error,omitempty"`
	// Request is nil when the attempt failed before sending (no secret, a
	// refused host); Response is nil when no answer came (connection
	// refused, timeout, no broker confirm).
	Request  *AttemptRequest  `json:"request,omitempty"`
	Response *AttemptResponse `json:"response,omitempty"`
}

// AttemptRequest is what an attempt sent, without its body: the body is the
// callback payload, which the record already holds.
type AttemptRequest struct {
	// Method is the HTTP method, the gRPC full method name, or
	// "basic.publish" (amqp).
	Method string `json:"method"`
	// URL is the destination without user info, secret-looking query values
	// replaced by "[redacted]".
	URL string `json:"url"`
	// Headers are the headers (gRPC metadata, AMQP headers) sent, names in
	// lower case, credential-bearing values (the webhook signature included)
	// replaced by "[redacted]".
	Headers          [][2]string `json:"headers,omitempty"`
	HeadersTruncated bool        `json:"headersTruncated,omitempty"`
	BodySize         int         `json:"bodySize"`
	ContentType      string      `json:"contentType,omitempty"`
}

// AttemptResponse is the receiver's answer, cut to a bounded size.
type AttemptResponse struct {
	// Status is the HTTP status line ("503 Service Unavailable"), the gRPC
	// code as grpc-go names it ("Unavailable", as in Error), or the broker's
	// answer (amqp: "ack", "nack", "returned").
	Status string `json:"status"`
	// Message is the gRPC status message, or the reply code and text of an
	// AMQP return.
	Message string `json:"message,omitempty"`
	// Headers are the HTTP headers, or the gRPC header and trailer metadata,
	// redacted as the request's.
	Headers          [][2]string `json:"headers,omitempty"`
	HeadersTruncated bool        `json:"headersTruncated,omitempty"`
	// Body is the first KiB of the HTTP body; base64 (BodyEncoding) when it
	// is not UTF-8.
	Body          string `json:"body,omitempty"`
	BodyEncoding  string `json:"bodyEncoding,omitempty"`
	BodyTruncated bool   `json:"bodyTruncated,omitempty"`
}

// Record is one accepted request.
type Record struct {
	ID       string             `json:"id"`
	TraceID  string             `json:"traceId"`
	Rule     string             `json:"rule"`
	Status   Status             `json:"status"`
	Envelope *envelope.Envelope `json:"envelope"`
	Response *Response          `json:"response,omitempty"`
	Error    string             `json:"error,omitempty"`
	History  []Transition       `json:"history"`
	Attempts []Attempt          `json:"attempts,omitempty"`
	// LeaseUntil is set while a worker owns the record in processing or
	// delivering (or while a delivery retry is scheduled): another copy of the
	// message waits for it instead of running the request or the callback
	// twice. It is on the store's clock (Store.Now).
	LeaseUntil time.Time `json:"leaseUntil,omitzero"`
	// Endpoint is the callback endpoint (EndpointID) whose being disabled
	// held the record, set by Hold (Change.Endpoint) and kept after: with
	// Status held, Query.Endpoint finds an endpoint's held deliveries
	// without reading the others'.
	Endpoint  string    `json:"endpoint,omitempty"`
	CreatedAt time.Time `json:"createdAt"`
	UpdatedAt time.Time `json:"updatedAt"`
}

// Query selects records; empty fields match all. Results are ordered by id
// (creation time); Cursor is the last id of the previous page. Caller and
// Package are the envelope's (the caller's name, the rule's package);
// Endpoint is the record's (set when it was held); Since and Until bound
// the creation time.
type Query struct {
	TraceID  string
	Status   Status
	Rule     string
	Caller   string
	Package  string
	Endpoint string
	Since    time.Time
	Until    time.Time
	Cursor   string
	Limit    int
	// Desc orders the results by id descending, newest first (the
	// dashboard's log); Cursor is then the last id of the previous page
	// still, and the next page holds the older ones.
	Desc bool
}

// Counter is a store that counts the records a Query selects, its Cursor
// and Limit aside: the operator's "how many match" (GET
// /v1/requests/count, the dry run of a bulk replay) without paging
// through them. Both stores are Counters (storetest checks it).
type Counter interface {
	Count(ctx context.Context, q Query) (int64, error)
}

// ChangeCursor is a place in the order of changes: a record's UpdatedAt,
// then its id, at the store's precision (Elasticsearch keeps milliseconds).
type ChangeCursor struct {
	At time.Time
	ID string
}

// ChangeLister is a store that lists records by the time of their last
// change: the operator's stream (GET /v1/stream) polls it, so that it sees
// the changes every collector on the store makes, not only its own. Both
// stores are ChangeListers (storetest checks it).
type ChangeLister interface {
	// Changes returns up to limit records of q (its Cursor and Limit aside)
	// whose (UpdatedAt, ID) comes after after, in that order, without
	// bodies. Like Search it may see a write late (Elasticsearch: after
	// the next refresh), and a change is stamped before it is written: a
	// poller looks back a little and drops what it has seen.
	Changes(ctx context.Context, q Query, after ChangeCursor, limit int) ([]*Record, error)
}

// MaxLimit bounds one page.
const MaxLimit = 500

// Page is one page of search results; Next is "" on the last page.
type Page struct {
	Records []*Record `json:"records"`
	Next    string    `json:"next,omitempty"`
}

// PageLimit is the page size of q: Limit, or MaxLimit when unset or larger.
// Implementations fetch one record more to know whether a next page exists.
func (q Query) PageLimit() int {
	if q.Limit <= 0 || q.Limit > MaxLimit {
		return MaxLimit
	}
	return q.Limit
}

// NewPage cuts recs (fetched with PageLimit()+1, in id order) into a page.
func NewPage(recs []*Record, limit int) Page {
	if len(recs) <= limit {
		return Page{Records: recs}
	}
	return Page{Records: recs[:limit], Next: recs[limit-1].ID}
}

// Store is the system of record.
type Store interface {
	// Create persists a new record (its History holds the first transition). It
	// returns only once the record is durable: intake answers 202 after it.
	Create(ctx context.Context, r *Record) error
	// Transition applies a compare-and-set change, at the store's time, and
	// returns the new record.
	Transition(ctx context.Context, id string, c Change) (*Record, error)
	Get(ctx context.Context, id string) (*Record, error)
	Search(ctx context.Context, q Query) (Page, error)
	// Stale lists records in status s last updated before before, oldest first:
	// the outbox relay's and the sweeper's work list.
	Stale(ctx context.Context, s Status, before time.Time, limit int) ([]*Record, error)
	// Ping reports whether the store can take writes.
	Ping(ctx context.Context) error
	// Now is the store's clock: changes are stamped and leases measured by
	// it, so that collectors whose own clocks disagree share leases safely.
	Now() time.Time
	Close() error
}

// Outbox is a store that publishes on a queue in the same commit as a write
// (the embedded store, whose queue is a table of the same database): a
// record and its next message are never apart, whatever crashes. The
// collector uses it when Outbox().Queue() is its queue; other stores write,
// then publish, and the relay and the sweeper cover a crash in between.
// storetest.RunOutbox is its part of the conformance suite.
type Outbox interface {
	Store
	// Queue is the queue this store publishes on.
	Queue() queue.Queue
	// CreatePublish creates r and publishes m (when not nil) in one commit.
	CreatePublish(ctx context.Context, r *Record, m *queue.Message) error
	// TransitionPublish applies c and publishes m (when not nil) in one commit.
	TransitionPublish(ctx context.Context, id string, c Change, m *queue.Message) (*Record, error)
}

// OutboxFor returns s as an Outbox publishing on q, or nil when it is not
// one, or publishes on another queue.
func OutboxFor(s Store, q queue.Queue) Outbox {
	if o, ok := s.(Outbox); ok && o.Queue() == q {
		return o
	}
	return nil
}

// Peeker is a Store that reads a record without its request and response
// bodies (Envelope.Body and Response.Body empty): long-polls and event
// streams read records often and render no body.
type Peeker interface {
	Peek(ctx context.Context, id string) (*Record, error)
}

// Peek reads record id without its bodies where s can, whole otherwise.
func Peek(ctx context.Context, s Store, id string) (*Record, error) {
	if p, ok := s.(Peeker); ok {
		return p.Peek(ctx, id)
	}
	return s.Get(ctx, id)
}

// Errors.
var (
	ErrNotFound = errors.New("record not found")
	ErrExists   = errors.New("record already exists")
	// ErrUnavailable marks a failed write that certainly did not happen: the
	// store is closed, or its server was never reached (no connection to be
	// had: refused, unresolvable). A store wraps it only when sure. Any other
	// failed write may have committed all the same (a timeout, a connection
	// lost mid-request, an answer lost), and a caller that must know reads
	// the record back.
	ErrUnavailable = errors.New("store unavailable: nothing was written")
)

// ConflictError is returned when a Change's From or Claim does not hold.
type ConflictError struct {
	ID      string
	Current Status
	Want    Status
	// LeasedUntil is set when the record is leased to another worker.
	LeasedUntil time.Time
}

func (e *ConflictError) Error() string {
	if !e.LeasedUntil.IsZero() {
		return "record " + e.ID + " is leased until " + e.LeasedUntil.Format(time.RFC3339Nano)
	}
	return "record " + e.ID + " is " + string(e.Current) + ", cannot move to " + string(e.Want)
}

// LeasedUntil reports until when err says the record is leased.
func LeasedUntil(err error) (time.Time, bool) {
	var c *ConflictError
	if errors.As(err, &c) && !c.LeasedUntil.IsZero() {
		return c.LeasedUntil, true
	}
	return time.Time{}, false
}

// IsConflict reports whether err is a ConflictError.
func IsConflict(err error) bool {
	var c *ConflictError
	return errors.As(err, &c)
}

// NewRecord returns the record of a freshly accepted envelope, status persisted.
func NewRecord(e *envelope.Envelope, now time.Time) *Record {
	now = now.UTC()
	return &Record{
		ID: e.ID, TraceID: e.TraceID, Rule: e.Rule, Status: Persisted, Envelope: e,
		History:   []Transition{{Status: Persisted, At: now}},
		CreatedAt: now, UpdatedAt: now,
	}
}
