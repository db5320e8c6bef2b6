package collector

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/store"
	"github.com/asyncmesh/asyncmesh/internal/replay"
)

// maxResponseBody bounds a stored response body.
const maxResponseBody = 16 << 20

// replayAttempts is how many deliveries of a work message may fail to reach the
// service (Envoy down, connection refused) before the record is failed.
const replayAttempts = 5

// leaseMargin is added to a request's timeout (or a callback's) to lease a
// record while it runs: long enough that a duplicate message never runs it at
// the same time, short enough that a crashed worker's record is taken over.
var leaseMargin = 10 * time.Second // a var: a test of crash recovery shortens it in the process it kills

type permanentError struct{ error }

// replayRefusedError is the filter's refusal of a replay (its 403 with
// replay.RefusedHeader): never the service's answer. It is retried (signed
// anew: a nonce already spent, a secret in rotation or a clock step can pass
// on the next attempt), then the record fails with it.
type replayRefusedError struct{ reason, message string }

func (e *replayRefusedError) Error() string {
	msg := "the filter refused the replay (" + e.reason + ")"
	if e.message != "" {
		msg += ": " + e.message
	}
	return msg
}

// execute replays the original request through Envoy with a signed replay header.
func (c *Collector) execute(ctx context.Context, r *store.Record) (*store.Response, error) {
	e := r.Envelope
	ctx, cancel := context.WithTimeout(ctx, e.Timeout.D())
	defer cancel()
	req, err := replayRequest(ctx, c.cfg.ReplayURL, e.Method, e.Authority, e.Path, e.Body)
	if err != nil {
		return nil, &permanentError{err}
	}
	for _, h := range e.Headers {
		req.Header.Add(h[0], h[1])
	}
	req.Header.Set("traceparent", traceParentOf(ctx, e.TraceParent))
	req.Header.Set("x-async-request-id", e.ID)
	// Signed at each attempt (a fresh time and nonce: the filter spends each
	// signature once) over exactly what is sent: the request-target's bytes,
	// the Host, and the body's digest.
	req.Header.Set(replay.Header, replay.Sign(c.cfg.ReplaySecret, replay.Request{
		ID: e.ID, Method: req.Method, Authority: req.Host, Path: e.Path, BodyDigest: replay.Digest(e.Body),
	}, time.Now()))
	client, done := c.replayClient(e.Path)
	defer done()
	resp, err := client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, &permanentError{fmt.Errorf("no answer within the rule's timeout of %s", e.Timeout.D())}
		}
		return nil, fmt.Errorf("replaying through %s: %w", c.cfg.ReplayURL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBody+1))
	if err != nil {
		return nil, fmt.Errorf("reading the service's response: %w", err)
	}
	if reason := resp.Header.Get(replay.RefusedHeader); resp.StatusCode == http.StatusForbidden && reason != "" {
		var refusal struct{ Message string }
		_ = json.Unmarshal(body, &refusal)
		return nil, &replayRefusedError{reason: reason, message: refusal.Message}
	}
	if len(body) > maxResponseBody {
		return nil, &permanentError{fmt.Errorf("response body over %d bytes", maxResponseBody)}
	}
	out := &store.Response{Status: resp.StatusCode, Body: body}
	for k, vs := range resp.Header {
		for _, v := range vs {
			out.Headers = append(out.Headers, [2]string{strings.ToLower(k), v})
		}
	}
	return out, nil
}

// replayClient is the client that can carry target to Envoy byte for byte:
// the pooled HTTP/1.1 one, or, for a target with bytes over 0x7f (which
// Envoy accepts in an HTTP/2 caller's :path but refuses in an HTTP/1.1
// request line), an HTTP/2 one without TLS (prior knowledge, which Envoy's
// listeners speak with the default codec_type AUTO). Those are rare, so the
// HTTP/2 client is made for the one replay and closed after it (done).
func (c *Collector) replayClient(target string) (*http.Client, func()) {
	for i := 0; i < len(target); i++ {
		if target[i] >= 0x80 {
			var p http.Protocols
			p.SetUnencryptedHTTP2(true)
			tr := &http.Transport{Protocols: &p}
			return &http.Client{Transport: tr, CheckRedirect: c.replay.CheckRedirect}, tr.CloseIdleConnections
		}
	}
	return c.replay, func() {}
}

// replayRequest builds the replay of (method, authority, target, body)
// through base, sending target as the request-target byte for byte: the
// filter verifies the signature over the bytes it receives, and the service
// must see what the caller sent. net/http would re-escape a parsed path
// ({ } | ^ " spaces and raw UTF-8 become %XX) or refuse it (%zz), so the
// target goes into URL.Opaque, which the client writes as it is — except a
// target starting with "//", which Opaque would turn into a scheme-relative
// URL; that one is sent as an escaped Path when it round-trips exactly, and
// refused otherwise.
func replayRequest(ctx context.Context, base, method, authority, target string, body []byte) (*http.Request, error) {
	u, err := url.Parse(strings.TrimSuffix(base, "/"))
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("replay URL %q: not an absolute URL", base)
	}
	if !strings.HasPrefix(target, "/") {
		return nil, fmt.Errorf("path %q: a replay's request-target must start with /", target)
	}
	if u.Path != "" && u.Path != "/" {
		return nil, fmt.Errorf("replay URL %q: must have no path (the request's own is sent)", base)
	}
	if strings.HasPrefix(target, "//") {
		p, err := url.ParseRequestURI(target)
		if err != nil || p.RequestURI() != target {
			return nil, fmt.Errorf("path %q cannot be sent byte for byte", target)
		}
		u.Path, u.RawPath, u.RawQuery = p.Path, p.RawPath, p.RawQuery
	} else {
		u.Opaque, u.RawQuery = target, ""
	}
	req, err := http.NewRequestWithContext(ctx, method, "", bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("building replay request: %w", err)
	}
	req.URL, req.Host = u, authority
	if authority == "" {
		req.Host = u.Host
	}
	if got := u.RequestURI(); got != target {
		return nil, fmt.Errorf("path %q would be sent as %q", target, got)
	}
	return req, nil
}
