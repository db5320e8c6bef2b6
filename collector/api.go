package collector

import (
	"context"
	"crypto/subtle"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/delivery"
	"github.com/asyncmesh/asyncmesh/collector/store"
	"github.com/asyncmesh/asyncmesh/internal/access"
	"github.com/asyncmesh/asyncmesh/internal/envelope"
	"github.com/asyncmesh/asyncmesh/internal/hop"
	"github.com/asyncmesh/asyncmesh/internal/replay"
	"github.com/asyncmesh/asyncmesh/internal/rules"
)

// OpenAPI is the API's description (served at /v1/openapi.yaml; a test
// checks the server against it).
//
//go:embed openapi.yaml
var OpenAPI []byte

// MaxWait bounds ?wait= long-polls.
const MaxWait = 60 * time.Second

// Handler returns the collector's HTTP API as the sidecar's Envoy reaches
// it (docs/security.md has who may call what):
//
//	POST /v1/intake                     the filter hands over an accepted request
//	GET  /v1/requests/{id}[?wait=30s]   status, history, attempts; waits until terminal
//	GET  /v1/requests/{id}/result[?wait=30s]  the service's response; waits until known
//	GET  /v1/requests/{id}/events       server-sent events: the record at every change (events.go)
//	POST /v1/requests/{id}/complete     an external node's answer (see nodes.go)
//	GET  /v1/openapi.yaml               this API's OpenAPI document
//	GET  /healthz, /readyz
//
// The three reads answer the request's caller (its access token, ?token=)
// and operators; anyone else gets 404, as for an id that does not exist.
// Unless Config.SeparateOperator is set, the operator endpoints of
// OperatorHandler are served here too (they ask for the operator's token
// either way).
func (c *Collector) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/intake", c.intake)
	mux.HandleFunc("POST /v1/requests/{id}/complete", c.complete)
	c.readRoutes(mux)
	if !c.cfg.SeparateOperator {
		c.operatorRoutes(mux)
	}
	return mux
}

// OperatorHandler returns the operator endpoints, each behind the
// operator's bearer token (Config.AdminToken):
//
//	GET  /v1/requests?traceId=&status=&rule=&caller=&package=&since=&until=&cursor=&limit=&order=asc|desc
//	GET  /v1/requests/count?<the filters of the search>  {"count": N}
//	GET  /v1/stream?status=&rule=&package=&caller=&traceId=  every request's changes (stream.go)
//	POST /v1/requests/{id}/replay       deliver again (see replay.go)
//	POST /v1/deliveries/replay          bulk replay by filter; "dryRun": true counts
//	GET  /v1/endpoints...               endpoint health (endpoints.go)
//	GET  /v1/rules                      the rules version of this collector and each node (rulesview.go)
//	GET  /metrics                       Prometheus (see observe.go)
//	GET  /dashboard/                    the operator's web dashboard (dashboard.go; its
//	                                    assets are public, every datum it shows asks for the token)
//
// and the reads of Handler, which an operator may make for any request.
// Serve it on a listener of its own (collector -operator-listen) that no
// Envoy route reaches.
func (c *Collector) OperatorHandler() http.Handler {
	mux := http.NewServeMux()
	c.readRoutes(mux)
	c.operatorRoutes(mux)
	return mux
}

func (c *Collector) readRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/requests/{id}", c.getRequest)
	mux.HandleFunc("GET /v1/requests/{id}/result", c.getResult)
	mux.HandleFunc("GET /v1/requests/{id}/events", c.events)
	mux.HandleFunc("GET /v1/openapi.yaml", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("content-type", "application/yaml")
		_, _ = w.Write(OpenAPI)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, map[string]string{"status": "ok"}) })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := c.store.Ping(r.Context()); err != nil {
			writeError(w, 503, "store_unavailable", err.Error())
			return
		}
		writeJSON(w, 200, map[string]string{"status": "ready"})
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "not_found", "no such endpoint: "+r.Method+" "+r.URL.Path)
	})
}

