// Package external hands accepted requests to external processing nodes (the
// seed's event bus across clouds) and authenticates what they send back.
//
// Protocol, from the collector to a node (POST target.endpoint):
//
//	{"id","traceId","traceparent","rule","completeUrl","deadline",
//	 "request":{"method","authority","path","headers":[[name,value]],"body":base64}}
//
// sealed with the rule's key when target.encryption is set (internal/seal),
// and authenticated by target.auth: hmac (Standard Webhooks headers over the
// bytes sent, webhook-id = request id), bearer, or an OAuth2 client
// credentials token. A 2xx means the node took the task; 408, 429 and 5xx
// (and no answer) are retried; any other status fails the request.
//
// The request's headers are the caller's minus its credentials
// (Authorization, Cookie, API keys, …: TaskHeaders), unless target.passHeaders
// names them. A node address the SSRF guard refuses fails the request at
// once with the reason.
//
// The node answers later with POST {completeUrl} (the collector's
// /v1/requests/{id}/complete):
//
//	{"status":200,"headers":{"content-type":"…"},"body":"…","bodyEncoding":"base64"?}
//	or {"error":"why the task failed"}
//
// sealed the same way, signed with the completion secret (Standard Webhooks,
// webhook-id = request id) or, for bearer nodes, with their bearer token.
package external

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/asyncmesh/asyncmesh/collector/delivery"
	"github.com/asyncmesh/asyncmesh/internal/rules"
	"github.com/asyncmesh/asyncmesh/internal/seal"
	"github.com/asyncmesh/asyncmesh/internal/webhook"

	"github.com/asyncmesh/asyncmesh/internal/strict"
)

// Task is what a node is sent.
type Task struct {
	ID          string      `json:"id"`
	TraceID     string      `json:"traceId"`
	TraceParent string      `json:"traceparent"`
	Rule        string      `json:"rule"`
	CompleteURL string      `json:"completeUrl"`
	Deadline    time.Time   `json:"deadline"`
	Request     TaskRequest `json:"request"`
}

// TaskRequest is the caller's original request.
type TaskRequest struct {
	Method    string      `json:"method"`
	Authority string      `json:"authority"`
	Path      string      `json:"path"`
	Headers   [][2]string `json:"headers,omitempty"`
	Body      []byte      `json:"body,omitempty"`
}

// Completion is what a node sends back.
type Completion struct {
	Status       int               `json:"status,omitempty"`
	Headers      map[string]string `json:"headers,omitempty"`
	Body         string            `json:"body,omitempty"`
	BodyEncoding string            `json:"bodyEncoding,omitempty"`
	Error        string            `json:"error,omitempty"`
}

// PermanentError is a node's refusal that retrying will not change.
type PermanentError struct {
	Msg string
	// Refusal: the collector's SSRF guard refused the node's address (the
	// node was not reached, so this says nothing of its health).
	Refusal bool
}

func (e *PermanentError) Error() string { return e.Msg }

// ErrUnauthenticated is a completion whose authentication failed.
var ErrUnauthenticated = errors.New("completion not authenticated")

// Client sends tasks and checks completions.
type Client struct {
	secrets delivery.Secrets
	timeout time.Duration
	mu      sync.Mutex
	http    delivery.HTTPClients
	tokens  map[string]oauth2.TokenSource // by token URL + client
}

// New returns a client whose dispatches last at most timeout.
func New(secrets delivery.Secrets, timeout time.Duration) *Client {
	return &Client{secrets: secrets, timeout: timeout, tokens: map[string]oauth2.TokenSource{}}
}

func (c *Client) client(t *rules.Target) *http.Client {
	return c.http.For(delivery.NewGuard(t.AllowPrivate, t.AllowNetworks), nil)
}

