// Package client is the Go SDK for callers of asyncmesh-made async APIs: a
// handler map instead of polling.
//
//	c, _ := client.New(client.Config{BaseURL: "http://api.local", Secrets: []string{"whsec_..."}})
//	defer c.Close()
//	call, _ := c.Do(ctx, req, func(ctx context.Context, r client.Result) { ... })
//
// Do sends the request with Prefer: respond-async and x-async-callback set to
// the client's embedded receiver, and records request id → handler. The
// receiver verifies each callback's Standard Webhooks signature and runs the
// handler once per request id, even when the callback is delivered twice
// (at-least-once delivery) or arrives before Do has read the 202. With
// PreferWait, a request that completes in time is answered synchronously
// (Call.Sync) instead. Wait falls back to the long-poll API for callers that
// cannot receive callbacks.
//
// The rule of the route must let the caller choose the callback
// (callback.allowOverride) and, for a receiver on a private or loopback
// address, list its host in callback.allowedHosts with a network allowance
// (allowNetworks or allowPrivate); otherwise the callback goes to the rule's
// URL (or is refused) and Do's handler never runs; use Wait then.
package client

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/asyncmesh/asyncmesh/internal/seal"
	"github.com/asyncmesh/asyncmesh/internal/webhook"
)

// Config of a client.
type Config struct {
	// BaseURL is where requests go (the service's host, through its Envoy).
	BaseURL string
	// StatusPrefix is the sidecar's route to the collector API (default /async).
	StatusPrefix string
	// Listen is the embedded receiver's address (default 127.0.0.1:0).
	Listen string
	// CallbackURL is how the collector reaches the receiver (default
	// http://<listen address>/callbacks).
	CallbackURL string
	// Secrets verify callbacks (whsec_...); several during a rotation.
	Secrets []string
	// Key opens callbacks sealed by the rule's callback.encryption (the
	// 256-bit key in base64). With a key, unsealed callbacks are refused.
	Key string
	// HTTP sends requests (default: a client with a 60s timeout).
	HTTP   *http.Client
	Logger *slog.Logger
}

// Result is the outcome of an async request, as its callback carries it.
type Result struct {
	ID       string    `json:"id"`
	TraceID  string    `json:"traceId"`
	Status   string    `json:"status"` // completed | failed
	Response *Response `json:"response,omitempty"`
	Error    string    `json:"error,omitempty"`
}

// Response is the service's answer.
type Response struct {
	Status  int               `json:"status"`
	Headers map[string]string `json:"headers,omitempty"`
	Body    []byte            `json:"-"`
}

// Handler receives the result of one request.
type Handler func(ctx context.Context, r Result)

// Call is what Do got back.
type Call struct {
	ID, TraceID string
	// AccessToken reads this request's status and result (Wait, or GET
	// StatusURL): the sidecar hands it out once, in the 202, and answers
	// 404 to reads without it.
	AccessToken string
	// StatusURL is the 202's Location, resolved against BaseURL.
	StatusURL string
	// Sync is the response when the request was not made async (no rule
	// matched, or it completed within PreferWait); its handler never runs.
	// Completed within PreferWait, it comes with the request's ID, TraceID
	// and AccessToken (the callback that still follows is acknowledged and
	// dropped).
	Sync *http.Response
}

// DoOption changes how Do sends one request.
type DoOption func(*doOptions)

type doOptions struct {
	wait int // Prefer: wait, seconds (0: none; -1: refused)
}

// PreferWait asks for the service's own response when the request completes
// within d (Prefer: wait, in whole seconds, rounded up; at least 1 s): Do
// returns it in Call.Sync, and the handler never runs. A request that takes
// longer is answered 202 and called back as any other.
func PreferWait(d time.Duration) DoOption {
	return func(o *doOptions) {
		o.wait = -1 // refused by Do
		if d > 0 {
			o.wait = int((d + time.Second - 1) / time.Second)
		}
	}
}