func (c *Collector) operatorRoutes(mux *http.ServeMux) {
	op := func(h http.HandlerFunc) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if c.authorized(w, r) {
				h(w, r)
			}
		}
	}
	mux.HandleFunc("GET /v1/requests", op(c.search))
	mux.HandleFunc("GET /v1/requests/count", op(c.count))
	mux.HandleFunc("GET /v1/stream", op(c.stream))
	mux.HandleFunc("GET /v1/rules", op(c.rulesStatus))
	c.dashboardRoutes(mux)
	mux.HandleFunc("POST /v1/requests/{id}/replay", op(c.replayOne))
	mux.HandleFunc("POST /v1/deliveries/replay", op(c.replayMany))
	mux.HandleFunc("GET /v1/endpoints", op(c.listEndpoints))
	mux.HandleFunc("GET /v1/endpoints/{id}", op(c.getEndpoint))
	mux.HandleFunc("POST /v1/endpoints/{id}/enable", op(c.setEndpoint(true)))
	mux.HandleFunc("POST /v1/endpoints/{id}/disable", op(c.setEndpoint(false)))
	mux.Handle("GET /metrics", op(c.obs.handler().ServeHTTP))
}

// operator reports whether r carries the operator's bearer token.
func (c *Collector) operator(r *http.Request) bool {
	tok, ok := strings.CutPrefix(r.Header.Get("authorization"), "Bearer ")
	return ok && len(c.cfg.AdminToken) > 0 && subtle.ConstantTimeCompare([]byte(tok), c.cfg.AdminToken) == 1
}

// mayRead reports whether r may read rec: it carries the request's access
// token, or the operator's.
func (c *Collector) mayRead(r *http.Request, rec *store.Record) bool {
	if c.operator(r) {
		return true
	}
	return rec.Envelope != nil && access.Check(rec.Envelope.AccessHash, r.URL.Query().Get(access.Param))
}

// checkCaller refuses an envelope that names a caller (or a principal)
// without the filter's signature over it, or whose live rule does not admit
// that caller: a name is how a request borrows a caller's signing secrets
// and callback credentials, so only the filter, which read it from Envoy's
// own properties, may give it.
func (c *Collector) checkCaller(env *envelope.Envelope, sig string, body []byte) error {
	if env.Caller == "" && env.Principal == "" {
		return c.admits(env.Rule, nil)
	}
	if err := replay.VerifyIntake(c.cfg.IntakeSecrets, sig, body); err != nil {
		return fmt.Errorf("caller %q: %w", env.Caller, err)
	}
	if env.Caller == "" {
		return nil
	}
	if c.cfg.Rules == nil {
		return nil // no live rules: the filter's word, signed, is all there is
	}
	caller, ok := c.cfg.Rules.Caller(env.Caller)
	if !ok {
		return fmt.Errorf("caller %q is not declared (callers:)", env.Caller)
	}
	return c.admits(env.Rule, caller)
}

// admits checks the live rule's callers: list, when there are live rules.
func (c *Collector) admits(rule string, caller *rules.Caller) error {
	if c.cfg.Rules == nil {
		return nil
	}
	if r, ok := c.cfg.Rules.Rule(rule); ok {
		return r.CheckCaller(caller)
	}
	return nil
}

