package client

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/asyncmesh/asyncmesh/internal/seal"
	"github.com/asyncmesh/asyncmesh/internal/webhook"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

// sidecar stands in for Envoy + collector: it answers 202 and then calls
// back the URL in x-async-callback, signed, `deliveries` times; with early,
// the first callback is sent before the 202.
func sidecar(t *testing.T, deliveries int, early bool, sign string) *httptest.Server {
	sec, _ := webhook.ParseSecret(sign)
	var n atomic.Int64
	var wg sync.WaitGroup
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("prefer") != "respond-async" {
			w.WriteHeader(200)
			io.WriteString(w, "sync")
			return
		}
		id := "0190b3c2-7d6e-7a1b-8c3d-00000000000" + string(rune('0'+n.Add(1)))
		cb := r.Header.Get("x-async-callback")
		body, _ := json.Marshal(map[string]any{"id": id, "traceId": "4bf92f3577b34da6a3ce929d0e0e4736", "status": "completed",
			"response": map[string]any{"status": 201, "headers": map[string]string{"x": "y"}, "body": "done"}})
		send := func() {
			req, _ := http.NewRequest("POST", cb, bytes.NewReader(body))
			webhook.Sign(req.Header, []webhook.Secret{sec}, id, time.Now(), body)
			if resp, err := http.DefaultClient.Do(req); err == nil {
				resp.Body.Close()
			}
		}
		if early {
			send()
		}
		w.Header().Set("x-async-request-id", id)
		w.Header().Set("x-async-trace-id", "4bf92f3577b34da6a3ce929d0e0e4736")
		w.WriteHeader(202)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range deliveries {
				time.Sleep(20 * time.Millisecond)
				send()
			}
		}()
	}))
	t.Cleanup(func() { wg.Wait(); srv.Close() })
	return srv
}