// Client sends async requests and receives their callbacks.
type Client struct {
	cfg     Config
	secrets []webhook.Secret
	key     []byte // nil: callbacks are not sealed
	log     *slog.Logger
	srv     *http.Server
	ln      net.Listener
	done    chan struct{}
	wg      sync.WaitGroup

	mu       sync.Mutex
	handlers map[string]Handler
	early    map[string]earlyResult // callbacks that came before their handler
	earlyIDs []string               // arrival order of early, for expiry
	earlyLen int                    // bytes held in early
	seen     map[string]struct{}    // request ids whose handler ran (or is running)
	seenFIFO []string               // eviction order of seen
}

// Bounds: callbacks kept for handlers not registered yet (by count, bytes
// and age: a callback whose Do never reads its 202 is dropped after
// earlyTTL), and request ids remembered to drop duplicate deliveries.
const (
	maxEarly      = 10000
	maxEarlyBytes = 64 << 20
	earlyTTL      = 2 * time.Minute
	maxSeen       = 100000
)

// earlyResult is a callback that arrived before Do registered its handler.
type earlyResult struct {
	res  Result
	at   time.Time
	size int
}

// takeEarly removes and returns the early callback of id; c.mu is held.
func (c *Client) takeEarly(id string) (Result, bool) {
	e, ok := c.early[id]
	if ok {
		delete(c.early, id)
		c.earlyLen -= e.size
	}
	return e.res, ok
}

// keepEarly holds res until its handler is registered, after dropping what
// has expired, and reports false when the buffer is full; c.mu is held.
func (c *Client) keepEarly(res Result, size int, now time.Time) bool {
	for len(c.earlyIDs) > 0 {
		id := c.earlyIDs[0]
		e, ok := c.early[id]
		if ok && now.Sub(e.at) < earlyTTL {
			break
		}
		if ok {
			c.log.Warn("client: dropped a callback whose request was never seen", "id", id, "held", now.Sub(e.at))
			c.takeEarly(id)
		}
		c.earlyIDs = c.earlyIDs[1:]
	}
	if len(c.early) >= maxEarly || c.earlyLen+size > maxEarlyBytes {
		return false
	}
	c.early[res.ID] = earlyResult{res: res, at: now, size: size}
	c.earlyIDs = append(c.earlyIDs, res.ID)
	c.earlyLen += size
	return true
}

// markSeen records id; c.mu is held.
func (c *Client) markSeen(id string) {
	c.seen[id] = struct{}{}
	c.seenFIFO = append(c.seenFIFO, id)
	if len(c.seenFIFO) > maxSeen {
		delete(c.seen, c.seenFIFO[0])
		c.seenFIFO = c.seenFIFO[1:]
	}
}