// intake persists an accepted request, then publishes it. It answers 201 only
// once the record is durable; publish failures leave it persisted for the relay.
func (c *Collector) intake(w http.ResponseWriter, r *http.Request) {
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, envelope.MaxSize))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeError(w, http.StatusRequestEntityTooLarge, "envelope_too_large", "envelope over "+strconv.Itoa(envelope.MaxSize)+" bytes")
			return
		}
		writeError(w, http.StatusBadRequest, "unreadable_body", err.Error())
		return
	}
	env, err := envelope.Decode(data)
	if err != nil {
		c.log.Warn("intake: refused envelope", "err", err)
		c.obs.intake.WithLabelValues("", "refused").Inc()
		writeError(w, http.StatusBadRequest, "bad_envelope", err.Error())
		return
	}
	if err := c.checkCaller(env, r.Header.Get(replay.IntakeHeader), data); err != nil {
		c.log.Warn("intake: refused the caller an envelope names", "id", env.ID, "rule", env.Rule, "caller", env.Caller, "err", err)
		c.obs.intake.WithLabelValues(env.Rule, "caller_refused").Inc()
		writeError(w, http.StatusForbidden, "caller_refused", err.Error())
		return
	}
	start := time.Now()
	ctx, span := spanFor(r.Context(), env, "asyncmesh.intake")
	defer span.End()
	log := c.log.With("id", env.ID, "trace_id", env.TraceID, "rule", env.Rule)
	deadline := env.DeadlineTime()
	if late(deadline, start) {
		log.Warn("intake: refused, the filter's deadline has passed", "deadline", deadline)
		c.obs.intake.WithLabelValues(env.Rule, "late").Inc()
		writeError(w, http.StatusServiceUnavailable, "deadline_passed", "deadline: the filter no longer waits for this answer")
		return
	}
	rec := store.NewRecord(env, start)
	if !deadline.IsZero() {
		c.decided.pending(rec.ID, deadline)
		defer c.decided.decide(rec.ID, refused) // unless decided first
	}
	claim := c.claimFor(env, deadline, log)
	if err := c.chainOrder(ctx, env, deadline, start); err != nil { // ordering.go
		log.Warn("intake: taking the request into its ordering key", "err", err)
		c.obs.intake.WithLabelValues(env.Rule, "store_error").Inc()
		writeError(w, http.StatusServiceUnavailable, "store_unavailable", "the request's ordering key could not be written")
		return
	}
	owed, err := c.accept(ctx, rec, claim)
	// Intake answers without writing the record (from an Idempotency-Key's
	// holder, or refused): it leaves its ordering key (ordering.go).
	neverWritten := false
	defer func() {
		if neverWritten {
			c.unchainOrder(ctx, env)
		}
	}()
	for takeOvers := 0; ; takeOvers++ {
		var held *store.KeyHeldError
		if !errors.As(err, &held) {
			neverWritten = false
			break
		}
		// (Unless it holds the key itself: the filter sent it again.)
		neverWritten = held.Held.ID != env.ID
		verdict, first, jerr := c.judgeHolder(ctx, held.Held, claim.k.Fingerprint)
		switch {
		case jerr != nil:
			log.Warn("intake: reading the holder of an Idempotency-Key", "first", held.Held.ID, "err", jerr)
			c.obs.intake.WithLabelValues(env.Rule, "store_error").Inc()
			writeError(w, http.StatusServiceUnavailable, "store_unavailable", "the Idempotency-Key's first request could not be read")
			return
		case verdict == keyFree && takeOvers < maxKeyTakeOvers:
			// The holder never ran and never will: take its key over (a
			// fresh record: accept changed this one).
			log.Info("intake: Idempotency-Key taken over from a request that never ran", "first", held.Held.ID)
			claim.replace = held.Held.ID
			rec = store.NewRecord(env, start)
			owed, err = c.accept(ctx, rec, claim)
			continue
		case verdict == keyDuplicate:
			log.Info("intake: Idempotency-Key retry answered with the first request", "first", first.ID, "status", first.Status)
			c.obs.intake.WithLabelValues(env.Rule, "idempotent").Inc()
			answerDuplicate(w, first)
			return
		case verdict == keyReused:
			log.Warn("intake: Idempotency-Key reused for another request", "first", held.Held.ID)
			c.obs.intake.WithLabelValues(env.Rule, "key_reused").Inc()
			writeError(w, http.StatusUnprocessableEntity, "idempotency_key_reused",
				"Idempotency-Key: already used for another request (a different method, target or body) on this rule within its window; use a new key for a new request")
			return
		}
		// keyInProgress, or a key that keeps changing hands.
		log.Info("intake: Idempotency-Key's first request is still being taken in", "first", held.Held.ID)
		c.obs.intake.WithLabelValues(env.Rule, "key_in_progress").Inc()
		w.Header().Set("retry-after", inProgressRetryIn)
		writeError(w, http.StatusConflict, "idempotency_key_in_progress",
			"Idempotency-Key: the first request with this key is still being taken in; retry in a second")
		return
	}
	if err == nil && late(deadline, time.Now()) {
		// Persisted, but the answer would come too late: the caller is told
		// it failed, so it must never run (deadline.go).
		if aerr := c.abandon(ctx, rec); aerr != nil {
			log.Error("intake: abandoning a record persisted after the filter's deadline; its worker will", "err", aerr)
			c.decided.leave(rec)
		} else {
			log.Warn("intake: persisted after the filter's deadline; abandoned", "deadline", deadline, "took", time.Since(start))
		}
		c.obs.intake.WithLabelValues(env.Rule, "late").Inc()
		writeError(w, http.StatusServiceUnavailable, "deadline_passed", "the request could not be persisted before the filter's deadline")
		return
	}
	if err == nil && !deadline.IsZero() {
		c.decided.decide(rec.ID, accepted) // now, not at return: Prefer: wait needs a worker to run it
	}
	if err != nil {
		if !errors.Is(err, store.ErrExists) {
			if mayHaveCommitted(err) {
				// The write may have committed all the same (the filter hung
				// up mid-write, a lost answer from the store): the caller is
				// told it failed, so a record that exists must never run.
				if aerr := c.abandonIfExists(ctx, rec); aerr != nil {
					log.Error("intake: abandoning a record whose write failed; its worker will", "err", aerr)
					c.decided.leave(rec)
				}
				log.Error("intake: persisting", "err", err)
			} else {
				log.Warn("intake: refused, the store is unavailable", "err", err)
				neverWritten = true
			}
			c.obs.intake.WithLabelValues(env.Rule, "store_error").Inc()
			span.RecordError(err)
			writeError(w, http.StatusServiceUnavailable, "store_unavailable", "the request could not be persisted")
			return
		}
		c.obs.intake.WithLabelValues(env.Rule, "duplicate").Inc()
		// The filter retried a call whose answer it lost: answer with what is stored.
		stored, err := c.store.Get(r.Context(), env.ID)
		if err != nil {
			// The id exists — this intake's own write, landed twice (the
			// store's client retried it), or the first intake's — but the
			// caller is told it failed: so it must never run, and the work
			// message this intake published is dropped as refused.
			if aerr := c.abandonIfExists(ctx, rec); aerr != nil {
				log.Error("intake: abandoning a record that could not be read back; its worker will", "err", aerr)
				c.decided.leave(rec)
			}
			writeError(w, http.StatusServiceUnavailable, "store_unavailable", "the request could not be read back")
			return
		}
		rec = stored
		if rec.TraceID != env.TraceID {
			writeError(w, http.StatusConflict, "id_conflict", "id: already used by another request")
			return
		}
		if rec.Status == store.Dead && rec.Error == AbandonedNote {
			writeError(w, http.StatusServiceUnavailable, "deadline_passed", "the request was abandoned at its first intake")
			return
		}
		c.decided.decide(rec.ID, accepted) // the first intake's: its work message runs
	} else {
		c.obs.intake.WithLabelValues(env.Rule, "accepted").Inc()
		c.obs.intakeSeconds.WithLabelValues(env.Rule).Observe(since(start))
		c.notify.broadcast(rec.ID) // the operator's streams: a new record
	}
	if owed {
		// The message is out; the store says so once markQueued has run:
		// before a Prefer: wait (which may outlast the relay's age), after
		// the answer otherwise.
		rec.Status = store.Queued
		if env.Wait > 0 {
			c.markQueued(ctx, rec)
		} else {
			defer func() {
				_ = http.NewResponseController(w).Flush() // the answer first
				c.markQueued(ctx, rec)
			}()
		}
	}
	log.Info("intake: accepted", "status", rec.Status)
	if wait := env.Wait.D(); wait > 0 && !rec.Status.HasResult() {
		if !deadline.IsZero() { // answer while the filter still listens
			wait = min(wait, time.Until(deadline.Add(-answerMargin)))
		}
		if got, err := c.await(r.Context(), env.ID, wait, store.Status.HasResult); err == nil {
			rec = got
			if rec.Status.HasResult() && rec.Response != nil { // awaited without bodies
				if full, err := c.store.Get(r.Context(), env.ID); err == nil {
					rec = full
				}
			}
		}
	}
	if rec.Status.HasResult() && rec.Response != nil && env.Wait > 0 {
		relayResponse(w, rec.Response)
		return
	}
	w.Header().Set("x-async-status", string(rec.Status))
	writeJSON(w, http.StatusCreated, map[string]string{"id": rec.ID, "traceId": rec.TraceID, "status": string(rec.Status)})
}