func TestDoRunsTheHandlerOnce(t *testing.T) {
	for _, tc := range []struct {
		name  string
		early bool
	}{{"callback after the 202", false}, {"callback before the 202", true}} {
		t.Run(tc.name, func(t *testing.T) {
			sc := sidecar(t, 3, tc.early, secret) // delivered 3 (or 4) times
			c, err := New(Config{BaseURL: sc.URL, Secrets: []string{secret}, Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			var runs atomic.Int64
			got := make(chan Result, 10)
			req, _ := http.NewRequest("POST", "/slow", strings.NewReader("{}"))
			call, err := c.Do(context.Background(), req, func(ctx context.Context, r Result) {
				runs.Add(1)
				got <- r
			})
			if err != nil || call.ID == "" || call.Sync != nil {
				t.Fatalf("Do = %+v, %v", call, err)
			}
			select {
			case r := <-got:
				if r.ID != call.ID || r.Status != "completed" || r.Response.Status != 201 || string(r.Response.Body) != "done" || r.Response.Headers["x"] != "y" {
					t.Fatalf("result %+v", r)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("handler never ran")
			}
			time.Sleep(200 * time.Millisecond) // the duplicates arrive
			if n := runs.Load(); n != 1 {
				t.Fatalf("handler ran %d times", n)
			}
		})
	}
}

func TestForgedCallbackRefused(t *testing.T) {
	sc := sidecar(t, 1, false, "whsec_"+strings.Repeat("A", 32)) // signs with another secret
	c, err := New(Config{BaseURL: sc.URL, Secrets: []string{secret}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ran := make(chan struct{}, 1)
	req, _ := http.NewRequest("POST", "/slow", nil)
	if _, err := c.Do(context.Background(), req, func(context.Context, Result) { ran <- struct{}{} }); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ran:
		t.Fatal("a callback with a wrong signature ran the handler")
	case <-time.After(300 * time.Millisecond):
	}
}

// TestCallbackOfAnotherIDRefused: a callback correctly signed under one
// request's webhook-id whose payload names another request (a receiver's
// sender replaying one request's signed body as another's) runs no handler.
func TestCallbackOfAnotherIDRefused(t *testing.T) {
	c, err := New(Config{BaseURL: "http://127.0.0.1:9", Secrets: []string{secret}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	body := []byte(`{"id":"01a24a25-0000-7000-8000-000000000002","status":"completed"}`)
	h := http.Header{}
	sec, _ := webhook.ParseSecret(secret)
	webhook.Sign(h, []webhook.Secret{sec}, "01a24a25-0000-7000-8000-000000000001", time.Now(), body)
	if _, code, err := c.accept(h, body, time.Now()); code != http.StatusBadRequest || err == nil {
		t.Fatalf("accept = %d, %v; want 400", code, err)
	}
}

func TestSyncAnswerIsReturned(t *testing.T) {
	sc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "now") }))
	defer sc.Close()
	c, err := New(Config{BaseURL: sc.URL, Secrets: []string{secret}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	req, _ := http.NewRequest("GET", "/fast", nil)
	call, err := c.Do(context.Background(), req, func(context.Context, Result) { t.Error("handler ran for a sync answer") })
	if err != nil || call.Sync == nil || call.Sync.StatusCode != 200 {
		t.Fatalf("Do = %+v, %v", call, err)
	}
	call.Sync.Body.Close()
}

// TestPreferWait: Do asks for Prefer: wait, returns a result relayed within
// it in Sync with the request's id, trace id and access token, and
// acknowledges the callback that still follows without running the handler.
func TestPreferWait(t *testing.T) {
	sec, _ := webhook.ParseSecret(secret)
	const id, trace = "0190b3c2-7d6e-7a1b-8c3d-0000000000aa", "4bf92f3577b34da6a3ce929d0e0e4736"
	prefer := make(chan string, 1)
	acked := make(chan int, 1)
	var wg sync.WaitGroup
	sc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		prefer <- r.Header.Get("prefer")
		cb := r.Header.Get("x-async-callback")
		w.Header().Set("x-async-request-id", id)
		w.Header().Set("x-async-trace-id", trace)
		w.Header().Set("x-async-access-token", "tok")
		w.Header().Set("x-async-status", "completed")
		io.WriteString(w, "done now")
		wg.Go(func() { // the callback follows, as the collector still sends it
			time.Sleep(50 * time.Millisecond)
			body, _ := json.Marshal(map[string]any{"id": id, "traceId": trace, "status": "completed", "response": map[string]any{"status": 200}})
			req, _ := http.NewRequest("POST", cb, bytes.NewReader(body))
			webhook.Sign(req.Header, []webhook.Secret{sec}, id, time.Now(), body)
			if resp, err := http.DefaultClient.Do(req); err == nil {
				resp.Body.Close()
				acked <- resp.StatusCode
			}
		})
	}))
	t.Cleanup(func() { wg.Wait(); sc.Close() })
	c, err := New(Config{BaseURL: sc.URL, Secrets: []string{secret}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	req, _ := http.NewRequest("POST", "/slow", strings.NewReader("{}"))
	call, err := c.Do(context.Background(), req, func(context.Context, Result) { t.Error("the handler ran for a result relayed within Prefer: wait") },
		PreferWait(1500*time.Millisecond))
	if err != nil || call.Sync == nil || call.ID != id || call.TraceID != trace || call.AccessToken != "tok" {
		t.Fatalf("Do = %+v, %v", call, err)
	}
	body, _ := io.ReadAll(call.Sync.Body)
	call.Sync.Body.Close()
	if got := <-prefer; got != "respond-async, wait=2" || string(body) != "done now" {
		t.Fatalf("Prefer %q, body %q; want respond-async, wait=2 (rounded up) and the service's answer", got, body)
	}
	if code := <-acked; code != http.StatusNoContent {
		t.Fatalf("the callback after the relayed result: %d, want 204", code)
	}
	time.Sleep(50 * time.Millisecond) // a handler would have started
	for _, d := range []time.Duration{0, -time.Second} {
		if _, err := c.Do(context.Background(), req, nil, PreferWait(d)); err == nil {
			t.Fatalf("PreferWait(%s) was sent", d)
		}
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	for _, cfg := range []Config{{BaseURL: "http://x"}, {BaseURL: "http://x", Secrets: []string{"nope"}}, {Secrets: []string{secret}}} {
		if c, err := New(cfg); err == nil {
			c.Close()
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
}

func TestSealedCallbacks(t *testing.T) {
	const key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
	sc := sidecar(t, 0, false, secret) // answers 202, never calls back itself
	c, err := New(Config{BaseURL: sc.URL, Secrets: []string{secret}, Key: key, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got := make(chan Result, 1)
	req, _ := http.NewRequest("POST", "/slow", nil)
	call, err := c.Do(context.Background(), req, func(_ context.Context, r Result) { got <- r })
	if err != nil {
		t.Fatal(err)
	}
	sec, _ := webhook.ParseSecret(secret)
	k, _ := seal.ParseKey(key)
	plain := []byte(`{"id":"` + call.ID + `","traceId":"4bf92f3577b34da6a3ce929d0e0e4736","status":"completed","response":{"status":200,"body":"sealed"}}`)
	post := func(body []byte, contentType string) int {
		req, _ := http.NewRequest("POST", c.CallbackURL(), bytes.NewReader(body))
		req.Header.Set("content-type", contentType)
		webhook.Sign(req.Header, []webhook.Secret{sec}, call.ID, time.Now(), body)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := post(plain, "application/json"); code != 400 {
		t.Fatalf("unsealed callback with a key configured: %d", code)
	}
	sealed, ct, _ := seal.Seal(seal.JWE, k, call.ID, plain)
	if code := post(sealed, ct); code != 204 {
		t.Fatalf("sealed callback: %d", code)
	}
	select {
	case r := <-got:
		if string(r.Response.Body) != "sealed" {
			t.Fatalf("%+v", r)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("handler never ran")
	}
}

// TestEarlyCallbacksAreBounded plays a sender of callbacks for requests
// this client never made (a misrouted collector, or a flood): they are held
// for earlyTTL at most, and never beyond maxEarly or maxEarlyBytes.
func TestEarlyCallbacksAreBounded(t *testing.T) {
	c := &Client{early: map[string]earlyResult{}, log: slog.New(slog.DiscardHandler)}
	now := time.Now()
	if !c.keepEarly(Result{ID: "a"}, maxEarlyBytes/2, now) || !c.keepEarly(Result{ID: "b"}, maxEarlyBytes/2, now) {
		t.Fatal("two callbacks within the byte bound refused")
	}
	if c.keepEarly(Result{ID: "c"}, 1, now.Add(time.Second)) {
		t.Fatal("a callback past maxEarlyBytes was kept")
	}
	if _, ok := c.takeEarly("a"); !ok || c.earlyLen != maxEarlyBytes/2 {
		t.Fatalf("take: held %d bytes", c.earlyLen)
	}
	// Past the TTL, what was held is dropped to make room.
	if !c.keepEarly(Result{ID: "d"}, maxEarlyBytes/2+1, now.Add(earlyTTL)) {
		t.Fatal("an expired callback still holds its room")
	}
	if _, ok := c.early["b"]; ok || len(c.early) != 1 || c.earlyLen != maxEarlyBytes/2+1 {
		t.Fatalf("after expiry: %d held, %d bytes", len(c.early), c.earlyLen)
	}
	for i := range maxEarly {
		c.keepEarly(Result{ID: strconv.Itoa(i)}, 0, now.Add(earlyTTL))
	}
	if len(c.early) > maxEarly {
		t.Fatalf("%d callbacks held, bound %d", len(c.early), maxEarly)
	}
}
