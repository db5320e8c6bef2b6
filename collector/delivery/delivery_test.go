package delivery

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/store"
	"github.com/asyncmesh/asyncmesh/internal/envelope"
	"github.com/asyncmesh/asyncmesh/internal/rules"
	"github.com/asyncmesh/asyncmesh/internal/webhook"
)

type secrets map[string][]webhook.Secret

func (s secrets) Lookup(ref string) ([]webhook.Secret, error) {
	if v, ok := s[ref]; ok {
		return v, nil
	}
	return nil, errors.New("no secret " + ref)
}

func (s secrets) Value(ref string) (string, error) {
	if ref == "key" {
		return testKey, nil
	}
	if v, ok := s[ref]; ok && len(v) > 0 {
		return "guest:guest", nil
	}
	return "", errors.New("no secret " + ref)
}

func record(url string, allowPrivate bool) *store.Record {
	return &store.Record{
		ID: "0190b3c2-7d6e-7a1b-8c3d-4e5f60718293", TraceID: "4bf92f3577b34da6a3ce929d0e0e4736", Status: store.Delivering,
		Envelope: &envelope.Envelope{
			Callback: rules.Callback{URL: url, Protocol: rules.ProtocolHTTP, SecretRef: "s", AllowPrivate: allowPrivate},
			Retry:    rules.Retry{MaxAttempts: 5, InitialBackoff: rules.Duration(time.Second), MaxBackoff: rules.Duration(10 * time.Second)},
		},
		Response: &store.Response{Status: 200, Body: []byte(`{"ok":true}`), Headers: [][2]string{{"content-type", "application/json"}}},
	}
}

func TestSendPolicy(t *testing.T) {
	sec, _ := webhook.ParseSecret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
	tests := []struct {
		name     string
		status   int
		header   [2]string
		want     Outcome
		minWait  time.Duration
		maxWait  time.Duration
		hasError bool
	}{
		{"ok", 200, [2]string{}, Delivered, 0, 0, false},
		{"no content", 204, [2]string{}, Delivered, 0, 0, false},
		{"gone", 410, [2]string{}, Gone, 0, 0, true},
		{"throttled with seconds", 429, [2]string{"retry-after", "3"}, Retry, 3 * time.Second, 3 * time.Second, true},
		{"unavailable, capped by maxBackoff", 503, [2]string{"retry-after", "3600"}, Retry, 10 * time.Second, 10 * time.Second, true},
		{"unavailable without retry-after", 503, [2]string{}, Retry, 0, time.Second, true},
		{"server error", 500, [2]string{"retry-after", "7"}, Retry, 0, time.Second, true}, // Retry-After only for 429/503
		{"redirect not followed", 302, [2]string{"location", "http://169.254.169.254/"}, Retry, 0, time.Second, true},
		{"client error", 400, [2]string{}, Retry, 0, time.Second, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got http.Header
			var body []byte
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				got, body = r.Header.Clone(), must(io.ReadAll(r.Body))
				if tt.header[0] != "" {
					w.Header().Set(tt.header[0], tt.header[1])
				}
				w.WriteHeader(tt.status)
			}))
			defer srv.Close()
			s := NewSender(secrets{"s": {sec}}, time.Second)
			res := s.Send(context.Background(), record(srv.URL, true), 1)
			if res.Outcome != tt.want || res.Wait < tt.minWait || res.Wait > tt.maxWait {
				t.Fatalf("outcome %v wait %v; want %v in [%v, %v]", res.Outcome, res.Wait, tt.want, tt.minWait, tt.maxWait)
			}
			if res.Attempt.StatusCode != tt.status || (res.Attempt.Error != "") != tt.hasError || res.Attempt.At.IsZero() {
				t.Fatalf("attempt %+v", res.Attempt)
			}
			if err := webhook.Verify(got, body, []webhook.Secret{sec}, time.Now()); err != nil {
				t.Fatalf("callback signature: %v", err)
			}
			if got.Get("webhook-id") != "0190b3c2-7d6e-7a1b-8c3d-4e5f60718293" || got.Get("x-async-trace-id") != "4bf92f3577b34da6a3ce929d0e0e4736" {
				t.Fatalf("headers %v", got)
			}
			if !strings.Contains(string(body), `"status":"completed"`) || !strings.Contains(string(body), `"body":"{\"ok\":true}"`) {
				t.Fatalf("payload %s", body)
			}
		})
	}
}

func TestSendRefusesPrivateAddresses(t *testing.T) {
	hit := false
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hit = true }))
	defer srv.Close()
	s := NewSender(secrets{"s": nil}, time.Second)
	res := s.Send(context.Background(), record(srv.URL, false), 1)
	if res.Outcome != Refused || hit || !strings.Contains(res.Attempt.Error, "loopback, private") {
		t.Fatalf("loopback callback not refused: %+v (server hit %v)", res, hit)
	}
}

func TestSendUnknownSecretIsAFailedAttempt(t *testing.T) {
	s := NewSender(secrets{}, time.Second)
	res := s.Send(context.Background(), record("http://127.0.0.1:9/", true), 1)
	if res.Outcome != Retry || !strings.Contains(res.Attempt.Error, "no secret") {
		t.Fatalf("%+v", res)
	}
}

func TestAllowed(t *testing.T) {
	for addr, want := range map[string]bool{
		"8.8.8.8": true, "2606:4700::1111": true, "127.0.0.1": false, "10.1.2.3": false,
		"169.254.169.254": false, "192.168.1.1": false, "172.31.0.1": false, "::1": false,
		"fe80::1": false, "fd00:ec2::254": false, "::ffff:127.0.0.1": false, "224.0.0.1": false,
		"100.64.0.1": false, "0.0.0.0": false,
	} {
		if got := Allowed(netip.MustParseAddr(addr)); got != want {
			t.Errorf("Allowed(%s) = %v, want %v", addr, got, want)
		}
	}
}

func TestBackoffFullJitter(t *testing.T) {
	p := rules.Retry{InitialBackoff: rules.Duration(time.Second), MaxBackoff: rules.Duration(8 * time.Second)}
	for n, ceil := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 3: 4 * time.Second, 4: 8 * time.Second, 20: 8 * time.Second} {
		var top time.Duration
		for range 2000 {
			d := Backoff(p, n)
			if d < 0 || d > ceil {
				t.Fatalf("Backoff(%d) = %v, outside [0, %v]", n, d, ceil)
			}
			top = max(top, d)
		}
		if top < ceil/2 { // 2000 uniform draws: the top is near the ceiling
			t.Errorf("Backoff(%d) never above %v: not spread up to %v", n, top, ceil)
		}
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"", 0, false},
		{"0", 0, true},
		{" 120 ", 2 * time.Minute, true},
		{"-1", 0, false},
		{"99999999", 0, false},
		{"Mon, 23 Nov 2026 12:00:30 GMT", 30 * time.Second, true},
		{"Mon, 23 Nov 2026 11:00:00 GMT", 0, true}, // in the past: now
		{"soon", 0, false},
	}
	for _, tt := range tests {
		got, ok := ParseRetryAfter(tt.in, now)
		if got != tt.want || ok != tt.ok {
			t.Errorf("ParseRetryAfter(%q) = %v, %v; want %v, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

func FuzzParseRetryAfter(f *testing.F) {
	for _, s := range []string{"0", "120", "Mon, 23 Nov 2026 12:00:30 GMT", "-5", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		d, ok := ParseRetryAfter(v, time.Now())
		if d < 0 || (!ok && d != 0) {
			t.Fatalf("ParseRetryAfter(%q) = %v, %v", v, d, ok)
		}
	})
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