// relayResponse answers intake with the service's own response: the request
// completed within the caller's Prefer: wait. x-async-status: completed tells
// the filter to pass it on instead of answering 202.
func relayResponse(w http.ResponseWriter, resp *store.Response) {
	for _, h := range resp.Headers {
		if !hop.ByHop(h[0]) && h[0] != "date" && h[0] != "server" {
			w.Header().Add(h[0], h[1])
		}
	}
	w.Header().Set("x-async-status", string(store.Completed))
	w.WriteHeader(resp.Status)
	_, _ = w.Write(resp.Body)
}

// recordView is the API's rendering of a record.
type recordView struct {
	ID        string             `json:"id"`
	TraceID   string             `json:"traceId"`
	Rule      string             `json:"rule"`
	Package   string             `json:"package,omitempty"`
	Caller    string             `json:"caller,omitempty"`
	Principal string             `json:"principal,omitempty"`
	Status    store.Status       `json:"status"`
	Request   requestView        `json:"request"`
	Error     string             `json:"error,omitempty"`
	History   []store.Transition `json:"history"`
	Attempts  []attemptView      `json:"attempts"`
	CreatedAt time.Time          `json:"createdAt"`
	UpdatedAt time.Time          `json:"updatedAt"`
}

type requestView struct {
	Method    string `json:"method"`
	Authority string `json:"authority"`
	Path      string `json:"path"`
	Callback  string `json:"callback"`
	Protocol  string `json:"protocol"`
}

