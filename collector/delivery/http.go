package delivery

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/store"
)

// post makes an http or soap attempt and classifies the answer.
func (s *Sender) post(ctx context.Context, a *attempt, contentType string, body []byte, extra http.Header) Result {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, a.cb.URL, bytes.NewReader(body))
	if err != nil {
		return a.retry(0, "building request: "+err.Error())
	}
	req.Header = a.sign(body)
	for k, v := range extra {
		req.Header[k] = v
	}
	req.Header.Set("content-type", contentType)
	req.Header.Set("user-agent", "asyncmesh-collector")
	resp, err := s.httpClient(a.guard).Do(req)
	if err != nil {
		return a.retry(0, err.Error())
	}
	defer resp.Body.Close()
	// Read a little of the answer: a SOAP fault names its reason, and a
	// drained body lets the connection be reused.
	answer, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	code := resp.StatusCode
	switch {
	case code >= 200 && code < 300:
		return Result{Outcome: Delivered, Attempt: attemptCode(code)}
	case code == http.StatusGone:
		return Result{Outcome: Gone, Attempt: withError(code, "endpoint answered 410 Gone")}
	}
	msg := "endpoint answered " + strconv.Itoa(code)
	if fault := soapFault(resp.Header.Get("content-type"), answer); fault != "" {
		msg += ": SOAP fault: " + fault
	}
	if code == http.StatusTooManyRequests || code == http.StatusServiceUnavailable {
		if d, ok := ParseRetryAfter(resp.Header.Get("retry-after"), time.Now()); ok {
			return a.throttled(code, msg, d)
		}
	}
	return a.retry(code, msg)
}

// httpClient returns the pooled client of guard g.
func (s *Sender) httpClient(g Guard) *http.Client {
	key := g.Key()
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, ok := s.http[key]; ok {
		return c
	}
	c := NewHTTPClient(g)
	s.http[key] = c
	return c
}

// NewHTTPClient returns a client whose connections pass guard g and which
// never follows redirects (a 3xx is the answer).
func NewHTTPClient(g Guard) *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			DialContext:         g.DialContext,
			MaxIdleConnsPerHost: 64,
			IdleConnTimeout:     90 * time.Second,
			TLSHandshakeTimeout: 5 * time.Second,
			ForceAttemptHTTP2:   true,
		},
		// Redirects are never followed: a 3xx is a failed attempt.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

func attemptCode(code int) (a store.Attempt) { a.StatusCode = code; return a }

func withError(code int, err string) (a store.Attempt) {
	a.StatusCode, a.Error = code, err
	return a
}

// soapFault returns the faultstring of a SOAP fault answer, or "".
func soapFault(contentType string, body []byte) string {
	if !strings.Contains(contentType, "xml") {
		return ""
	}
	f, err := parseFault(body)
	if err != nil {
		return ""
	}
	return f
}
