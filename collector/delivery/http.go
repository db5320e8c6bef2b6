package delivery

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/store"
	"github.com/asyncmesh/asyncmesh/internal/rules"
)

func init() { register(rules.ProtocolHTTP, (*Sender).sendHTTP) }

// sendHTTP makes an http attempt: the JSON payload (sealed when the rule
// says so), POSTed signed.
func (s *Sender) sendHTTP(ctx context.Context, a *attempt, p Payload) Result {
	body, contentType, err := s.encode(a, p)
	if err != nil {
		return a.retry(0, err.Error())
	}
	return s.post(ctx, a, contentType, body, nil)
}

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
	resp, err := s.http.For(a.guard, a.cert).Do(req)
	if err != nil {
		return a.failed(err)
	}
	defer resp.Body.Close()
	// Read a little of the answer: a SOAP fault names its reason, and a
	// drained body lets the connection be reused.
	answer, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	code := resp.StatusCode
	switch {
	case code >= 200 && code < 300:
		return Result{Outcome: Delivered, Attempt: store.Attempt{StatusCode: code}}
	case code == http.StatusGone:
		return Result{Outcome: Gone, Attempt: store.Attempt{StatusCode: code, Error: "endpoint answered 410 Gone"}}
	}
	msg := "endpoint answered " + strconv.Itoa(code)
	if strings.Contains(resp.Header.Get("content-type"), "xml") {
		if fault, err := parseFault(answer); err == nil {
			msg += ": SOAP fault: " + fault
		}
	}
	if code == http.StatusTooManyRequests || code == http.StatusServiceUnavailable {
		if d, ok := ParseRetryAfter(resp.Header.Get("retry-after"), time.Now()); ok {
			return a.throttled(code, msg, d)
		}
	}
	return a.retry(code, msg)
}

// HTTPClients pools one guarded client per guard (Guard.Key) and client
// certificate: connections are never shared between guards, nor between
// callers' certificates. The zero value is ready.
type HTTPClients struct {
	// RootCAs verifies receivers' certificates (nil: the system's).
	RootCAs *x509.CertPool

	mu sync.Mutex
	m  map[string]*http.Client
}

// For returns the client of guard g presenting cert (nil: none): its
// connections pass g, and it never follows redirects (a 3xx is the answer).
func (p *HTTPClients) For(g Guard, cert *tls.Certificate) *http.Client {
	key := g.Key() + certKey(cert)
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.m[key]; ok {
		return c
	}
	c := &http.Client{
		Transport: &http.Transport{
			DialContext:         g.DialContext,
			MaxIdleConnsPerHost: 64,
			IdleConnTimeout:     90 * time.Second,
			TLSHandshakeTimeout: 5 * time.Second,
			ForceAttemptHTTP2:   true,
			TLSClientConfig:     p.tlsConfig(cert),
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	if p.m == nil {
		p.m = map[string]*http.Client{}
	}
	p.m[key] = c
	return c
}

// tlsConfig is the TLS configuration of receivers' connections.
func (p *HTTPClients) tlsConfig(cert *tls.Certificate) *tls.Config {
	c := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: p.RootCAs}
	if cert != nil {
		c.Certificates = []tls.Certificate{*cert}
	}
	return c
}

// CloseIdle closes the idle connections of every client.
func (p *HTTPClients) CloseIdle() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.m {
		c.CloseIdleConnections()
	}
}