type attemptView struct {
	At         time.Time              `json:"at"`
	StatusCode int                    `json:"statusCode,omitempty"`
	LatencyMs  float64                `json:"latencyMs"`
	Error      string                 `json:"error,omitempty"`
	Request    *store.AttemptRequest  `json:"request,omitempty"`
	Response   *store.AttemptResponse `json:"response,omitempty"`
}

// viewOf renders r; the attempt log (what each attempt sent, what the
// receiver answered) only for operators (operator true). A caller sees
// what it saw before the log existed, each attempt's time, status code,
// latency and error: a rule's callback receiver may be an internal service
// the operator allowed (allowPrivate, allowNetworks), whose headers and
// error pages (stack traces, internal names) are not the caller's to read.
func viewOf(r *store.Record, operator bool) recordView {
	v := recordView{ID: r.ID, TraceID: r.TraceID, Rule: r.Rule, Status: r.Status, Error: r.Error,
		History: r.History, Attempts: []attemptView{}, CreatedAt: r.CreatedAt, UpdatedAt: r.UpdatedAt}
	if e := r.Envelope; e != nil {
		v.Package, v.Caller, v.Principal = e.Package, e.Caller, e.Principal
		v.Request = requestView{Method: e.Method, Authority: e.Authority, Path: e.Path, Callback: e.Callback.URL, Protocol: e.Callback.Protocol}
	}
	for _, a := range r.Attempts {
		av := attemptView{At: a.At, StatusCode: a.StatusCode, LatencyMs: float64(a.Latency.Microseconds()) / 1000, Error: a.Error}
		if operator {
			av.Request, av.Response = a.Request, a.Response
		}
		v.Attempts = append(v.Attempts, av)
	}
	return v
}

func (c *Collector) getRequest(w http.ResponseWriter, r *http.Request) {
	rec, ok := c.waitFor(w, r, store.Status.Terminal)
	if ok {
		writeJSON(w, http.StatusOK, viewOf(rec, c.operator(r)))
	}
}

func (c *Collector) getResult(w http.ResponseWriter, r *http.Request) {
	rec, ok := c.waitFor(w, r, store.Status.HasResult)
	if !ok {
		return
	}
	if rec.Status.HasResult() && rec.Response != nil { // waitFor reads without bodies
		full, err := c.store.Get(r.Context(), rec.ID)
		if err != nil {
			writeError(w, http.StatusServiceUnavailable, "store_unavailable", "reading the request failed")
			return
		}
		rec = full
	}
	switch {
	case !rec.Status.HasResult():
		w.Header().Set("retry-after", "1")
		writeJSON(w, http.StatusAccepted, map[string]string{"id": rec.ID, "status": string(rec.Status)})
	case rec.Response == nil:
		writeJSON(w, http.StatusOK, map[string]any{"id": rec.ID, "status": store.Failed, "error": rec.Error})
	default:
		writeJSON(w, http.StatusOK, map[string]any{"id": rec.ID, "status": store.Completed, "response": delivery.ResponseView(rec.Response)})
	}
}

