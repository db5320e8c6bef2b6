package collector

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/asyncmesh/asyncmesh/internal/envelope"
	"github.com/asyncmesh/asyncmesh/internal/rules"
	"github.com/asyncmesh/asyncmesh/internal/webhook"
)

// flakyReceiver answers every callback with status (200 by default) and
// remembers the webhook-ids it answered 2xx, in order.
type flakyReceiver struct {
	*httptest.Server
	status atomic.Int32
	hits   atomic.Int32
	mu     sync.Mutex
	ok     []string
}

func newFlakyReceiver(t *testing.T) *flakyReceiver {
	fr := &flakyReceiver{}
	fr.status.Store(200)
	fr.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fr.hits.Add(1)
		st := int(fr.status.Load())
		if st/100 == 2 {
			fr.mu.Lock()
			fr.ok = append(fr.ok, r.Header.Get("webhook-id"))
			fr.mu.Unlock()
		}
		w.WriteHeader(st)
	}))
	t.Cleanup(fr.Close)
	return fr
}

func (e *env) envelopeTo(url string) *envelope.Envelope {
	en := e.envelope("/work", []byte("x"))
	en.Callback = rules.Callback{URL: url, Protocol: rules.ProtocolHTTP, AllowPrivate: true}
	return en
}

// waitStatus waits until record id reaches status.
func (e *env) waitStatus(id, status string) map[string]any {
	e.t.Helper()
	var rec map[string]any
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if _, rec = e.get("/v1/requests/" + id); rec["status"] == status {
			return rec
		}
	}
	e.t.Fatalf("record %s is %v, want %s", id, rec["status"], status)
	return nil
}

// postAs posts body to path with a bearer token ("" for none).
func (e *env) postAs(path string, body []byte, bearer string) *http.Response {
	e.t.Helper()
	req, _ := http.NewRequest("POST", e.api.URL+path, bytes.NewReader(body))
	if bearer != "" {
		req.Header.Set("authorization", "Bearer "+bearer)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { resp.Body.Close() })
	return resp
}

func decodeJSON(t *testing.T, resp *http.Response, v any) {
	t.Helper()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatal(err)
	}
}