// New starts the embedded receiver.
func New(cfg Config) (*Client, error) {
	if _, err := url.Parse(cfg.BaseURL); err != nil || cfg.BaseURL == "" {
		return nil, fmt.Errorf("client: BaseURL %q is not a URL", cfg.BaseURL)
	}
	if cfg.StatusPrefix == "" {
		cfg.StatusPrefix = "/async"
	}
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	if cfg.HTTP == nil {
		cfg.HTTP = &http.Client{Timeout: 60 * time.Second}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	c := &Client{cfg: cfg, log: cfg.Logger, done: make(chan struct{}),
		handlers: map[string]Handler{}, early: map[string]earlyResult{}, seen: map[string]struct{}{}}
	for i, s := range cfg.Secrets {
		sec, err := webhook.ParseSecret(s)
		if err != nil {
			return nil, fmt.Errorf("client: Secrets[%d]: %w", i, err)
		}
		c.secrets = append(c.secrets, sec)
	}
	if len(c.secrets) == 0 {
		return nil, errors.New("client: Secrets: at least one, to verify callbacks")
	}
	if cfg.Key != "" {
		k, err := seal.ParseKey(cfg.Key)
		if err != nil {
			return nil, fmt.Errorf("client: Key: %w", err)
		}
		c.key = k
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("client: receiver: %w", err)
	}
	c.ln = ln
	if c.cfg.CallbackURL == "" {
		c.cfg.CallbackURL = "http://" + ln.Addr().String() + "/callbacks"
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /callbacks", c.receive)
	c.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	c.wg.Add(1)
	go func() { defer c.wg.Done(); _ = c.srv.Serve(ln) }()
	return c, nil
}

// CallbackURL is where this client receives callbacks.
func (c *Client) CallbackURL() string { return c.cfg.CallbackURL }

// Close stops the receiver and waits for running handlers.
func (c *Client) Close() error {
	close(c.done)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := c.srv.Shutdown(ctx)
	c.wg.Wait()
	return err
}

// Do sends req (its URL relative to BaseURL when it has no host) as an async
// request and runs h with its result when the callback comes.
func (c *Client) Do(ctx context.Context, req *http.Request, h Handler, opts ...DoOption) (Call, error) {
	var o doOptions
	for _, opt := range opts {
		opt(&o)
	}
	prefer := "respond-async"
	if o.wait < 0 {
		return Call{}, errors.New("client: PreferWait: wait at least a second")
	} else if o.wait > 0 {
		prefer += ", wait=" + strconv.Itoa(o.wait)
	}
	req = req.Clone(ctx)
	if req.URL.Host == "" {
		base, _ := url.Parse(c.cfg.BaseURL)
		req.URL = base.ResolveReference(req.URL)
		req.Host = ""
	}
	req.Header.Set("prefer", prefer)
	req.Header.Set("x-async-callback", c.cfg.CallbackURL)
	resp, err := c.cfg.HTTP.Do(req)
	if err != nil {
		return Call{}, err
	}
	if resp.StatusCode != http.StatusAccepted {
		call := Call{Sync: resp}
		if id := resp.Header.Get("x-async-request-id"); id != "" {
			// A result relayed within Prefer: wait: the caller has it now,
			// so the callback that still follows is acknowledged and
			// dropped.
			call.ID, call.TraceID = id, resp.Header.Get("x-async-trace-id")
			call.AccessToken = resp.Header.Get("x-async-access-token")
			c.mu.Lock()
			c.takeEarly(id)
			if _, seen := c.seen[id]; !seen {
				c.markSeen(id)
			}
			c.mu.Unlock()
		}
		return call, nil
	}
	defer resp.Body.Close()
	call := Call{ID: resp.Header.Get("x-async-request-id"), TraceID: resp.Header.Get("x-async-trace-id")}
	if call.ID == "" {
		return call, errors.New("client: 202 without x-async-request-id")
	}
	var accepted struct {
		AccessToken string `json:"accessToken"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&accepted); err == nil {
		call.AccessToken = accepted.AccessToken
	}
	if loc, err := resp.Request.URL.Parse(resp.Header.Get("location")); err == nil && resp.Header.Get("location") != "" {
		call.StatusURL = loc.String()
	}
	c.mu.Lock()
	r, arrived := c.takeEarly(call.ID)
	if !arrived {
		c.handlers[call.ID] = h
	}
	c.mu.Unlock()
	if arrived {
		c.run(h, r)
	}
	return call, nil
}

// receive verifies a callback and runs its handler once per request id.
func (c *Client) receive(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 80<<20))
	if err != nil {
		http.Error(w, "unreadable body", http.StatusBadRequest)
		return
	}
	res, code, err := c.accept(r.Header, body, time.Now())
	if err != nil {
		c.log.Warn("client: refused callback", "webhook_id", r.Header.Get(webhook.HeaderID), "err", err)
		http.Error(w, err.Error(), code)
		return
	}
	c.mu.Lock()
	_, dup := c.seen[res.ID]
	h, registered := c.handlers[res.ID]
	switch {
	case dup: // delivered again: acknowledged, not run again
	case registered:
		delete(c.handlers, res.ID)
		c.markSeen(res.ID)
	case c.keepEarly(res, len(body), time.Now()):
		c.markSeen(res.ID)
	default:
		c.mu.Unlock()
		http.Error(w, "too many callbacks without a caller", http.StatusServiceUnavailable)
		return
	}
	c.mu.Unlock()
	w.WriteHeader(http.StatusNoContent) // acknowledged before the handler runs
	if registered && !dup {
		c.run(h, res)
	}
}

// accept verifies, opens and decodes one callback, as the receiver does for
// each POST before the once-per-id bookkeeping; on refusal it returns the
// status to answer (401: not signed by our secrets; 400: not sealed with our
// key, or not a callback payload). The shared SDK test vectors
// (sdk/testdata/vectors.json) are checked against it.
func (c *Client) accept(h http.Header, body []byte, now time.Time) (Result, int, error) {
	if err := webhook.Verify(h, body, c.secrets, now); err != nil {
		return Result{}, http.StatusUnauthorized, err
	}
	if c.key != nil {
		alg := seal.AESGCM
		if strings.HasPrefix(h.Get("content-type"), seal.ContentTypeJWE) {
			alg = seal.JWE
		}
		var err error
		if body, err = seal.Open(alg, c.key, h.Get(webhook.HeaderID), body); err != nil {
			return Result{}, http.StatusBadRequest, fmt.Errorf("callback not sealed with our key: %w", err)
		}
	}
	res, err := decode(body)
	if err != nil {
		return Result{}, http.StatusBadRequest, err
	}
	// The collector signs a callback under its request's id: a payload
	// naming another id is not that request's result (as the TypeScript
	// and Python SDKs refuse it too).
	if id := h.Get(webhook.HeaderID); res.ID != id {
		return Result{}, http.StatusBadRequest, fmt.Errorf("callback payload: id %q is not the webhook-id %q", res.ID, id)
	}
	return res, 0, nil
}

// run runs a handler in its own goroutine, recovering a panic.
func (c *Client) run(h Handler, r Result) {
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		defer func() {
			if p := recover(); p != nil {
				c.log.Error("client: handler panicked", "id", r.ID, "panic", p)
			}
		}()
		h(context.Background(), r)
	}()
}

// wire is the callback payload (collector/delivery.Payload).
type wire struct {
	ID       string `json:"id"`
	TraceID  string `json:"traceId"`
	Status   string `json:"status"`
	Error    string `json:"error"`
	Response *struct {
		Status       int               `json:"status"`
		Headers      map[string]string `json:"headers"`
		Body         string            `json:"body"`
		BodyEncoding string            `json:"bodyEncoding"`
	} `json:"response"`
}

func decode(body []byte) (Result, error) {
	var w wire
	if err := json.Unmarshal(body, &w); err != nil {
		return Result{}, fmt.Errorf("callback payload: %w", err)
	}
	if w.ID == "" {
		return Result{}, errors.New("callback payload: id: required")
	}
	r := Result{ID: w.ID, TraceID: w.TraceID, Status: w.Status, Error: w.Error}
	if w.Response != nil {
		r.Response = &Response{Status: w.Response.Status, Headers: w.Response.Headers, Body: []byte(w.Response.Body)}
		if w.Response.BodyEncoding == "base64" {
			b, err := base64.StdEncoding.DecodeString(w.Response.Body)
			if err != nil {
				return Result{}, fmt.Errorf("callback payload: response.body: %w", err)
			}
			r.Response.Body = b
		}
	}
	return r, nil
}

// Wait long-polls the collector API (through the sidecar) until the
// request of call has a result, for callers that cannot receive callbacks.
// It reads with the call's access token.
func (c *Client) Wait(ctx context.Context, call Call) (Result, error) {
	if call.AccessToken == "" {
		return Result{}, errors.New("client: Wait needs the call's access token (from Do's 202)")
	}
	u := strings.TrimSuffix(c.cfg.BaseURL, "/") + c.cfg.StatusPrefix + "/v1/requests/" + url.PathEscape(call.ID) +
		"/result?" + url.Values{"token": {call.AccessToken}, "wait": {"30s"}}.Encode()
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return Result{}, err
		}
		resp, err := c.cfg.HTTP.Do(req)
		if err != nil {
			return Result{}, err
		}
		body, err := io.ReadAll(io.LimitReader(resp.Body, 80<<20))
		resp.Body.Close()
		if err != nil {
			return Result{}, err
		}
		switch resp.StatusCode {
		case http.StatusOK:
			r, err := decode(body)
			if err == nil && r.TraceID == "" {
				// The request's trace is the 202's: this read, through
				// Envoy, is a trace of its own (its x-async-trace-id).
				r.TraceID = call.TraceID
			}
			return r, err
		case http.StatusAccepted: // not done yet: poll again
		default:
			// Not u: it holds the access token.
			return Result{}, fmt.Errorf("client: reading the result of %s: %s: %s", call.ID, resp.Status, body)
		}
		select {
		case <-ctx.Done():
			return Result{}, ctx.Err()
		case <-c.done:
			return Result{}, errors.New("client: closed")
		default:
		}
	}
}