// waitFor reads the record and, with ?wait=, long-polls until done(status) or
// the wait ends. It writes the error response itself when it returns false.
func (c *Collector) waitFor(w http.ResponseWriter, r *http.Request, done func(store.Status) bool) (*store.Record, bool) {
	id := r.PathValue("id")
	var wait time.Duration
	if v := r.URL.Query().Get("wait"); v != "" {
		d, err := parseWait(v)
		if err != nil {
			writeError(w, http.StatusBadRequest, "bad_parameter", "wait: "+err.Error())
			return nil, false
		}
		wait = d
	}
	// The first read decides access, before any wait: a reader without the
	// token learns nothing, not even how long the record takes.
	rec, err := store.Peek(r.Context(), c.store, id)
	if err == nil && !c.mayRead(r, rec) {
		err = store.ErrNotFound
	}
	if err == nil && wait > 0 && !done(rec.Status) {
		if !c.holdWaiter(w) {
			return nil, false
		}
		rec, err = c.await(r.Context(), id, wait, done)
		c.releaseWaiter()
	}
	switch {
	case err == nil:
		return rec, true
	case errors.Is(err, store.ErrNotFound):
		writeError(w, http.StatusNotFound, "not_found", "no request with id "+id)
	case r.Context().Err() != nil: // the caller went away
	default:
		writeError(w, http.StatusServiceUnavailable, "store_unavailable", "reading the request failed")
	}
	return nil, false
}

// holdWaiter takes one of the collector's MaxWaiters places for a
// long-poll or an event stream, or answers 429 with Retry-After: every
// waiter holds a connection and a goroutine, and wakes on every change of
// its record.
func (c *Collector) holdWaiter(w http.ResponseWriter) bool {
	select {
	case c.waiters <- struct{}{}:
		return true
	default:
		w.Header().Set("retry-after", "1")
		writeError(w, http.StatusTooManyRequests, "too_many_waiters", "this collector holds "+strconv.Itoa(cap(c.waiters))+" long-polls and event streams already; retry, or read without wait")
		return false
	}
}

func (c *Collector) releaseWaiter() { <-c.waiters }

// await reads record id until done(status) or wait has passed, and returns the
// last read, without its bodies where the store can (store.Peeker).
func (c *Collector) await(ctx context.Context, id string, wait time.Duration, done func(store.Status) bool) (*store.Record, error) {
	deadline := time.Now().Add(wait)
	for {
		// Subscribe before reading, so a change between the two is not missed.
		changed, cancel := c.notify.wait(id)
		rec, err := store.Peek(ctx, c.store, id)
		left := time.Until(deadline)
		if err != nil || done(rec.Status) || left <= 0 {
			cancel()
			return rec, err
		}
		// Other collectors may move the record: poll at least every second.
		stopping := c.pause(ctx, changed, min(left, time.Second))
		cancel()
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if stopping {
			return store.Peek(ctx, c.store, id)
		}
	}
}

// pause waits for a change of a record (changed), d, the caller leaving or
// the collector stopping, and reports whether the collector is stopping.
func (c *Collector) pause(ctx context.Context, changed <-chan struct{}, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-changed:
	case <-t.C:
	case <-ctx.Done():
	case <-c.stopping:
		return true
	}
	return false
}

func parseWait(v string) (time.Duration, error) {
	d, err := time.ParseDuration(v)
	if err != nil {
		n, err2 := strconv.Atoi(v)
		if err2 != nil {
			return 0, errors.New("want a duration such as 30s")
		}
		if n < 0 || n > int(MaxWait/time.Second) { // before multiplying, which could wrap
			return 0, errors.New("must be between 0 and " + MaxWait.String())
		}
		d = time.Duration(n) * time.Second
	}
	if d < 0 || d > MaxWait {
		return 0, errors.New("must be between 0 and " + MaxWait.String())
	}
	return d, nil
}

// filterParams are the query parameters that select records (search,
// count, the stream take them alike).
var filterParams = []string{"traceId", "status", "rule", "caller", "package", "since", "until"}