// TestFailingEndpointIsDisabledAndHeld: past EndpointDisableAfter
// consecutive failed attempts, the endpoint is disabled: its deliveries are
// held — not retried, not dead — and the operator's webhook hears of it;
// enabling it resumes them, and each is delivered once.
func TestFailingEndpointIsDisabledAndHeld(t *testing.T) {
	fr := newFlakyReceiver(t)
	fr.status.Store(500)
	events := make(chan string, 10)
	opSecret := webhook.NewSecret()
	ops := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body := make([]byte, r.ContentLength)
		r.Body.Read(body)
		sec, _ := webhook.ParseSecret(opSecret)
		if webhook.Verify(r.Header, body, []webhook.Secret{sec}, time.Now()) != nil {
			w.WriteHeader(400)
			return
		}
		events <- string(body)
	}))
	defer ops.Close()
	e := newEnv(t)
	e.stop()
	sec, _ := webhook.ParseSecret(opSecret)
	e.tune = func(c *Config) {
		c.EndpointDisableAfter, c.EndpointFailingFor, c.EndpointEventsURL, c.EndpointEventsSecrets = 4, -1, ops.URL, []webhook.Secret{sec}
	}
	e.start()

	// Two requests fail, attempt after attempt: the fourth failure of the
	// two disables the endpoint (before either runs out of attempts).
	var ids []string
	for range 2 {
		en := e.envelopeTo(fr.URL + "/cb")
		en.Retry.MaxAttempts = 20
		e.intake(en)
		ids = append(ids, en.ID)
	}
	for _, id := range ids {
		rec := e.waitStatus(id, "held")
		if !strings.Contains(historyNotes(rec), "endpoint disabled") {
			t.Fatalf("history %v", rec["history"])
		}
	}
	select {
	case ev := <-events:
		if !strings.Contains(ev, `"type":"endpoint.disabled"`) || !strings.Contains(ev, "consecutive failed attempts") {
			t.Fatalf("operator event %s", ev)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the operator's webhook heard nothing")
	}
	// Later deliveries are held without an attempt.
	hits := fr.hits.Load()
	late := e.envelopeTo(fr.URL + "/cb")
	e.intake(late)
	e.waitStatus(late.ID, "held")
	if fr.hits.Load() != hits {
		t.Fatal("a delivery to a disabled endpoint was attempted")
	}
	code, list := e.get("/v1/endpoints?disabled=true")
	eps, _ := list["endpoints"].([]any)
	if code != 200 || len(eps) != 1 {
		t.Fatalf("disabled endpoints: %d %v", code, list)
	}
	ep := eps[0].(map[string]any)
	if ep["url"] != fr.URL+"/cb" || ep["disabled"] != true || ep["consecutiveFailures"].(float64) < 4 || ep["successRatio"].(float64) != 0 || ep["held"] != float64(3) {
		t.Fatalf("endpoint %v", ep)
	}

	// The receiver recovers; the operator enables the endpoint.
	fr.status.Store(200)
	resp := e.postAs("/v1/endpoints/"+ep["id"].(string)+"/enable", nil, adminToken)
	var got map[string]any
	decodeJSON(t, resp, &got)
	if resp.StatusCode != 200 || got["disabled"] != false || got["resumed"].(float64) != 3 {
		t.Fatalf("enable: %d %v", resp.StatusCode, got)
	}
	for _, id := range append(ids, late.ID) {
		e.waitStatus(id, "delivered")
	}
	fr.mu.Lock()
	defer fr.mu.Unlock()
	if len(fr.ok) != 3 {
		t.Fatalf("delivered %v, want each of the 3 once", fr.ok)
	}
	select {
	case ev := <-events:
		if !strings.Contains(ev, `"type":"endpoint.enabled"`) {
			t.Fatalf("operator event %s", ev)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no endpoint.enabled event")
	}
}

// TestShortOutageIsNotDisabled: failures for less than EndpointFailingFor
// do not disable the endpoint, however many: retries heal a short outage.
func TestShortOutageIsNotDisabled(t *testing.T) {
	fr := newFlakyReceiver(t)
	fr.status.Store(500)
	e := newEnv(t)
	e.stop()
	e.tune = func(c *Config) { c.EndpointDisableAfter, c.EndpointFailingFor = 2, time.Hour }
	e.start()
	en := e.envelopeTo(fr.URL + "/cb")
	en.Retry.MaxAttempts = 6
	e.intake(en)
	e.waitStatus(en.ID, "dead") // its attempts ran out; the endpoint stays enabled
	e.c.health.flush(context.Background())
	if code, list := e.get("/v1/endpoints?disabled=true"); code != 200 || len(list["endpoints"].([]any)) != 0 {
		t.Fatalf("disabled endpoints after a short outage: %v", list)
	}
}

// TestGoneDisablesAtOnce: a 410 disables the endpoint at its first answer.
func TestGoneDisablesAtOnce(t *testing.T) {
	fr := newFlakyReceiver(t)
	fr.status.Store(http.StatusGone)
	e := newEnv(t)
	first, second := e.envelopeTo(fr.URL+"/gone"), e.envelopeTo(fr.URL+"/gone")
	e.intake(first)
	e.waitStatus(first.ID, "held")
	e.intake(second)
	e.waitStatus(second.ID, "held")
	if n := fr.hits.Load(); n != 1 {
		t.Fatalf("%d attempts at a gone endpoint, want 1", n)
	}
	// Another URL of the same host is another endpoint.
	fr2 := e.envelopeTo(fr.URL + "/other")
	fr.status.Store(200)
	e.intake(fr2)
	e.waitStatus(fr2.ID, "delivered")
}

// TestEndpointsAPINeedsTheOperator plays a caller that reads or enables
// endpoints without the operator's token.
func TestEndpointsAPINeedsTheOperator(t *testing.T) {
	e := newEnv(t)
	for _, tc := range []struct{ method, path string }{
		{"GET", "/v1/endpoints"}, {"GET", "/v1/endpoints/x"}, {"POST", "/v1/endpoints/x/enable"}, {"POST", "/v1/endpoints/x/disable"},
	} {
		req, _ := http.NewRequest(tc.method, e.api.URL+tc.path, nil)
		req.Header.Set("authorization", "Bearer not-the-operator")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 401 {
			t.Fatalf("%s %s without the operator's token: %d", tc.method, tc.path, resp.StatusCode)
		}
	}
	for _, q := range []string{"disabled=maybe", "limit=0", "limit=501", "limit=x"} {
		if code, body := e.get("/v1/endpoints?" + q); code != 400 || body["error"] != "bad_query" {
			t.Fatalf("?%s: %d %v", q, code, body)
		}
	}
	if code, _ := e.get("/v1/endpoints/nope"); code != 404 {
		t.Fatalf("an unknown endpoint: %d", code)
	}
	resp := e.postAs("/v1/endpoints/nope/enable", nil, adminToken)
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Fatalf("enabling an unknown endpoint: %d", resp.StatusCode)
	}
}

func historyNotes(rec map[string]any) string {
	var b strings.Builder
	for _, h := range rec["history"].([]any) {
		if n, ok := h.(map[string]any)["note"].(string); ok {
			b.WriteString(n + "\n")
		}
	}
	return b.String()
}