// Dispatch sends task to t's node. A *PermanentError means the node refused
// it for good, or the SSRF guard refused the node's address. The task's
// request headers lose the caller's credentials (TaskHeaders) here, whoever
// built the task.
func (c *Client) Dispatch(ctx context.Context, t *rules.Target, task Task) error {
	task.Request.Headers = TaskHeaders(task.Request.Headers, t.PassHeaders)
	plain, err := json.Marshal(task)
	if err != nil {
		return &PermanentError{Msg: "encoding the task: " + err.Error()}
	}
	body, contentType := plain, "application/json"
	if t.Encryption != nil {
		key, err := c.key(t.Encryption)
		if err != nil {
			return err
		}
		if body, contentType, err = seal.Seal(t.Encryption.Type, key, task.ID, plain); err != nil {
			return &PermanentError{Msg: err.Error()}
		}
	}
	var soapAction string
	if t.Format == rules.NodeSOAP {
		body, contentType, soapAction = EncodeSOAPTask(contentType, body), delivery.SOAPContentType, `"`+SOAPActionTask+`"`
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.Endpoint, bytes.NewReader(body))
	if err != nil {
		return &PermanentError{Msg: "building the task request: " + err.Error()}
	}
	req.Header.Set("content-type", contentType)
	if soapAction != "" {
		req.Header.Set("soapaction", soapAction)
	}
	req.Header.Set("user-agent", "asyncmesh-collector")
	req.Header.Set("traceparent", task.TraceParent)
	req.Header.Set("x-async-trace-id", task.TraceID)
	req.Header.Set("x-async-request-id", task.ID)
	if err := c.authenticate(t, req, task.ID, body); err != nil {
		return err
	}
	resp, err := c.client(t).Do(req)
	if err != nil {
		if delivery.IsRefusal(err) { // retrying reaches the same address
			return &PermanentError{Msg: fmt.Sprintf("sending the task to %s: %v", t.Endpoint, err), Refusal: true}
		}
		return fmt.Errorf("sending the task to %s: %w", t.Endpoint, err)
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	switch code := resp.StatusCode; {
	case code >= 200 && code < 300:
		return nil
	case code == http.StatusRequestTimeout || code == http.StatusTooManyRequests || code >= 500:
		return fmt.Errorf("node answered %d: %s", code, strings.TrimSpace(string(answer)))
	default:
		return &PermanentError{Msg: "node refused the task with " + strconv.Itoa(code) + ": " + strings.TrimSpace(string(answer))}
	}
}

// TaskHeaders returns the caller's request headers a node gets: all but
// the credentials (rules.CredentialHeader: Authorization, Cookie,
// Proxy-Authorization, API keys, tokens, sessions, the client certificate),
// which pass only when pass (target.passHeaders) names them. The node is
// authenticated by the rule (target.auth), not by the caller's identity,
// and a caller's token handed to a node outside the mesh could be replayed
// against any service that trusts it.
func TaskHeaders(h [][2]string, pass []string) [][2]string {
	out := make([][2]string, 0, len(h))
	for _, kv := range h {
		name := strings.ToLower(kv[0])
		if rules.CredentialHeader(name) && !slices.Contains(pass, name) {
			continue
		}
		out = append(out, kv)
	}
	return out
}

// authenticate adds t's credentials to a task request.
func (c *Client) authenticate(t *rules.Target, req *http.Request, id string, body []byte) error {
	a := t.Auth
	switch a.Type {
	case rules.AuthHMAC:
		secrets, err := c.secrets.Lookup(a.SecretRef)
		if err != nil {
			return err
		}
		webhook.Sign(req.Header, secrets, id, time.Now(), body)
	case rules.AuthBearer:
		tok, err := c.secrets.Value(a.SecretRef)
		if err != nil {
			return err
		}
		req.Header.Set("authorization", "Bearer "+tok)
	case rules.AuthOAuth2:
		ts, err := c.tokenSource(t)
		if err != nil {
			return err
		}
		tok, err := ts.Token()
		if err != nil {
			if delivery.IsRefusal(err) {
				return &PermanentError{Msg: fmt.Sprintf("oauth2 token from %s: %v", a.TokenURL, err)}
			}
			return fmt.Errorf("oauth2 token from %s: %w", a.TokenURL, err)
		}
		tok.SetAuthHeader(req)
	default:
		return &PermanentError{Msg: "unknown auth type " + a.Type}
	}
	return nil
}

// tokenSource returns the cached, self-refreshing token source of t's
// client credentials.
func (c *Client) tokenSource(t *rules.Target) (oauth2.TokenSource, error) {
	a := t.Auth
	key := a.TokenURL + "|" + a.ClientID + "|" + a.SecretRef + "|" + strings.Join(a.Scopes, " ")
	c.mu.Lock()
	ts, ok := c.tokens[key]
	c.mu.Unlock()
	if ok {
		return ts, nil
	}
	secret, err := c.secrets.Value(a.SecretRef)
	if err != nil {
		return nil, err
	}
	cc := clientcredentials.Config{ClientID: a.ClientID, ClientSecret: secret, TokenURL: a.TokenURL, Scopes: a.Scopes}
	// The token endpoint is reached through the target's guard too; the
	// source outlives this request, so it gets a context of its own.
	ts = cc.TokenSource(context.WithValue(context.Background(), oauth2.HTTPClient, c.client(t)))
	c.mu.Lock()
	c.tokens[key] = ts
	c.mu.Unlock()
	return ts, nil
}

// Complete authenticates and opens a node's completion of request id.
func (c *Client) Complete(t *rules.Target, id string, h http.Header, body []byte) (*Completion, error) {
	if err := c.verify(t, id, h, body); err != nil {
		return nil, err
	}
	plain := body
	if t.Encryption != nil {
		key, err := c.key(t.Encryption)
		if err != nil {
			return nil, err
		}
		if plain, err = seal.Open(t.Encryption.Type, key, id, body); err != nil {
			return nil, fmt.Errorf("completion: %w", err)
		}
	}
	return ParseCompletion(plain)
}

// Preverify checks what of a completion's authentication does not need its
// body, so that the collector reads no body from a party that cannot be the
// node: the whole bearer token, or an HMAC completion's webhook-id, a
// timestamp within webhook.Tolerance and a v1 signature header. Complete
// checks the signature over the body.
func (c *Client) Preverify(t *rules.Target, id string, h http.Header) error {
	if t.CompletionSecretRef == "" && t.Auth.Type == rules.AuthBearer {
		return c.verify(t, id, h, nil)
	}
	if h.Get(webhook.HeaderID) != id {
		return fmt.Errorf("%w: webhook-id must be the request id", ErrUnauthenticated)
	}
	sec, err := strconv.ParseInt(h.Get(webhook.HeaderTimestamp), 10, 64)
	if err != nil {
		return fmt.Errorf("%w: webhook-timestamp: want Unix seconds", ErrUnauthenticated)
	}
	if d := time.Since(time.Unix(sec, 0)); d > webhook.Tolerance || d < -webhook.Tolerance {
		return fmt.Errorf("%w: webhook-timestamp outside the tolerance", ErrUnauthenticated)
	}
	if !strings.Contains(h.Get(webhook.HeaderSignature), "v1,") {
		return fmt.Errorf("%w: webhook-signature: want a v1 signature", ErrUnauthenticated)
	}
	return nil
}

// verify checks a completion's authentication.
func (c *Client) verify(t *rules.Target, id string, h http.Header, body []byte) error {
	ref := t.CompletionSecretRef
	if ref == "" && t.Auth.Type == rules.AuthHMAC {
		ref = t.Auth.SecretRef
	}
	if ref == "" && t.Auth.Type == rules.AuthBearer {
		want, err := c.secrets.Value(t.Auth.SecretRef)
		if err != nil {
			return err
		}
		got, ok := strings.CutPrefix(h.Get("authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(want)) != 1 {
			return fmt.Errorf("%w: want the node's bearer token", ErrUnauthenticated)
		}
		return nil
	}
	secrets, err := c.secrets.Lookup(ref)
	if err != nil {
		return err
	}
	if h.Get(webhook.HeaderID) != id {
		return fmt.Errorf("%w: webhook-id must be the request id", ErrUnauthenticated)
	}
	if err := webhook.Verify(h, body, secrets, time.Now()); err != nil {
		return fmt.Errorf("%w: %v", ErrUnauthenticated, err)
	}
	return nil
}

func (c *Client) key(e *rules.Encryption) ([]byte, error) {
	v, err := c.secrets.Value(e.KeyRef)
	if err != nil {
		return nil, err
	}
	k, err := seal.ParseKey(v)
	if err != nil {
		return nil, fmt.Errorf("secret %s: %w", e.KeyRef, err)
	}
	return k, nil
}

// ParseCompletion decodes a completion strictly.
func ParseCompletion(data []byte) (*Completion, error) {
	var cp Completion
	if err := strict.Decode(data, &cp); err != nil {
		return nil, fmt.Errorf("completion: %w", err)
	}
	switch {
	case cp.Error != "" && cp.Status != 0:
		return nil, errors.New("completion: want status or error, not both")
	case cp.Error == "" && (cp.Status < 100 || cp.Status > 599):
		return nil, errors.New("completion: status: want 100..599 (or an error)")
	case cp.BodyEncoding != "" && cp.BodyEncoding != "base64":
		return nil, errors.New("completion: bodyEncoding: want base64 or nothing")
	}
	if cp.BodyEncoding == "base64" {
		if _, err := base64.StdEncoding.DecodeString(cp.Body); err != nil {
			return nil, errors.New("completion: body: not base64")
		}
	}
	for k, v := range cp.Headers {
		if k == "" || strings.ContainsAny(k, " :\r\n") || strings.ContainsAny(v, "\r\n") {
			return nil, fmt.Errorf("completion: headers: invalid header %q", k)
		}
	}
	return &cp, nil
}

// BodyBytes is the completion's body, decoded.
func (cp *Completion) BodyBytes() []byte {
	if cp.BodyEncoding == "base64" {
		b, _ := base64.StdEncoding.DecodeString(cp.Body) // checked by ParseCompletion
		return b
	}
	return []byte(cp.Body)
}