// parseQuery reads a store.Query from r's query parameters: the filters,
// and extra (cursor, limit) where the endpoint takes them. It answers 400
// itself and returns false on an unknown parameter or a bad value.
func parseQuery(w http.ResponseWriter, r *http.Request, extra ...string) (store.Query, bool) {
	q := r.URL.Query()
	for k, vs := range q {
		if !slices.Contains(filterParams, k) && !slices.Contains(extra, k) {
			writeError(w, http.StatusBadRequest, "bad_parameter", k+": unknown parameter")
			return store.Query{}, false
		}
		if len(vs) > 1 {
			writeError(w, http.StatusBadRequest, "bad_parameter", k+": given more than once")
			return store.Query{}, false
		}
		if len(vs[0]) > maxParam {
			writeError(w, http.StatusBadRequest, "bad_parameter", k+": over "+strconv.Itoa(maxParam)+" bytes")
			return store.Query{}, false
		}
	}
	sq := store.Query{TraceID: q.Get("traceId"), Status: store.Status(q.Get("status")), Rule: q.Get("rule"),
		Caller: q.Get("caller"), Package: q.Get("package"), Cursor: q.Get("cursor"), Limit: 100}
	if sq.Status != "" && !sq.Status.Valid() {
		writeError(w, http.StatusBadRequest, "bad_parameter", "status: "+string(sq.Status)+" is not a status")
		return store.Query{}, false
	}
	for _, p := range []struct {
		name string
		dst  *time.Time
	}{{"since", &sq.Since}, {"until", &sq.Until}} {
		if v := q.Get(p.name); v != "" {
			t, err := time.Parse(time.RFC3339Nano, v)
			if err != nil {
				writeError(w, http.StatusBadRequest, "bad_parameter", p.name+": want an RFC 3339 time")
				return store.Query{}, false
			}
			*p.dst = t
		}
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > store.MaxLimit {
			writeError(w, http.StatusBadRequest, "bad_parameter", "limit: want 1.."+strconv.Itoa(store.MaxLimit))
			return store.Query{}, false
		}
		sq.Limit = n
	}
	switch v := q.Get("order"); v {
	case "", "asc":
	case "desc":
		sq.Desc = true
	default:
		writeError(w, http.StatusBadRequest, "bad_parameter", "order: want asc or desc")
		return store.Query{}, false
	}
	return sq, true
}

// maxParam bounds one query parameter's value (ids, names, times).
const maxParam = 1024

func (c *Collector) search(w http.ResponseWriter, r *http.Request) {
	sq, ok := parseQuery(w, r, "cursor", "limit", "order")
	if !ok {
		return
	}
	page, err := c.store.Search(r.Context(), sq)
	if err != nil {
		c.log.Error("api: search", "err", err)
		writeError(w, http.StatusServiceUnavailable, "store_unavailable", "search failed")
		return
	}
	out := struct {
		Records []recordView `json:"records"`
		Next    string       `json:"next,omitempty"`
	}{Records: []recordView{}, Next: page.Next}
	for _, rec := range page.Records {
		out.Records = append(out.Records, viewOf(rec, true)) // an operator endpoint
	}
	writeJSON(w, http.StatusOK, out)
}

// count answers GET /v1/requests/count: how many records the filters of a
// search select, without paging through them.
func (c *Collector) count(w http.ResponseWriter, r *http.Request) {
	sq, ok := parseQuery(w, r)
	if !ok {
		return
	}
	n, ok := c.countRecords(w, r.Context(), sq)
	if ok {
		writeJSON(w, http.StatusOK, map[string]int64{"count": n})
	}
}

// countRecords counts what q selects, answering 501 or 503 itself when it
// cannot.
func (c *Collector) countRecords(w http.ResponseWriter, ctx context.Context, q store.Query) (int64, bool) {
	counter, ok := c.store.(store.Counter)
	if !ok {
		writeError(w, http.StatusNotImplemented, "not_supported", "this store cannot count")
		return 0, false
	}
	n, err := counter.Count(ctx, q)
	if err != nil {
		c.log.Error("api: count", "err", err)
		writeError(w, http.StatusServiceUnavailable, "store_unavailable", "count failed")
		return 0, false
	}
	return n, true
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("content-type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, map[string]string{"error": code, "message": msg})
}
